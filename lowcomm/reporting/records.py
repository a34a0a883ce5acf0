"""``metrics.jsonl`` read back (the format is :mod:`lowcomm.reporting.metrics`'s): rank 0's training
losses, the evaluations of the global model, the outer synchronisations (with their diagnostics) and
the bytes of each step."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class TrainPoint:
    """Rank 0's training loss at ``step``, with worker 0's clock then."""

    step: int
    loss: float
    elapsed_s: float


@dataclass(frozen=True)
class Evaluation:
    """The global model's held-out loss after ``step``, with worker 0's clock and counters then."""

    step: int
    eval_loss: float
    elapsed_s: float
    tokens: int
    comm_bytes: int  # cumulative bytes worker 0 had sent
    comm_wait_s: float  # cumulative seconds worker 0 had waited for communication


@dataclass(frozen=True)
class SyncDiagnostics:
    """An outer step's pseudo-gradient norm, the workers' spread and the cosine with the previous one."""

    step: int
    pseudo_grad_norm: float
    worker_spread: float | None
    pseudo_grad_cosine: float | None


@dataclass
class Records:
    train: list[TrainPoint] = field(default_factory=list)
    evaluations: list[Evaluation] = field(default_factory=list)
    sync_steps: list[int] = field(default_factory=list)
    """Steps that ended with an outer synchronisation (periodic algorithms after their warm-up)."""
    sync_diagnostics: list[SyncDiagnostics] = field(default_factory=list)
    step_bytes: dict[int, int] = field(default_factory=dict)
    """Bytes worker 0 sent during each step that sent any (step 1 includes the initial broadcast)."""


def read_records(path: Path) -> Records:
    """The records of a ``metrics.jsonl``; raise ValueError naming the file if it is missing."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise ValueError(f"run: {path.parent} holds no run ({path.name} is missing)") from None
    records = Records()
    sent = 0
    for record in map(json.loads, lines):
        step = record["step"]
        if "loss" in record:
            records.train.append(TrainPoint(step, record["loss"], record["elapsed_s"]))
            if record["comm_bytes"] > sent:
                records.step_bytes[step] = record["comm_bytes"] - sent
            sent = record["comm_bytes"]
        elif record.get("sync") == "pseudo" and record["bytes"] > 0:
            records.step_bytes[step] = record["bytes"]
            sent += record["bytes"]
        elif record.get("sync") == "outer":
            if record["bytes"] > 0:
                records.sync_steps.append(step)
            if "pseudo_grad_norm" in record:
                fields = ("pseudo_grad_norm", "worker_spread", "pseudo_grad_cosine")
                records.sync_diagnostics.append(SyncDiagnostics(step, *(record[name] for name in fields)))
        elif "eval_loss" in record:
            fields = ("eval_loss", "elapsed_s", "tokens", "comm_bytes", "comm_wait_s")
            records.evaluations.append(Evaluation(step, *(record[name] for name in fields)))
    return records
