"""The inner learning-rate schedule: linear warm-up, then cosine decay (Loshchilov & Hutter, SGDR, 2017)
or a constant learning rate (the PALSGD paper's recipe: no schedule)."""

from __future__ import annotations

import math
from collections.abc import Callable


def warmup_cosine(warmup_steps: int, total_steps: int, min_ratio: float) -> Callable[[int], float]:
    """The factor on the peak learning rate for the step after ``step`` completed ones (for ``LambdaLR``).

    It rises linearly to 1 over ``warmup_steps`` steps, then falls along a half cosine to
    ``min_ratio`` at ``total_steps``.
    """

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def warmup_constant(warmup_steps: int) -> Callable[[int], float]:
    """The factor rises linearly to 1 over ``warmup_steps`` steps and stays there."""
    return lambda step: (step + 1) / warmup_steps if step < warmup_steps else 1.0


def lr_schedule(name: str, warmup_steps: int, total_steps: int, min_ratio: float) -> Callable[[int], float]:
    """The factor of schedule ``name`` (``cosine`` or ``constant``) for ``LambdaLR``."""
    if name == "constant":
        return warmup_constant(warmup_steps)
    return warmup_cosine(warmup_steps, total_steps, min_ratio)
