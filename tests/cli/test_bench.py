"""``lowcomm bench`` and ``lowcomm project`` end to end on gpt-tiny: real runs, their table, report and plots."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from lowcomm.algorithms import ALGORITHMS
from lowcomm.benchmarks.results import COLUMNS
from lowcomm.cli.bench import evaluation_grid, planned_steps, run_flags
from lowcomm.launching.rundir import read_run_config
from lowcomm.training.config import load_config
from tests.train_runs import PERIODIC, SHORT, records

PLOTS = ("loss_vs_time.png", "loss_vs_tokens.png", "loss_vs_bytes.png")


def lowcomm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lowcomm", *args], capture_output=True, text=True, timeout=400)


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory, cache_dir: str) -> Path:
    out = tmp_path_factory.mktemp("bench") / "out"
    result = lowcomm("bench", "--algos", "ddp,palsgd", "--budget", "steps", "--workers", "2", *SHORT, *PERIODIC,
                     "--set", "palsgd.outer-momentum=0", "--cache-dir", cache_dir, "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as file:
        return list(csv.DictReader(file))


def test_every_algorithm_runs_the_same_steps_with_the_same_settings(bench: Path) -> None:
    configs = {algo: read_run_config(bench / "runs" / algo) for algo in ("ddp", "palsgd")}
    for algo, config in configs.items():
        assert (config["algo"], config["steps"], config["seed"]) == (algo, 32, 0)
        assert json.loads((bench / "runs" / algo / "summary.json").read_text())["steps"] == 32
    assert "sync_interval" not in configs["ddp"]  # PALSGD's flag only
    assert configs["palsgd"]["sync_interval"] == 4
    assert configs["palsgd"]["outer_momentum"] == 0.0  # --set palsgd's own
    # PALSGD's pseudo-synchronisation steps skip their batches: fewer tokens in the same steps
    skipped = len([r for r in records(bench / "runs" / "palsgd", "sync") if r["sync"] == "pseudo"])
    assert skipped > 0
    assert records(bench / "runs" / "palsgd", "train")[-1]["tokens"] == 2 * (32 - skipped) * 8 * 32


def test_results_csv_compares_with_ddp_at_each_target(bench: Path) -> None:
    rows = read_csv(bench / "results.csv")
    assert list(rows[0]) == list(COLUMNS)
    assert [(row["algo"], row["target"]) for row in rows] == [
        (algo, target) for algo in ("ddp", "palsgd") for target in ("ddp@50%", "ddp@75%", "ddp@90%", "ddp@100%")]
    assert {row["budget"] for row in rows} == {"steps"} and {row["steps"] for row in rows} == {"32"}
    ddp_evals = records(bench / "runs" / "ddp", "eval")
    assert [r["step"] for r in ddp_evals] == [8, 16, 24, 32]
    # 50%, 75%, 90%, 100% of 32 steps: the evaluations at steps 16, 24, 24 (the last at or before 28), 32
    targets = [ddp_evals[i]["eval_loss"] for i in (1, 2, 2, 3)]
    for row, target in zip(rows, targets):
        assert float(row["target_loss"]) == pytest.approx(target, rel=1e-5)
        first_at_target = next(r["elapsed_s"] for r in ddp_evals if r["eval_loss"] <= target)
        assert float(row["time_to_target_s"]) == pytest.approx(first_at_target, rel=1e-5)
        assert float(row["speedup_vs_ddp"]) == 1
    ddp, palsgd = rows[3], rows[7]
    assert float(ddp["final_eval_loss"]) == pytest.approx(targets[-1], rel=1e-5)
    assert int(ddp["tokens"]) == 2 * 32 * 8 * 32  # workers x steps x batch x sequence
    reached = [r["elapsed_s"] for r in records(bench / "runs" / "palsgd", "eval") if r["eval_loss"] <= targets[-1]]
    assert palsgd["time_to_target_s"] == (f"{reached[0]:.6g}" if reached else "")
    assert int(palsgd["comm_bytes_total"]) < int(ddp["comm_bytes_total"])
    assert 0 <= float(palsgd["comm_share"]) < 1


def test_report_names_the_command_and_shows_the_plots(bench: Path) -> None:
    report = (bench / "report.md").read_text()
    assert "lowcomm bench --algos ddp,palsgd --budget steps" in report and "--set palsgd.outer-momentum=0" in report
    assert "equal steps (the PALSGD paper's protocol)" in report and "- ddp@90%: eval loss" in report
    assert "evaluation every 8 steps" in report
    assert "Machine:" in report and "| ddp |" in report
    for plot in (*PLOTS, "sync_diagnostics.png"):  # PALSGD's outer steps carry diagnostics
        assert f"]({plot})" in report
        with Image.open(bench / plot) as image:
            assert image.format == "PNG" and image.width > 300


def test_projection_of_the_benchmark(bench: Path, tmp_path: Path) -> None:
    result = lowcomm("project", str(bench), "--bandwidth", "10mbit,10gbit", "--workers", "2,8", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    rows = read_csv(tmp_path / "projection.csv")
    assert len(rows) == 2 * 2 * 2  # bandwidths x worker counts x algorithms
    ddp = {(float(r["bandwidth_bps"]), int(r["workers"])): float(r["wall_time_s"]) for r in rows if r["algo"] == "ddp"}
    assert ddp[1e7, 2] > ddp[1e10, 2]
    assert ddp[1e7, 8] > ddp[1e7, 2]  # a ring of 8 sends 2 * 7/8 of the payload, a ring of 2 once
    assert (tmp_path / "speedup_vs_bandwidth.png").stat().st_size > 0


STOPPING = ["--algos", "ddp,localsgd", "--workers", "2", "--backend", "sim", "--cap", "2", *SHORT, *PERIODIC,
            "--lr-schedule", "constant"]
"""DDP runs 32 steps; Local SGD at most 64, simulated in one process (the gloo run's losses, sooner)."""


def stopping_bench(budget: str, out: Path, cache_dir: str) -> tuple[list[dict], list[dict], dict]:
    """DDP's and Local SGD's evaluations and Local SGD's summary after ``lowcomm bench --budget BUDGET``."""
    result = lowcomm("bench", "--budget", budget, *STOPPING, "--cache-dir", cache_dir, "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "runs" / "localsgd" / "summary.json").read_text())
    return records(out / "runs" / "ddp", "eval"), records(out / "runs" / "localsgd", "eval"), summary


def test_the_target_budget_runs_local_sgd_until_ddps_final_loss(tmp_path: Path, cache_dir: str) -> None:
    ddp, local, summary = stopping_bench("target", tmp_path / "out", cache_dir)
    target = ddp[-1]["eval_loss"]
    assert [e["step"] for e in ddp] == [8, 16, 24, 32]
    # it stopped at its first evaluation at or below DDP's final eval loss, within the cap of 64 steps
    assert summary["stopped"] == "stop_at_loss" and summary["steps"] == local[-1]["step"] <= 64
    assert local[-1]["eval_loss"] <= target < min(e["eval_loss"] for e in local[:-1])
    assert read_run_config(tmp_path / "out" / "runs" / "localsgd")["steps"] == 64
    row = next(r for r in read_csv(tmp_path / "out" / "results.csv") if r["algo"] == "localsgd" and r["target"] == "ddp@100%")
    assert (row["budget"], row["ended"], row["steps_to_target"]) == ("target", "stop_at_loss", str(local[-1]["step"]))
    assert float(row["time_to_target_s"]) == pytest.approx(local[-1]["elapsed_s"], rel=1e-5)
    assert float(row["speedup_vs_ddp"]) == pytest.approx(ddp[-1]["elapsed_s"] / local[-1]["elapsed_s"], rel=1e-4)
    report = (tmp_path / "out" / "report.md").read_text()
    assert "--budget target --targets 0.5,0.75,0.9,1 --cap 2" in report
    assert f"runs until an evaluation's loss is at most {target:.4f}, or 32 x 2 steps (the cap)" in report
    assert "| steps to target |" in report and f"--stop-at-loss {target}" in report


def test_the_time_budget_stops_local_sgd_at_ddps_clock(tmp_path: Path, cache_dir: str) -> None:
    ddp, local, summary = stopping_bench("time", tmp_path / "out", cache_dir)
    clock = ddp[-1]["elapsed_s"]
    steps = summary["steps"]
    # it stopped where it synchronises (H = 4), at the last such step before its clock would pass DDP's
    # final evaluation by the next (or at its cap), and was evaluated there
    before = [r for r in records(tmp_path / "out" / "runs" / "localsgd", "train") if r["step"] == steps - 4]
    assert before[0]["elapsed_s"] < clock and local[-1]["step"] == steps
    assert (summary["stopped"], steps % 4) == ("stop_after_s", 0) or steps == 64
    report = (tmp_path / "out" / "report.md").read_text()
    assert f"its final evaluation at {clock:.1f} s on worker 0's clock" in report
    assert f"| localsgd | {steps} | {summary.get('stopped', 'steps')} | {local[-1]['eval_loss']:.6g} |" in report


def test_uneven_speeds_are_compared_with_every_worker_at_full_speed(tmp_path: Path, cache_dir: str) -> None:
    """With --worker-speeds each algorithm also runs at full speed (runs/ALGO-full): the goodput is the
    ratio of the two runs' tokens per second, beside each worker's idle share."""
    out = tmp_path / "out"
    result = lowcomm("bench", "--algos", "ddp", "--workers", "2", "--worker-speeds", "1,0.5", "--steps", "8",
                     "--batch-size", "8", "--seq-len", "32", "--eval-batches", "1", "--cache-dir", cache_dir,
                     "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    slowed, full = (json.loads((out / "runs" / name / "summary.json").read_text()) for name in ("ddp", "ddp-full"))
    assert slowed["worker_speeds"] == [1.0, 0.5] and "worker_speeds" not in full
    assert read_run_config(out / "runs" / "ddp-full")["steps"] == 8
    row = read_csv(out / "results.csv")[-1]
    goodput = (slowed["tokens"] / slowed["wall_time_s"]) / (full["tokens"] / full["wall_time_s"])
    assert float(row["goodput"]) == pytest.approx(goodput, rel=1e-5)
    assert row["idle_share_by_worker"] == ";".join(f"{w['idle_share']:.3f}" for w in slowed["worker_times"])
    report = (out / "report.md").read_text()
    assert "| algo | tokens/s | tokens/s at full speed | goodput | idle share by worker |" in report
    assert "Worker speeds 1,0.5: goodput is" in report and "--out " + str(out / "runs" / "ddp-full") in report


@pytest.mark.parametrize("arguments, message", [
    (["--algos", "ddp,adam"], "--algos: unknown algorithm 'adam'"),
    (["--worker-speeds", "1,1,1"], "--worker-speeds: 3 speeds for 2 workers; give one per worker"),
    (["--algos", "palsgd"], "--target-loss: needed when ddp is not among --algos"),
    (["--algos", "ddp,ddp"], "--algos: an algorithm is named twice"),
    (["--algo", "ddp"], "--algo: name the algorithms to compare with --algos"),
    (["--steps", "0"], "steps"),
    (["--set", "palsgd.lr"], "--set: expected ALGO.OPTION=VALUE, got 'palsgd.lr'"),
    (["--algos", "ddp,palsgd", "--set", "noloco.lr=1e-3"], "--set: 'noloco' is not among --algos"),
    (["--set", "ddp.speed=2"], "--set: 'speed' is not a train option"),
    (["--set", "ddp.sync-interval=8"], "ddp does not take it"),
    (["--set", "palsgd.lr=fast"], "lr"),
    (["--budget", "speed"], "--budget: invalid choice"),
    (["--budget", "target", "--cap", "0"], "--cap: must be at least 1 (times DDP's steps), got 0"),
    (["--budget", "time", "--cap", "nan"], "--cap: must be at least 1"),
    (["--cap", "2"], "--cap: only --budget target or time takes it, not tokens"),
    (["--budget", "time", "--algos", "palsgd", "--target-loss", "3"], "--budget: time gives every algorithm DDP's"),
    (["--budget", "target", "--algos", "ddp"], "--budget: target runs other algorithms against DDP"),
    (["--budget", "target", "--target-loss", "0"], "--target-loss: must be a finite number above 0"),
    (["--budget", "target", "--algos", "palsgd", "--target-loss", "-1"], "--target-loss: must be a finite number above 0"),
    (["--budget", "target", "--stop-at-loss", "3"], "--stop-at-loss: bench sets it with --budget target or time"),
    (["--targets", "0.5,2"], "--targets: each fraction must be in (0, 1]"),
    (["--steps", "32", "--eval-every", "8", "--targets", "0.1"], "--targets: 0.1 of 32 steps comes before DDP's first"),
])
def test_bad_input_exits_2_before_any_run(arguments: list[str], message: str, tmp_path: Path, run_cli) -> None:
    code, _, stderr = run_cli(["bench", *arguments, "--out", str(tmp_path / "out")])
    assert code == 2
    assert message in stderr and len(stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_a_real_bench_process_exits_2_with_one_line(tmp_path: Path) -> None:
    result = lowcomm("bench", "--algos", "ddp,adam", "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert result.stderr.startswith("lowcomm bench: error: --algos: unknown algorithm 'adam'")
    assert result.stderr.count("\n") == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("algo", sorted(ALGORITHMS))
def test_the_steps_budget_gives_every_algorithm_the_same_steps(algo: str, tmp_path: Path) -> None:
    config = load_config(None, {"algo": algo, "steps": 100, "workers": 2, "out": tmp_path})
    assert planned_steps(config, "steps") == 100
    # the token budget: after S = 32 warm-up steps, PALSGD trains in 0.8 of its steps: 32 + ceil(68 / 0.8)
    assert planned_steps(config, "tokens") == (32 + 85 if algo == "palsgd" else 100)


@pytest.mark.parametrize("steps, fractions, eval_every", [
    (1200, (0.5, 0.75, 0.9, 1.0), 30),  # the target steps 600, 900, 1080, 1200 share 60; 1200 // 40 = 30 divides it
    (1000, (0.5, 1.0), 25),             # 500, 1000 share 500; 1000 // 40 = 25 divides it
    (1000, (0.48, 1.0), 20),            # 480, 1000 share 40; its largest divisor up to 25 is 20
    (100, (0.5, 0.75, 0.9, 1.0), 1),    # 50, 75, 90, 100 share 5; 100 // 40 = 2: every step
    (32, (0.5, 0.75, 0.9, 1.0), 1),     # 32 // 40 = 0: every step
])
def test_the_evaluation_grid_holds_every_target_step(steps: int, fractions: tuple, eval_every: int) -> None:
    assert evaluation_grid(steps, fractions) == eval_every


OPTION_VALUES = {"sync_interval": "8", "warmup_steps": "4", "pseudo_sync_prob": "0.1", "eta": "0.5", "outer_lr": "0.5",
                 "outer_momentum": "0.5", "outer_device": "cpu", "overlap_steps": "2", "merge_alpha": "0.3",
                 "compress": "int8", "num_fragments": "2", "fragment_pattern": "strided", "outer_repeats": "16",
                 "local_steps": "adaptive"}


@pytest.mark.parametrize("option", sorted(OPTION_VALUES))
@pytest.mark.parametrize("algo", sorted(ALGORITHMS))
def test_bench_passes_every_option_to_every_algorithm_that_takes_it(algo: str, option: str, tmp_path: Path) -> None:
    overlap = {"overlap_steps": "2"} if option == "merge_alpha" else {}  # merge_alpha needs an overlap
    routed = run_flags(algo, {"workers": "2", option: OPTION_VALUES[option], **overlap}, tmp_path)
    config = load_config(None, routed)
    taken = config.algorithm_options()
    assert (option in routed) == (option in taken)
    if option in taken:
        assert str(taken[option]) == OPTION_VALUES[option]
