"""``lowcomm train``: configuration, launcher, per-worker training loop, checkpoints and metrics.

The launcher (and with it the trainer and TensorBoard) is imported on first use of ``train``, so
that importing a light module of this package, such as the configuration, stays light.
"""

from typing import Any

from lowcomm.training.config import TrainConfig, load_config, resolve

__all__ = ["TrainConfig", "load_config", "resolve", "train"]


def __getattr__(name: str) -> Any:
    if name == "train":
        from lowcomm.training.launch import train

        return train
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
