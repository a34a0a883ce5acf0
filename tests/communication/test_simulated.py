"""Simulated workers in one process: the same results as gloo processes, bit for bit."""

from __future__ import annotations

import threading
import time
from functools import partial

import pytest
import torch

from lowcomm import ALGORITHMS, Communicator, ProcessGroupCommunicator
from lowcomm.communication.simulated import (
    SimulatedCommunicator,
    SimulatedGroup,
    ring_chunk_elements,
    run_simulated,
)
from tests.algorithms import mlp
from tests.algorithms.scalar import EXAMPLES, scalar_model
from tests.distributed import run_workers

SIZES = [(1,), (1003,), (700_001,)]  # the last is 2.8 MB: gloo cuts it into 1 MiB segments
MODEL_LOCK = threading.Lock()  # seeding and building a model touch torch's global generator


def operations(comm: Communicator) -> dict:
    rank = comm.rank
    a = torch.full((10,), float(rank))
    b = torch.full((3,), float(rank), dtype=torch.float64)
    comm.all_reduce_mean([a, b])
    handle = comm.all_reduce_mean([torch.ones(5) * rank], async_op=True)
    handle.wait()
    received = comm.exchange([torch.tensor([rank, 10.0 * rank])], [rank ^ 1])
    c = torch.full((4,), float(rank))
    comm.broadcast([c], src=1)
    gathered = comm.all_gather([torch.tensor([rank], dtype=torch.int8), torch.full((2,), rank / 2)])
    addressed = comm.all_to_all([torch.tensor([10.0 * rank + j, 0.0]) for j in range(comm.world_size)])
    return {"a": a, "b": b, "received": received[0][0], "c": c, "gathered": gathered, "addressed": addressed,
            "bytes": comm.stats.bytes_sent, "operations": comm.stats.operations}


def test_operations_on_four_simulated_workers() -> None:
    for rank, r in enumerate(run_simulated(4, operations)):
        assert torch.equal(r["a"], torch.full((10,), 1.5))
        assert torch.equal(r["b"], torch.full((3,), 1.5, dtype=torch.float64))
        assert torch.equal(r["received"], torch.tensor([rank ^ 1, 10.0 * (rank ^ 1)]))
        assert torch.equal(r["c"], torch.full((4,), 1.0))
        for source, (small, halves) in enumerate(r["gathered"]):
            assert torch.equal(small, torch.tensor([source], dtype=torch.int8))
            assert torch.equal(halves, torch.full((2,), source / 2))
        assert [t.tolist() for t in r["addressed"]] == [[10.0 * source + rank, 0.0] for source in range(4)]
        # as test_communicator works out for gloo, then the all-gather: 3 others x 9 bytes; all-to-all: 3 x 8
        assert r["bytes"] == 134 + (16 if rank == 1 else 0) + 27 + 24
        assert r["operations"] == 6


def awkward_tensors(rank: int) -> list[torch.Tensor]:
    """Values spanning 60 binades, so that every order of summation rounds differently."""
    g = torch.Generator().manual_seed(rank)
    tensors = []
    for size in SIZES:
        scale = 2.0 ** torch.randint(-30, 30, size, generator=g)
        tensors.append((torch.randn(size, generator=g, dtype=torch.float64) * scale).float())
    tensors.append(torch.randn(5, generator=g, dtype=torch.float64))
    return tensors


def all_reduce_awkward(comm: Communicator | None = None) -> list[torch.Tensor]:
    comm = comm or ProcessGroupCommunicator()
    tensors = awkward_tensors(comm.rank)
    comm.all_reduce_mean(tensors)
    return tensors


def test_means_are_gloos_bit_for_bit() -> None:
    world_size = 4
    gloo = run_workers(all_reduce_awkward, world_size)
    simulated = run_simulated(world_size, all_reduce_awkward)
    naive = torch.stack([awkward_tensors(r)[1] for r in range(world_size)]).sum(0) / world_size
    assert not torch.equal(naive, gloo[0][1])  # the order of summation does show
    for rank in range(world_size):
        assert all(torch.equal(s, g) for s, g in zip(simulated[rank], gloo[rank]))


def train(algo: str, options: dict, comm: Communicator | None = None) -> dict:
    comm = comm or ProcessGroupCommunicator()
    with MODEL_LOCK:
        model = mlp.mlp()
    strategy = ALGORITHMS[algo.split("_")[0]](model, torch.optim.AdamW(model.parameters(), lr=0.05), communicator=comm, **options)
    params, sent_before = [], comm.stats.bytes_sent
    for t in range(1, 10):
        data = mlp.batch(comm.rank, t)
        strategy.step(lambda: mlp.loss_of(strategy.model, data))
        params.append(mlp.flat(model))
    strategy.wait()
    return {"params": params, "global": strategy.global_state_dict(), "bytes": comm.stats.bytes_sent - sent_before}


RUNS = {
    "localsgd": {"sync_interval": 3},
    "postlocalsgd": {"sync_interval": 3, "warmup_steps": 2},
    "diloco": {"sync_interval": 3, "warmup_steps": 1, "overlap_steps": 1},
    "streamingdiloco": {"sync_interval": 3, "num_fragments": 2, "compress": "int4"},
    "palsgd": {"sync_interval": 3, "warmup_steps": 1, "pseudo_sync_prob": 0.3, "eta": 0.5},
    "noloco": {"sync_interval": 3},
    "localsgd_topk": {"sync_interval": 3, "compress": "topk:0.3", "compress_block_size": 8},
    "palsgd_int8": {"sync_interval": 3, "warmup_steps": 1, "pseudo_sync_prob": 0.3, "eta": 0.5, "compress": "int8"},
}


def train_all(comm: Communicator | None = None) -> dict:
    return {algo: train(algo, options, comm) for algo, options in RUNS.items()}


def test_algorithms_train_as_on_gloo_bit_for_bit() -> None:
    gloo = run_workers(train_all, 3)
    simulated = run_simulated(3, train_all)
    for algo in RUNS:
        for rank in range(3):
            ours, theirs = simulated[rank][algo], gloo[rank][algo]
            assert all(torch.equal(a, b) for a, b in zip(ours["params"], theirs["params"])), (algo, rank)
            assert all(torch.equal(ours["global"][k], theirs["global"][k]) for k in theirs["global"]), (algo, rank)
            assert ours["bytes"] == theirs["bytes"]


def scalar_run(algo: str, comm: SimulatedCommunicator) -> list[float]:
    """30 steps of ``algo`` on the one-parameter problem: every tensor it sends is a bucket of its own."""
    model = scalar_model(comm.rank)
    strategy = ALGORITHMS[algo](model, torch.optim.SGD(model.parameters(), lr=0.1), communicator=comm, sync_interval=3)
    a, b = EXAMPLES[comm.rank]
    x = torch.tensor([[a]], dtype=torch.float64)
    weights = []
    for _ in range(30):
        strategy.step(lambda: 0.5 * (strategy.model(x)[0, 0] - b) ** 2)
        weights.append(model.weight.item())
    strategy.wait()
    return weights


@pytest.mark.parametrize("algo", ["localsgd", "noloco"])
def test_repeated_runs_are_bitwise_identical(algo: str) -> None:
    """A worker goes on as soon as everyone has posted, so what it posted (its broadcast model, its
    exchanged tensors) must not be a view of tensors it then changes while the others still read."""
    first = run_simulated(3, partial(scalar_run, algo))
    assert first[0][0] == 1.0 - 0.1 * EXAMPLES[0][0] * (1.0 * EXAMPLES[0][0] - EXAMPLES[0][1])  # from worker 0's w = 1
    for _ in range(60):
        assert run_simulated(3, partial(scalar_run, algo)) == first


def test_ring_chunks_by_hand() -> None:
    # 1001 float32 among 4: 8 segments of ceil(4004 / 8) = 501 -> 504 bytes; 2 per worker = 252 elements
    assert ring_chunk_elements(1001, 4, 4) == 252
    # 1e6 float32 among 4: 4 MB needs 4 segments of 1 MiB, at least 8: 500 kB each, 2 per worker
    assert ring_chunk_elements(1_000_000, 4, 4) == 250_000
    # 8e6 float32 among 4: 32 MB needs 31 segments, rounded to 32 of 1 MB: 8 per worker
    assert ring_chunk_elements(8_000_000, 4, 4) == 2_000_000
    assert ring_chunk_elements(10, 4, 4) == 4  # chunks of 4, 4, 2 and 0 elements
    assert ring_chunk_elements(7, 8, 1) == 8  # one worker: 2 segments of ceil(56 / 2) -> 32 bytes


def test_a_failing_worker_stops_the_others() -> None:
    def worker(comm: SimulatedCommunicator) -> None:
        if comm.rank == 2:
            raise KeyError("boom")
        comm.all_reduce_mean([torch.ones(3)])

    start = time.perf_counter()
    with pytest.raises(KeyError, match="boom"):
        run_simulated(4, worker)
    assert time.perf_counter() - start < 5


def test_a_missing_worker_times_out() -> None:
    def worker(comm: SimulatedCommunicator) -> None:
        if comm.rank == 0:
            comm.all_reduce_mean([torch.ones(3)])

    with pytest.raises(TimeoutError, match="0.2 s"):
        run_simulated(2, worker, timeout_s=0.2)


@pytest.mark.parametrize(("call", "argument"), [
    (lambda: SimulatedGroup(0), "world_size"),
    (lambda: SimulatedGroup(2, timeout_s=0), "timeout_s"),
    (lambda: SimulatedCommunicator(SimulatedGroup(2), 2), "rank"),
])
def test_bad_arguments_are_named(call, argument: str) -> None:
    with pytest.raises(ValueError, match=argument):
        call()
