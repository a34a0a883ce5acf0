"""``lowcomm plot`` on runs recorded by hand (tests/benchmarks/recorded.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from lowcomm.cli import main
from tests.benchmarks import recorded


def test_two_runs_and_a_benchmark_in_one_picture(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ddp, localsgd = recorded.ddp(tmp_path / "a"), recorded.localsgd(tmp_path / "b")
    bench = tmp_path / "bench"
    recorded.palsgd(bench / "runs"), recorded.noloco(bench / "runs")
    out = tmp_path / "compare.png"
    assert main(["plot", str(ddp), str(localsgd), str(bench), "--out", str(out)]) == 0
    sync_out = tmp_path / "compare-sync.png"  # PALSGD's outer step carries diagnostics
    assert capsys.readouterr().out == (f"lowcomm plot: 4 runs -> {out}\n"
                                       f"lowcomm plot: sync diagnostics of 1 runs -> {sync_out}\n")
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size == (2 * 768, 2 * 504)
    with Image.open(sync_out) as image:
        assert image.format == "PNG" and image.size == (3 * 768, 504)


@pytest.mark.parametrize(("make", "out", "message"), [
    (lambda root: root / "missing", "x.png", "is not a directory"),
    (lambda root: root, "x.png", "holds neither a run"),
    (lambda root: recorded.write_run(root / "early", {}, [{"step": 0, "event": "start"}]), "x.png", "no evaluations"),
    (lambda root: recorded.write_run(root / "diverged", {}, [recorded.evaluation(2, float("nan"), 1.0, 0, 0.0),
                                                              recorded.evaluation(4, float("inf"), 2.0, 0, 0.0)]),
     "x.png", "every eval loss of {root}/diverged is NaN or infinite (it diverged); nothing to plot, leave it out"),
    (lambda root: recorded.ddp(root), "x.txt", "no image suffix"),
    (lambda root: recorded.ddp(root), "missing/x.png", "is not a directory"),
])
def test_bad_input_is_one_line_and_exit_code_2(make, out, message, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run_dir = make(tmp_path)
    assert main(["plot", str(run_dir), "--out", str(tmp_path / out)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("lowcomm plot: error: ") and message.format(root=tmp_path) in error
    assert error.count("\n") == 1 and not (tmp_path / out).exists()
    assert not (tmp_path / out).exists()
