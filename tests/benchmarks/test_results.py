"""Targets and the side-by-side table on the recorded runs of :mod:`tests.benchmarks.recorded`,
against hand-worked numbers.

DDP (4 steps) evaluates 3.0 after step 2 (at 2.0 s) and 2.0 after step 4 (4.0 s). Targets at 50%,
75%, 90% and 100% of its run are its last evaluations at or before steps 2, 3, 3 and 4: 3.0, 3.0,
3.0, 2.0. Local SGD evaluates 3.5 (1.5 s), 1.9 (3.0 s); PALSGD 3.2 (1.5 s), 2.5 (2.8 s); NoLoCo
3.0 (1.4 s), 2.0 (2.9 s).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lowcomm.benchmarks.results import (
    COLUMNS, Target, choose_target, find_targets, goodput, idle_share_cell, parse_fractions, results_rows, target_step,
    write_csv,
)
from lowcomm.benchmarks.runs import read_run
from tests.benchmarks import recorded

ALGOS = ("ddp", "localsgd", "palsgd", "noloco")


@pytest.fixture
def runs(tmp_path: Path) -> list:
    return [read_run(getattr(recorded, name)(tmp_path)) for name in ALGOS]


def test_targets_are_ddps_eval_loss_at_fractions_of_its_run(runs: list) -> None:
    targets = find_targets(runs, (0.5, 0.75, 0.9, 1.0), 2.6)
    assert targets == [
        Target("ddp@50%", 3.0, "DDP's eval loss at step 2 of 4"),
        Target("ddp@75%", 3.0, "DDP's eval loss at step 2 of 4"),
        Target("ddp@90%", 3.0, "DDP's eval loss at step 2 of 4"),
        Target("ddp@100%", 2.0, "DDP's eval loss at step 4 of 4"),
        Target("given", 2.6, "--target-loss"),
    ]
    assert choose_target(runs, None) == 2.0 and choose_target(runs, 2.6) == 2.6
    with pytest.raises(ValueError, match="--target-loss: needed"):
        find_targets(runs[1:], (0.5,), None)
    with pytest.raises(ValueError, match="no evaluation at or before step 1"):
        find_targets(runs, (0.25,), None)


def test_time_to_each_target_and_the_speedup_over_ddp(runs: list, tmp_path: Path) -> None:
    targets = find_targets(runs, (0.5, 1.0), None)
    rows = results_rows(runs, targets, "steps")
    assert [(r["algo"], r["target"], r["time_to_target_s"], r["speedup_vs_ddp"]) for r in rows] == [
        ("ddp", "ddp@50%", 2.0, 1.0), ("ddp", "ddp@100%", 4.0, 1.0),
        ("localsgd", "ddp@50%", 3.0, 2.0 / 3.0), ("localsgd", "ddp@100%", 3.0, 4.0 / 3.0),
        ("palsgd", "ddp@50%", 2.8, 2.0 / 2.8), ("palsgd", "ddp@100%", None, None),
        ("noloco", "ddp@50%", 1.4, 2.0 / 1.4), ("noloco", "ddp@100%", 2.9, 4.0 / 2.9),
    ]
    assert rows[0]["comm_share"] == pytest.approx(0.8 / 4.5)
    write_csv(tmp_path / "results.csv", rows, COLUMNS)
    lines = (tmp_path / "results.csv").read_text().splitlines()
    assert lines[0] == ("algo,budget,steps,ended,target,target_loss,steps_to_target,time_to_target_s,tokens_to_target,"
                        "speedup_vs_ddp,final_eval_loss,wall_time_s,comm_bytes_total,comm_bytes_between_groups,"
                        "comm_share,tokens,tokens_per_s,goodput,idle_share_by_worker")
    assert lines[1] == "ddp,steps,4,steps,ddp@50%,3,2,2,200,1,2,4.5,24000000,24000000,0.177778,400,88.8889,,"
    assert lines[6] == "palsgd,steps,4,steps,ddp@100%,2,,,,,2.5,3,10000000,10000000,0.1,300,100,,"
    assert lines[8] == "noloco,steps,4,steps,ddp@100%,2,4,2.9,400,1.37931,2,3,16000000,16000000,0.0666667,400,133.333,,"


def test_goodput_is_tokens_per_second_against_the_same_algorithm_at_full_speed(tmp_path: Path) -> None:
    slowed, full_speed = read_run(recorded.ddp_slowed(tmp_path)), read_run(recorded.ddp(tmp_path))
    assert goodput(slowed, full_speed) == pytest.approx(4.5 / 7.0)
    assert goodput(slowed, None) is None
    [row] = results_rows([slowed], [Target("given", 2.0, "--target-loss")], "tokens", {"ddp": full_speed})
    assert row["tokens_per_s"] == pytest.approx(400 / 7.0)
    assert row["goodput"] == pytest.approx(0.642857, abs=1e-6)
    assert row["idle_share_by_worker"] == "0.400;0.400;0.400;0.050"
    assert idle_share_cell(full_speed) is None  # recorded before worker_times


@pytest.mark.parametrize("text, expected", [("1", (1.0,)), ("0.9,0.5,1.0", (0.5, 0.9, 1.0))])
def test_parse_fractions(text: str, expected: tuple) -> None:
    assert parse_fractions(text) == expected


@pytest.mark.parametrize("text, message", [("0", r"in \(0, 1\]"), ("1.5", r"in \(0, 1\]"), ("nan", r"in \(0, 1\]"),
                                           ("half", "expected comma-separated"), ("0.5,0.5", "named twice")])
def test_bad_fractions(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_fractions(text)


def test_target_steps_round_down_exactly() -> None:
    assert [target_step(f, 1200) for f in (0.5, 0.75, 0.9, 1.0)] == [600, 900, 1080, 1200]
    assert [target_step(f, 32) for f in (0.5, 0.75, 0.9, 1.0)] == [16, 24, 28, 32]
