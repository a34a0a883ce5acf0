"""The training loop: configuration, the trainer and live trainer, optimizers, schedule, loss, early
stop, the strategy's choice and batched replicas. Launching a run is :mod:`lowcomm.launching`'s."""

from lowcomm.training.config import TrainConfig, load_config, resolve

__all__ = ["TrainConfig", "load_config", "resolve"]
