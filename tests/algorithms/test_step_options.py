"""Gradient accumulation, clipping and learning-rate schedules inside ``Strategy.step``."""

from __future__ import annotations

import pytest
import torch

from lowcomm import ALGORITHMS
from tests.algorithms import mlp
from tests.algorithms.scalar import first_seed_with_coins, scalar_model
from tests.distributed import run_workers


def accumulate(algo: str, options: dict) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """The same 8 examples as one batch and as two micro-batches of 4, on two workers."""
    rank = torch.distributed.get_rank()
    results = []
    for split in (False, True):
        model, strategy = mlp.make(algo, options, lr=0.1)
        x, y = mlp.batch(rank, 1)
        halves = [(x[:4], y[:4]), (x[4:], y[4:])]
        closures = [lambda d=d: mlp.loss_of(strategy.model, d) for d in halves] if split else lambda: mlp.loss_of(strategy.model, (x, y))
        loss = strategy.step(closures)
        results.append((mlp.flat(model), loss.item()))
    return results[0][0], results[1][0], results[0][1], results[1][1]


def accumulation_runs() -> dict[str, tuple]:
    return {algo: accumulate(algo, {}) for algo in ("ddp", "localsgd")}


def test_micro_batches_equal_one_batch() -> None:
    for result in run_workers(accumulation_runs, 2):
        for algo, (whole, split, loss_whole, loss_split) in result.items():
            torch.testing.assert_close(whole, split, rtol=0, atol=1e-12, msg=algo)
            assert loss_whole == pytest.approx(loss_split, abs=1e-12)


def must_not_run() -> torch.Tensor:
    raise AssertionError("a pseudo-synchronisation step computed a gradient")


def clipped_and_scheduled() -> dict[str, list[float]]:
    out = {}
    # gradient of 0.5 * (w - 2)^2 at w = 1 is -1 on worker 0; clipped to 0.25, lr 0.1: w ~ 1.025
    model = scalar_model(0)
    strategy = ALGORITHMS["localsgd"](model, torch.optim.SGD(model.parameters(), lr=0.1), max_grad_norm=0.25)
    strategy.step(lambda: 0.5 * (model(torch.ones(1, 1, dtype=torch.float64))[0, 0] - 2) ** 2)
    out["clipped"] = [model.weight.item()]
    # PALSGD pulls with the learning rate in effect: lr halves every step
    model = scalar_model(0)
    inner = torch.optim.SGD(model.parameters(), lr=0.2)
    schedule = torch.optim.lr_scheduler.LambdaLR(inner, lambda t: 0.5 ** t)
    seed = first_seed_with_coins([True, True, True], p=0.5)
    strategy = ALGORITHMS["palsgd"](model, inner, warmup_steps=0, sync_interval=100, pseudo_sync_prob=0.5, eta=1.0, seed=seed)
    with torch.no_grad():
        model.weight.fill_(3.0)  # z stays 1
    weights = []
    for _ in range(3):
        assert strategy.step(must_not_run) is None
        schedule.step()
        weights.append(model.weight.item())
    out["scheduled"] = weights
    return out


def test_clipping_and_schedule_by_hand() -> None:
    out = run_workers(clipped_and_scheduled, 1)[0]
    assert out["clipped"] == pytest.approx([1 + 0.1 * 0.25 / (1 + 1e-6)], abs=1e-15)  # torch adds 1e-6 to the norm
    # pulls (lr / p) * eta: 0.4, 0.2, 0.1 of the distance to z = 1: 3 -> 2.2 -> 1.96 -> 1.864
    assert out["scheduled"] == pytest.approx([2.2, 1.96, 1.864], abs=1e-12)
