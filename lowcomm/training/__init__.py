"""The training loop: configuration, the trainer and live trainer, optimizers, schedule, loss, early
stop, the strategy's choice and batched replicas.

The launcher (and with it the trainer and TensorBoard) is imported on first use of ``train``, so
that importing a light module of this package, such as the configuration, stays light.
"""

from typing import Any

from lowcomm.training.config import TrainConfig, load_config, resolve

__all__ = ["TrainConfig", "load_config", "resolve", "train"]


def __getattr__(name: str) -> Any:
    if name == "train":
        from lowcomm.launching.launch import train

        return train
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
