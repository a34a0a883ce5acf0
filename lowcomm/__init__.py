"""lowcomm: communication-efficient data-parallel training for PyTorch.

:func:`shard_within_groups` (FSDP2) is imported on first use: runs without FSDP never load it.
"""

from typing import Any

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


def __getattr__(name: str) -> Any:
    if name == "shard_within_groups":
        from lowcomm.communication.fsdp import shard_within_groups

        return shard_within_groups
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
