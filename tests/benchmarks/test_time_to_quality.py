"""The ``target`` and ``time`` budgets of ``lowcomm bench`` on the recorded runs of
:mod:`tests.benchmarks.recorded`, against hand-worked numbers, and the early stop that runs them.

DDP (4 steps) reaches its final eval loss 2.0 after step 4, at 4.0 s. Under ``--budget target`` with
a cap of 2 the others run at most 8 steps. Local SGD evaluates 2.4 after step 4 (3.0 s) and 1.9 after
step 6 (3.6 s): it crossed 2.0 between those evaluations and is timed at the second, 4.0 / 3.6 =
1.11x DDP's time, with 600 tokens. PALSGD ends its 8 steps at 2.2: not within the cap.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lowcomm.algorithms import ALGORITHMS
from lowcomm.benchmarks.report import quality_table, time_table
from lowcomm.benchmarks.results import find_targets, results_rows
from lowcomm.benchmarks.runs import read_run
from lowcomm.cli.bench import planned_steps, stop_flags
from lowcomm.communication.peers import Peers
from lowcomm.training.config import load_config
from lowcomm.training.early_stop import stop_reason
from tests.benchmarks import recorded


def runs_of(root: Path, *names: str) -> list:
    return [read_run(getattr(recorded, name)(root)) for name in names]


def test_a_target_reached_between_evaluations_and_one_never_reached_within_the_cap(tmp_path: Path) -> None:
    runs = runs_of(tmp_path, "ddp", "localsgd_to_target", "palsgd_capped")
    targets = find_targets(runs, (1.0,), None)
    rows = results_rows(runs, targets, "target")
    assert [(r["algo"], r["steps"], r["ended"], r["steps_to_target"], r["time_to_target_s"], r["tokens_to_target"],
             r["speedup_vs_ddp"]) for r in rows] == [
        ("ddp", 4, "steps", 4, 4.0, 400, 1.0),
        ("localsgd", 6, "stop_at_loss", 6, 3.6, 600, pytest.approx(4.0 / 3.6)),
        ("palsgd", 8, "steps", None, None, None, None),
    ]
    assert quality_table(rows, targets[-1]).splitlines()[2:] == [
        "| ddp | 4 | steps | 4 | 4 | 1 | 400 |",
        "| localsgd | 6 | stop_at_loss | 6 | 3.6 | 1.11111 | 600 |",
        "| palsgd | 8 | steps | not within the cap of 8 steps | — | — | — |",
    ]


def test_the_others_stop_at_ddps_final_loss_or_clock_within_the_cap(tmp_path: Path) -> None:
    (ddp,) = runs_of(tmp_path, "ddp")
    assert stop_flags("target", ddp, None) == {"stop_at_loss": 2.0}
    assert stop_flags("target", None, 2.6) == {"stop_at_loss": 2.6}
    assert stop_flags("time", ddp, None) == {"stop_after_s": 4.0}  # its final evaluation, not its 4.5 s wall time
    steps = {algo: load_config(None, {"algo": algo, "steps": 3, "workers": 2, "out": tmp_path}) for algo in ("ddp", "palsgd")}
    assert [planned_steps(steps[algo], "target", 2.5) for algo in steps] == [3, 8]  # ceil(2.5 x 3)
    assert [planned_steps(steps[algo], "time", 2.0) for algo in steps] == [3, 6]


@pytest.mark.parametrize("algo", sorted(ALGORITHMS))
def test_a_cap_of_1_is_the_steps_protocol(algo: str, tmp_path: Path) -> None:
    config = load_config(None, {"algo": algo, "steps": 100, "workers": 2, "out": tmp_path})
    assert planned_steps(config, "target", 1.0) == planned_steps(config, "steps") == 100


def test_with_a_cap_of_1_the_times_to_targets_are_those_of_the_steps_protocol(tmp_path: Path) -> None:
    # the recorded runs all ran DDP's 4 steps; Local SGD and NoLoCo reach 2.0 at their last step, where a
    # stop at 2.0 would end them too, and PALSGD never does
    runs = runs_of(tmp_path, "ddp", "localsgd", "palsgd", "noloco")
    targets = find_targets(runs, (0.5, 1.0), None)
    by_target = [{k: v for k, v in row.items() if k != "budget"} for row in results_rows(runs, targets, "target")]
    by_steps = [{k: v for k, v in row.items() if k != "budget"} for row in results_rows(runs, targets, "steps")]
    assert by_target == by_steps


def test_the_time_budget_gives_each_eval_loss_at_ddps_time(tmp_path: Path) -> None:
    # NoLoCo's clock passed DDP's 4.0 s after step 5 (evaluated at 4.3 s); Local SGD ran out of its
    # steps first (the recorded 4-step run, at 3.0 s)
    runs = runs_of(tmp_path, "ddp", "noloco_at_ddps_time", "localsgd")
    assert time_table(runs).splitlines()[2:] == [
        "| ddp | 4 | steps | 2 | +0.00% | 4 | 400 |",
        "| noloco | 5 | stop_after_s | 2.1 | +5.00% | 4.3 | 500 |",
        "| localsgd | 4 | steps | 1.9 | -5.00% | 3 | 400 |",
    ]


def one_worker() -> tuple[Peers, list]:
    gathered: list = []
    return Peers(0, 1, lambda value: gathered.append(value) or [value]), gathered


@pytest.mark.parametrize("options, evaluated, eval_loss, elapsed_s, reason, collective", [
    ({"stop_at_loss": 2.0}, True, 2.0, 9.0, "stop_at_loss", True),    # at the target counts
    ({"stop_at_loss": 2.0}, True, 2.01, 9.0, None, True),
    ({"stop_at_loss": 2.0}, True, float("nan"), 9.0, None, True),     # a diverged run runs on to its cap
    ({"stop_at_loss": 2.0}, False, 1.0, 9.0, None, False),            # an older evaluation does not count
    ({"stop_after_s": 10.0}, False, None, 10.0, "stop_after_s", True),
    ({"stop_after_s": 10.0}, False, None, 9.9, None, True),           # asked after every step
    ({}, True, 1.0, 1e9, None, False),
])
def test_worker_0_decides_the_early_stop(options: dict, evaluated: bool, eval_loss, elapsed_s: float, reason,
                                         collective: bool, tmp_path: Path) -> None:
    config = load_config(None, {"algo": "ddp", "out": tmp_path, **options})
    peers, gathered = one_worker()
    assert stop_reason(config, peers, evaluated, eval_loss, elapsed_s) == reason
    assert gathered == ([reason] if collective else [])


def test_another_worker_follows_worker_0(tmp_path: Path) -> None:
    config = load_config(None, {"algo": "ddp", "out": tmp_path, "stop_after_s": 10.0})
    worker_1 = Peers(1, 2, lambda value: [None, value])  # worker 0's clock has not reached 10 s
    assert stop_reason(config, worker_1, False, None, 11.0) is None
