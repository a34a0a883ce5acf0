"""A worker whose model turns non-finite is left out of the synchronisation; the others carry on."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from lowcomm import ALGORITHMS
from tests.algorithms.scalar import EXAMPLES, scalar_model
from tests.distributed import run_workers

OPTIONS = {
    "diloco": {"sync_interval": 2, "outer_lr": 0.7, "outer_momentum": 0.0},
    "palsgd": {"sync_interval": 2, "outer_lr": 0.7, "outer_momentum": 0.0, "warmup_steps": 0, "pseudo_sync_prob": 0.0},
    "noloco": {"sync_interval": 2, "outer_lr": 0.7, "outer_momentum": 0.0},
    "localsgd": {"sync_interval": 2},
}


def poisoned(algo: str, poisoned_ranks: tuple[int, ...]) -> dict:
    """Scalar SGD (lr 0.1, momentum 0.9) where the given workers' step-2 loss is NaN, so their
    parameters (and pseudo-gradients) are NaN at the synchronisation after step 2."""
    rank = dist.get_rank()
    model = scalar_model(rank)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    strategy = ALGORITHMS[algo](model, optimizer, **OPTIONS[algo])
    a, b = EXAMPLES[rank]
    x = torch.tensor([[a]], dtype=torch.float64)
    weights, events, error, fresh_state = [], [], None, None
    for t in range(1, 5):
        scale = float("nan") if t == 2 and rank in poisoned_ranks else 1.0
        try:
            strategy.step(lambda: scale * 0.5 * (strategy.model(x)[0, 0] - b) ** 2)
        except FloatingPointError as raised:
            error = str(raised)
            break
        weights.append(model.weight.item())
        events += strategy.events
        strategy.events.clear()
        if t == 2:
            fresh_state = not optimizer.state
    return {"weights": weights, "events": events, "fresh_state": fresh_state, "error": error,
            "global": strategy.global_state_dict()["weight"].item() if error is None else None}


def one_poisoned() -> dict[str, dict]:
    return {algo: poisoned(algo, (1,)) for algo in OPTIONS}


def all_poisoned() -> dict[str, dict]:
    return {algo: poisoned(algo, (0, 1)) for algo in OPTIONS}


def test_a_nonfinite_worker_is_left_out_and_restarts_fresh() -> None:
    results = run_workers(one_poisoned, 2)
    # Worker 0 goes 1 -> 1.1 -> 1.1 + 0.1 * (0.9 + 0.9 * 1) = 1.28 (momentum 0.9) and is the only finite
    # one at t = 2. DiLoCo, PALSGD and NoLoCo (pair {0, 1}) alike: z = 1 + 0.7 * 0.28 = 1.196;
    # Local SGD averages worker 0 alone: 1.28.
    after_sync = {"diloco": 1.196, "palsgd": 1.196, "noloco": 1.196, "localsgd": 1.28}
    for algo, expected in after_sync.items():
        event = {"event": "nonfinite_worker_excluded", "step": 2, "finite_workers": 1}
        event |= {"diloco": {"what": "pseudo_gradient", "fragment": 0}, "palsgd": {"what": "pseudo_gradient", "fragment": 0},
                  "noloco": {"what": "pseudo_gradient_or_outer_model", "group": [0, 1]}}.get(algo, {"what": "parameters"})
        for rank, r in enumerate(results):
            assert r[algo]["weights"][1] == pytest.approx(expected, abs=1e-12), algo
            assert r[algo]["events"] == [event], algo
            assert r[algo]["fresh_state"] == (rank == 1), algo
            assert all(map(torch.isfinite, torch.tensor(r[algo]["weights"][1:]))), algo
        assert results[0][algo]["global"] == results[1][algo]["global"]
        assert torch.isfinite(torch.tensor(results[0][algo]["global"]))


def test_with_no_finite_worker_the_outer_step_is_skipped() -> None:
    results = run_workers(all_poisoned, 2)
    for r in results:
        for algo in ("diloco", "palsgd", "noloco"):
            assert r[algo]["weights"][1] == 1.0 and r[algo]["fresh_state"], algo  # z stays at 1, x <- z
            assert r[algo]["events"][0]["finite_workers"] == 0
        # Local SGD keeps no global model to fall back on.
        assert r["localsgd"]["error"] == "step 2: every worker's model is non-finite"
