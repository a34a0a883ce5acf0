"""Projected speedups over DDP (``lowcomm project``) and their maps (``lowcomm regime-map``),
drawn like every other plot (:mod:`lowcomm.reporting.plotting`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.colors import ListedColormap, LogNorm

from lowcomm.benchmarks.projection import Projection
from lowcomm.reporting.plotting import new_figure, save_figure


def plot_speedups(projections: list[Projection], path: Path) -> None:
    """``lowcomm project``: projected speedup over DDP against bandwidth, a line per algorithm and
    worker count."""
    figure, (axes,) = new_figure()
    lines: dict[tuple[str, int], list[Projection]] = {}
    for p in projections:
        if p.algo != "ddp" and p.speedup_vs_ddp is not None:
            lines.setdefault((p.algo, p.workers), []).append(p)
    for (algo, workers), points in lines.items():
        points.sort(key=lambda p: p.bandwidth_bps)
        axes.plot([p.bandwidth_bps for p in points], [p.speedup_vs_ddp for p in points], marker="o",
                  label=f"{algo}, {workers} workers")
    axes.axhline(1.0, color="grey", linestyle="--", linewidth=1)
    axes.set_xscale("log")
    axes.set(xlabel="bandwidth per worker (bit/s)", ylabel="time-to-target speedup over DDP")
    axes.grid(alpha=0.3, which="both")
    if lines:
        axes.legend()
    save_figure(figure, path)


SpeedupGrid = dict[int, Sequence[float | None]]
"""Tokens per step (the rows, ascending) to a value per bandwidth (the columns)."""


def draw_grid_axes(axes: Axes, rows: Sequence[int], columns: Sequence[str]) -> None:
    """Label a map's rows with tokens per step (ascending downwards) and its columns with bandwidths."""
    axes.set_xticks(range(len(columns)), columns)
    axes.set_yticks(range(len(rows)), [f"{tokens:,}" for tokens in rows])
    axes.set(xlabel="bandwidth per worker", ylabel="tokens per step (all ranks)")


def plot_speedup_map(grid: SpeedupGrid, columns: Sequence[str], title: str, path: Path) -> None:
    """``lowcomm regime-map``: speedups over DDP as a heatmap on a diverging log scale centred at 1,
    each cell's number printed in it, ``never`` on grey where the target is not reached."""
    values = np.array([[np.nan if s is None else s for s in row] for row in grid.values()], dtype=float)
    reached = values[~np.isnan(values)]
    reach = max(2.0, *np.maximum(reached, 1 / reached)) if reached.size else 2.0
    figure, (axes,) = new_figure()
    norm = LogNorm(1 / reach, reach)
    image = axes.imshow(np.ma.masked_invalid(values), cmap=colormaps["RdBu"].with_extremes(bad="lightgrey"),
                        norm=norm, aspect="auto")
    figure.colorbar(image, ax=axes, label="time-to-target speedup over DDP")
    for (row, column), value in np.ndenumerate(values):
        dark = not np.isnan(value) and abs(norm(value) - 0.5) > 0.3
        axes.text(column, row, "never" if np.isnan(value) else f"{value:.2f}x", ha="center", va="center",
                  color="white" if dark else "black")
    draw_grid_axes(axes, list(grid), columns)
    axes.set_title(title)
    save_figure(figure, path)


def plot_winner_map(grid: dict[int, Sequence[str]], columns: Sequence[str], algos: Sequence[str], title: str,
                    path: Path) -> None:
    """``lowcomm regime-map``: the fastest algorithm to the target in each cell, named and coloured
    (the first of ``algos`` grey, the others a colour each in their order, so maps side by side agree)."""
    colours = ["lightgrey", *colormaps["tab10"].colors][: len(algos)]
    indices = np.array([[algos.index(algo) for algo in row] for row in grid.values()])
    figure, (axes,) = new_figure()
    axes.imshow(indices, cmap=ListedColormap(colours), vmin=-0.5, vmax=len(colours) - 0.5, aspect="auto")
    for (row, column), index in np.ndenumerate(indices):
        axes.text(column, row, algos[index], ha="center", va="center")
    draw_grid_axes(axes, list(grid), columns)
    axes.set_title(title)
    save_figure(figure, path)
