"""The side-by-side table of a benchmark: how soon each algorithm reached each target loss.

A target is DDP's eval loss at a fraction f of its run (its last evaluation at or before step
``floor(f * steps)``; f = 1 is its final eval loss) or a loss given with ``--target-loss``.
``time_to_target_s``, ``steps_to_target`` and ``tokens_to_target`` are worker 0's clock, step and
tokens at an algorithm's first evaluation at or below the target (so their resolution is
``--eval-every`` steps: the loss crossed the target after the evaluation before), and
``speedup_vs_ddp`` is DDP's time to the target over the algorithm's. ``results.csv`` has one row
per algorithm and target and names the budget (``steps``, ``tokens``, ``target`` or ``time``, see
:mod:`lowcomm.cli.bench`) and why each run ended (``ended``: ``steps`` when it ran all it was
given, ``stop_at_loss`` at the target, ``stop_after_s`` at DDP's clock).

Under ``--worker-speeds``, ``goodput`` is a run's tokens per second over those of the same
algorithm's run with every worker at full speed (its reference run), and ``idle_share_by_worker``
each worker's share of its time in steps spent blocked in synchronisations, ``;``-separated in rank
order.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lowcomm.benchmarks.runs import Run

COLUMNS = ("algo", "budget", "steps", "ended", "target", "target_loss", "steps_to_target", "time_to_target_s",
           "tokens_to_target", "speedup_vs_ddp", "final_eval_loss", "wall_time_s", "comm_bytes_total",
           "comm_bytes_between_groups", "comm_share", "tokens", "tokens_per_s", "goodput", "idle_share_by_worker")
DEFAULT_FRACTIONS = (0.5, 0.75, 0.9, 1.0)


@dataclass(frozen=True)
class Target:
    name: str
    """``ddp@50%`` for DDP's eval loss half-way through its run; ``given`` for ``--target-loss``."""
    loss: float
    source: str
    """Where the loss comes from, in words."""


def parse_fractions(text: str) -> tuple[float, ...]:
    """``"0.5,0.75,1"`` as ``(0.5, 0.75, 1.0)``: distinct fractions of DDP's run in (0, 1], ascending."""
    try:
        fractions = [float(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(f"--targets: expected comma-separated fractions like 0.5,0.75,0.9,1.0, got {text!r}") from None
    if not all(math.isfinite(f) and 0 < f <= 1 for f in fractions):
        raise ValueError(f"--targets: each fraction must be in (0, 1], got {text!r}")
    if len(set(fractions)) < len(fractions):
        raise ValueError(f"--targets: a fraction is named twice in {text!r}")
    return tuple(sorted(fractions))


def target_step(fraction: float, steps: int) -> int:
    """The step ``fraction`` of the way through ``steps`` (rounded down)."""
    return math.floor(round(fraction * steps, 9))


def find_targets(runs: list[Run], fractions: tuple[float, ...], target_loss: float | None) -> list[Target]:
    """DDP's eval loss at each fraction of its run (when there is a DDP run), then ``target_loss``."""
    targets = []
    ddp = next((run for run in runs if run.algo == "ddp"), None)
    if ddp is not None:
        steps = int(ddp.summary["steps"])
        for fraction in fractions:
            step = target_step(fraction, steps)
            before = [e for e in ddp.evaluations if e.step <= step]
            if not before:
                raise ValueError(f"--targets: DDP has no evaluation at or before step {step} ({fraction:g} of its run)")
            targets.append(Target(f"ddp@{fraction:.0%}", before[-1].eval_loss,
                                  f"DDP's eval loss at step {before[-1].step} of {steps}"))
    if target_loss is not None:
        targets.append(Target("given", target_loss, "--target-loss"))
    if not targets:
        raise ValueError("--target-loss: needed when there is no ddp run to take the target from")
    return targets


def check_target_loss(target_loss: float | None) -> None:
    """Refuse a ``--target-loss`` that no run can reach or miss: not finite, or not above 0."""
    if target_loss is not None and not (math.isfinite(target_loss) and target_loss > 0):
        raise ValueError(f"--target-loss: must be a finite number above 0 (no loss is below 0), got {target_loss}")


def choose_target(runs: list[Run], target_loss: float | None) -> float:
    """``target_loss`` if given, else DDP's final eval loss."""
    return find_targets(runs, (1.0,), target_loss)[-1].loss


def speedup(baseline_s: float | None, algorithm_s: float | None) -> float | None:
    if baseline_s is None or algorithm_s is None or algorithm_s <= 0:
        return None
    return baseline_s / algorithm_s


def goodput(run: Run, full_speed: Run | None) -> float | None:
    """``run``'s tokens per second over ``full_speed``'s (the same algorithm, every worker at speed 1)."""
    return None if full_speed is None else run.tokens_per_s / full_speed.tokens_per_s


def idle_share_cell(run: Run) -> str | None:
    """Each worker's idle share, 3 decimals, ``;``-separated in rank order (None where not recorded)."""
    return ";".join(f"{share:.3f}" for share in run.idle_shares) or None


def results_rows(runs: list[Run], targets: list[Target], budget: str,
                 full_speed: dict[str, Run] | None = None) -> list[dict[str, Any]]:
    """One row per run and target, with the columns of :data:`COLUMNS` (None where there is no value);
    ``full_speed`` holds each algorithm's reference run at full speed, where there is one."""
    full_speed = full_speed or {}
    rows = []
    for run in runs:
        for target in targets:
            ddp_time = next((r.time_to_target(target.loss) for r in runs if r.algo == "ddp"), None)
            reached = run.first_at(target.loss)
            time = None if reached is None else reached.elapsed_s
            rows.append({
                "algo": run.algo,
                "budget": budget,
                "steps": int(run.summary["steps"]),
                "ended": run.ended,
                "target": target.name,
                "target_loss": target.loss,
                "steps_to_target": None if reached is None else reached.step,
                "time_to_target_s": time,
                "tokens_to_target": None if reached is None else reached.tokens,
                "speedup_vs_ddp": speedup(ddp_time, time),
                "final_eval_loss": run.final_eval_loss,
                "wall_time_s": run.wall_time_s,
                "comm_bytes_total": int(run.summary["comm_bytes_total"]),
                "comm_bytes_between_groups": int(run.summary.get("comm_bytes_between_groups",
                                                                 run.summary["comm_bytes_total"])),
                "comm_share": run.summary["comm_wait_s"] / run.wall_time_s,
                "tokens": int(run.summary["tokens"]),
                "tokens_per_s": run.tokens_per_s,
                "goodput": goodput(run, full_speed.get(run.algo)),
                "idle_share_by_worker": idle_share_cell(run),
            })
    return rows


def write_csv(path: Path, rows: list[dict[str, Any]], columns: tuple[str, ...]) -> None:
    """Rows as CSV; None becomes an empty cell and floats keep 6 significant digits."""
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({key: cell(row[key]) for key in columns})


def cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
