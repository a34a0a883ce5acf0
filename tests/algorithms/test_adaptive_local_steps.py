"""Adaptive local steps (``local_steps="adaptive"``): equal to the fixed rule at equal speeds, the
token-weighted merge on hand-worked numbers, resuming exactly; real gloo workers whose speeds are set
by sleeping in each step's forward pass (part of the step time the rule measures)."""

from __future__ import annotations

import io
import time
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch import nn

from lowcomm import ALGORITHMS, LocalSGD, NoLoCo
from lowcomm.algorithms.periodic import local_step_counts
from tests.algorithms.mlp import batch, flat, loss_of, mlp
from tests.distributed import run_workers

SLOW = [0.05, 0.1]
"""Seconds each worker sleeps in a step's forward pass: worker 1 at half worker 0's speed."""
EVEN = [0.04, 0.04]

FAMILY = {
    "localsgd": {},
    "diloco": {"outer_lr": 0.7, "outer_momentum": 0.9},
    "palsgd": {"warmup_steps": 2, "pseudo_sync_prob": 0.25},
    "streamingdiloco": {"num_fragments": 2, "overlap_steps": 1},
}


def linear_model() -> nn.Linear:
    """One weight, 1.0 (worker 0's, broadcast); the loss ``g_k * w`` has the constant gradient g_k."""
    model = nn.Linear(1, 1, bias=False, dtype=torch.float64)
    with torch.no_grad():
        model.weight.fill_(1.0)
    return model


GRADIENTS = [1.0, 4.0]


def build(algo: str, options: dict[str, Any], problem: str, lr: float, steps: int) -> tuple[nn.Module, Any]:
    model = mlp() if problem == "mlp" else linear_model()
    strategy = ALGORITHMS[algo](model, torch.optim.SGD(model.parameters(), lr=lr), **options)
    strategy.run_steps = steps
    return model, strategy


def paced(algo: str, options: dict[str, Any], problem: str, lr: float, steps: int, delays: list[float],
          resume_at: int | None = None, barrier: bool = False) -> dict[str, Any]:
    """Train until step ``steps`` (nominal), sleeping ``delays[rank]`` in each step's forward pass;
    with ``barrier``, the loop waits for every worker after each step where they are aligned; with
    ``resume_at``, after the first step reaching it, carry on from a saved state in a new model and
    strategy. Return the step count and parameters after each local step and the global model."""
    rank = dist.get_rank()
    model, strategy = build(algo, options, problem, lr, steps)
    counts, params, local_steps = [], [], 0

    def slowed(loss: torch.Tensor) -> torch.Tensor:
        time.sleep(delays[rank])
        return loss

    while strategy.step_count < steps:
        local_steps += 1
        if problem == "mlp":
            data = batch(rank, local_steps)
            strategy.step(lambda: slowed(loss_of(strategy.model, data)))
        else:
            strategy.step(lambda: slowed(GRADIENTS[rank] * strategy.model(torch.ones(1, 1, dtype=torch.float64))[0, 0]))
        counts.append(strategy.step_count)
        params.append(flat(model))
        if barrier and strategy.aligned:
            dist.barrier()
        if resume_at is not None and strategy.step_count >= resume_at:
            resume_at, saved = None, io.BytesIO()
            torch.save(strategy.state_dict(), saved)
            model, strategy = build(algo, options, problem, lr, steps)
            strategy.load_state_dict(torch.load(io.BytesIO(saved.getvalue()), weights_only=True))
    strategy.finish()
    return {"counts": counts, "params": params, "global": strategy.global_state_dict()}


def fixed_and_adaptive(algo: str, options: dict[str, Any], steps: int) -> list[dict[str, Any]]:
    return [paced(algo, {**options, "local_steps": local_steps}, "mlp", 0.05, steps, EVEN)
            for local_steps in ("fixed", "adaptive")]


@pytest.mark.parametrize("algo", FAMILY)
def test_adaptive_equals_fixed_at_equal_speeds(algo: str) -> None:
    """H = 4 over 10 steps (the last round cut short): the same step counts and parameters, bit for bit."""
    for fixed, adaptive in run_workers(fixed_and_adaptive, 2, algo, {**FAMILY[algo], "sync_interval": 4}, 10):
        assert adaptive["counts"] == fixed["counts"] == list(range(1, 11))
        assert all(torch.equal(a, f) for a, f in zip(adaptive["params"], fixed["params"], strict=True))
        assert all(torch.equal(adaptive["global"][k], v) for k, v in fixed["global"].items())


def test_the_rule_scales_the_round_by_the_fastest_time() -> None:
    assert local_step_counts(6, [0.05, 0.1]) == [6, 3]
    assert local_step_counts(6, [1.0, 1.1]) == [6, 6]  # within 10% of the fastest: the whole round
    assert local_step_counts(6, [1.2, 1.0, 100.0]) == [5, 6, 1]  # 6 / 1.2 = 5; at least one step
    assert local_step_counts(3, [1.0, 1.2]) == [3, 3]  # 2.5 rounds half up
    nan = float("nan")  # a worker that trained no batch (pseudo-synchronisations only) measured nothing
    assert local_step_counts(6, [nan, 0.2, 0.1]) == [6, 3, 6]
    assert local_step_counts(6, [nan, nan]) == [6, 6]


def test_local_sgd_weights_the_average_by_tokens_by_hand() -> None:
    """Gradients 1 and 4, lr 0.125, H = 6, worker 1 at half speed.

    Round 1 (steps 1-6), nothing measured: both take 6 steps, 1 - 0.75 = 0.25 and 1 - 3 = -2; equal
    counts, the plain mean -0.875. Round 2: worker 1 measured at twice worker 0's step time takes
    round(6 * 1/2) = 3 steps, at nominal steps 8, 10, 12: worker 0 reaches -0.875 - 0.75 = -1.625 in
    6 steps (6 batches), worker 1 -0.875 - 1.5 = -2.375 in 3; the weighted mean
    (6 * -1.625 + 3 * -2.375) / 9 = -1.875 (the plain mean would be -2.0).
    """
    options = {"sync_interval": 6, "local_steps": "adaptive"}
    fast, slow = run_workers(paced, 2, "localsgd", options, "linear", 0.125, 12, SLOW)
    assert fast["counts"] == list(range(1, 13))
    assert slow["counts"] == [1, 2, 3, 4, 5, 6, 8, 10, 12]
    assert [fast["params"][5].item(), slow["params"][5].item()] == [-0.875, -0.875]
    assert [fast["params"][-1].item(), slow["params"][-1].item()] == [-1.875, -1.875]


def test_a_loop_waiting_for_every_worker_between_steps_does_not_hide_their_speeds() -> None:
    """As above, with a barrier of the loop's after every aligned step (a clock check, a logged mean):
    in round 1 the fast worker waits there for the slow one every step, which is not its step time."""
    options = {"sync_interval": 6, "local_steps": "adaptive"}
    fast, slow = run_workers(paced, 2, "localsgd", options, "linear", 0.125, 12, SLOW, None, True)
    assert slow["counts"] == [1, 2, 3, 4, 5, 6, 8, 10, 12]
    assert [fast["params"][-1].item(), slow["params"][-1].item()] == [-1.875, -1.875]


def test_diloco_weights_the_pseudo_gradient_by_tokens_by_hand() -> None:
    """Gradients 1 and 4, lr 0.125, H = 6, outer SGD lr 0.5 without momentum, worker 1 at half speed.

    Round 1: x = 0.25 and -2, Delta = mean(0.75, 3) = 1.875, z = 1 - 0.5 * 1.875 = 0.0625. Round 2
    (6 and 3 local steps): Delta_0 = 6 * 0.125 * 1 = 0.75, Delta_1 = 3 * 0.125 * 4 = 1.5; weighted
    (6 * 0.75 + 3 * 1.5) / 9 = 1.0 (plain: 1.125); z = 0.0625 - 0.5 * 1.0 = -0.4375.
    """
    options = {"sync_interval": 6, "local_steps": "adaptive", "outer_lr": 0.5, "outer_momentum": 0.0}
    fast, slow = run_workers(paced, 2, "diloco", options, "linear", 0.125, 12, SLOW)
    assert slow["counts"] == [1, 2, 3, 4, 5, 6, 8, 10, 12]
    assert [fast["params"][5].item(), slow["params"][5].item()] == [0.0625, 0.0625]
    assert [fast["params"][-1].item(), slow["params"][-1].item()] == [-0.4375, -0.4375]
    assert fast["global"]["weight"].item() == -0.4375


def interrupted_and_not(algo: str, options: dict[str, Any], steps: int, resume_at: int) -> list[dict[str, Any]]:
    return [paced(algo, options, "mlp", 0.05, steps, SLOW, resume) for resume in (None, resume_at)]


@pytest.mark.parametrize(("algo", "resume_at"), [("localsgd", 8), ("localsgd", 9), ("palsgd", 9),
                                                ("streamingdiloco", 8)])
def test_resuming_with_adaptive_steps_is_exact(algo: str, resume_at: int) -> None:
    """H = 4 over 12 steps, worker 1 at half speed (4, then 2 local steps a round): a run saved and
    resumed at the end of round 2 (step 8; Streaming DiLoCo with fragment 0's overlapped outer step in
    flight), or inside round 3 (worker 0 at step 9, worker 1 at 10), equals the uninterrupted run bit
    for bit. (Streaming DiLoCo's fragment 1 starts at step 10, so no step inside round 3 has both
    workers before the same collectives, as the new strategy's broadcast needs.)"""
    options = {**FAMILY[algo], "sync_interval": 4, "local_steps": "adaptive"}
    fast, slow = run_workers(interrupted_and_not, 2, algo, options, 12, resume_at)
    for whole, resumed in (fast, slow):
        assert resumed["counts"] == whole["counts"]
        assert all(torch.equal(a, b) for a, b in zip(resumed["params"], whole["params"], strict=True))
        assert all(torch.equal(resumed["global"][k], v) for k, v in whole["global"].items())
    assert slow[0]["counts"][-4:] == [6, 8, 10, 12]


def test_local_steps_other_than_fixed_or_adaptive_are_refused() -> None:
    with pytest.raises(ValueError, match="^local_steps: Input should be 'fixed' or 'adaptive'"):
        LocalSGD.resolve_options({"local_steps": "sometimes"})


@pytest.mark.parametrize("algo", ["ddp", "noloco"])
def test_algorithms_without_local_rounds_do_not_take_it(algo: str) -> None:
    with pytest.raises(TypeError, match=f"^{ALGORITHMS[algo].__name__}: unknown option 'local_steps'"):
        ALGORITHMS[algo].resolve_options({"local_steps": "adaptive"})
    assert NoLoCo.options().keys().isdisjoint({"local_steps"})
