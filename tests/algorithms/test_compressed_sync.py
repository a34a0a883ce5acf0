"""Compressed synchronisation through the strategies: the bytes each worker sends, worked out by
hand, and models close to the uncompressed run's."""

from __future__ import annotations

import torch
import torch.distributed as dist

from tests.algorithms import mlp
from tests.distributed import run_workers

SPECS = ("none", "bf16", "int8", "int4", "topk:0.2")


def compressed_runs() -> dict[str, dict]:
    runs = {}
    for algo in ("diloco", "localsgd"):
        for spec in SPECS:
            model, strategy = mlp.make(algo, {"sync_interval": 4, "compress": spec}, lr=0.05)
            start = strategy.comm_stats.bytes_sent
            for t in range(1, 9):
                data = mlp.batch(dist.get_rank(), t)
                strategy.step(lambda: mlp.loss_of(strategy.model, data))
            runs[algo, spec] = {"params": mlp.flat(model), "bytes": strategy.comm_stats.bytes_sent - start}
    return runs


def test_compressed_synchronisation() -> None:
    results = run_workers(compressed_runs, 2)
    # Two syncs in 8 steps. The MLP's 49 float64 values are cut into 2 chunks of c = 25; each worker
    # sends its peer's chunk (all-to-all) and its own mean chunk (all-gather), 2 E(25) bytes, and
    # all-reduces the 8-byte finite flag (8 bytes). E(25): int8 25 + 4 (one scale) = 29; int4 13 + 4 = 17;
    # bf16 50; top-k 20% of one block of 25 = 5 values of 4 + 1 (uint8 position) bytes = 25.
    # Uncompressed: the ring all-reduce of 49 * 8 + 8 bytes sends 400.
    expected = {"none": 400, "bf16": 2 * 50 + 8, "int8": 2 * 29 + 8, "int4": 2 * 17 + 8, "topk:0.2": 2 * 25 + 8}
    for r in results:
        for algo in ("diloco", "localsgd"):
            for spec in SPECS:
                assert r[algo, spec]["bytes"] == 2 * expected[spec], (algo, spec)
            for spec, tolerance in (("bf16", 1e-3), ("int8", 1e-2), ("int4", 1e-1), ("topk:0.2", 0.2)):
                error = (r[algo, spec]["params"] - r[algo, "none"]["params"]).abs().max().item()
                assert 0 < error < tolerance, (algo, spec, error)
    for spec in SPECS:  # step 8 synchronised: the workers hold one model
        assert torch.equal(results[0]["localsgd", spec]["params"], results[1]["localsgd", spec]["params"])
