"""``lowcomm regime-map`` on small recorded benchmarks, against hand-worked numbers.

Every run has 4 workers and 4 steps (:mod:`tests.benchmarks.recorded`); the bandwidths are 8 Mbit/s
(1 MB/s) and 80 Mbit/s (10 MB/s). DDP (``recorded.ddp``) all-reduces a 1 MB payload every step (a
worker sends 1.5 MB: 1.5 s, or 0.15 s, of which 0.5 s, or the early buckets' 0.06 s, hide behind
the backward pass), waited 0.4 s by step 2 (eval loss 3.0 at 2.0 s) and 0.8 s by step 4 (eval loss
2.0 at 4.0 s). So to its final loss it takes 4.0 - 0.8 + 4 x 1.0 = 7.2 s, or 3.2 + 4 x 0.09 = 3.56 s;
to its loss half-way, 2.0 - 0.4 + 2 x 1.0 = 3.6 s, or 1.6 + 2 x 0.09 = 1.78 s. A PALSGD run here synchronises
once, after step 4 (1.5 MB, having waited 0.1 s), reaching its final loss at ``E`` seconds:
E - 0.1 + 1.5, or E - 0.1 + 0.15.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest

from lowcomm.cli.regime_map import read_bench, regime_rows, winners
from lowcomm.training.config import load_config
from tests.benchmarks import recorded
from tests.benchmarks.recorded import MB, evaluation, train, write_run

ARGS = ["--bandwidth", "8mbit,80mbit"]
SEQ_LEN = 8


def local(runs: Path, algo: str, final_loss: float, elapsed_s: float) -> Path:
    """Eval loss 3.5 after step 2, ``final_loss`` at ``elapsed_s`` after step 4, which sends 1.5 MB."""
    return write_run(runs / algo, {
        "algo": algo, "final_eval_loss": final_loss, "wall_time_s": elapsed_s + 0.5, "comm_bytes_total": 6 * MB,
        "comm_wait_s": 0.1, "tokens": 400,
    }, [
        train(1, 0), train(2, 0), evaluation(2, 3.5, elapsed_s / 2, 0, 0.0),
        train(3, 0), train(4, 1.5 * MB), evaluation(4, final_loss, elapsed_s, 1.5 * MB, 0.1),
    ])


def bench(root: Path, budget: str, batch_size: int, others: dict[str, tuple[float, float]],
          layout: dict[str, Any] | None = None) -> Path:
    """A bench directory: DDP (its config with ``batch_size``) and each other algorithm's (final loss, time)."""
    directory = root / f"{budget}-b{batch_size}"
    runs = directory / "runs"
    run = (recorded.grouped_ddp if layout else recorded.ddp)(runs)
    config = load_config(None, {"algo": "ddp", "workers": 4, "steps": 4, "batch_size": batch_size,
                                "seq_len": SEQ_LEN, "out": run, **(layout or {})})
    (run / "config.yaml").write_text(config.to_yaml())
    for algo, (final_loss, elapsed_s) in others.items():
        local(runs, algo, final_loss, elapsed_s)
    (directory / "results.csv").write_text(f"algo,budget\nddp,{budget}\n")
    return directory


@pytest.fixture
def benches(tmp_path: Path) -> list[Path]:
    return [
        bench(tmp_path, "steps", 2, {"palsgd": (1.9, 3.0)}),  # 64 tokens per step: 4.4 s, or 3.05 s
        bench(tmp_path, "steps", 4, {"palsgd": (1.9, 4.5), "diloco": (2.5, 3.0)}),  # 128: 5.9 s or 4.55 s; never
        bench(tmp_path, "tokens", 2, {"palsgd": (2.2, 3.0)}),  # never
    ]


def csv_rows(path: Path) -> list[tuple[str, ...]]:
    with path.open(newline="") as file:
        return [tuple(row.values()) for row in csv.DictReader(file)]


def test_speedups_and_times_to_ddps_final_loss(benches: list[Path], tmp_path: Path, run_cli) -> None:
    rows = regime_rows([read_bench(b) for b in benches], [8e6, 80e6], 1.0)
    expected = [
        ("steps", 64, "palsgd", 8e6, 7.2 / 4.4, 4.4, 7.2), ("steps", 64, "palsgd", 80e6, 3.56 / 3.05, 3.05, 3.56),
        ("steps", 128, "diloco", 8e6, None, None, 7.2), ("steps", 128, "palsgd", 8e6, 7.2 / 5.9, 5.9, 7.2),
        ("steps", 128, "diloco", 80e6, None, None, 3.56), ("steps", 128, "palsgd", 80e6, 3.56 / 4.55, 4.55, 3.56),
        ("tokens", 64, "palsgd", 8e6, None, None, 7.2), ("tokens", 64, "palsgd", 80e6, None, None, 3.56),
    ]
    assert [tuple(row.values()) for row in rows] == [
        tuple(pytest.approx(v, rel=1e-6) if isinstance(v, float) else v for v in line) for line in expected]
    assert winners(rows) == {("steps", 64, 8e6): "palsgd", ("steps", 64, 80e6): "palsgd",
                             ("steps", 128, 8e6): "palsgd", ("steps", 128, 80e6): "ddp",
                             ("tokens", 64, 8e6): "ddp", ("tokens", 64, 80e6): "ddp"}

    out = tmp_path / "map"
    code, stdout, _ = run_cli(["regime-map", *map(str, benches), *ARGS, "--out", str(out)])
    assert code == 0
    written = csv_rows(out / "regime_map.csv")
    assert written[0] == ("steps", "64", "palsgd", "8e+06", "1.63636", "4.4", "7.2")
    assert written[4] == ("steps", "128", "diloco", "8e+07", "", "", "3.56")
    assert sorted(path.name for path in out.iterdir()) == [
        "regime_map.csv", "speedup_diloco_steps.png", "speedup_palsgd_steps.png", "speedup_palsgd_tokens.png",
        "winner_steps.png", "winner_tokens.png"]
    assert all(path.read_bytes()[:4] == b"\x89PNG" for path in out.glob("*.png"))
    assert stdout.splitlines()[2:9] == [
        "| steps | 64 | palsgd | 1.64x | 1.17x |",
        "| steps | 64 | winner | palsgd | palsgd |",
        "| steps | 128 | diloco | never | never |",
        "| steps | 128 | palsgd | 1.22x | 0.78x |",
        "| steps | 128 | winner | palsgd | ddp |",
        "| tokens | 64 | palsgd | never | never |",
        "| tokens | 64 | winner | ddp | ddp |",
    ]


def test_a_target_half_way_through_ddps_run(benches: list[Path]) -> None:
    # DDP's eval loss at step 2 is 3.0; PALSGD's 3.5 there, so it reaches 3.0 after step 4
    rows = regime_rows([read_bench(benches[0])], [8e6, 80e6], 0.5)
    assert [(row["speedup_vs_ddp"], row["ddp_time_to_target_s"]) for row in rows] == [
        (pytest.approx(3.6 / 4.4), pytest.approx(3.6)), (pytest.approx(1.78 / 3.05), pytest.approx(1.78))]


def target_bench(root: Path, budget: str = "target") -> Path:
    """DDP with :func:`recorded.localsgd_to_target` (DDP's final 2.0 after 6 steps) and
    :func:`recorded.palsgd_capped` (never, in its 8)."""
    directory = bench(root, budget, 2, {})
    recorded.localsgd_to_target(directory / "runs")
    recorded.palsgd_capped(directory / "runs")
    return directory


def test_a_target_bench_maps_the_steps_past_ddps(tmp_path: Path) -> None:
    # Local SGD at 1 MB/s: the 1 MB broadcast (payload 2/3 MB: 1 s), all-reduces after steps 2, 4
    # and 6 (1.5 s each) replace its 0.3 s of waiting: 3.6 - 0.3 + 5.5 = 8.8 s against DDP's 7.2 s;
    # at 10 MB/s 3.3 + 0.55 = 3.85 s against 3.56 s
    rows = regime_rows([read_bench(target_bench(tmp_path))], [8e6, 80e6], 1.0)
    assert [tuple(row.values()) for row in rows] == [
        ("target", 64, "localsgd", 8e6, pytest.approx(7.2 / 8.8), pytest.approx(8.8), pytest.approx(7.2)),
        ("target", 64, "palsgd", 8e6, None, None, pytest.approx(7.2)),
        ("target", 64, "localsgd", 80e6, pytest.approx(3.56 / 3.85), pytest.approx(3.85), pytest.approx(3.56)),
        ("target", 64, "palsgd", 80e6, None, None, pytest.approx(3.56)),
    ]


def test_tokens_per_step_count_every_rank_of_every_group(tmp_path: Path) -> None:
    directory = bench(tmp_path, "tokens", 3, {}, layout={"groups": 2, "group_size": 2})
    assert read_bench(directory).tokens_per_step == 2 * 2 * 3 * SEQ_LEN


@pytest.mark.parametrize("case, arguments, message", [
    ("absent", ARGS, "BENCH_DIR: {absent} is not a directory"),
    ("run", ARGS, "is not a lowcomm bench output (no results.csv with a budget)"),
    ("no_ddp", ARGS, "has no DDP run to compare with"),
    ("twice", ARGS, "are both the steps protocol at 64 tokens per step"),
    ("time", ARGS, "is a --budget time benchmark, whose runs stop at DDP's measured clock"),
    ("good", ["--bandwidth", "8mbit,fast"], "rate 'fast' is not a tc-style rate"),
    ("good", ["--bandwidth", "8mbit,unlimited"], "--bandwidth: 'unlimited' cannot be projected to"),
    ("good", ["--bandwidth", "8mbit,1mbps"], "--bandwidth: a rate is named twice"),
    ("good", [*ARGS, "--target", "0"], "--target: must be a fraction in (0, 1], got 0.0"),
    ("good", [*ARGS, "--target", "1.5"], "--target: must be a fraction in (0, 1], got 1.5"),
    ("out_file", ARGS, "--out: {out} exists and is not a directory"),
])
def test_bad_input_is_one_line_and_exit_code_2_before_anything_is_written(
        case: str, arguments: list[str], message: str, benches: list[Path], tmp_path: Path, run_cli) -> None:
    directories = {
        "absent": [tmp_path / "absent"],
        "run": [benches[0] / "runs" / "ddp"],
        "no_ddp": [bench(tmp_path / "no_ddp", "steps", 2, {"palsgd": (1.9, 3.0)})],
        "twice": [benches[0], bench(tmp_path / "again", "steps", 2, {})],
        "time": [target_bench(tmp_path / "time", "time")],
        "good": benches[:1],
        "out_file": benches[:1],
    }[case]
    if case == "no_ddp":
        for path in (directories[0] / "runs" / "ddp").iterdir():
            path.unlink()
    out = tmp_path / "map"
    if case == "out_file":
        out.write_text("mine")
    code, stdout, err = run_cli(["regime-map", *map(str, directories), *arguments, "--out", str(out)])
    assert code == 2 and stdout == ""
    assert out.read_text() == "mine" if case == "out_file" else not out.exists()
    assert err.startswith("lowcomm regime-map: error:") and len(err.strip().splitlines()) == 1
    assert message.format(absent=tmp_path / "absent", out=out) in err
