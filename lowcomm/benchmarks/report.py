"""What a benchmark reports in ``report.md``: the command, the machine, the table and the plots
(drawn by :mod:`lowcomm.reporting.plotting`)."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch

from lowcomm.benchmarks.results import Target, cell, goodput, idle_share_cell
from lowcomm.benchmarks.runs import Run

RUN_COLUMNS = ("algo", "steps", "tokens", "final_eval_loss", "wall_time_s", "comm_share")
QUALITY_COLUMNS = ("algo", "steps", "ended", "steps to target", "time to target (s)", "speedup vs DDP",
                   "tokens to target")
SPEED_COLUMNS = ("algo", "tokens/s", "tokens/s at full speed", "goodput", "idle share by worker")
TIME_COLUMNS = ("algo", "steps", "ended", "eval loss at DDP's time", "vs DDP", "evaluated at (s)", "tokens")


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


def targets_table(rows: list[dict[str, Any]], targets: list[Target]) -> str:
    """One line per algorithm: its run, then its time to each target with the speedup over DDP."""
    by_algo: dict[str, dict[str, Any]] = {}
    for row in rows:
        line = by_algo.setdefault(row["algo"], {c: row[c] for c in RUN_COLUMNS})
        time = cell(row["time_to_target_s"])
        line[f"to {row['target']} (s)"] = f"{time} ({cell(row['speedup_vs_ddp'])}x)" if row["speedup_vs_ddp"] else time
    return markdown_table(list(by_algo.values()), RUN_COLUMNS + tuple(f"to {t.name} (s)" for t in targets))


def protocol_table(budget: str, runs: list[Run], rows: list[dict[str, Any]], targets: list[Target]) -> str:
    """Under ``--budget target`` or ``time``, its own table with a caption and a blank line after; else ''."""
    if budget == "target":
        return (quality_table(rows, targets[-1]) + "\n\nEach run besides DDP's stopped at its first evaluation at "
                f"or below {targets[-1].name} ({targets[-1].loss:.4f}), so the loss crossed it within one evaluation "
                "interval before; `ended` is `steps` where it never did within the cap.\n\n")
    if budget == "time":
        return (time_table(runs) + "\n\nEach run besides DDP's stopped at the last check of its clock (where it "
                "synchronises) before worker 0's clock would pass DDP's final evaluation by the next check, and was "
                "evaluated there (`ended` is `steps` where it ran out of the cap first).\n\n")
    return ""


def speeds_table(runs: list[Run], full_speed: dict[str, Run], speeds: str) -> str:
    """One line per algorithm: its tokens per second at ``speeds`` against its run at full speed (the
    goodput) and each worker's share of its step time spent blocked in synchronisations; a caption."""
    lines = [{
        "algo": run.algo, "tokens/s": run.tokens_per_s, "tokens/s at full speed": full_speed[run.algo].tokens_per_s,
        "goodput": goodput(run, full_speed[run.algo]), "idle share by worker": idle_share_cell(run),
    } for run in runs]
    return (markdown_table(lines, SPEED_COLUMNS) + f"\n\nWorker speeds {speeds}: goodput is the tokens per second "
            "over those of the same algorithm with every worker at full speed (`runs/ALGO-full`); a worker's idle "
            "share is the part of its time in steps it was blocked in synchronisations.")


def quality_table(rows: list[dict[str, Any]], target: Target) -> str:
    """One line per algorithm: its steps, time and tokens to ``target``, or that it never got there."""
    lines = []
    for row in rows:
        if row["target"] != target.name:
            continue
        budget = "its" if row["algo"] == "ddp" else "the cap of"
        missed = row["steps_to_target"] is None
        lines.append({
            "algo": row["algo"], "steps": row["steps"], "ended": row["ended"],
            "steps to target": f"not within {budget} {row['steps']} steps" if missed else row["steps_to_target"],
            "time to target (s)": row["time_to_target_s"], "speedup vs DDP": row["speedup_vs_ddp"],
            "tokens to target": row["tokens_to_target"],
        })
    return markdown_table(lines, QUALITY_COLUMNS)


def time_table(runs: list[Run]) -> str:
    """One line per algorithm: its eval loss when its clock passed DDP's final evaluation, against DDP's."""
    ddp = next(run for run in runs if run.algo == "ddp")
    return markdown_table([{
        "algo": run.algo, "steps": int(run.summary["steps"]), "ended": run.ended,
        "eval loss at DDP's time": run.final_eval_loss,
        "vs DDP": f"{run.final_eval_loss / ddp.final_eval_loss - 1:+.2%}",
        "evaluated at (s)": run.evaluations[-1].elapsed_s, "tokens": int(run.summary["tokens"]),
    } for run in runs], TIME_COLUMNS)


def write_report(
    out: Path,
    *,
    command: list[str],
    run_commands: dict[str, str],
    settings: str,
    targets: list[Target],
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
        "Targets:",
        "",
        *(f"- {t.name}: eval loss {t.loss:.4f} ({t.source})" for t in targets),
        "",
        table,
        "",
        "A time to a target is worker 0's clock at the first evaluation at or below it (— never reached), "
        "with the speedup over DDP; `comm_share` is the mean worker's share of wall-clock spent waiting for "
        "communication. `results.csv` holds the same numbers, one row per algorithm and target.",
        "",
    ]
    lines += [f"![{name}]({name})" for name in plots] + [""]
    lines += ["Runs:", ""] + [f"- {algo}: `{text}`" for algo, text in run_commands.items()] + [""]
    if notes:
        lines += ["Notes:", ""] + [f"- {note}" for note in notes] + [""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
