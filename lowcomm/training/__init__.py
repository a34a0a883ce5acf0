"""``lowcomm train``: configuration, launcher, per-worker training loop, checkpoints and metrics."""

from lowcomm.training.config import TrainConfig, load_config
from lowcomm.training.launch import train

__all__ = ["TrainConfig", "load_config", "train"]
