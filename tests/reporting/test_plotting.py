"""The plots, checked through the data they draw: recorded runs written by hand (tests/benchmarks/recorded.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from lowcomm.reporting.plotting import comparison_figure, loss_figure, new_figure, plot_bench_curves, save_figure
from lowcomm.reporting.records import read_records
from tests.benchmarks import recorded
from tests.benchmarks.recorded import MB


def lines(axes) -> dict[str, tuple[list, list]]:
    return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in axes.get_lines()}


def test_loss_figure_draws_train_and_eval_loss_against_step_and_clock_with_syncs_marked(tmp_path: Path) -> None:
    records = read_records(recorded.palsgd(tmp_path) / "metrics.jsonl")
    by_step, by_time = loss_figure(records, "palsgd").axes
    assert lines(by_step) == {
        "train loss (worker 0)": ([1, 2, 4], [9.0, 9.0, 9.0]),  # step 3 was a pseudo-synchronisation
        "eval loss (global model)": ([2, 4], [3.2, 2.5]),
    }
    assert lines(by_time) == {
        "train loss (worker 0)": ([1.0, 2.0, 4.0], [9.0, 9.0, 9.0]),
        "eval loss (global model)": ([1.5, 2.8], [3.2, 2.5]),
    }
    # the outer synchronisation after step 3, at the clock interpolated between steps 2 and 4
    (step_ticks,), (time_ticks,) = (axes.collections[0].get_segments() for axes in (by_step, by_time))
    assert step_ticks[0][0] == 3 and time_ticks[0][0] == pytest.approx(3.0)


def test_loss_figure_of_a_run_without_syncs_has_no_ticks(tmp_path: Path) -> None:
    figure = loss_figure(read_records(recorded.ddp(tmp_path) / "metrics.jsonl"), "ddp")
    assert all(not axes.collections for axes in figure.axes)


def test_comparison_figure_overlays_runs_against_step_clock_tokens_and_bytes(tmp_path: Path) -> None:
    runs = [("ddp", read_records(recorded.ddp(tmp_path) / "metrics.jsonl").evaluations),
            ("localsgd", read_records(recorded.localsgd(tmp_path) / "metrics.jsonl").evaluations)]
    step, time, tokens, sent = comparison_figure(runs).axes
    assert lines(step) == {"ddp": ([2, 4], [3.0, 2.0]), "localsgd": ([2, 4], [3.5, 1.9])}
    assert lines(time) == {"ddp": ([2.0, 4.0], [3.0, 2.0]), "localsgd": ([1.5, 3.0], [3.5, 1.9])}
    assert lines(tokens)["ddp"][0] == [200, 400]
    assert lines(sent) == {"ddp": ([3 * MB, 6 * MB], [3.0, 2.0]), "localsgd": ([2.5 * MB, 4 * MB], [3.5, 1.9])}
    assert [axes.get_xlabel() for axes in (step, time, tokens, sent)] == [
        "step", "wall-clock (s, worker 0)", "tokens trained on (all workers)", "bytes sent by worker 0"]


def test_bench_curves_are_three_pngs_with_the_target(tmp_path: Path) -> None:
    runs = [("ddp", read_records(recorded.ddp(tmp_path) / "metrics.jsonl").evaluations)]
    assert plot_bench_curves(runs, [2.0, 3.0], tmp_path) == ["loss_vs_time.png", "loss_vs_tokens.png", "loss_vs_bytes.png"]
    for name in ("loss_vs_time.png", "loss_vs_tokens.png", "loss_vs_bytes.png"):
        with Image.open(tmp_path / name) as image:
            assert image.format == "PNG"


def test_save_figure_replaces_the_file_whole_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "plot.png"
    path.write_bytes(b"old")
    figure, _ = new_figure(columns=2)
    save_figure(figure, path)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (2 * 768, 504)  # two 6.4 x 4.2 inch panels at 120 dpi
    assert [p.name for p in tmp_path.iterdir()] == ["plot.png"]
