"""Timing steps: the warm-up is left out of the time per step."""

from __future__ import annotations

import time

import torch

from lowcomm.benchmarks.timing import seconds_per_step


def test_warmup_steps_are_not_timed() -> None:
    durations = iter([0.3, 0.02, 0.02])  # one slow warm-up step, then two fast ones

    def step() -> None:
        time.sleep(next(durations))

    seconds = seconds_per_step(step, steps=2, warmup=1, device=torch.device("cpu"))
    assert 0.02 <= seconds < 0.15
    assert next(durations, None) is None  # warm-up + steps calls, no more
