"""The deterministic held-out split, shared by every dataset."""

from __future__ import annotations

import numpy as np

HELD_OUT_FRACTION = 0.04
SPLIT_SEED = 20240917


def held_out_mask(count: int) -> np.ndarray:
    """Which of ``count`` items (documents or images) are held out: item ``i`` is held out when
    the ``i``-th draw of a fixed-seed generator falls below ``HELD_OUT_FRACTION``. Item ``i``'s fate
    depends only on ``i``, never on the training seed or the number of workers."""
    return np.random.default_rng(SPLIT_SEED).random(count) < HELD_OUT_FRACTION


def first_held_out() -> int:
    """The index of the first held-out item: a source of fewer items holds none out."""
    return int(np.argmax(held_out_mask(1024)))
