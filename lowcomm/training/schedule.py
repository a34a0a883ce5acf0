"""The inner learning-rate schedule: linear warm-up, then cosine decay (Loshchilov & Hutter, SGDR, 2017)."""

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
