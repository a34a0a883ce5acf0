"""Algorithms that must coincide under the right settings, on real gloo worker processes."""

from __future__ import annotations

import torch

from tests.algorithms import mlp
from tests.distributed import run_workers

STEPS = 8


def equivalences() -> dict[str, dict]:
    return {
        "ddp": mlp.train("ddp", {}, STEPS),
        "localsgd_h1": mlp.train("localsgd", {"sync_interval": 1}, STEPS),
        "localsgd_h4": mlp.train("localsgd", {"sync_interval": 4}, STEPS),
        "diloco_neutral": mlp.train("diloco", {"sync_interval": 4, "outer_lr": 1.0, "outer_momentum": 0.0}, STEPS),
        "diloco_w2": mlp.train("diloco", {"sync_interval": 3, "warmup_steps": 2}, STEPS, optimizer="adamw"),
        "palsgd_p0": mlp.train("palsgd", {"sync_interval": 3, "warmup_steps": 2, "pseudo_sync_prob": 0.0,
                                          "outer_lr": 0.7}, STEPS, optimizer="adamw"),
    }


def test_equivalences_on_two_workers() -> None:
    results = run_workers(equivalences, 2)
    for r in results:
        for a, b in zip(r["ddp"]["params"], r["localsgd_h1"]["params"]):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)  # Local SGD, H=1, SGD == DDP
        for a, b in zip(r["localsgd_h4"]["params"], r["diloco_neutral"]["params"]):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)  # DiLoCo, lr 1, no momentum == Local SGD
        for a, b in zip(r["diloco_w2"]["params"], r["palsgd_p0"]["params"]):
            assert torch.equal(a, b)  # PALSGD with p = 0 == DiLoCo with the same warm-up
    assert not torch.equal(results[0]["localsgd_h4"]["params"][2], results[1]["localsgd_h4"]["params"][2])


NEUTRAL = {
    "ddp": {},
    "localsgd": {"sync_interval": 3},
    "postlocalsgd": {"sync_interval": 3, "warmup_steps": 2},
    "diloco": {"sync_interval": 3, "outer_lr": 1.0, "outer_momentum": 0.0},
    "palsgd": {"sync_interval": 3, "warmup_steps": 2, "pseudo_sync_prob": 0.0, "outer_lr": 1.0, "outer_momentum": 0.0},
}


def single_worker() -> dict[str, list[torch.Tensor]]:
    runs = {algo: mlp.train(algo, options, STEPS, optimizer="adamw")["params"] for algo, options in NEUTRAL.items()}
    runs["plain"] = mlp.plain(STEPS, optimizer="adamw")
    return runs


def test_one_worker_equals_plain_training() -> None:
    runs = run_workers(single_worker, 1)[0]
    for algo in NEUTRAL:
        for a, b in zip(runs[algo], runs["plain"]):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12, msg=algo)
