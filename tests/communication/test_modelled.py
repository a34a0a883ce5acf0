"""Modelled delays: each operation lasts what the network model says, and async ones overlap."""

from __future__ import annotations

import time

import torch

from lowcomm.communication.compression import CompressedMean, Quantizer
from lowcomm.communication.network_model import NetworkModel
from lowcomm.communication.modelled import ModelledCommunicator
from lowcomm.communication.simulated import SimulatedCommunicator, run_simulated

SLOW = NetworkModel(bandwidth_bps=8e6, latency_s=0.01)  # 1 MB/s, 10 ms a message
SLACK_S = 0.1  # thread scheduling on a busy 2-core machine


def timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def operations(inner: SimulatedCommunicator) -> dict:
    comm = ModelledCommunicator(inner, SLOW)
    payload = torch.full((50_000,), float(comm.rank))  # 200 kB
    times = {"all_reduce": timed(lambda: comm.all_reduce_mean([payload]))}
    handle = comm.all_reduce_mean([payload], async_op=True)
    time.sleep(0.15)  # compute while the transfer is in flight
    times["async_wait"] = timed(handle.wait)
    times["exchange"] = timed(lambda: comm.exchange([payload[:25_000]], [comm.rank ^ 1]))
    times["broadcast"] = timed(lambda: comm.broadcast([payload[:10_000]], src=0))
    times["all_to_all"] = timed(lambda: comm.all_to_all([payload[:25_000], payload[25_000:]]))
    times["int8_mean"] = timed(lambda: CompressedMean(Quantizer("int8"))(comm, 0, [payload.clone()]))
    objects = comm.all_gather_object(comm.rank)  # bookkeeping: neither delayed nor counted
    return {"times": times, "mean": payload[0].item(), "stats": comm.stats.as_dict(), "objects": objects}


def test_operations_take_the_modelled_time() -> None:
    results = run_simulated(2, operations)
    for r in results:
        times = r["times"]
        # ring all-reduce between 2: each sends the 200 kB once (0.2 s) in 2 steps of 10 ms
        assert 0.22 <= times["all_reduce"] <= 0.22 + SLACK_S
        assert 0.22 - 0.15 - SLACK_S / 2 <= times["async_wait"] <= 0.22 - 0.15 + SLACK_S  # the rest of 0.22 s
        assert 0.11 <= times["exchange"] <= 0.11 + SLACK_S  # 100 kB to one peer + 10 ms
        assert 0.05 <= times["broadcast"] <= 0.05 + SLACK_S  # 40 kB once + one hop
        assert 0.11 <= times["all_to_all"] <= 0.11 + SLACK_S  # a 100 kB chunk to the one other worker + 10 ms
        # int8 chunks of 25,000 values: 25,000 + 4 * 98 = 25,392 bytes, all-to-all then all-gather
        assert 2 * 0.035392 <= times["int8_mean"] <= 2 * 0.035392 + SLACK_S
        assert r["mean"] == 0.5
        assert r["objects"] == [0, 1]
        assert r["stats"]["bytes_sent"] == 200_000 * 2 + 100_000 + (40_000 if r is results[0] else 0) + 100_000 + 2 * 25_392
        # the charged waits lie within the timed calls; the calls also hold the Python around each
        # communicator's clock, and this thread waiting for the GIL while the other worker's runs
        assert sum(times.values()) - SLACK_S / 2 <= r["stats"]["wait_s"] <= sum(times.values())
