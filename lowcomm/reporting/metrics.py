"""What rank 0 reports: ``metrics.jsonl``, TensorBoard scalars, a progress bar and ``summary.json``.

``metrics.jsonl`` holds one JSON object per line:

- train: ``step``, ``loss`` (rank 0's), ``lr``, ``elapsed_s``, ``comm_bytes`` (cumulative bytes this
  worker sent), ``tokens`` (cumulative tokens trained on, all workers);
- eval: ``step``, ``eval_loss`` (the global model on the held-out split), ``elapsed_s``, and
  ``tokens``, ``comm_bytes`` and ``comm_wait_s`` (cumulative seconds worker 0 waited for
  communication) at that point;
- sync: ``step``, ``sync`` (``"outer"``, or ``"pseudo"`` for a PALSGD pseudo-synchronisation step),
  ``bytes`` (sent by this worker during the step); for DiLoCo, PALSGD and Streaming DiLoCo, the
  step that applies an outer step also carries ``pseudo_grad_norm``, ``worker_spread`` (null
  without ``--diagnostics``) and ``pseudo_grad_cosine`` (see :class:`~lowcomm.algorithms.DiLoCo`; with overlap that is a record
  of its own, ``bytes`` 0, tau steps after the one that sent);
- event: ``step``, ``event`` and its details: ``start``, ``resume``, ``skipped_checkpoint``,
  ``lr_schedule_replanned`` (a resumed run with another ``--steps``: ``from_steps``, ``to_steps``
  and the next step's ``lr``), ``nonfinite_loss`` (rank 0's), and whatever the strategy records in
  its ``events`` (such as
  ``nonfinite_worker_excluded``: ``what`` was not finite, ``finite_workers`` took part). After the elastic launcher restarted the group, ``start`` and
  ``resume`` carry ``restart``, the number of that restart.
  With ``--fault-tolerance live``: ``group_left`` and ``group_joined`` (``group``,
  ``live_groups``, ``stalled_s``: the seconds that synchronisation took, its quorum included).

With worker groups, ``comm_bytes``, ``comm_wait_s`` and a sync record's ``bytes`` count the traffic
between groups (the slow link), and train and eval records add ``comm_bytes_within_groups``
(cumulative bytes rank 0 sent to the ranks of its own group).

A checkpoint stores the file's length, and resuming truncates the file back to it, so a resumed
run's file is the uninterrupted run's, record for record.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from tqdm import tqdm

from lowcomm.atomic import write_atomically

SCALARS = {"loss": "train/loss", "lr": "train/lr", "comm_bytes": "comm/bytes_sent", "eval_loss": "eval/loss",
           "pseudo_grad_norm": "sync/pseudo_grad_norm", "worker_spread": "sync/worker_spread",
           "pseudo_grad_cosine": "sync/pseudo_grad_cosine"}


class MetricsLog:
    """Rank 0's ``metrics.jsonl`` (from byte ``offset`` on) and its TensorBoard twin in ``out/tensorboard``."""

    def __init__(self, out: Path, offset: int, step: int) -> None:
        path = out / "metrics.jsonl"
        path.touch()
        os.truncate(path, whole_lines(path, min(offset, path.stat().st_size)))
        self.file = path.open("a", encoding="utf-8")
        from torch.utils.tensorboard import SummaryWriter  # on rank 0 only: a fifth of a second to import

        self.tensorboard = SummaryWriter(out / "tensorboard", purge_step=step + 1)

    def write(self, record: dict[str, Any]) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        for key, tag in SCALARS.items():
            if isinstance(record.get(key), (int, float)):
                self.tensorboard.add_scalar(tag, record[key], record["step"])

    def durable_offset(self) -> int:
        """Flush and fsync the file; return its length (what a checkpoint remembers)."""
        self.file.flush()
        os.fsync(self.file.fileno())
        self.tensorboard.flush()
        return self.file.tell()

    def close(self) -> None:
        self.file.close()
        self.tensorboard.close()


def whole_lines(path: Path, length: int) -> int:
    """The length of the first ``length`` bytes of ``path`` cut back to the end of their last whole
    line: a record torn by a crash (or a file cut short) is dropped, not continued."""
    with path.open("rb") as file:
        end = length
        while end > 0:
            start = max(0, end - (1 << 16))
            file.seek(start)
            newline = file.read(end - start).rfind(b"\n")
            if newline >= 0:
                return start + newline + 1
            end = start
    return 0


class ProgressBar:
    """A tqdm bar showing the loss, tokens per second and the share of time spent communicating."""

    def __init__(self, total: int, initial: int, description: str) -> None:
        self.bar = tqdm(total=total, initial=initial, desc=description, unit="step", dynamic_ncols=True)
        self.loss = math.nan

    def update(self, loss: float | None, tokens_per_s: float, comm_share: float) -> None:
        """Advance one step; ``loss`` is ``None`` for a step without a batch (the last loss stays)."""
        if loss is not None:
            self.loss = loss
        postfix = {"loss": f"{self.loss:.3f}", "tok/s": f"{tokens_per_s:,.0f}", "comm": f"{comm_share:.0%}"}
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.update()

    def close(self) -> None:
        self.bar.close()


def write_json_atomically(path: Path, value: dict[str, Any]) -> None:
    write_atomically(path, lambda temporary: temporary.write_text(json.dumps(value, indent=2) + "\n"))
