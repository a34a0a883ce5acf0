"""A DistributedDataParallel communication hook that charges its traffic to a communicator.

DDP checks the hook's annotations at run time, so they must stay real types here.
"""

import time

import torch
import torch.distributed as dist

from lowcomm.communication.communicator import (
    ProcessGroupCommunicator,
    payload_bytes,
    ring_all_reduce_bytes,
)


def counting_allreduce_hook(
    comm: ProcessGroupCommunicator, bucket: dist.GradBucket
) -> torch.futures.Future[torch.Tensor]:
    """Average one gradient bucket like DDP's default hook, counting bytes and seconds in flight.

    The seconds are from launch to completion of each bucket's all-reduce, which DDP overlaps with
    the backward pass: an upper bound on the time communication made the step wait.
    """
    buffer = bucket.buffer()
    comm.stats.operations += 1
    comm.stats.bytes_sent += ring_all_reduce_bytes(payload_bytes([buffer]), comm.world_size)
    start = time.perf_counter()
    buffer.div_(comm.world_size)
    future = dist.all_reduce(buffer, group=comm.group, async_op=True).get_future()

    def finish(done: torch.futures.Future) -> torch.Tensor:
        comm.stats.wait_s += time.perf_counter() - start
        return done.value()[0]

    return future.then(finish)
