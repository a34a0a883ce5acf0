"""How workers talk: a small communicator interface and its implementations."""

from lowcomm.communication.communicator import CommStats, Communicator, Handle, ProcessGroupCommunicator
from lowcomm.communication.groups import GroupShards, shard_within_groups, worker_groups

__all__ = [
    "CommStats",
    "Communicator",
    "GroupShards",
    "Handle",
    "ProcessGroupCommunicator",
    "shard_within_groups",
    "worker_groups",
]
