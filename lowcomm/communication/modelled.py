"""A communicator whose operations take the time a network model says they would.

:class:`ModelledCommunicator` wraps another communicator (gloo over loopback, or the simulation),
lets it move the data at once, then holds the operation until the modelled transfer, counted from
that moment (when the last worker joined, plus the real transfer), would be over. The real
transfer is taken as free: a fast local link carries what the modelled slow one would. An
asynchronous all-reduce overlaps its modelled transfer with the compute that follows it, as a real
one does; the waits are charged to :class:`~lowcomm.communication.CommStats` as usual. (The inner
communicator counts the same operations on its own counters; read this one's.)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from lowcomm.communication.network_model import NetworkModel
from lowcomm.communication.communicator import Communicator, payload_bytes


class ModelledCommunicator(Communicator):
    """``inner``'s results, ``network``'s timing."""

    def __init__(self, inner: Communicator, network: NetworkModel) -> None:
        super().__init__(inner.rank, inner.world_size)
        self.inner = inner
        self.network = network

    def _all_reduce_mean(self, tensors: list[torch.Tensor]) -> Callable[[], None]:
        self.inner.all_reduce_mean(tensors)
        done_at = time.perf_counter() + self.network.all_reduce_s(payload_bytes(tensors), self.world_size)
        return lambda: sleep_until(done_at)

    def _exchange(self, tensors: list[torch.Tensor], peers: list[int]) -> list[list[torch.Tensor]]:
        received = self.inner.exchange(tensors, peers)
        time.sleep(self.network.exchange_s(payload_bytes(tensors), len(peers)))
        return received

    def _all_gather(self, tensors: list[torch.Tensor]) -> list[list[torch.Tensor]]:
        gathered = self.inner.all_gather(tensors)
        time.sleep(self.network.all_gather_s(payload_bytes(tensors), self.world_size))
        return gathered

    def _all_gather_object(self, value: Any) -> list[Any]:
        return self.inner.all_gather_object(value)

    def _all_to_all(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        received = self.inner.all_to_all(tensors)
        time.sleep(self.network.all_to_all_s(payload_bytes(tensors[:1]), self.world_size))
        return received

    def _broadcast(self, tensors: list[torch.Tensor], src: int) -> None:
        self.inner.broadcast(tensors, src)
        time.sleep(self.network.broadcast_s(payload_bytes(tensors), self.world_size))


def sleep_until(moment: float) -> None:
    """Sleep until ``time.perf_counter()`` reaches ``moment`` (at once if it has)."""
    time.sleep(max(0.0, moment - time.perf_counter()))
