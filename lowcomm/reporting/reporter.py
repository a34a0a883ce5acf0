"""Rank 0's account of a training run as it goes: the train, sync, eval and event records of
``metrics.jsonl`` (their format is :mod:`lowcomm.reporting.metrics`'), the progress bar and, at the
end, ``summary.json``."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lowcomm.algorithms.base import Strategy
from lowcomm.algorithms.periodic import PeriodicStrategy
from lowcomm.reporting.metrics import MetricsLog, ProgressBar, write_json_atomically


class Reporter:
    """Writes what ``strategy`` did into ``log``; ``clock`` is the run's elapsed seconds."""

    def __init__(self, log: MetricsLog, strategy: Strategy, grouped: bool, clock: Callable[[], float]) -> None:
        self.log = log
        self.strategy = strategy
        self.grouped = grouped
        self.clock = clock
        self.bar: ProgressBar | None = None

    def start(self, total: int, initial: int, description: str) -> None:
        """Show the progress bar, from step ``initial`` of ``total``."""
        self.bar = ProgressBar(total, initial, description)

    def event(self, step: int, event: str, **details: Any) -> None:
        self.log.write({"step": step, "event": event, **details})

    def strategy_events(self, step: int) -> None:
        """The events the strategy recorded in this step (a worker left out of an outer step, say)."""
        for event in self.strategy.events:
            self.log.write({"step": step, **event})

    def step(self, step: int, loss: float | None, lr: float, sent: int, tokens: int, rank: int) -> None:
        """A train record (``loss`` None: a step without a batch, a pseudo-synchronisation record
        instead), an outer synchronisation's record where the step sent one, and the progress bar.
        ``sent``: the bytes sent in this step; ``tokens``: all workers' so far."""
        stats, elapsed = self.strategy.comm_stats, self.clock()
        if loss is None:
            self.log.write({"step": step, "sync": "pseudo", "bytes": sent})
        else:
            self.log.write({"step": step, "loss": loss, "lr": lr, "elapsed_s": round(elapsed, 4),
                            "comm_bytes": stats.bytes_sent, **self.within_groups(), "tokens": tokens})
            if not math.isfinite(loss):
                self.event(step, "nonfinite_loss", rank=rank)
        strategy, diagnostics = self.strategy, self.strategy.sync_diagnostics
        if isinstance(strategy, PeriodicStrategy) and not strategy.in_warmup and sent > 0 or diagnostics:
            self.log.write({"step": step, "sync": "outer", "bytes": sent, **diagnostics})
        self.bar.update(loss, tokens / elapsed, stats.wait_s / elapsed)

    def evaluation(self, step: int, eval_loss: float, tokens: int) -> None:
        stats = self.strategy.comm_stats
        self.log.write({"step": step, "eval_loss": eval_loss, "elapsed_s": round(self.clock(), 4), "tokens": tokens,
                        "comm_bytes": stats.bytes_sent, **self.within_groups(), "comm_wait_s": round(stats.wait_s, 4)})

    def within_groups(self) -> dict[str, int]:
        """With worker groups, the bytes this rank has sent to the ranks of its own group."""
        return {"comm_bytes_within_groups": self.strategy.inner_comm_stats.bytes_sent} if self.grouped else {}

    def finish(self, out: Path, summary: dict[str, Any]) -> None:
        """Write ``summary.json`` into ``out``, close the bar and the log."""
        write_json_atomically(out / "summary.json", summary)
        if self.bar is not None:
            self.bar.close()
        self.log.close()
