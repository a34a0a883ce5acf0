"""``lowcomm project RUN_DIR``: a recorded run's (or benchmark's) time-to-target on other networks.

RUN_DIR is one ``lowcomm train`` run or a ``lowcomm bench`` directory (its runs in ``runs/``). For
every bandwidth and worker count asked for, each run's clock is projected with the network model
(see :mod:`lowcomm.benchmarks.projection`); ``OUT/projection.csv`` holds the numbers and
``OUT/speedup_vs_bandwidth.png`` plots each algorithm's speedup over DDP.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import asdict
from pathlib import Path

from lowcomm.benchmarks.plots import plot_speedups
from lowcomm.benchmarks.projection import COLUMNS, project_all
from lowcomm.benchmarks.report import markdown_table
from lowcomm.benchmarks.results import check_target_loss, choose_target, write_csv
from lowcomm.benchmarks.runs import Run, read_run
from lowcomm.cli import check_out_directory, usage_error
from lowcomm.communication.network_model import parse_rate

DEFAULT_BANDWIDTHS = "10mbit,100mbit,1gbit,10gbit,100gbit"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a lowcomm train run or lowcomm bench directory")
    parser.add_argument("--bandwidth", default=DEFAULT_BANDWIDTHS, metavar="RATE,...",
                        help=f"link rates per worker, tc-style (default: {DEFAULT_BANDWIDTHS})")
    parser.add_argument("--workers", metavar="K,...", help="worker counts, or group counts for runs with worker groups (default: the runs' own)")
    parser.add_argument("--latency", type=float, default=0.0, metavar="SECONDS", help="per-message latency (default: 0)")
    parser.add_argument("--target-loss", type=float, metavar="LOSS", help="default: DDP's final eval loss")
    parser.add_argument("--out", type=Path, help="where to write (default: RUN_DIR/projection)")


def run(args: argparse.Namespace) -> int:
    try:
        runs = read_runs(args.run_dir)
        bandwidths = parse_bandwidths(args.bandwidth)
        workers = parse_counts(args.workers) if args.workers else sorted({run.links for run in runs})
        if not (math.isfinite(args.latency) and args.latency >= 0):
            raise ValueError(f"--latency: must be a finite number >= 0, got {args.latency}")
        check_target_loss(args.target_loss)
        target = choose_target(runs, args.target_loss)
        projections = project_all(runs, bandwidths, workers, args.latency, target)
        out = args.out or args.run_dir / "projection"
        check_out_directory(out)
    except ValueError as error:
        return usage_error("project", str(error))
    out.mkdir(parents=True, exist_ok=True)
    rows = [asdict(p) for p in projections]
    write_csv(out / "projection.csv", rows, COLUMNS)
    plot_speedups(projections, out / "speedup_vs_bandwidth.png")
    print(f"target eval loss {target:.4f}\n\n{markdown_table(rows, COLUMNS)}\n")
    print(f"lowcomm project: done: {out / 'projection.csv'} and {out / 'speedup_vs_bandwidth.png'}")
    return 0


def read_runs(directory: Path) -> list[Run]:
    """The run in ``directory``, or the runs of the benchmark in it (DDP first)."""
    if (directory / "summary.json").is_file():
        return [read_run(directory)]
    found = sorted(path for path in (directory / "runs").glob("*") if (path / "summary.json").is_file())
    if not found:
        raise ValueError(f"run_dir: {directory} holds neither a finished run nor a benchmark's runs/")
    runs = [read_run(path) for path in found]
    return sorted(runs, key=lambda run: run.algo != "ddp")


def parse_bandwidths(text: str) -> list[float]:
    """``"10mbit,1gbit"`` as bits per second; a ValueError for a bad or unlimited rate."""
    bandwidths = [parse_rate(rate) for rate in text.split(",")]
    if any(math.isinf(b) for b in bandwidths):
        raise ValueError("--bandwidth: 'unlimited' cannot be projected to; give rates")
    return bandwidths


def parse_counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(f"--workers: expected comma-separated integers, got {text!r}") from None
    if any(k < 2 for k in counts):
        raise ValueError(f"--workers: each count must be >= 2, got {text!r}")
    return counts
