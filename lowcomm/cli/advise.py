"""``lowcomm advise RUN_DIR --bandwidth RATE [--workers K]``: which algorithm to train with on a link.

From one short measured DDP run, the rule is:

1. Per step, DDP spends ``c`` seconds on everything but communication (the run's wall time less
   worker 0's waits, over its steps) and ``d`` communicating at RATE among K workers (the run's
   traffic priced by the network model, as ``lowcomm project`` does; the early gradient buckets hide
   behind the backward pass).
2. If communication is at most 10% of a DDP step (``d <= 0.1 (c + d)``), keep DDP: a local method
   could save no more than that, and it pays in loss per step.
3. Otherwise PALSGD with the paper's p = 0.2 (and S = 32, eta = 1, outer Nesterov SGD 0.1 / 0.9):
   a step after the warm-up costs ``(1 - p) c`` (a pseudo-synchronisation step skips its batch)
   plus ``s / H``, where ``s`` is one ring all-reduce of the model (4 bytes per parameter). H is
   the smallest power of two from 8 to 256 that keeps communication at most 5% of that step
   (256 if none does).

The projected speedup is DDP's time per step over PALSGD's (the paper's equal-steps protocol,
warm-up left out); whether PALSGD reaches DDP's loss in as many steps only a run can tell. So RUN_DIR
may be a ``lowcomm bench`` directory (best one of ``--budget target``, whose runs go on until DDP's
final eval loss): the rule then reads its DDP run, and for every other run advise also prints the
steps it took to DDP's final eval loss (or that it never got there) and its time to it projected at
RATE with K workers, as ``lowcomm project`` does, against DDP's.
"""

from __future__ import annotations

import argparse
import math
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lowcomm.algorithms import PALSGD
from lowcomm.benchmarks.projection import project_all, step_seconds
from lowcomm.benchmarks.runs import Run
from lowcomm.cli import usage_error
from lowcomm.cli.project import read_runs
from lowcomm.communication.network_model import NetworkModel, parse_rate
from lowcomm.launching.rundir import CONFIG_FILE
from lowcomm.training.config import as_flags, load_config, resolve

DDP_SHARE_TO_KEEP = 0.10
LOCAL_SHARE = 0.05
PSEUDO_SYNC_PROB = PALSGD.options()["pseudo_sync_prob"].default
SYNC_INTERVALS = tuple(2**i for i in range(3, 9))
BYTES_PER_PARAMETER = 4


@dataclass(frozen=True)
class Advice:
    algo: str
    sync_interval: int | None
    pseudo_sync_prob: float | None
    compute_s: float
    """Seconds per step besides communication, measured."""
    ddp_comm_s: float
    """DDP's modelled communication seconds per step on the link."""
    comm_s: float
    """The recommended algorithm's communication seconds per step."""
    step_s: float
    """The recommended algorithm's seconds per step."""
    config_file: Path
    options: dict[str, Any]
    """The train flags to run it with, besides ``--config`` (the DDP run's)."""

    @property
    def ddp_share(self) -> float:
        return self.ddp_comm_s / (self.compute_s + self.ddp_comm_s)

    @property
    def comm_share(self) -> float:
        return self.comm_s / self.step_s

    @property
    def command(self) -> list[str]:
        return ["lowcomm", "train", "--config", str(self.config_file), *as_flags(self.options)]

    @property
    def speedup(self) -> float:
        return (self.compute_s + self.ddp_comm_s) / self.step_s


def advise(run: Run, network: NetworkModel, workers: int) -> Advice:
    """The rule of this module's docstring for the DDP ``run``, ``network`` and ``workers``."""
    if run.algo != "ddp":
        raise ValueError(f"RUN_DIR: {run.directory} is a {run.algo} run; advise needs a DDP run")
    if "parameters" not in run.summary:
        raise ValueError(f"run: {run.directory / 'summary.json'} lacks parameters")
    steps = int(run.summary["steps"])
    compute = (run.wall_time_s - run.summary["comm_wait_s"]) / steps
    ddp_comm = sum(step_seconds(run, network, workers).values()) / steps
    config_file = run.directory / CONFIG_FILE
    if ddp_comm <= DDP_SHARE_TO_KEEP * (compute + ddp_comm):
        options = {"workers": workers, "out": f"{run.directory}-ddp-k{workers}"}
        return Advice("ddp", None, None, compute, ddp_comm, ddp_comm, compute + ddp_comm, config_file, options)
    sync = network.all_reduce_s(BYTES_PER_PARAMETER * int(run.summary["parameters"]), workers)
    local = (1 - PSEUDO_SYNC_PROB) * compute
    interval = next((h for h in SYNC_INTERVALS if sync / h <= LOCAL_SHARE * (local + sync / h)), SYNC_INTERVALS[-1])
    options = {"algo": "palsgd", "workers": workers, "sync_interval": interval,
               "pseudo_sync_prob": PSEUDO_SYNC_PROB, "out": f"{run.directory}-palsgd-k{workers}-h{interval}"}
    return Advice("palsgd", interval, PSEUDO_SYNC_PROB, compute, ddp_comm, sync / interval, local + sync / interval,
                  config_file, options)


def steps_to_quality(runs: list[Run], network: NetworkModel, workers: int) -> list[str]:
    """A line per run after the first (DDP's): the steps it took to DDP's final eval loss and its time to
    it on ``network`` with ``workers`` workers against DDP's, or that it never got there."""
    ddp, target = runs[0], runs[0].final_eval_loss
    projections = project_all(runs, [network.bandwidth_bps], [workers], network.latency_s, target)
    lines = [f"measured, to DDP's final eval loss {target:.4f} (DDP: {ddp.summary['steps']} steps, "
             f"{projections[0].time_to_target_s:.4g} s projected):"]
    for run, projection in zip(runs[1:], projections[1:]):
        reached = run.first_at(target)
        lines.append(f"  {run.algo}: not within its {run.summary['steps']} steps" if reached is None else
                     f"  {run.algo}: {reached.step} steps ({reached.step / ddp.summary['steps']:.2f}x DDP's), "
                     f"{projection.time_to_target_s:.4g} s projected: {projection.speedup_vs_ddp:.2f}x DDP")
    return lines


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR",
                        help="a short lowcomm train run with --algo ddp, or a lowcomm bench directory")
    parser.add_argument("--bandwidth", required=True, metavar="RATE", help="link rate per worker, tc-style: 100mbit")
    parser.add_argument("--workers", type=int, metavar="K", help="worker count (default: the run's own)")
    parser.add_argument("--latency", type=float, default=0.0, metavar="SECONDS", help="per-message latency (default: 0)")


def run(args: argparse.Namespace) -> int:
    try:
        bandwidth = parse_rate(args.bandwidth)
        if math.isinf(bandwidth):
            raise ValueError("--bandwidth: an unlimited link needs no advice; give a rate")
        if not (math.isfinite(args.latency) and args.latency >= 0):
            raise ValueError(f"--latency: must be a finite number >= 0, got {args.latency}")
        runs = read_runs(args.run_dir)
        found = runs[0]
        workers = found.workers if args.workers is None else args.workers
        if workers < 2:
            raise ValueError(f"--workers: must be >= 2, got {workers}")
        network = NetworkModel(bandwidth, args.latency)
        advice = advise(found, network, workers)
        measured = steps_to_quality(runs, network, workers) if len(runs) > 1 else []
        resolve(load_config(advice.config_file, advice.options))  # the command it prints must be valid
    except ValueError as error:
        return usage_error("advise", str(error))
    print(f"measured: {advice.compute_s:.4g} s per step besides communication ({found.directory})")
    print(f"DDP at {args.bandwidth} with {workers} workers: {advice.ddp_comm_s:.4g} s communicating per step, "
          f"{advice.ddp_share:.1%} of its step")
    if advice.algo == "ddp":
        print(f"advice: keep DDP (communication is at most {DDP_SHARE_TO_KEEP:.0%} of its step)")
    else:
        print(f"advice: PALSGD with H = {advice.sync_interval}, p = {advice.pseudo_sync_prob}: "
              f"communication {advice.comm_share:.1%} of its step, {advice.speedup:.2f}x DDP's steps per second")
    print(shlex.join(advice.command))
    if measured:
        print("\n".join(measured))
    return 0
