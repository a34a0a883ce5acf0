"""How workers talk: a small communicator interface and its implementations.

:func:`shard_within_groups` (FSDP2) is imported on first use: runs without FSDP never load it.
"""

from typing import Any

from lowcomm.communication.communicator import CommStats, Communicator, Handle, ProcessGroupCommunicator
from lowcomm.communication.groups import GroupShards, worker_groups

__all__ = [
    "CommStats",
    "Communicator",
    "GroupShards",
    "Handle",
    "ProcessGroupCommunicator",
    "shard_within_groups",
    "worker_groups",
]


def __getattr__(name: str) -> Any:
    if name == "shard_within_groups":
        from lowcomm.communication.fsdp import shard_within_groups

        return shard_within_groups
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
