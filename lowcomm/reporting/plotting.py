"""The plots of runs: a run's ``loss.png`` and runs side by side (``lowcomm plot``, ``lowcomm
bench``); projected speedups and their maps are :mod:`lowcomm.benchmarks.plots`'.

Plots use matplotlib's object API (``Figure``, rendered by Agg), so no display is needed and no
global backend is changed. Files are written atomically (:mod:`lowcomm.atomic`), so a reader never
sees half a picture.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from lowcomm.atomic import write_atomically

if TYPE_CHECKING:
    from lowcomm.reporting.records import Evaluation, Records, SyncDiagnostics

Curves = Sequence[tuple[str, Sequence["Evaluation"]]]
"""Labelled eval-loss curves: (label, evaluations) per run."""

X_AXES: dict[str, tuple[str, Callable[["Evaluation"], float]]] = {
    "step": ("step", lambda e: e.step),
    "time": ("wall-clock (s, worker 0)", lambda e: e.elapsed_s),
    "tokens": ("tokens trained on (all workers)", lambda e: e.tokens),
    "bytes": ("bytes sent by worker 0", lambda e: e.comm_bytes),
}
SYNC_PANELS = {
    "pseudo_grad_norm": "pseudo-gradient norm ||Delta||",
    "worker_spread": "workers' spread, mean ||x_k - mean x||",
    "pseudo_grad_cosine": "cosine with the previous Delta",
}
SYNC_PLOT = "sync_diagnostics.png"
BENCH_PLOTS = {"loss_vs_time.png": "time", "loss_vs_tokens.png": "tokens", "loss_vs_bytes.png": "bytes"}
PANEL_SIZE = (6.4, 4.2)
DPI = 120


def new_figure(columns: int = 1, rows: int = 1) -> tuple[Figure, list[Axes]]:
    """A figure of ``rows`` x ``columns`` panels, and its axes in reading order."""
    figure = Figure(figsize=(PANEL_SIZE[0] * columns, PANEL_SIZE[1] * rows), layout="constrained")
    return figure, list(np.atleast_1d(figure.subplots(rows, columns)).flat)


def save_figure(figure: Figure, path: Path) -> None:
    """Render ``figure`` to ``path`` (format from its suffix), atomically."""
    suffix = path.suffix.lstrip(".").lower()
    write_atomically(path, lambda temporary: figure.savefig(temporary, dpi=DPI, format=suffix))


def draw_eval_curves(axes: Axes, curves: Curves, x_axis: str, targets: Sequence[float] = ()) -> None:
    """Eval loss against ``x_axis`` (a key of :data:`X_AXES`), one line per run, a dashed line per target
    and a ring on each run's first evaluation at or below each target (where it crossed)."""
    label, x_of = X_AXES[x_axis]
    for name, evaluations in curves:
        (line,) = axes.plot([x_of(e) for e in evaluations], [e.eval_loss for e in evaluations], marker=".", label=name)
        crossed = [next((e for e in evaluations if e.eval_loss <= target), None) for target in targets]
        reached = [e for e in crossed if e is not None]
        axes.scatter([x_of(e) for e in reached], [e.eval_loss for e in reached], s=80, facecolors="none",
                     edgecolors=line.get_color(), zorder=3)
    for index, target in enumerate(targets):
        axes.axhline(target, color="grey", linestyle="--", linewidth=1, label="targets" if index == 0 else None)
    if x_axis == "bytes":
        axes.set_xscale("symlog", linthresh=1e6)
    axes.set(xlabel=label, ylabel="eval loss")
    axes.grid(alpha=0.3)
    axes.legend()


def plot_bench_curves(curves: Curves, targets: Sequence[float], out: Path) -> list[str]:
    """``lowcomm bench``: one PNG per entry of :data:`BENCH_PLOTS` in ``out``; return their names."""
    for name, x_axis in BENCH_PLOTS.items():
        figure, (axes,) = new_figure()
        draw_eval_curves(axes, curves, x_axis, targets)
        save_figure(figure, out / name)
    return list(BENCH_PLOTS)


def comparison_figure(curves: Curves) -> Figure:
    """``lowcomm plot``: eval loss against step, wall-clock, tokens and bytes sent, one line per run."""
    figure, panels = new_figure(columns=2, rows=2)
    for axes, x_axis in zip(panels, X_AXES):
        draw_eval_curves(axes, curves, x_axis)
    return figure


def sync_figure(runs: Sequence[tuple[str, Sequence[SyncDiagnostics]]]) -> Figure:
    """The outer steps' diagnostics against step, a panel each (:data:`SYNC_PANELS`), one line per run."""
    figure, panels = new_figure(columns=len(SYNC_PANELS))
    for axes, (key, label) in zip(panels, SYNC_PANELS.items()):
        for name, diagnostics in runs:
            points = [(d.step, getattr(d, key)) for d in diagnostics if getattr(d, key) is not None]
            axes.plot([step for step, _ in points], [value for _, value in points], marker=".", label=name)
        axes.set(xlabel="step", ylabel=label)
        axes.grid(alpha=0.3)
        axes.legend()
    return figure


def loss_figure(records: Records, title: str) -> Figure:
    """A run's ``loss.png``: rank 0's training loss and the global model's eval loss against step
    and against wall-clock, each outer synchronisation marked by a tick on the x axis."""
    figure, panels = new_figure(columns=2)
    train_steps = [p.step for p in records.train]
    train_times = [p.elapsed_s for p in records.train]
    steps = {"x": train_steps, "eval": [e.step for e in records.evaluations], "sync": records.sync_steps}
    times = {
        "x": train_times,
        "eval": [e.elapsed_s for e in records.evaluations],
        # a sync step's clock: interpolated between the training records around it
        "sync": list(np.interp(records.sync_steps, train_steps, train_times)) if train_steps else [],
    }
    for axes, x, label in ((panels[0], steps, "step"), (panels[1], times, "wall-clock (s, worker 0)")):
        axes.plot(x["x"], [p.loss for p in records.train], linewidth=0.8, alpha=0.6, label="train loss (worker 0)")
        axes.plot(x["eval"], [e.eval_loss for e in records.evaluations], marker="o", label="eval loss (global model)")
        if x["sync"]:
            axes.vlines(x["sync"], 0, 0.05, transform=axes.get_xaxis_transform(), color="tab:red", linewidth=1,
                        label="outer synchronisation")
        axes.set(xlabel=label, ylabel="loss")
        axes.grid(alpha=0.3)
        axes.legend()
    figure.suptitle(title)
    return figure
