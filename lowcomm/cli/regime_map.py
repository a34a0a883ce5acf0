"""``lowcomm regime-map BENCH_DIR... --bandwidth RATES``: where each algorithm beats DDP.

Each BENCH_DIR is one ``lowcomm bench`` run: a protocol (its ``--budget``: ``steps``, ``tokens`` or
``target``, whose runs go on past DDP's steps, up to their cap, until DDP's final eval loss) and a
batch, counted as the tokens per step of all ranks together (DDP's workers x batch size x sequence
length x gradient accumulation). A ``time`` benchmark is refused: its runs stop at DDP's measured
clock, which another bandwidth moves. A cell is one benchmark at one bandwidth: an algorithm's speedup over DDP is DDP's
time to the target over the algorithm's, both projected onto that bandwidth as ``lowcomm project``
does (at the runs' own worker counts, no latency); it is empty ("never") when the algorithm never
reaches the target. The target is DDP's eval loss at the fraction F of its run (bench's ``ddp@F``;
F = 1, its final eval loss). A cell's winner is the fastest to the target, DDP on a tie or when no
other algorithm reaches it.

``OUT/regime_map.csv`` holds a row per benchmark, algorithm and bandwidth; a heatmap per algorithm
and protocol shows the speedups, and a map per protocol the winners.
"""

from __future__ import annotations

import argparse
import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lowcomm.benchmarks.plots import plot_speedup_map, plot_winner_map
from lowcomm.benchmarks.projection import project_all
from lowcomm.benchmarks.report import markdown_table
from lowcomm.benchmarks.results import find_targets, write_csv
from lowcomm.benchmarks.runs import Run
from lowcomm.cli import check_out_directory, usage_error
from lowcomm.cli.project import parse_bandwidths, read_runs
from lowcomm.launching.rundir import read_run_config

COLUMNS = ("protocol", "tokens_per_step", "algo", "bandwidth_bps", "speedup_vs_ddp", "time_to_target_s",
           "ddp_time_to_target_s")
DEFAULT_BANDWIDTHS = "10mbit,100mbit,1gbit,10gbit"
Cell = tuple[str, int, float]
"""A map's cell: protocol, tokens per step, bandwidth (bit/s)."""


@dataclass(frozen=True)
class Bench:
    directory: Path
    protocol: str
    tokens_per_step: int
    runs: list[Run]
    """DDP first."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bench_dirs", type=Path, nargs="+", metavar="BENCH_DIR", help="lowcomm bench directories")
    parser.add_argument("--bandwidth", default=DEFAULT_BANDWIDTHS, metavar="RATE,...",
                        help=f"link rates per worker, tc-style (default: {DEFAULT_BANDWIDTHS})")
    parser.add_argument("--target", type=float, default=1.0, metavar="F",
                        help="DDP's eval loss at this fraction of its run, in (0, 1] (default: 1, its final loss)")
    parser.add_argument("--out", type=Path, default=Path("regime_map"), help="where to write (default: ./regime_map)")


def run(args: argparse.Namespace) -> int:
    try:
        labels = args.bandwidth.split(",")
        bandwidths = parse_bandwidths(args.bandwidth)
        if len(set(bandwidths)) < len(bandwidths):
            raise ValueError(f"--bandwidth: a rate is named twice in {args.bandwidth!r}")
        if not (math.isfinite(args.target) and 0 < args.target <= 1):
            raise ValueError(f"--target: must be a fraction in (0, 1], got {args.target}")
        benches = [read_bench(directory) for directory in args.bench_dirs]
        check_distinct(benches)
        rows = regime_rows(benches, bandwidths, args.target)
        check_out_directory(args.out)
    except ValueError as error:
        return usage_error("regime-map", str(error))
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(args.out / "regime_map.csv", rows, COLUMNS)
    won = winners(rows)
    for (algo, protocol), grid in speedup_grids(rows, bandwidths).items():
        plot_speedup_map(grid, labels, f"{algo} over DDP to DDP@{args.target:.0%}, {protocol} protocol",
                         args.out / f"speedup_{algo}_{protocol}.png")
    algos = ["ddp", *sorted({row["algo"] for row in rows})]
    for protocol in sorted({p for p, _, _ in won}):
        grid = {tokens: [won[protocol, tokens, b] for b in bandwidths] for p, tokens, _ in won if p == protocol}
        plot_winner_map(dict(sorted(grid.items())), labels, algos,
                        f"fastest to DDP@{args.target:.0%}, {protocol} protocol", args.out / f"winner_{protocol}.png")
    print(f"{summary_table(rows, won, bandwidths, labels)}\n\nlowcomm regime-map: done: {args.out / 'regime_map.csv'} "
          f"and heatmaps in {args.out}/")
    return 0


def read_bench(directory: Path) -> Bench:
    """The benchmark in ``directory``; a ValueError naming it if it is not a bench output with a DDP run."""
    if not directory.is_dir():
        raise ValueError(f"BENCH_DIR: {directory} is not a directory")
    try:
        with (directory / "results.csv").open(newline="") as file:
            protocol = next(csv.DictReader(file))["budget"]
    except (FileNotFoundError, StopIteration, KeyError):
        raise ValueError(f"BENCH_DIR: {directory} is not a lowcomm bench output (no results.csv with a budget)") from None
    if protocol == "time":
        raise ValueError(f"BENCH_DIR: {directory} is a --budget time benchmark, whose runs stop at DDP's measured "
                         "clock; map steps, tokens or target benchmarks")
    runs = read_runs(directory)
    if runs[0].algo != "ddp":
        raise ValueError(f"BENCH_DIR: {directory} has no DDP run to compare with")
    config = read_run_config(runs[0].directory)
    tokens = config["workers"] * config["batch_size"] * config["seq_len"] * config["grad_accum"]
    return Bench(directory, protocol, tokens, runs)


def check_distinct(benches: list[Bench]) -> None:
    seen: dict[tuple[str, int], Path] = {}
    for bench in benches:
        key = (bench.protocol, bench.tokens_per_step)
        if key in seen:
            raise ValueError(f"BENCH_DIR: {seen[key]} and {bench.directory} are both the {key[0]} protocol "
                             f"at {key[1]} tokens per step")
        seen[key] = bench.directory


def regime_rows(benches: list[Bench], bandwidths_bps: list[float], fraction: float) -> list[dict[str, Any]]:
    """A row of :data:`COLUMNS` per benchmark, non-DDP algorithm and bandwidth."""
    rows = []
    for bench in benches:
        target = find_targets(bench.runs, (fraction,), None)[0].loss
        projections = project_all(bench.runs, bandwidths_bps, [bench.runs[0].links], 0.0, target)
        ddp_times = {p.bandwidth_bps: p.time_to_target_s for p in projections if p.algo == "ddp"}
        rows += [{"protocol": bench.protocol, "tokens_per_step": bench.tokens_per_step, "algo": p.algo,
                  "bandwidth_bps": p.bandwidth_bps, "speedup_vs_ddp": p.speedup_vs_ddp,
                  "time_to_target_s": p.time_to_target_s, "ddp_time_to_target_s": ddp_times[p.bandwidth_bps]}
                 for p in projections if p.algo != "ddp"]
    return rows


def winners(rows: list[dict[str, Any]]) -> dict[Cell, str]:
    """Each cell's fastest algorithm to the target: DDP unless another is strictly faster."""
    best: dict[Cell, tuple[float, str]] = {}
    for row in rows:
        cell = (row["protocol"], row["tokens_per_step"], row["bandwidth_bps"])
        best.setdefault(cell, (row["ddp_time_to_target_s"], "ddp"))
        if row["time_to_target_s"] is not None and row["time_to_target_s"] < best[cell][0]:
            best[cell] = (row["time_to_target_s"], row["algo"])
    return {cell: algo for cell, (_, algo) in best.items()}


def speedup_grids(rows: list[dict[str, Any]], bandwidths_bps: list[float]) -> dict[tuple[str, str], dict[int, list]]:
    """Per (algorithm, protocol): tokens per step (ascending) to the speedups at each bandwidth."""
    grids: dict[tuple[str, str], dict[int, dict[float, float | None]]] = {}
    for row in rows:
        grid = grids.setdefault((row["algo"], row["protocol"]), {})
        grid.setdefault(row["tokens_per_step"], {})[row["bandwidth_bps"]] = row["speedup_vs_ddp"]
    return {key: {tokens: [cells[b] for b in bandwidths_bps] for tokens, cells in sorted(grid.items())}
            for key, grid in grids.items()}


def summary_table(rows: list[dict[str, Any]], won: dict[Cell, str], bandwidths_bps: list[float],
                  labels: list[str]) -> str:
    """Markdown: a line per benchmark and algorithm with its speedup at each bandwidth, then the winners."""
    lines: dict[tuple[str, int, str], dict[float, str]] = {}
    for row in rows:
        speedup = row["speedup_vs_ddp"]
        lines.setdefault((row["protocol"], row["tokens_per_step"], row["algo"]), {})[row["bandwidth_bps"]] = (
            "never" if speedup is None else f"{speedup:.2f}x")
    for (protocol, tokens, bandwidth), algo in won.items():
        lines.setdefault((protocol, tokens, "winner"), {})[bandwidth] = algo
    columns = ("protocol", "tokens_per_step", "algo", *labels)
    ordered = sorted(lines, key=lambda key: (key[0], key[1], key[2] == "winner", key[2]))
    return markdown_table([dict(zip(columns, (*key, *(lines[key][b] for b in bandwidths_bps)))) for key in ordered],
                          columns)
