"""The small communication interface every algorithm talks to.

Algorithms never call ``torch.distributed`` themselves. They ask a :class:`Communicator` for a mean
all-reduce, a point-to-point exchange with a few peers, an all-to-all, an all-gather, or a
broadcast (and, for bookkeeping, an all-gather of Python objects, which is not counted). Each call
charges :class:`CommStats` with the bytes this worker sends and the seconds it waits, using the
textbook cost of the operation (ring all-reduce: ``2(K-1)/K`` x payload; exchange: payload per
peer; all-to-all: the K-1 tensors addressed to others; ring all-gather: ``K-1`` x payload;
broadcast: payload on the source), so byte counts do not depend on what the backend does internally.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass
class CommStats:
    """Cumulative traffic of one worker: bytes it sent, seconds it waited, operations it ran, and
    what could overlap computation: the seconds it could hide behind and the bytes that could be
    sent in them (DDP: the backward pass after the first gradient bucket is ready, and the buckets
    ready before the last)."""

    bytes_sent: int = 0
    wait_s: float = 0.0
    operations: int = 0
    overlap_s: float = 0.0
    overlap_bytes: int = 0

    def as_dict(self) -> dict[str, float]:
        return asdict(self)

    def load(self, state: dict[str, float]) -> None:
        self.bytes_sent = int(state["bytes_sent"])
        self.wait_s = float(state["wait_s"])
        self.operations = int(state["operations"])
        self.overlap_s = float(state["overlap_s"])
        self.overlap_bytes = int(state["overlap_bytes"])


def payload_bytes(tensors: Sequence[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def flatten(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """The tensors' elements, concatenated into a new one-dimensional tensor (a copy, also for one tensor)."""
    return torch.cat([t.detach().reshape(-1) for t in tensors])


def unflatten(flat: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """``flat`` cut into views shaped like ``like``."""
    return [part.view_as(t) for part, t in zip(flat.split([t.numel() for t in like]), like)]


def ring_all_reduce_bytes(payload: int, world_size: int) -> int:
    """Bytes one worker sends in a ring all-reduce of ``payload`` bytes among ``world_size``."""
    return 2 * (world_size - 1) * payload // world_size


class Handle:
    """An operation in flight: :meth:`wait` blocks until it is done, charges the wait, and finishes it."""

    def __init__(self, stats: CommStats, wait: Callable[[], None]) -> None:
        self._stats = stats
        self._wait = wait
        self._done = False

    def wait(self, since: float | None = None) -> None:
        """Block until done; the wait charged runs from ``since`` (a ``perf_counter`` reading) where given."""
        if self._done:
            return
        start = time.perf_counter() if since is None else since
        self._wait()
        self._stats.wait_s += time.perf_counter() - start
        self._done = True


class Communicator(ABC):
    """Collective and point-to-point operations among the ``world_size`` workers of one job."""

    def __init__(self, rank: int, world_size: int) -> None:
        self.rank = rank
        self.world_size = world_size
        self.stats = CommStats()

    def all_reduce_mean(
        self, tensors: Sequence[torch.Tensor], async_op: bool = False, accounted: bool = True
    ) -> Handle:
        """Replace each tensor, in place, by its mean over all workers.

        ``accounted=False`` leaves the counters alone: for evaluation traffic, not training's.
        """
        stats = self.stats if accounted else CommStats()
        stats.operations += 1
        stats.bytes_sent += ring_all_reduce_bytes(payload_bytes(tensors), self.world_size)
        start = time.perf_counter()
        handle = Handle(stats, self._all_reduce_mean(list(tensors)))
        if not async_op:
            handle.wait(since=start)  # blocked from the call on
        return handle

    def exchange(
        self, tensors: Sequence[torch.Tensor], peers: Sequence[int]
    ) -> list[list[torch.Tensor]]:
        """Send ``tensors`` to every peer and return, per peer, the tensors that peer sent us."""
        self.stats.operations += 1
        self.stats.bytes_sent += payload_bytes(tensors) * len(peers)
        start = time.perf_counter()
        received = self._exchange(list(tensors), list(peers))
        self.stats.wait_s += time.perf_counter() - start
        return received

    def all_gather(self, tensors: Sequence[torch.Tensor], accounted: bool = True) -> list[list[torch.Tensor]]:
        """Every worker's ``tensors``, in rank order, this worker's own included (ring: (K-1) x payload)."""
        stats = self.stats if accounted else CommStats()
        stats.operations += 1
        stats.bytes_sent += (self.world_size - 1) * payload_bytes(tensors)
        start = time.perf_counter()
        gathered = self._all_gather(list(tensors))
        stats.wait_s += time.perf_counter() - start
        return gathered

    def all_to_all(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Send ``tensors[j]`` to worker j; return what each worker sent this one, in rank order.

        Every worker passes ``world_size`` tensors, all of one shape and dtype.
        """
        if len(tensors) != self.world_size:
            raise ValueError(f"all_to_all: needs one tensor per worker ({self.world_size}), got {len(tensors)}")
        if any(t.shape != tensors[0].shape or t.dtype != tensors[0].dtype for t in tensors):
            raise ValueError("all_to_all: the tensors must share one shape and dtype")
        self.stats.operations += 1
        self.stats.bytes_sent += (self.world_size - 1) * payload_bytes(tensors[:1])
        start = time.perf_counter()
        received = self._all_to_all(list(tensors))
        self.stats.wait_s += time.perf_counter() - start
        return received

    def broadcast(self, tensors: Sequence[torch.Tensor], src: int = 0) -> None:
        """Overwrite each tensor, in place, with the source worker's copy."""
        self.stats.operations += 1
        if self.rank == src:
            self.stats.bytes_sent += payload_bytes(tensors)
        start = time.perf_counter()
        self._broadcast(list(tensors), src)
        self.stats.wait_s += time.perf_counter() - start

    def all_gather_object(self, value: Any) -> list[Any]:
        """Every worker's picklable ``value``, in rank order, this worker's own included: for
        bookkeeping (which checkpoint to resume, the final totals), so nothing is counted."""
        return self._all_gather_object(value)

    def should_commit(self) -> bool:
        """Whether this step's synchronisation took effect, asked once after its communication. False
        only where a peer died during it (live fault tolerance): a failed mean or exchange leaves the
        tensors it was given as they were, and the algorithm keeps what its docstring says. Always True here."""
        return True

    @abstractmethod
    def _all_reduce_mean(self, tensors: list[torch.Tensor]) -> Callable[[], None]:
        """Start the reduction and return a function that completes it."""

    @abstractmethod
    def _exchange(self, tensors: list[torch.Tensor], peers: list[int]) -> list[list[torch.Tensor]]:
        ...

    @abstractmethod
    def _broadcast(self, tensors: list[torch.Tensor], src: int) -> None:
        ...

    @abstractmethod
    def _all_gather_object(self, value: Any) -> list[Any]:
        ...

    def _all_gather(self, tensors: list[torch.Tensor]) -> list[list[torch.Tensor]]:
        raise NotImplementedError(f"{type(self).__name__} does not implement all_gather")

    def _all_to_all(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        raise NotImplementedError(f"{type(self).__name__} does not implement all_to_all")


class ProcessGroupCommunicator(Communicator):
    """A :class:`Communicator` over a ``torch.distributed`` process group (gloo on CPU, nccl on CUDA).

    Tensors are packed into one flat buffer per dtype and device, so a call costs one collective
    per dtype however many parameters the model has.
    """

    def __init__(self, group: dist.ProcessGroup | None = None) -> None:
        if not dist.is_initialized():
            raise RuntimeError("torch.distributed is not initialized: call init_process_group first")
        self.group = group
        super().__init__(dist.get_rank(group), dist.get_world_size(group))

    def _all_reduce_mean(self, tensors: list[torch.Tensor]) -> Callable[[], None]:
        pending = []
        for bucket in dtype_buckets(tensors):
            flat = flatten(bucket)
            work = dist.all_reduce(flat, group=self.group, async_op=True)
            pending.append((bucket, flat, work))

        def finish() -> None:
            for bucket, flat, work in pending:
                work.wait()
                flat.div_(self.world_size)
                for tensor, reduced in zip(bucket, unflatten(flat, bucket)):
                    tensor.copy_(reduced)

        return finish

    def _exchange(self, tensors: list[torch.Tensor], peers: list[int]) -> list[list[torch.Tensor]]:
        flat = flatten(tensors)
        inboxes = [torch.empty_like(flat) for _ in peers]
        operations = []
        for peer, inbox in zip(peers, inboxes):
            operations.append(dist.P2POp(dist.isend, flat, self._global_rank(peer), self.group))
            operations.append(dist.P2POp(dist.irecv, inbox, self._global_rank(peer), self.group))
        if operations:
            for work in dist.batch_isend_irecv(operations):
                work.wait()
        return [unflatten(inbox, tensors) for inbox in inboxes]

    def _all_gather(self, tensors: list[torch.Tensor]) -> list[list[torch.Tensor]]:
        gathered: list[dict[int, torch.Tensor]] = [{} for _ in range(self.world_size)]
        for bucket in dtype_buckets(tensors):
            flat = flatten(bucket)
            outputs = [torch.empty_like(flat) for _ in range(self.world_size)]
            dist.all_gather(outputs, flat, group=self.group)
            for rank, output in enumerate(outputs):
                for tensor, value in zip(bucket, unflatten(output, bucket)):
                    gathered[rank][id(tensor)] = value
        return [[by_id[id(t)] for t in tensors] for by_id in gathered]

    def _all_gather_object(self, value: Any) -> list[Any]:
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, value, group=self.group)
        return gathered

    def _all_to_all(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        sent = torch.stack(tensors)
        received = torch.empty_like(sent)
        dist.all_to_all_single(received, sent, group=self.group)
        return list(received.unbind())

    def _broadcast(self, tensors: list[torch.Tensor], src: int) -> None:
        for bucket in dtype_buckets(tensors):
            flat = flatten(bucket)
            dist.broadcast(flat, self._global_rank(src), group=self.group)
            for tensor, value in zip(bucket, unflatten(flat, bucket)):
                tensor.copy_(value)

    def _global_rank(self, rank: int) -> int:
        return rank if self.group is None else dist.get_global_rank(self.group, rank)


def dtype_buckets(tensors: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    """Group tensors by (device, dtype), keeping their order inside each group."""
    groups: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for tensor in tensors:
        groups.setdefault((tensor.device, tensor.dtype), []).append(tensor)
    return list(groups.values())
