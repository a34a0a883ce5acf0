"""Hook mode (``with strategy:`` around the user's own loop) against ``strategy.step(closure)``,
on real gloo worker processes: the same parameters bit for bit, step by step."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
import torch
import torch.distributed as dist

import lowcomm
from lowcomm import ALGORITHMS
from tests.algorithms import mlp
from tests.distributed import run_workers

STEPS = 7  # not a multiple of any H below: leaving the block synchronises the last steps
MICRO_BATCHES = 2
OPTIONS: dict[str, dict[str, Any]] = {
    "ddp": {"max_grad_norm": 0.5},
    "localsgd": {"sync_interval": 3},
    "postlocalsgd": {"sync_interval": 3, "warmup_steps": 2},
    "diloco": {"sync_interval": 3, "warmup_steps": 2, "max_grad_norm": 0.5},
    "palsgd": {"sync_interval": 3, "warmup_steps": 2, "pseudo_sync_prob": 0.4, "seed": 3},
    "noloco": {"sync_interval": 3},
    "streamingdiloco": {"sync_interval": 4, "num_fragments": 2, "overlap_steps": 1},
}


def build(algo: str, mesh: Any = None) -> tuple[torch.nn.Module, Any, Any]:
    model = mlp.mlp()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.02)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: min(1.0, (t + 1) / 4))
    return model, ALGORITHMS[algo](model, optimizer, mesh=mesh, **OPTIONS[algo]), schedule


def parts(rank: int, t: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    x, y = mlp.batch(rank, t)
    return [(x[i::MICRO_BATCHES], y[i::MICRO_BATCHES]) for i in range(MICRO_BATCHES)]


def with_closures(algo: str, rank: int, mesh: Any = None) -> dict[str, Any]:
    model, strategy, schedule = build(algo, mesh)
    params = []
    for t in range(1, STEPS + 1):
        strategy.step([lambda part=part: mlp.loss_of(strategy.model, part) for part in parts(rank, t)])
        schedule.step()
        params.append(mlp.flat(model))
    strategy.finish()
    return {"params": params, "global": strategy.global_state_dict()}


def with_hooks(algo: str, rank: int, mesh: Any = None, ask: bool = True) -> dict[str, Any]:
    """The user's loop: micro-batches under no_sync(), their own clipping, the scheduler; with
    ``ask``, a step that needs no batch skips it."""
    model, strategy, schedule = build(algo, mesh)
    optimizer, params = strategy.optimizer, []
    with strategy:
        for t in range(1, STEPS + 1):
            if not ask or strategy.next_step_needs_batch():
                for i, part in enumerate(parts(rank, t)):
                    last = i == MICRO_BATCHES - 1
                    with contextlib.nullcontext() if last else strategy.no_sync():
                        (mlp.loss_of(strategy.model, part) / MICRO_BATCHES).backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1e6)  # the user's own clipping
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            params.append(mlp.flat(model))
    return {"params": params, "global": strategy.global_state_dict()}


def both_ways() -> dict[str, Any]:
    rank = dist.get_rank()
    return {algo: {"closures": with_closures(algo, rank), "hooks": with_hooks(algo, rank),
                   "hooks_not_asking": with_hooks(algo, rank, ask=False)} for algo in OPTIONS}


def both_ways_in_groups() -> dict[str, Any]:
    mesh = lowcomm.worker_groups(num_groups=2, group_size=2)
    rank = dist.get_rank()
    return {algo: {"closures": with_closures(algo, rank, mesh), "hooks": with_hooks(algo, rank, mesh)}
            for algo in OPTIONS}


def assert_same(run: dict[str, Any], other: dict[str, Any], msg: str) -> None:
    for t, (a, b) in enumerate(zip(run["params"], other["params"]), start=1):
        assert torch.equal(a, b), f"{msg}: step {t}"
    for key, value in run["global"].items():
        assert torch.equal(value, other["global"][key]), f"{msg}: global {key}"


@pytest.fixture(scope="module")
def two_workers() -> list[dict[str, Any]]:
    return run_workers(both_ways, 2)


@pytest.mark.parametrize("algo", list(OPTIONS))
def test_hook_mode_equals_closures_bit_for_bit(two_workers: list[dict[str, Any]], algo: str) -> None:
    for rank, result in enumerate(two_workers):
        assert_same(result[algo]["hooks"], result[algo]["closures"], f"{algo} rank {rank}")
        assert_same(result[algo]["hooks_not_asking"], result[algo]["closures"], f"{algo} rank {rank}, not asking")
    # the workers trained on different batches, yet end with the same global model
    for key, value in two_workers[0][algo]["hooks"]["global"].items():
        assert torch.equal(value, two_workers[1][algo]["hooks"]["global"][key])


def test_hook_mode_equals_closures_in_worker_groups() -> None:
    results = run_workers(both_ways_in_groups, 4)
    for rank, result in enumerate(results):
        for algo in OPTIONS:
            assert_same(result[algo]["hooks"], result[algo]["closures"], f"{algo} rank {rank}")


def scaled_run(scaler: bool, skipped: set[int], poisoned: dict[int, set[int]]) -> list[torch.Tensor]:
    """DiLoCo (2 warm-up steps, H = 2) in hook mode on float64. With ``scaler``, a GradScaler whose
    loss is made infinite at the iterations in ``poisoned`` on the ranks named there; without it,
    the iterations in ``skipped`` are left out. The parameters after each iteration."""
    rank = dist.get_rank()
    model = mlp.mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.5)
    strategy = lowcomm.DiLoCo(model, optimizer, sync_interval=2, warmup_steps=2)
    grad_scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10) if scaler else None
    params = []
    with strategy:
        for t in range(1, 9):
            if t in skipped:
                continue
            loss = mlp.loss_of(strategy.model, mlp.batch(rank, t))
            if rank in poisoned.get(t, set()):
                loss = loss * float("inf")
            if grad_scaler is None:
                loss.backward()
                optimizer.step()
            else:
                grad_scaler.scale(loss).backward()
                grad_scaler.step(optimizer)
                grad_scaler.update()
            optimizer.zero_grad()
            params.append(mlp.flat(model))
    return params + [torch.tensor(float(strategy.step_count))]


def scaler_runs() -> dict[str, list[torch.Tensor]]:
    # iteration 2 (warm-up): only rank 0's loss is infinite, but the average spreads it, so every
    # worker skips the step; iteration 5 (local): every worker's loss is infinite
    return {"scaler": scaled_run(True, set(), {2: {0}, 5: {0, 1}}), "reference": scaled_run(False, {2, 5}, {})}


def test_a_step_the_grad_scaler_skips_is_no_step_for_the_algorithm() -> None:
    for result in run_workers(scaler_runs, 2):
        scaled = result["scaler"][:1] + result["scaler"][2:4] + result["scaler"][5:]
        assert len(scaled) == len(result["reference"])
        for a, b in zip(scaled, result["reference"]):
            assert torch.equal(a, b)
        assert result["scaler"][-1].item() == 6  # 8 iterations, 2 skipped


def global_weights_run() -> dict[str, Any]:
    rank = dist.get_rank()
    model = mlp.mlp()
    strategy = lowcomm.DiLoCo(model, torch.optim.SGD(model.parameters(), lr=0.05), sync_interval=4)
    for t in range(1, 7):
        strategy.step(lambda: mlp.loss_of(strategy.model, mlp.batch(rank, t)))
    local = mlp.flat(model)
    expected = torch.cat([v.flatten() for v in strategy.global_state_dict().values()])
    with strategy.global_weights() as inside:
        evaluated = mlp.flat(inside)
    return {"local": local, "global": expected, "evaluated": evaluated, "after": mlp.flat(model)}


def test_global_weights_evaluates_the_global_model_in_place() -> None:
    for result in run_workers(global_weights_run, 2):
        assert torch.equal(result["evaluated"], result["global"])
        assert not torch.equal(result["local"], result["global"])  # 2 steps since the outer step
        assert torch.equal(result["after"], result["local"])


def guard_rails() -> list[str]:
    model = mlp.mlp()
    strategy = lowcomm.LocalSGD(model, torch.optim.SGD(model.parameters(), lr=0.1))
    messages = []
    for bad in (mlp.loss_of(model, mlp.batch(0, 1)), 3, [lambda: None, "x"]):
        with pytest.raises(TypeError) as error:
            strategy.step(bad)
        messages.append(str(error.value))
    wrapped = torch.nn.parallel.DistributedDataParallel(mlp.mlp())
    with pytest.raises(ValueError) as error:
        lowcomm.DiLoCo(wrapped, torch.optim.SGD(wrapped.parameters(), lr=0.1))
    messages.append(str(error.value))
    with pytest.raises(ValueError) as error:
        lowcomm.DiLoCo(mlp.mlp(), torch.optim.SGD(mlp.mlp().parameters(), lr=0.1))
    messages.append(str(error.value))
    with strategy, pytest.raises(ValueError) as error:
        strategy.optimizer.step(lambda: mlp.loss_of(model, mlp.batch(0, 1)))
    messages.append(str(error.value))
    with strategy:
        strategy.optimizer.step(None)  # accelerate's optimizer wrapper passes closure=None
    messages.append(strategy.step_count)
    return messages


def test_misuse_gets_one_line_that_says_what_to_do() -> None:
    tensor, number, mixed, ddp, other, closure, steps = run_workers(guard_rails, 1)[0]
    assert steps == 1
    assert tensor.startswith("closure: got a tensor") and "loss.backward()" in tensor
    assert number == "closure: expected a function returning the loss, or a list of them; got int"
    assert mixed.endswith("got list")
    assert ddp.startswith("model: it is already wrapped in DistributedDataParallel") and "model.module" in ddp
    assert other.startswith("optimizer: it must hold exactly the model's trainable parameters; build it")
    assert closure.startswith("optimizer.step(): in lowcomm's hook mode call it without a closure")
    assert all("\n" not in m for m in (tensor, number, mixed, ddp, other, closure))
