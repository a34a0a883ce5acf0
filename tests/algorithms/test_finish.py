"""``finish()``: the steps after the last synchronisation reach the global model, worked out by hand
on the scalar problem of :mod:`tests.algorithms.scalar` (2 workers, SGD lr 0.1, H = 2, 3 steps)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.distributed as dist

from lowcomm import ALGORITHMS
from tests.algorithms.scalar import EXAMPLES, grad, nesterov, scalar_model
from tests.distributed import run_workers

LR = 0.1


def finished(algo: str, options: dict[str, Any], steps: int) -> dict[str, float]:
    """Train ``steps`` steps; the global w before and after finish(), each worker's w after it, and
    the global w after a second finish()."""
    rank = dist.get_rank()
    model = scalar_model(rank)
    strategy = ALGORITHMS[algo](model, torch.optim.SGD(model.parameters(), lr=LR), **options)
    a, b = EXAMPLES[rank]
    x = torch.tensor([[a]], dtype=torch.float64)
    for _ in range(steps):
        strategy.step(lambda: 0.5 * (strategy.model(x)[0, 0] - b) ** 2)
    before = strategy.global_state_dict()["weight"].item()
    strategy.finish()
    after = strategy.global_state_dict()["weight"].item()
    local = model.weight.item()
    strategy.finish()
    return {"before": before, "after": after, "local": local, "again": strategy.global_state_dict()["weight"].item()}


def all_runs() -> dict[str, dict[str, float]]:
    return {
        "diloco": finished("diloco", {"sync_interval": 2, "outer_lr": 0.7, "outer_momentum": 0.9}, 3),
        "diloco_even": finished("diloco", {"sync_interval": 2, "outer_lr": 0.7, "outer_momentum": 0.9}, 4),
        "localsgd": finished("localsgd", {"sync_interval": 2}, 3),
        "noloco": finished("noloco", {"sync_interval": 2, "outer_lr": 0.5, "outer_momentum": 0.0}, 3),
        "overlapped": finished("diloco", {"sync_interval": 2, "overlap_steps": 1, "merge_alpha": 0.5,
                                          "outer_lr": 1.0, "outer_momentum": 0.0}, 3),
    }


@pytest.fixture(scope="module")
def runs() -> list[dict[str, dict[str, float]]]:
    return run_workers(all_runs, 2)


def local_steps(w: list[float], steps: int) -> list[float]:
    for _ in range(steps):
        w = [wk - LR * grad(wk, k) for k, wk in enumerate(w)]
    return w


def test_diloco_takes_an_outer_step_on_the_steps_since_the_last(runs: list[dict[str, dict[str, float]]]) -> None:
    # steps 1-2: z = 0.91355 (Delta 0.065, momentum buffer 0.065); step 3: w = 1.022195 and 0.74813;
    # finish: Delta = mean(0.91355 - w) = 0.0283875, buffer 0.0868875, z = 0.91355 - 0.7 * 0.10658625
    w = local_steps([1.0, 1.0], 2)
    z, buf = nesterov(1.0, 0.0, sum(1.0 - wk for wk in w) / 2, 0.7, 0.9)
    w = local_steps([z, z], 1)
    expected, _ = nesterov(z, buf, sum(z - wk for wk in w) / 2, 0.7, 0.9)
    assert expected == pytest.approx(0.838939625, abs=1e-12)
    for run in runs:
        assert run["diloco"]["before"] == pytest.approx(0.91355, abs=1e-12)
        assert run["diloco"]["after"] == pytest.approx(expected, abs=1e-12)
        assert run["diloco"]["local"] == run["diloco"]["after"]  # x <- z
        assert run["diloco"]["again"] == run["diloco"]["after"]  # nothing trained since: no outer step


def test_finish_after_a_synchronisation_changes_nothing(runs: list[dict[str, dict[str, float]]]) -> None:
    for run in runs:
        assert run["diloco_even"]["after"] == run["diloco_even"]["before"]


def test_local_sgd_averages_the_steps_since_the_last(runs: list[dict[str, dict[str, float]]]) -> None:
    # after step 2 both hold 0.935; step 3: 1.0415 and 0.761, whose mean is 0.90125
    w = local_steps([0.935, 0.935], 1)
    assert w == pytest.approx([1.0415, 0.761], abs=1e-12)
    for run in runs:
        assert run["localsgd"]["local"] == pytest.approx(0.90125, abs=1e-12)
        assert run["localsgd"]["after"] == pytest.approx(0.90125, abs=1e-12)


def test_noloco_exchanges_once_more(runs: list[dict[str, dict[str, float]]]) -> None:
    # two workers are one pair; with mu = 0 the pair's z are equal after each exchange:
    # z <- z + alpha * mean(x - z) + alpha * (mean z - z) with alpha 0.5
    w = local_steps([1.0, 1.0], 2)
    z = 1.0 + 0.5 * sum(wk - 1.0 for wk in w) / 2
    w = local_steps([z, z], 1)
    expected = z + 0.5 * sum(wk - z for wk in w) / 2
    for run in runs:
        assert run["noloco"]["local"] == pytest.approx(expected, abs=1e-12)


def test_an_overlapped_outer_step_in_flight_is_applied_then_the_rest(runs: list[dict[str, dict[str, float]]]) -> None:
    # H = 2, tau = 1: the outer step started after step 2 is due after step 3; finish applies it
    # (z = mean w2 with lr 1 and no momentum; x <- 0.5 z + 0.5 x3), then a blocking outer step on
    # Delta = z - mean(x): z <- mean(x)
    w2 = local_steps([1.0, 1.0], 2)
    z = sum(w2) / 2
    w3 = local_steps(w2, 1)
    merged = [0.5 * z + 0.5 * wk for wk in w3]
    expected = sum(merged) / 2
    for run in runs:
        assert run["overlapped"]["after"] == pytest.approx(expected, abs=1e-12)
        assert run["overlapped"]["local"] == pytest.approx(expected, abs=1e-12)
