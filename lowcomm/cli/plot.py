"""``lowcomm plot RUN_DIR... [--out FILE]``: runs side by side, eval loss against step, wall-clock,
tokens and bytes sent; and, when a run has outer steps with diagnostics (DiLoCo, PALSGD, Streaming
DiLoCo), their pseudo-gradient norm, workers' spread and cosine in ``FILE``'s ``-sync`` sibling.

A RUN_DIR is a ``lowcomm train`` run, finished or still going (its ``metrics.jsonl`` needs one
evaluation), or a ``lowcomm bench`` directory, whose runs in ``runs/`` are all plotted. Each line
is labelled with the directory and the algorithm.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from matplotlib.figure import Figure

from lowcomm.cli import usage_error
from lowcomm.launching.rundir import read_run_config
from lowcomm.reporting.plotting import comparison_figure, save_figure, sync_figure
from lowcomm.reporting.records import Records, read_records

DEFAULT_OUT = Path("lowcomm-plot.png")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR", help="lowcomm train runs or bench directories")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, metavar="FILE", help=f"image to write, .png, .pdf or .svg (default: {DEFAULT_OUT})")


def run(args: argparse.Namespace) -> int:
    try:
        if args.out.suffix.lower().lstrip(".") not in Figure().canvas.get_supported_filetypes():
            raise ValueError(f"--out: {args.out} has no image suffix matplotlib writes (.png, .pdf, .svg, ...)")
        if not args.out.parent.is_dir():
            raise ValueError(f"--out: {args.out.parent} is not a directory")
        runs = [run for directory in args.run_dirs for run in labelled_records(directory)]
    except ValueError as error:
        return usage_error("plot", str(error))
    save_figure(comparison_figure([(label, records.evaluations) for label, records in runs]), args.out)
    print(f"lowcomm plot: {len(runs)} runs -> {args.out}")
    syncs = [(label, records.sync_diagnostics) for label, records in runs if records.sync_diagnostics]
    if syncs:
        sync_out = args.out.with_name(f"{args.out.stem}-sync{args.out.suffix}")
        save_figure(sync_figure(syncs), sync_out)
        print(f"lowcomm plot: sync diagnostics of {len(syncs)} runs -> {sync_out}")
    return 0


def labelled_records(directory: Path) -> list[tuple[str, Records]]:
    """``(label, records)`` of the run in ``directory``, or of each run of the benchmark in it."""
    if not directory.is_dir():
        raise ValueError(f"RUN_DIR: {directory} is not a directory")
    if (directory / "metrics.jsonl").is_file():
        return [run_records(directory)]
    runs = sorted(path for path in (directory / "runs").glob("*") if (path / "metrics.jsonl").is_file())
    if not runs:
        raise ValueError(f"RUN_DIR: {directory} holds neither a run (metrics.jsonl) nor a benchmark's runs/")
    return [run_records(path) for path in runs]


def run_records(directory: Path) -> tuple[str, Records]:
    records = read_records(directory / "metrics.jsonl")
    if not records.evaluations:
        raise ValueError(f"RUN_DIR: {directory} has no evaluations in metrics.jsonl yet")
    if not any(math.isfinite(e.eval_loss) for e in records.evaluations):
        raise ValueError(f"RUN_DIR: every eval loss of {directory} is NaN or infinite (it diverged); "
                         "nothing to plot, leave it out")
    try:
        algo = read_run_config(directory).get("algo")
    except ValueError:
        algo = None
    return (f"{directory} ({algo})" if algo else str(directory)), records
