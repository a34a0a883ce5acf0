"""lowcomm: communication-efficient data-parallel training for PyTorch."""

from lowcomm.algorithms import (
    ALGORITHMS,
    DDP,
    PALSGD,
    DiLoCo,
    LocalSGD,
    NoLoCo,
    PostLocalSGD,
    Strategy,
    StreamingDiLoCo,
)
from lowcomm.communication import (
    CommStats,
    Communicator,
    ProcessGroupCommunicator,
    shard_within_groups,
    worker_groups,
)

__version__ = "0.1.0"

__all__ = [
    "ALGORITHMS",
    "DDP",
    "PALSGD",
    "CommStats",
    "Communicator",
    "DiLoCo",
    "LocalSGD",
    "NoLoCo",
    "PostLocalSGD",
    "ProcessGroupCommunicator",
    "Strategy",
    "StreamingDiLoCo",
    "shard_within_groups",
    "worker_groups",
]
