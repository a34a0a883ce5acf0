"""A finished ``lowcomm train`` run, read back from its directory for comparison and projection.

From ``summary.json`` the totals; from ``metrics.jsonl`` (see :mod:`lowcomm.reporting.records`) the
evaluations of the global model, with worker 0's clock and counters at each, and the bytes worker 0
sent in each step.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lowcomm.reporting.records import Evaluation, SyncDiagnostics, read_records

REQUIRED_FIELDS = ("algo", "workers", "steps", "final_eval_loss", "wall_time_s", "comm_wait_s")
FIELD_KINDS = {
    **dict.fromkeys(("algo", "model", "inner", "stopped"), "text"),
    **dict.fromkeys(("workers", "steps", "groups", "group_size"), "a whole number >= 1"),
    **dict.fromkeys(("parameters", "tokens", "comm_bytes_total", "comm_bytes_between_groups",
                     "comm_bytes_within_groups"), "a whole number >= 0"),
    **dict.fromkeys(("wall_time_s", "compute_s", "comm_wait_s", "comm_overlap_s", "comm_overlap_bytes",
                     "tokens_per_s"), "a finite number >= 0"),
    "final_eval_loss": "a number",  # NaN: a run that diverged
    "worker_times": "a list of objects with an idle_share in [0, 1]",
}
"""What each field of ``summary.json`` that lowcomm reads holds; others are not checked."""


@dataclass(frozen=True)
class Run:
    directory: Path
    summary: dict[str, Any]
    evaluations: list[Evaluation]
    step_bytes: dict[int, int]
    """Bytes worker 0 sent during each step that sent any (step 1 includes the initial broadcast)."""
    sync_diagnostics: list[SyncDiagnostics] = field(default_factory=list)

    @property
    def algo(self) -> str:
        return self.summary["algo"]

    @property
    def workers(self) -> int:
        return int(self.summary["workers"])

    @property
    def links(self) -> int:
        """The slow links: one per group in a run with worker groups, else one per worker."""
        return int(self.summary.get("groups", self.summary["workers"]))

    @property
    def link_step_bytes(self) -> dict[int, int]:
        """Bytes one slow link carried in each step that carried any. Without groups, worker 0's. With
        groups, a group's ranks share its link and may send unequal parts (DDP inside: unequal
        chunks), so worker 0's bytes are scaled to add up to the run's bytes between
        groups over its K groups, or spread evenly over the steps if worker 0 sent none of them."""
        if "groups" not in self.summary:
            return self.step_bytes
        per_link = self.summary["comm_bytes_between_groups"] / self.links
        sent = sum(self.step_bytes.values())
        if sent:
            return {step: round(count * per_link / sent) for step, count in self.step_bytes.items()}
        steps = self.summary["steps"]
        return {step: round(per_link / steps) for step in range(1, steps + 1)} if per_link else {}

    @property
    def tokens_per_s(self) -> float:
        """Tokens all workers trained on per second of the run's wall-clock."""
        return int(self.summary["tokens"]) / self.wall_time_s

    @property
    def idle_shares(self) -> list[float]:
        """Each worker's share of its time in steps spent blocked in synchronisations (none recorded
        by a lowcomm older than ``worker_times``)."""
        return [float(worker["idle_share"]) for worker in self.summary.get("worker_times", [])]

    @property
    def final_eval_loss(self) -> float:
        return float(self.summary["final_eval_loss"])

    @property
    def wall_time_s(self) -> float:
        return float(self.summary["wall_time_s"])

    @property
    def overlap_per_step(self) -> tuple[float, float]:
        """The mean worker's seconds per step that communication could hide behind, and the bytes per
        step that could be sent in them over one slow link (DDP: its backward pass and the buckets
        ready before the last)."""
        steps, ranks_per_link = self.summary["steps"], self.summary.get("group_size", 1)
        return self.summary["comm_overlap_s"] / steps, self.summary["comm_overlap_bytes"] * ranks_per_link / steps

    @property
    def ended(self) -> str:
        """Why the run ended: ``steps`` (it ran all it was given), ``stop_at_loss`` or ``stop_after_s``."""
        return self.summary.get("stopped", "steps")

    def first_at(self, target: float) -> Evaluation | None:
        """The first evaluation whose loss is at most ``target``; None if none is."""
        return next((e for e in self.evaluations if e.eval_loss <= target), None)

    def time_to_target(self, target: float) -> float | None:
        """Worker 0's clock at the first evaluation whose loss is at most ``target``; None if none is."""
        reached = self.first_at(target)
        return None if reached is None else reached.elapsed_s


def read_run(directory: str | Path) -> Run:
    """Read a finished run; raise ValueError naming the directory if it is not one."""
    directory = Path(directory)
    try:
        summary = json.loads((directory / "summary.json").read_text())
    except FileNotFoundError:
        raise ValueError(f"run: {directory} holds no finished run (summary.json is missing)") from None
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ValueError(f"run: {directory / 'summary.json'} is not readable JSON ({type(error).__name__})") from None
    check_summary(directory / "summary.json", summary)
    records = read_records(directory / "metrics.jsonl")
    if not records.evaluations:
        raise ValueError(f"run: {directory} has no evaluations in metrics.jsonl")
    return Run(directory, summary, records.evaluations, records.step_bytes, records.sync_diagnostics)


def check_summary(path: Path, summary: Any) -> None:
    """Raise a one-line ValueError naming ``path`` unless ``summary`` holds the fields a run writes,
    with values of their kinds (an edited or damaged ``summary.json``)."""
    if not isinstance(summary, dict):
        raise ValueError(f"run: {path} does not hold a JSON object")
    missing = [name for name in REQUIRED_FIELDS if name not in summary]
    if missing:
        raise ValueError(f"run: {path} lacks {', '.join(missing)}")
    for name, kind in FIELD_KINDS.items():
        if name in summary and not KIND_CHECKS[kind](summary[name]):
            raise ValueError(f"run: {path}: {name} must be {kind}, got {summary[name]!r}")


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


KIND_CHECKS = {
    "text": lambda value: isinstance(value, str),
    "a number": is_number,
    "a finite number >= 0": lambda value: is_number(value) and math.isfinite(value) and value >= 0,
    "a whole number >= 0": lambda value: is_number(value) and isinstance(value, int) and value >= 0,
    "a whole number >= 1": lambda value: is_number(value) and isinstance(value, int) and value >= 1,
    "a list of objects with an idle_share in [0, 1]": lambda value: isinstance(value, list) and all(
        isinstance(worker, dict) and is_number(worker.get("idle_share")) and 0 <= worker["idle_share"] <= 1
        for worker in value),
}
