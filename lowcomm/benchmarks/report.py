"""What a benchmark shows: eval loss against wall-clock, tokens and bytes, and ``report.md``.

Plots use matplotlib's object API (``Figure``, rendered by Agg), so no display is needed and no
global backend is changed.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure

from lowcomm.benchmarks.projection import Projection
from lowcomm.benchmarks.results import cell
from lowcomm.benchmarks.runs import Evaluation, Run

CURVES: dict[str, tuple[str, Callable[[Evaluation], float]]] = {
    "loss_vs_time.png": ("wall-clock (s, worker 0)", lambda e: e.elapsed_s),
    "loss_vs_tokens.png": ("tokens trained on (all workers)", lambda e: e.tokens),
    "loss_vs_bytes.png": ("bytes sent by worker 0", lambda e: e.comm_bytes),
}


def plot_curves(runs: list[Run], target: float, out: Path) -> list[str]:
    """One PNG per entry of :data:`CURVES` in ``out``; return their names."""
    for name, (label, x_of) in CURVES.items():
        figure = Figure(figsize=(6.4, 4.2), layout="constrained")
        axes = figure.subplots()
        for run in runs:
            axes.plot([x_of(e) for e in run.evaluations], [e.eval_loss for e in run.evaluations],
                      marker=".", label=run.algo)
        axes.axhline(target, color="grey", linestyle="--", linewidth=1, label="target")
        if name == "loss_vs_bytes.png":
            axes.set_xscale("symlog", linthresh=1e6)
        axes.set(xlabel=label, ylabel="eval loss")
        axes.grid(alpha=0.3)
        axes.legend()
        figure.savefig(out / name, dpi=120)
    return list(CURVES)


def plot_speedups(projections: list[Projection], path: Path) -> None:
    """Projected speedup over DDP against bandwidth: a line per algorithm and worker count."""
    figure = Figure(figsize=(6.4, 4.2), layout="constrained")
    axes = figure.subplots()
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
    figure.savefig(path, dpi=120)


def machine() -> str:
    """The CPU (and GPU), core count, memory, OS and versions, in one line."""
    cpu = platform.processor() or platform.machine()
    if Path("/proc/cpuinfo").is_file():
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30 if hasattr(os, "sysconf") else None
    parts = [f"{cpu}, {os.cpu_count()} cores"]
    if memory_gib is not None:
        parts.append(f"{memory_gib:.0f} GiB RAM")
    if torch.cuda.is_available():
        parts.append(f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}")
    parts.append(f"{platform.system()} {platform.release()}, Python {platform.python_version()}, torch {torch.__version__}")
    return "; ".join(parts)


def markdown_table(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row[c]) or "—" for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def write_report(
    out: Path,
    *,
    command: list[str],
    run_commands: dict[str, str],
    settings: str,
    target: float,
    target_source: str,
    table: str,
    plots: list[str],
    notes: list[str],
) -> Path:
    """Write ``out/report.md``: the exact command, the machine, the settings, the table and plots."""
    lines = [
        "# lowcomm bench",
        "",
        "Command:",
        "",
        "    " + " ".join(command),
        "",
        f"Machine: {machine()}",
        "",
        f"Settings: {settings}",
        "",
        f"Target: eval loss {target:.4f} ({target_source}).",
        "",
        table,
        "",
        "`time_to_target_s` is worker 0's clock at the first evaluation at or below the target (empty: never "
        "reached); `comm_share` is the mean worker's share of wall-clock spent waiting for communication.",
        "",
    ]
    lines += [f"![{name}]({name})" for name in plots] + [""]
    lines += ["Runs:", ""] + [f"- {algo}: `{text}`" for algo, text in run_commands.items()] + [""]
    if notes:
        lines += ["Notes:", ""] + [f"- {note}" for note in notes] + [""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
