"""The process-group communicator: results and the bytes it charges, against the formulas."""

from __future__ import annotations

import torch
import torch.distributed as dist

from lowcomm import ALGORITHMS, ProcessGroupCommunicator
from tests.algorithms import mlp
from tests.distributed import run_workers


def operations() -> dict:
    comm = ProcessGroupCommunicator()
    rank, k = comm.rank, comm.world_size
    a = torch.full((10,), float(rank))           # 40 bytes
    b = torch.full((3,), float(rank), dtype=torch.float64)  # 24 bytes, a second dtype bucket
    comm.all_reduce_mean([a, b])
    after_reduce = comm.stats.bytes_sent
    handle = comm.all_reduce_mean([torch.ones(5) * rank], async_op=True)
    handle.wait()
    after_async = comm.stats.bytes_sent
    partner = rank ^ 1
    received = comm.exchange([torch.tensor([rank, 10.0 * rank])], [partner])
    after_exchange = comm.stats.bytes_sent
    c = torch.full((4,), float(rank))
    comm.broadcast([c], src=1)
    after_broadcast = comm.stats.bytes_sent
    addressed = comm.all_to_all([torch.tensor([10 * rank + j, 0], dtype=torch.uint8) for j in range(k)])
    objects = comm.all_gather_object({"rank": rank})  # bookkeeping: counted nowhere
    return {
        "objects": objects, "a": a, "b": b, "received": received[0][0], "c": c, "addressed": addressed,
        "bytes": [after_reduce, after_async, after_exchange, after_broadcast, comm.stats.bytes_sent],
        "operations": comm.stats.operations, "k": k,
    }


def test_results_and_bytes_on_four_workers() -> None:
    results = run_workers(operations, 4)
    for rank, r in enumerate(results):
        assert torch.equal(r["a"], torch.full((10,), 1.5))
        assert torch.equal(r["b"], torch.full((3,), 1.5, dtype=torch.float64))
        assert torch.equal(r["received"], torch.tensor([rank ^ 1, 10.0 * (rank ^ 1)]))
        assert torch.equal(r["c"], torch.full((4,), 1.0))
        assert [t.tolist() for t in r["addressed"]] == [[10 * source + rank, 0] for source in range(4)]
        assert r["objects"] == [{"rank": source} for source in range(4)]
        # ring all-reduce 2 (K - 1) / K x 64 bytes = 96; then 2 * 3 / 4 * 20 = 30; exchange 8; broadcast 16 on
        # rank 1; all-to-all: 2 bytes to each of 3 others
        broadcast = 134 + (16 if rank == 1 else 0)
        assert r["bytes"] == [96, 126, 134, broadcast, broadcast + 6]
        assert r["operations"] == 5


def strategy_bytes() -> dict[str, int]:
    out = {}
    for algo, options in {"ddp": {}, "localsgd": {"sync_interval": 2}, "diloco": {"sync_interval": 2},
                          "noloco": {"sync_interval": 2}}.items():
        model, strategy = mlp.make(algo, options, lr=0.1)
        start = strategy.comm_stats.bytes_sent
        for t in range(1, 5):
            data = mlp.batch(dist.get_rank(), t)
            strategy.step(lambda: mlp.loss_of(strategy.model, data))
        out[algo] = strategy.comm_stats.bytes_sent - start
    out["initial_broadcast"] = start
    return out


def test_strategies_charge_their_formula() -> None:
    params = sum(p.numel() for p in mlp.mlp().parameters()) * 8  # float64 bytes: 49 parameters
    for rank, r in enumerate(run_workers(strategy_bytes, 2)):
        ring = 2 * (2 - 1) * params // 2
        assert r["ddp"] == 4 * ring            # a gradient all-reduce every step (one bucket)
        assert r["localsgd"] == 2 * (ring + 8)  # the model and a finite flag, at steps 2 and 4
        assert r["diloco"] == 2 * (ring + 8)   # the pseudo-gradient and a one-element finite flag
        assert r["noloco"] == 2 * 2 * params   # x - z and z, to one partner, twice
        assert r["initial_broadcast"] == (params if rank == 0 else 0)
