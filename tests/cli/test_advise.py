"""``lowcomm advise`` on the recorded DDP run of :mod:`tests.benchmarks.recorded`, against hand-worked numbers.

The run: 4 workers, 4 steps, 4.5 s of which 0.8 s waiting, so c = (4.5 - 0.8) / 4 = 0.925 s per step
besides communication; each step all-reduces a 1 MB payload (250,000 parameters), and 0.5 s of
backward pass per step can hide the early buckets' 0.4 MB payload.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lowcomm.benchmarks.runs import read_run
from lowcomm.cli import main
from lowcomm.cli.advise import advise
from lowcomm.communication.network_model import NetworkModel
from lowcomm.training.config import load_config
from tests.benchmarks import recorded


@pytest.fixture
def ddp_run(tmp_path: Path) -> Path:
    directory = recorded.ddp(tmp_path)
    config = load_config(None, {"algo": "ddp", "workers": 4, "steps": 4, "out": directory})
    (directory / "config.yaml").write_text(config.to_yaml())
    return directory


def test_a_slow_link_gets_palsgd_with_the_smallest_interval_that_hides_the_traffic(ddp_run: Path) -> None:
    advice = advise(read_run(ddp_run), NetworkModel(8e6), 4)  # 1 MB/s
    # DDP: an all-reduce sends 1.5 MB (1.5 s), of which the early buckets' 0.6 s hide behind 0.5 s
    assert (advice.compute_s, advice.ddp_comm_s) == (pytest.approx(0.925), pytest.approx(1.0))
    assert advice.ddp_share == pytest.approx(1.0 / 1.925)  # 51.9% > 10%
    # PALSGD: a step costs 0.8 x 0.925 = 0.74 s plus 1.5 s / H; 1.5 / H <= 0.05 (0.74 + 1.5 / H) needs
    # H >= 38.5, so H = 64
    assert (advice.algo, advice.sync_interval, advice.pseudo_sync_prob) == ("palsgd", 64, 0.2)
    assert advice.step_s == pytest.approx(0.74 + 1.5 / 64)
    assert advice.comm_share == pytest.approx((1.5 / 64) / (0.74 + 1.5 / 64))
    assert advice.speedup == pytest.approx(1.925 / (0.74 + 1.5 / 64))
    assert advice.command == [
        "lowcomm", "train", "--config", str(ddp_run / "config.yaml"), "--algo", "palsgd", "--workers", "4",
        "--sync-interval", "64", "--pseudo-sync-prob", "0.2", "--out", f"{ddp_run}-palsgd-k4-h64"]


def test_two_workers_send_less_and_need_a_shorter_interval(ddp_run: Path) -> None:
    advice = advise(read_run(ddp_run), NetworkModel(8e6), 2)
    # a ring of two sends the 1 MB payload once (1 s); the early 0.4 MB (0.4 s) hide: 0.6 s per step
    assert advice.ddp_comm_s == pytest.approx(0.6)
    # 1 / H <= 0.05 (0.74 + 1 / H) needs H >= 25.7: H = 32
    assert (advice.algo, advice.sync_interval) == ("palsgd", 32)
    assert advice.speedup == pytest.approx(1.525 / (0.74 + 1 / 32))


def test_a_fast_link_keeps_ddp(ddp_run: Path) -> None:
    advice = advise(read_run(ddp_run), NetworkModel(1e9), 4)  # 125 MB/s
    # 1.5 MB take 0.012 s, 0.0048 s of them hidden: 0.0072 s, 0.8% of a step
    assert advice.ddp_comm_s == pytest.approx(0.0072)
    assert (advice.algo, advice.sync_interval, advice.speedup) == ("ddp", None, pytest.approx(1.0))
    assert advice.command[4:] == ["--workers", "4", "--out", f"{ddp_run}-ddp-k4"]


def test_the_command_line_prints_a_valid_command(ddp_run: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["advise", str(ddp_run), "--bandwidth", "8mbit"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == "DDP at 8mbit with 4 workers: 1 s communicating per step, 51.9% of its step"
    assert lines[2] == "advice: PALSGD with H = 64, p = 0.2: communication 3.1% of its step, 2.52x DDP's steps per second"
    assert lines[3].startswith(f"lowcomm train --config {ddp_run / 'config.yaml'} --algo palsgd")


def test_a_target_bench_adds_the_measured_steps_to_ddps_loss(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # DDP's final 2.0 after 4 steps, projected at 1 MB/s: 7.2 s; Local SGD's after 6 steps: 8.8 s
    # (tests/cli/test_regime_map.py works both out); PALSGD never gets there in its 8
    directory = tmp_path / "bench"
    ddp = recorded.ddp(directory / "runs")
    (ddp / "config.yaml").write_text(load_config(None, {"algo": "ddp", "workers": 4, "steps": 4, "out": ddp}).to_yaml())
    recorded.localsgd_to_target(directory / "runs")
    recorded.palsgd_capped(directory / "runs")
    assert main(["advise", str(directory), "--bandwidth", "8mbit"]) == 0
    assert capsys.readouterr().out.splitlines()[4:] == [
        "measured, to DDP's final eval loss 2.0000 (DDP: 4 steps, 7.2 s projected):",
        "  localsgd: 6 steps (1.50x DDP's), 8.8 s projected: 0.82x DDP",
        "  palsgd: not within its 8 steps",
    ]


SUMMARY_EDITS = {
    "no JSON": ("{", "summary.json is not readable JSON (JSONDecodeError)"),
    "not an object": ("[]", "summary.json does not hold a JSON object"),
    "missing keys": ('{"algo": "ddp"}', "summary.json lacks workers, steps, final_eval_loss, wall_time_s"),
    "no parameter count": (lambda s: s.pop("parameters"), "summary.json lacks parameters"),
    "steps as text": (lambda s: s.update(steps="4"), "summary.json: steps must be a whole number >= 1, got '4'"),
    "zero steps": (lambda s: s.update(steps=0), "summary.json: steps must be a whole number >= 1, got 0"),
    "NaN wall time": (lambda s: s.update(wall_time_s=float("nan")),
                      "summary.json: wall_time_s must be a finite number >= 0, got nan"),
    "algorithm as a number": (lambda s: s.update(algo=1), "summary.json: algo must be text, got 1"),
}


@pytest.mark.parametrize("case", SUMMARY_EDITS)
def test_an_edited_summary_is_one_line_and_exit_code_2(case: str, ddp_run: Path, run_cli) -> None:
    edit, message = SUMMARY_EDITS[case]
    path = ddp_run / "summary.json"
    if isinstance(edit, str):
        path.write_text(edit)
    else:
        summary = json.loads(path.read_text())
        edit(summary)
        path.write_text(json.dumps(summary))
    code, out, err = run_cli(["advise", str(ddp_run), "--bandwidth", "100mbit"])
    assert (code, out) == (2, "")
    assert err.startswith("lowcomm advise: error: run: ") and err.count("\n") == 1 and message in err


@pytest.mark.parametrize("make, arguments, message", [
    (None, ["--bandwidth", "100mbit"], "holds neither a finished run nor a benchmark's runs/"),
    ("ddp", ["--bandwidth", "fast"], "rate 'fast' is not a tc-style rate"),
    ("ddp", ["--bandwidth", "unlimited"], "--bandwidth: an unlimited link needs no advice"),
    ("ddp", ["--bandwidth", "1gbit", "--workers", "1"], "--workers: must be >= 2, got 1"),
    ("palsgd", ["--bandwidth", "1gbit"], "is a palsgd run; advise needs a DDP run"),
])
def test_bad_input_is_one_line_and_exit_code_2(make, arguments, message, tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    directory = getattr(recorded, make)(tmp_path) if make else tmp_path / "absent"
    assert main(["advise", str(directory), *arguments]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and err.startswith("lowcomm advise: error:")
