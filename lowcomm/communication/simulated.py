"""K workers in one process: a :class:`Communicator` whose operations meet in shared memory.

Each simulated worker runs in a thread of its own with its own :class:`SimulatedCommunicator`, so
algorithm code written for separate processes runs unchanged. Every worker must call the same
operations in the same order (as with ``torch.distributed`` collectives): the n-th operation of
each worker meets the n-th operation of every other.

A mean is summed in the order of gloo's ring all-reduce: the flat payload is cut into K contiguous
chunks of whole segments, and chunk c is summed starting at worker c-1 and going backwards around
the ring to end at worker c. So a simulated run reproduces a gloo run on CPU bit for bit.

What a worker posts is always a copy of its tensors, never a view of them: the worker goes on (and
changes its tensors) as soon as everyone has posted, while the others may still be reading.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from lowcomm.communication.communicator import Communicator, dtype_buckets, flatten, unflatten

Result = TypeVar("Result")

GLOO_MAX_SEGMENT_BYTES = 1 << 20
"""gloo's ring all-reduce moves segments of at most 1 MiB."""


def ring_chunk_elements(numel: int, element_size: int, world_size: int) -> int:
    """Elements in each worker's chunk of gloo's ring all-reduce of ``numel`` elements.

    gloo cuts the payload into a multiple of K segments, at least 2K, of at most 1 MiB each, and
    gives each worker an equal run of consecutive segments (the last chunks may be short or empty).
    """
    total = numel * element_size
    segments = _round_up(max(-(-total // GLOO_MAX_SEGMENT_BYTES), 2 * world_size), world_size)
    segment_bytes = _round_up(-(-total // segments), element_size)
    return segments // world_size * segment_bytes // element_size


def ring_reduce_chunk(flats: list[torch.Tensor], chunk: int) -> torch.Tensor:
    """The sum over workers of ``flats[*][chunk]``, added in gloo's ring order."""
    world_size = len(flats)
    size = ring_chunk_elements(flats[0].numel(), flats[0].element_size(), world_size)
    part = slice(chunk * size, (chunk + 1) * size)
    order = [(chunk - 1 - i) % world_size for i in range(world_size)]
    total = flats[order[0]][part].clone()
    for worker in order[1:]:
        total += flats[worker][part]
    return total


@dataclass
class _Meeting:
    values: dict[int, Any] = field(default_factory=dict)
    left: int = 0


class SimulatedGroup:
    """Where the ``world_size`` simulated workers meet.

    A meeting is keyed by the operation's number; every worker posts a value there and collects
    everyone's. ``timeout_s`` bounds the wait for the others, like a process group's timeout.
    """

    def __init__(self, world_size: int, timeout_s: float = 300.0) -> None:
        if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
            raise ValueError(f"world_size: must be an integer >= 1, got {world_size!r}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s: must be > 0, got {timeout_s!r}")
        self.world_size = world_size
        self.timeout_s = timeout_s
        self._condition = threading.Condition()
        self._meetings: dict[tuple[int, int], _Meeting] = {}
        self._failure: str | None = None

    def communicators(self) -> list[SimulatedCommunicator]:
        return [SimulatedCommunicator(self, rank) for rank in range(self.world_size)]

    def post(self, key: tuple[int, int], rank: int, value: Any) -> None:
        with self._condition:
            self._meetings.setdefault(key, _Meeting()).values[rank] = value
            self._condition.notify_all()

    def collect(self, key: tuple[int, int]) -> list[Any]:
        """Wait until every worker has posted to ``key``; return the values in rank order."""
        with self._condition:
            meeting = self._meetings.setdefault(key, _Meeting())
            everyone = self._condition.wait_for(
                lambda: len(meeting.values) == self.world_size or self._failure is not None, self.timeout_s
            )
            if self._failure is not None:
                raise RuntimeError(f"simulated worker stopped: {self._failure}")
            if not everyone:
                raise TimeoutError(f"simulated workers did not all arrive within {self.timeout_s} s")
            meeting.left += 1
            if meeting.left == self.world_size:
                del self._meetings[key]
            return [meeting.values[rank] for rank in range(self.world_size)]

    def meet(self, key: tuple[int, int], rank: int, value: Any) -> list[Any]:
        self.post(key, rank, value)
        return self.collect(key)

    def abort(self, reason: str) -> None:
        """Make every worker waiting now or later raise instead of waiting forever."""
        with self._condition:
            self._failure = self._failure or reason
            self._condition.notify_all()


class SimulatedCommunicator(Communicator):
    """One simulated worker's communicator; make them with :meth:`SimulatedGroup.communicators`.

    Tensors are packed into one flat buffer per dtype and device, as
    :class:`~lowcomm.communication.ProcessGroupCommunicator` packs them, so that the flat buffers
    and hence gloo's chunks are the same.
    """

    def __init__(self, group: SimulatedGroup, rank: int) -> None:
        if not 0 <= rank < group.world_size:
            raise ValueError(f"rank: must be in [0, {group.world_size}), got {rank}")
        super().__init__(rank, group.world_size)
        self.group = group
        self._operations = 0

    def _next_operation(self) -> int:
        self._operations += 1
        return self._operations

    def _all_gather_object(self, value: Any) -> list[Any]:
        return self.group.meet((self._next_operation(), 0), self.rank, value)

    def _all_reduce_mean(self, tensors: list[torch.Tensor]) -> Callable[[], None]:
        operation = self._next_operation()
        buckets = dtype_buckets(tensors)
        flats = [flatten(bucket) for bucket in buckets]
        self.group.post((operation, 0), self.rank, flats)

        def finish() -> None:
            everyone = self.group.collect((operation, 0))
            # Each worker sums its own chunk of every bucket, as in the ring's reduce-scatter.
            mine = [ring_reduce_chunk([posted[b] for posted in everyone], self.rank) for b in range(len(buckets))]
            chunks = self.group.meet((operation, 1), self.rank, mine)
            for b, bucket in enumerate(buckets):
                total = torch.cat([chunk[b] for chunk in chunks]).div_(self.world_size)
                for tensor, mean in zip(bucket, unflatten(total, bucket)):
                    tensor.copy_(mean)

        return finish

    def _exchange(self, tensors: list[torch.Tensor], peers: list[int]) -> list[list[torch.Tensor]]:
        everyone = self.group.meet((self._next_operation(), 0), self.rank, flatten(tensors))
        return [unflatten(everyone[peer].clone(), tensors) for peer in peers]

    def _all_gather(self, tensors: list[torch.Tensor]) -> list[list[torch.Tensor]]:
        everyone = self.group.meet((self._next_operation(), 0), self.rank, [t.detach().clone() for t in tensors])
        return [[t.clone() for t in posted] for posted in everyone]

    def _all_to_all(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        everyone = self.group.meet((self._next_operation(), 0), self.rank, [t.detach().clone() for t in tensors])
        return [posted[self.rank].clone() for posted in everyone]

    def _broadcast(self, tensors: list[torch.Tensor], src: int) -> None:
        flats = [flatten(bucket) for bucket in dtype_buckets(tensors)] if self.rank == src else None
        sent = self.group.meet((self._next_operation(), 0), self.rank, flats)[src]
        for bucket, flat in zip(dtype_buckets(tensors), sent):
            for tensor, value in zip(bucket, unflatten(flat, bucket)):
                tensor.copy_(value)


def run_simulated(
    world_size: int, worker: Callable[[SimulatedCommunicator], Result], timeout_s: float = 300.0
) -> list[Result]:
    """Run ``worker(communicator)`` as ``world_size`` simulated workers, one thread each; return
    their results in rank order. The first exception in any worker stops the others and is
    raised here."""
    group = SimulatedGroup(world_size, timeout_s)
    results: list[Any] = [None] * world_size
    errors: list[BaseException] = []

    def run(communicator: SimulatedCommunicator) -> None:
        try:
            results[communicator.rank] = worker(communicator)
        except BaseException as error:
            errors.append(error)
            group.abort(f"worker {communicator.rank} raised {type(error).__name__}: {error}")

    threads = [
        threading.Thread(target=run, args=(communicator,), name=f"lowcomm-sim-{communicator.rank}", daemon=True)
        for communicator in group.communicators()
    ]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            thread.join()
    except BaseException:
        group.abort("the simulation was interrupted")
        raise
    if errors:
        raise errors[0]
    return results


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple
