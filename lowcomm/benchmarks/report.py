"""What a benchmark reports in ``report.md``: the command, the machine, the table and the plots
(drawn by :mod:`lowcomm.plotting`)."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch

from lowcomm.benchmarks.results import cell


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
