"""A DistributedDataParallel communication hook that charges its traffic to a communicator.

DDP checks the hook's annotations at run time, so they must stay real types here.
"""

import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from lowcomm.communication.communicator import (
    ProcessGroupCommunicator,
    payload_bytes,
    ring_all_reduce_bytes,
)


@dataclass
class CountingState:
    """The communicator to charge, and when the last charged all-reduce completed."""

    comm: ProcessGroupCommunicator
    busy_until: float = 0.0


def counting_allreduce_hook(state: CountingState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """Average one gradient bucket like DDP's default hook, counting bytes and seconds in flight.

    The seconds are those during which at least one bucket's all-reduce was in flight (buckets in
    flight together count once). DDP overlaps them with the backward pass, so they bound from
    above the time communication made the step wait.
    """
    comm = state.comm
    buffer = bucket.buffer()
    comm.stats.operations += 1
    comm.stats.bytes_sent += ring_all_reduce_bytes(payload_bytes([buffer]), comm.world_size)
    start = time.perf_counter()
    buffer.div_(comm.world_size)
    future = dist.all_reduce(buffer, group=comm.group, async_op=True).get_future()

    def finish(done: torch.futures.Future) -> torch.Tensor:
        now = time.perf_counter()
        comm.stats.wait_s += max(0.0, now - max(start, state.busy_until))
        state.busy_until = max(state.busy_until, now)
        return done.value()[0]

    return future.then(finish)
