"""The side-by-side table of a benchmark: how soon each algorithm reached the target loss.

The target is DDP's final eval loss unless one is given; ``time_to_target_s`` is worker 0's clock
at the first evaluation at or below it (so its resolution is ``--eval-every`` steps), and
``speedup_vs_ddp`` is DDP's time to the target over the algorithm's.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from lowcomm.benchmarks.runs import Run

COLUMNS = ("algo", "final_eval_loss", "wall_time_s", "time_to_target_s", "speedup_vs_ddp",
           "comm_bytes_total", "comm_bytes_between_groups", "comm_share", "tokens")


def choose_target(runs: list[Run], target_loss: float | None) -> float:
    """``target_loss`` if given, else DDP's final eval loss."""
    if target_loss is not None:
        return target_loss
    ddp = [run for run in runs if run.algo == "ddp"]
    if not ddp:
        raise ValueError("--target-loss: needed when there is no ddp run to take the target from")
    return ddp[0].final_eval_loss


def speedup(baseline_s: float | None, algorithm_s: float | None) -> float | None:
    if baseline_s is None or algorithm_s is None or algorithm_s <= 0:
        return None
    return baseline_s / algorithm_s


def results_rows(runs: list[Run], target: float) -> list[dict[str, Any]]:
    """One row per run, with the columns of :data:`COLUMNS` (None where there is no value)."""
    ddp_time = next((run.time_to_target(target) for run in runs if run.algo == "ddp"), None)
    rows = []
    for run in runs:
        reached = run.time_to_target(target)
        rows.append({
            "algo": run.algo,
            "final_eval_loss": run.final_eval_loss,
            "wall_time_s": run.wall_time_s,
            "time_to_target_s": reached,
            "speedup_vs_ddp": speedup(ddp_time, reached),
            "comm_bytes_total": int(run.summary["comm_bytes_total"]),
            "comm_bytes_between_groups": int(run.summary.get("comm_bytes_between_groups", run.summary["comm_bytes_total"])),
            "comm_share": run.summary["comm_wait_s"] / run.wall_time_s,
            "tokens": int(run.summary["tokens"]),
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
