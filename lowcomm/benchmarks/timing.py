"""Timing training steps."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


def seconds_per_step(step: Callable[[], None], steps: int, warmup: int, device: torch.device) -> float:
    """Seconds per step over ``steps`` calls of ``step`` after ``warmup`` untimed ones, waiting for
    ``device``'s queued work at both ends of the timed span."""
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / steps
