"""The workers as the training loop sees them besides its strategy's communicator: who is who, and
a gather of small Python objects for bookkeeping (which checkpoint to resume, committing a
checkpoint, the final totals), through any :class:`~lowcomm.communication.Communicator`'s
uncounted ``all_gather_object``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lowcomm.communication.communicator import Communicator, ProcessGroupCommunicator


@dataclass(frozen=True)
class Peers:
    rank: int
    world_size: int
    all_gather: Callable[[Any], list[Any]]
    """Every worker's value, in rank order (a collective)."""

    def barrier(self) -> None:
        self.all_gather(None)


def communicator_peers(communicator: Communicator) -> Peers:
    """The workers of ``communicator``."""
    return Peers(communicator.rank, communicator.world_size, communicator.all_gather_object)


def process_group_peers() -> Peers:
    """The workers of the default ``torch.distributed`` process group."""
    return communicator_peers(ProcessGroupCommunicator())
