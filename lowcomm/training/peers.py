"""The workers as the training loop sees them besides its strategy's communicator: who is who, and
a gather of small Python objects for bookkeeping (which checkpoint to resume, committing a
checkpoint, the final totals). Worker processes gather over ``torch.distributed``; simulated
workers (``--backend sim``) through their simulated group.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch.distributed as dist

from lowcomm.communication.simulated import SimulatedCommunicator


@dataclass(frozen=True)
class Peers:
    rank: int
    world_size: int
    all_gather: Callable[[Any], list[Any]]
    """Every worker's value, in rank order (a collective)."""

    def barrier(self) -> None:
        self.all_gather(None)


def process_group_peers() -> Peers:
    """The workers of the default ``torch.distributed`` process group."""

    def all_gather(value: Any) -> list[Any]:
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, value)
        return gathered

    return Peers(dist.get_rank(), dist.get_world_size(), all_gather)


def simulated_peers(communicator: SimulatedCommunicator) -> Peers:
    return Peers(communicator.rank, communicator.world_size, communicator.all_gather_object)
