"""Uneven workers: each worker's speed, and the clock that slows it to that speed and times its steps.

A worker at speed s (0 < s <= 1; 1 is the natural speed, the fastest there is) takes 1/s of its
natural time per step: after computing for t seconds it waits t (1/s - 1) seconds more. The
:class:`StepClock` pays that debt twice in a step: when the inner optimizer's step is done (a
post-hook registered before the strategy's, so it runs before the synchronisation a periodic
algorithm's step ends with) for the compute so far, and at the step's end for the rest (an outer
update). A gradient average during the backward pass (DDP's all-reduce, a synchronous step's)
comes before either, so a slow worker makes the others wait at the next step's instead: the same
throughput, one step later.

The same clock splits every worker's time in steps into compute, slowdown (the wait for its speed)
and sync wait (blocked in the strategy's communication, between groups and within them).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from lowcomm.communication.communicator import CommStats


def parse_speeds(value: Any) -> list[float] | None:
    """``"1,1,0.5"`` (or a list) as ``[1.0, 1.0, 0.5]``; a one-line ValueError unless every speed is a
    number in (0, 1]. Above 1 is refused: 1 is the natural speed, the fastest a worker has."""
    if value is None:
        return None
    parts = value.split(",") if isinstance(value, str) else value
    if not isinstance(parts, (list, tuple)) or not parts:
        raise ValueError(f"expected comma-separated speeds like 1,1,1,0.5, got {value!r}")
    speeds = []
    for part in parts:
        try:
            speed = float(part.strip() if isinstance(part, str) else part) if not isinstance(part, bool) else None
        except (TypeError, ValueError):
            speed = None
        if speed is None:
            raise ValueError(f"{part!r} is not a number; expected speeds like 1,1,1,0.5")
        if not (math.isfinite(speed) and 0 < speed <= 1):
            raise ValueError(f"each speed must be in (0, 1] (1: the natural speed, the fastest), got {part}")
        speeds.append(speed)
    return speeds


@dataclass
class StepTimes:
    """One worker's seconds in training steps, all told, and the parts of them it waited."""

    step_s: float = 0.0
    slowdown_s: float = 0.0
    """Waiting to run at its speed."""
    sync_wait_s: float = 0.0
    """Blocked in the strategy's communication (for the slowest worker, and for the transfer)."""

    @property
    def compute_s(self) -> float:
        return self.step_s - self.slowdown_s - self.sync_wait_s


class StepClock:
    """Times a worker's steps into ``times`` and slows them to ``speed``.

    ``stats`` returns the communication counters whose waits are not compute (the strategy's,
    between and within groups). Call :meth:`start` before a step, :meth:`pace` where the step may
    wait (before its synchronisation), :meth:`stop` after it.
    """

    def __init__(self, speed: float, stats: Callable[[], Sequence[CommStats]], times: StepTimes) -> None:
        self.lag = 1 / speed - 1
        self.stats = stats
        self.times = times
        self.started = self.waited_before = self.slept = 0.0

    def waited(self) -> float:
        return sum(stats.wait_s for stats in self.stats())

    def start(self) -> None:
        self.started, self.waited_before, self.slept = time.perf_counter(), self.waited(), 0.0

    def pace(self, *_: Any) -> None:
        """Wait ``lag`` times the compute of this step so far, less what this step already waited for
        its speed (usable as an optimizer step hook)."""
        if self.lag == 0:
            return
        now = time.perf_counter()
        compute = now - self.started - (self.waited() - self.waited_before) - self.slept
        owed = compute * self.lag - self.slept
        if owed > 0:
            time.sleep(owed)
            self.slept += time.perf_counter() - now

    def stop(self) -> None:
        """Pay the rest of the step's debt and add the step to ``times``."""
        self.pace()
        self.times.step_s += time.perf_counter() - self.started
        self.times.sync_wait_s += self.waited() - self.waited_before
        self.times.slowdown_s += self.slept


def speed_of(speeds: list[float] | None, rank: int, group_size: int | None) -> float:
    """Rank ``rank``'s speed: its worker's, or with worker groups of ``group_size`` ranks, its group's."""
    if speeds is None:
        return 1.0
    return speeds[rank // (group_size or 1)]


def worker_times(rank: int, speed: float, steps: int, times: StepTimes) -> dict[str, float]:
    """A worker's entry in ``summary.json``'s ``worker_times``."""
    return {
        "rank": rank,
        "speed": speed,
        "mean_step_s": times.step_s / max(steps, 1),
        "step_s": times.step_s,
        "compute_s": times.compute_s,
        "slowdown_s": times.slowdown_s,
        "sync_wait_s": times.sync_wait_s,
        "idle_share": times.sync_wait_s / times.step_s if times.step_s > 0 else 0.0,
    }
