"""A recorded run's clock projected onto another network or worker count.

A run's time splits into communication (worker 0's measured waits) and everything else (compute,
evaluation, logging). Keeping the rest as measured and pricing each step's traffic with the
:class:`~lowcomm.communication.network_model.NetworkModel` gives the clock at every evaluation:

    projected(s) = elapsed(s) - waited(s) + sum over steps t <= s of modelled(t)

The losses stay as measured, since an algorithm computes the same thing at any bandwidth. For
another worker count K' each operation keeps its payload and is re-priced for K' (a ring
all-reduce sends 2(K'-1)/K' of it; a NoLoCo exchange goes to one partner, or two in the triple an
odd K' leaves); the loss curve and the compute per step are assumed to carry over, which only a
run at K' can confirm. Part of a step's traffic can hide behind computation: for DDP, the buckets
ready before the last can be sent during the rest of the backward pass, so a step hides
``min(its overlap seconds, the modelled time of those buckets)`` (both means over the run).

With worker groups the slow links are the K groups' (:attr:`Run.link_step_bytes`: the traffic
between groups, per group), the fast links inside a group are taken as free, and a worker count is a
count of groups.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from lowcomm.algorithms import ALGORITHMS
from lowcomm.algorithms.noloco import gossip_groups
from lowcomm.communication.network_model import NetworkModel
from lowcomm.benchmarks.results import speedup
from lowcomm.benchmarks.runs import Run

COLUMNS = ("algo", "workers", "bandwidth_bps", "latency_s", "wall_time_s", "time_to_target_s", "speedup_vs_ddp")


@dataclass(frozen=True)
class Projection:
    algo: str
    workers: int
    bandwidth_bps: float
    latency_s: float
    wall_time_s: float
    time_to_target_s: float | None
    speedup_vs_ddp: float | None = None


def step_seconds(run: Run, network: NetworkModel, workers: int) -> dict[int, float]:
    """The modelled seconds each step's traffic adds to the clock, for ``workers`` workers."""
    if run.links < 2:
        raise ValueError(f"run: {run.directory} has one worker (or group), so no traffic to project from")
    pairwise = ALGORITHMS[run.algo].traffic == "gossip"
    overlap_s, overlap_bytes = run.overlap_per_step
    hidden = min(overlap_s, network.all_reduce_s(payload(run, overlap_bytes), workers)) if overlap_bytes else 0.0
    seconds = {}
    for step, sent in run.link_step_bytes.items():
        if pairwise:
            partners = len(next(g for g in gossip_groups(run.links, step) if 0 in g)) - 1
            modelled = network.exchange_s(sent // partners, 2 if workers % 2 else 1)
        else:
            modelled = network.all_reduce_s(payload(run, sent), workers)
        seconds[step] = max(0.0, modelled - hidden)
    return seconds


def payload(run: Run, sent: float) -> int:
    """The all-reduced payload of which each of ``run``'s slow links carried ``sent`` bytes (2(K-1)/K of it)."""
    return round(sent * run.links / (2 * (run.links - 1)))


def project(run: Run, network: NetworkModel, workers: int, target: float) -> Projection:
    """``run``'s wall time and time to ``target`` on ``network`` with ``workers`` workers."""
    seconds = step_seconds(run, network, workers)

    def clock(step: int, elapsed_s: float, waited_s: float) -> float:
        return elapsed_s - waited_s + sum(s for t, s in seconds.items() if t <= step)

    reached = next((e for e in run.evaluations if e.eval_loss <= target), None)
    last = run.evaluations[-1]
    return Projection(
        algo=run.algo,
        workers=workers,
        bandwidth_bps=network.bandwidth_bps,
        latency_s=network.latency_s,
        wall_time_s=clock(run.summary["steps"], run.wall_time_s, last.comm_wait_s),
        time_to_target_s=None if reached is None else clock(reached.step, reached.elapsed_s, reached.comm_wait_s),
    )


def project_all(
    runs: list[Run], bandwidths_bps: list[float], workers: list[int], latency_s: float, target: float
) -> list[Projection]:
    """Every run at every bandwidth and worker count, with its speedup over the DDP run's projection."""
    projections = []
    for bandwidth in bandwidths_bps:
        network = NetworkModel(bandwidth, latency_s)
        for k in workers:
            here = [project(run, network, k, target) for run in runs]
            ddp_time = next((p.time_to_target_s for p in here if p.algo == "ddp"), None)
            projections += [replace(p, speedup_vs_ddp=speedup(ddp_time, p.time_to_target_s)) for p in here]
    return projections
