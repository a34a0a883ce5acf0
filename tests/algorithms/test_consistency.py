"""After every synchronisation the workers that synchronised hold identical parameters."""

from __future__ import annotations

import torch

from lowcomm.algorithms.noloco import gossip_groups
from tests.algorithms import mlp
from tests.distributed import run_workers

STEPS, H = 9, 3

RUNS = {
    "localsgd": {"sync_interval": H},
    "diloco": {"sync_interval": H, "warmup_steps": 1},
    "palsgd": {"sync_interval": H, "warmup_steps": 1, "pseudo_sync_prob": 0.3, "eta": 0.5},
    "noloco": {"sync_interval": H},
}


def trajectories() -> dict[str, dict]:
    return {algo: mlp.train(algo, options, STEPS, optimizer="adamw") for algo, options in RUNS.items()}


def test_workers_agree_after_every_sync() -> None:
    results = run_workers(trajectories, 3)
    for algo in ("localsgd", "diloco", "palsgd"):
        for t in range(H, STEPS + 1, H):
            assert all(torch.equal(r[algo]["params"][t - 1], results[0][algo]["params"][t - 1]) for r in results), algo
        between = [t for t in range(1, STEPS + 1) if t % H]
        assert any(not torch.equal(results[0][algo]["params"][t - 1], results[1][algo]["params"][t - 1]) for t in between)
        for key, value in results[0][algo]["global"].items():
            torch.testing.assert_close(results[1][algo]["global"][key], value, rtol=0, atol=1e-12)
    for t in range(H, STEPS + 1, H):
        for group in gossip_groups(3, t):
            first = results[group[0]]["noloco"]["params"][t - 1]
            assert all(torch.equal(results[j]["noloco"]["params"][t - 1], first) for j in group)
    means = torch.stack([r["noloco"]["params"][-1] for r in results]).mean(0)
    global_model = results[0]["noloco"]["global"]
    torch.testing.assert_close(torch.cat([global_model[k].flatten() for k in global_model]), means)


def test_gossip_groups_cover_every_worker_once() -> None:
    for world_size in (2, 3, 4, 7):
        for step in (10, 20):
            groups = gossip_groups(world_size, step)
            assert sorted(j for g in groups for j in g) == list(range(world_size))
            assert sorted(len(g) for g in groups) == [2] * (world_size // 2 - world_size % 2) + [3] * (world_size % 2)
    # Every worker draws the groups itself: they depend on the step alone, not on the global RNG.
    torch.manual_seed(0)
    drawn = gossip_groups(4, 10)
    torch.manual_seed(1)
    assert gossip_groups(4, 10) == drawn
    assert any(gossip_groups(6, s) != gossip_groups(6, 2) for s in range(3, 10))
