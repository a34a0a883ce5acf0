"""Every algorithm, step by step, against the scalar problem worked out by hand."""

from __future__ import annotations

import pytest
import torch

from tests.algorithms.scalar import first_seed_with_coins, grad, nesterov, scalar_trajectory
from tests.distributed import run_workers

LR = 0.1


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def run(algo: str, world_size: int, steps: int, **options: object) -> list[dict]:
    return run_workers(scalar_trajectory, world_size, algo, options, steps, LR)


def reference_family(world_size: int, steps: int, *, sync_interval: int, warmup_steps: int = 0,
                     outer: str = "average", outer_lr: float = 1.0, outer_momentum: float = 0.0,
                     p: float = 0.0, eta: float = 1.0, seed: int = 0) -> list[list[float]]:
    """Local SGD ("average"), DiLoCo and PALSGD ("nesterov") in plain Python: x_k after each step."""
    x, z, buf = [1.0] * world_size, 1.0, 0.0
    coins = torch.Generator().manual_seed(seed)
    history = []
    for t in range(1, steps + 1):
        if t <= warmup_steps:
            g = mean([grad(x[k], k) for k in range(world_size)])
            x = [xk - LR * g for xk in x]
            z = x[0]
        elif p > 0 and torch.rand((), generator=coins).item() < p:
            x = [xk - (LR / p) * eta * (xk - z) for xk in x]
        else:
            x = [xk - LR / (1 - p) * grad(xk, k) for k, xk in enumerate(x)]
        if t > warmup_steps and t % sync_interval == 0:
            if outer == "average":
                x = [mean(x)] * world_size
            else:
                z, buf = nesterov(z, buf, mean([z - xk for xk in x]), outer_lr, outer_momentum)
                x = [z] * world_size
        history.append(list(x))
    return history


def assert_matches(results: list[dict], history: list[list[float]]) -> None:
    for rank, result in enumerate(results):
        assert result["x"] == pytest.approx([h[rank] for h in history], abs=1e-12)


def test_local_sgd_by_hand() -> None:
    results = run("localsgd", 2, 4, sync_interval=2)
    # worker 0: 1 -> 1.1 -> 1.19; worker 1: 1 -> 0.8 -> 0.68; mean 0.935
    assert results[0]["x"][:2] == pytest.approx([1.1, 0.935], abs=1e-12)
    assert results[1]["x"][:2] == pytest.approx([0.8, 0.935], abs=1e-12)
    assert_matches(results, reference_family(2, 4, sync_interval=2))


def test_post_local_sgd_by_hand() -> None:
    results = run("postlocalsgd", 2, 5, sync_interval=2, warmup_steps=2)
    # warm-up averages gradients: mean(-1, 2) = 0.5 -> 0.95 on both workers
    assert [r["x"][0] for r in results] == pytest.approx([0.95, 0.95], abs=1e-12)
    assert_matches(results, reference_family(2, 5, sync_interval=2, warmup_steps=2))


def test_diloco_nesterov_outer_step_by_hand() -> None:
    results = run("diloco", 2, 6, sync_interval=2, outer_lr=0.7, outer_momentum=0.9)
    # Delta = mean(1 - 1.19, 1 - 0.68) = 0.065; Nesterov: 0.065 + 0.9 * 0.065 = 0.1235; z = 1 - 0.7 * 0.1235
    assert results[0]["x"][1] == pytest.approx(0.91355, abs=1e-12)
    assert_matches(results, reference_family(2, 6, sync_interval=2, outer="nesterov", outer_lr=0.7, outer_momentum=0.9))
    assert results[0]["global"] == pytest.approx(results[0]["x"][-1], abs=1e-12)


def test_palsgd_pseudo_sync_step_by_hand() -> None:
    seed = first_seed_with_coins([False, True], p=0.5)
    results = run("palsgd", 2, 2, sync_interval=2, warmup_steps=0, pseudo_sync_prob=0.5, eta=1.0,
                  outer_lr=0.1, outer_momentum=0.9, seed=seed)
    # step 1 (gradient, lr 0.1 / (1 - 0.5) = 0.2): 1.2 and 0.6
    assert [r["x"][0] for r in results] == pytest.approx([1.2, 0.6], abs=1e-12)
    # step 2 pulls by (0.1 / 0.5) * 1 = 0.2 towards z = 1: 1.16 and 0.68, no gradient computed;
    # then Delta = mean(-0.16, 0.32) = 0.08, Nesterov step 0.08 * 1.9 = 0.152, z = 1 - 0.0152
    assert [r["computed"] for r in results] == [[True, False], [True, False]]
    assert [r["x"][1] for r in results] == pytest.approx([0.9848, 0.9848], abs=1e-12)


def test_palsgd_long_run_matches_reference() -> None:
    options = dict(sync_interval=3, warmup_steps=2, pseudo_sync_prob=0.3, eta=0.5, outer_lr=0.1,
                   outer_momentum=0.9, seed=5)
    results = run("palsgd", 2, 12, **options)
    history = reference_family(2, 12, sync_interval=3, warmup_steps=2, outer="nesterov", outer_lr=0.1,
                               outer_momentum=0.9, p=0.3, eta=0.5, seed=5)
    assert_matches(results, history)
    assert not all(results[0]["computed"]) and any(results[0]["computed"][2:])


def outer_repeat_runs() -> dict[str, dict]:
    """DiLoCo and PALSGD without pseudo-synchronisations (p = 0), with 1 and 2 outer repeats."""
    options = dict(sync_interval=2, warmup_steps=0, outer_lr=0.1, outer_momentum=0.9)
    palsgd = dict(options, pseudo_sync_prob=0.0)
    return {"diloco": scalar_trajectory("diloco", options, 4, LR),
            "once": scalar_trajectory("palsgd", dict(palsgd, outer_repeats=1), 4, LR),
            "twice": scalar_trajectory("palsgd", dict(palsgd, outer_repeats=2), 4, LR)}


def test_palsgd_outer_repeats_by_hand() -> None:
    runs = run_workers(outer_repeat_runs, 2)
    # steps 1-2 as in the DiLoCo test: x = 1.19 and 0.68, Delta = 0.065; the Nesterov step (lr 0.1,
    # momentum 0.9) makes the buffer 0.065 and z = 1 - 0.1 * (0.065 + 0.9 * 0.065) = 0.98765
    assert [r["once"]["x"][1] for r in runs] == pytest.approx([0.98765, 0.98765], abs=1e-12)
    # one repeat on a zero pseudo-gradient: buffer 0.9 * 0.065 = 0.0585, z = 0.98765 - 0.1 * 0.9 * 0.0585
    # = 0.982385. Steps 3-4 from there: worker 0 (gradient w - 2) 1.0841465, 1.17573185; worker 1
    # (gradient 4w - 2) 0.789431, 0.6736586. Delta = 0.982385 - 0.924695225 = 0.057689775, buffer
    # 0.9 * 0.0585 + Delta = 0.110339775, z = 0.982385 - 0.1 * (Delta + 0.9 * 0.110339775)
    # = 0.96668544275; the repeat: buffer 0.0993057975, z = 0.96668544275 - 0.1 * 0.9 * 0.0993057975.
    for r in runs:
        assert [r["twice"]["x"][i] for i in (1, 3)] == pytest.approx([0.982385, 0.957747920975], abs=1e-12)
        assert r["twice"]["x"][2] == pytest.approx(1.0841465 if r is runs[0] else 0.789431, abs=1e-12)
    # one outer step per synchronisation is DiLoCo's, bit for bit
    assert all(r["once"]["x"] == r["diloco"]["x"] for r in runs)
    assert_matches([r["once"] for r in runs], reference_family(2, 4, sync_interval=2, outer="nesterov",
                                                               outer_lr=0.1, outer_momentum=0.9))


def reference_noloco(world_size: int, steps: int, sync_interval: int, alpha: float, mu: float) -> list[list[float]]:
    x, z, m = [1.0] * world_size, [1.0] * world_size, [0.0] * world_size
    history = []
    for t in range(1, steps + 1):
        x = [xk - LR * grad(xk, k) for k, xk in enumerate(x)]
        if t % sync_interval == 0:
            order = torch.randperm(world_size, generator=torch.Generator().manual_seed(t)).tolist()
            groups = [order[i:i + 2] for i in range(0, world_size - world_size % 2, 2)]
            if world_size % 2:
                groups[-1].append(order[-1])
            new_z = list(z)
            for group in groups:
                mean_delta = mean([x[j] - z[j] for j in group])
                mean_z = mean([z[j] for j in group])
                for i in group:
                    m[i] = mu * m[i] + alpha * mean_delta + alpha * (mean_z - z[i])
                    new_z[i] = z[i] + m[i]
            z, x = new_z, list(new_z)
        history.append(list(x))
    return history


def test_noloco_pair_by_hand() -> None:
    results = run("noloco", 2, 2, sync_interval=2, outer_lr=0.7, outer_momentum=0.5)
    # mean(x - z) = mean(0.19, -0.32) = -0.065; m = 0.7 * -0.065; z = 1 - 0.0455
    assert [r["x"][1] for r in results] == pytest.approx([0.9545, 0.9545], abs=1e-12)


def test_noloco_triple_by_hand() -> None:
    results = run("noloco", 3, 2, sync_interval=2, outer_lr=0.7, outer_momentum=0.5)
    # worker 2 (a=1, b=0): 1 -> 0.9 -> 0.81; mean(x - z) = (0.19 - 0.32 - 0.19) / 3
    expected = 1 + 0.7 * (0.19 - 0.32 - 0.19) / 3
    assert [r["x"][1] for r in results] == pytest.approx([expected] * 3, abs=1e-12)


def test_noloco_four_workers_rotating_pairs() -> None:
    results = run("noloco", 4, 8, sync_interval=2, outer_lr=0.7, outer_momentum=0.5)
    history = reference_noloco(4, 8, 2, 0.7, 0.5)
    assert_matches(results, history)
    assert len({round(w, 9) for w in history[-1]}) > 1  # pairs drift apart: the z-consensus term matters
    assert results[0]["global"] == pytest.approx(mean(history[-1]), abs=1e-12)
