"""``lowcomm bench`` and ``lowcomm project`` end to end on gpt-tiny: real runs, their table, report and plots."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from lowcomm.benchmarks.results import COLUMNS
from tests.train_runs import PERIODIC, SHORT, records

PLOTS = ("loss_vs_time.png", "loss_vs_tokens.png", "loss_vs_bytes.png")


def lowcomm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lowcomm", *args], capture_output=True, text=True, timeout=400)


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "out"
    cache = tmp_path_factory.mktemp("cache")
    result = lowcomm("bench", "--algos", "ddp,palsgd", "--workers", "2", *SHORT, *PERIODIC,
                     "--set", "palsgd.outer-momentum=0", "--cache-dir", str(cache), "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as file:
        return list(csv.DictReader(file))


def test_every_algorithm_runs_with_the_same_settings(bench: Path) -> None:
    # The same expected tokens: after 4 warm-up steps, PALSGD trains in 1 - p = 0.8 of its steps.
    for algo, steps in (("ddp", 32), ("palsgd", 4 + 35)):
        config = (bench / "runs" / algo / "config.yaml").read_text()
        assert f"algo: {algo}" in config and f"\nsteps: {steps}\n" in config and "seed: 0" in config
    assert "sync_interval: null" in (bench / "runs" / "ddp" / "config.yaml").read_text()  # PALSGD's flag only
    assert "sync_interval: 4" in (bench / "runs" / "palsgd" / "config.yaml").read_text()
    assert "outer_momentum: 0.0" in (bench / "runs" / "palsgd" / "config.yaml").read_text()  # --set palsgd's own


def test_results_csv_compares_with_ddp(bench: Path) -> None:
    rows = read_csv(bench / "results.csv")
    assert list(rows[0]) == list(COLUMNS)
    assert [row["algo"] for row in rows] == ["ddp", "palsgd"]
    ddp_evals = records(bench / "runs" / "ddp", "eval")
    target = ddp_evals[-1]["eval_loss"]
    first_at_target = next(r["elapsed_s"] for r in ddp_evals if r["eval_loss"] <= target)
    ddp = rows[0]
    assert float(ddp["final_eval_loss"]) == pytest.approx(target, rel=1e-5)
    assert float(ddp["time_to_target_s"]) == pytest.approx(first_at_target, rel=1e-5)
    assert float(ddp["speedup_vs_ddp"]) == 1
    assert int(ddp["tokens"]) == 2 * 32 * 8 * 32  # workers x steps x batch x sequence
    palsgd = rows[1]
    reached = [r["elapsed_s"] for r in records(bench / "runs" / "palsgd", "eval") if r["eval_loss"] <= target]
    assert palsgd["time_to_target_s"] == (f"{reached[0]:.6g}" if reached else "")
    assert int(palsgd["comm_bytes_total"]) < int(ddp["comm_bytes_total"])
    assert 0 <= float(palsgd["comm_share"]) < 1


def test_report_names_the_command_and_shows_the_plots(bench: Path) -> None:
    report = (bench / "report.md").read_text()
    assert "lowcomm bench --algos ddp,palsgd" in report and "--set palsgd.outer-momentum=0" in report
    assert "Machine:" in report and "| ddp |" in report
    for plot in PLOTS:
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


@pytest.mark.parametrize("arguments, message", [
    (["--algos", "ddp,adam"], "--algos: unknown algorithm 'adam'"),
    (["--algos", "palsgd"], "--target-loss: needed when ddp is not among --algos"),
    (["--algos", "ddp,ddp"], "--algos: an algorithm is named twice"),
    (["--algo", "ddp"], "--algo: name the algorithms to compare with --algos"),
    (["--steps", "0"], "steps"),
    (["--set", "palsgd.lr"], "--set: expected ALGO.OPTION=VALUE, got 'palsgd.lr'"),
    (["--algos", "ddp,palsgd", "--set", "noloco.lr=1e-3"], "--set: 'noloco' is not among --algos"),
    (["--set", "ddp.speed=2"], "--set: 'speed' is not a train option"),
    (["--set", "ddp.sync-interval=8"], "ddp does not take it"),
    (["--set", "palsgd.lr=fast"], "lr"),
])
def test_bad_input_exits_2_before_any_run(arguments: list[str], message: str, tmp_path: Path) -> None:
    result = lowcomm("bench", *arguments, "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
