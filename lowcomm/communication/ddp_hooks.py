"""A DistributedDataParallel communication hook that charges its traffic to a communicator.

DDP checks the hook's annotations at run time, so they must stay real types here.
"""

import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from lowcomm.communication.communicator import (
    CommStats,
    ProcessGroupCommunicator,
    payload_bytes,
    ring_all_reduce_bytes,
)


@dataclass
class CountingState:
    """The communicator whose group averages, the counters to charge, and this step's buckets: when
    they became ready and were averaged, the bytes they sent and those of the last one ready.

    With worker groups (``within`` given), DistributedDataParallel's ring over all N ranks runs in rank
    order, so ``crossing_links`` of its N links (one per group, K > 1) leave a group. Every rank is
    charged the even share of those, ``crossing_links / N`` of what it sends (rounded down), on
    ``stats`` (the slow link) and the rest on ``within``; the waits and the overlap belong to the
    slow link, so ``stats`` gets them all on every rank (and the overlapped bytes of its share)."""

    comm: ProcessGroupCommunicator
    first_ready: float | None = None
    last_ready: float = 0.0
    averaged: float = 0.0
    step_bytes: int = 0
    last_bytes: int = 0
    stats: CommStats | None = None  # defaults to the communicator's
    within: CommStats | None = None
    crossing_links: int = 0

    def __post_init__(self) -> None:
        if self.stats is None:
            self.stats = self.comm.stats

    def end_step(self) -> None:
        """Charge the step. Its wait runs from its last bucket ready (the end of the backward pass)
        until every bucket was averaged: the communication the backward pass did not hide. It could
        hide the buckets ready before the last (their bytes) from the first bucket ready to the
        last (those seconds)."""
        if self.first_ready is None:
            return
        stats = self.stats
        stats.wait_s += max(0.0, self.averaged - self.last_ready)
        stats.overlap_s += self.last_ready - self.first_ready
        stats.overlap_bytes += self.step_bytes - self.last_bytes
        self.first_ready, self.step_bytes = None, 0


def counting_allreduce_hook(state: CountingState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """Average one gradient bucket like DDP's default hook, counting its bytes and noting its times
    (:meth:`CountingState.end_step` charges them once the step's backward pass is over)."""
    comm = state.comm
    buffer = bucket.buffer()
    sent = ring_all_reduce_bytes(payload_bytes([buffer]), comm.world_size)
    if state.within is not None:
        crossing = sent * state.crossing_links // comm.world_size
        state.within.operations += 1
        state.within.bytes_sent += sent - crossing
        sent = crossing
    state.stats.operations += 1
    state.stats.bytes_sent += sent
    ready = time.perf_counter()
    if state.first_ready is None:
        state.first_ready = ready
    state.last_ready, state.last_bytes = ready, sent
    state.step_bytes += sent
    buffer.div_(comm.world_size)
    future = dist.all_reduce(buffer, group=comm.group, async_op=True).get_future()

    def finish(done: torch.futures.Future) -> torch.Tensor:
        state.averaged = max(state.averaged, time.perf_counter())
        return done.value()[0]

    return future.then(finish)
