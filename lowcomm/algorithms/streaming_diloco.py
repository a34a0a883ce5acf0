"""Streaming DiLoCo (Douillard et al., "Streaming DiLoCo with overlapping communication", 2025,
arXiv 2501.18512).

Rule: the parameters are split into P fragments (contiguous runs of layers, or strided: every P-th
tensor). Fragment f takes DiLoCo's outer step after the steps t with ``(t - f * H // P) % H == 0``,
so each fragment still syncs once every H steps but only about 1/P of the model crosses the network
at a time. With ``overlap_steps`` tau the all-reduce runs during tau more inner steps and the
fragment is merged ``x <- (1 - alpha) * z + alpha * x``. Finish: DiLoCo's, fragment by fragment: each
fragment trained since its own last outer step takes one more.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from lowcomm.algorithms.diloco import DiLoCo
from lowcomm.algorithms.options import Option, integer


def split_fragments(sizes: list[int], count: int, pattern: Literal["sequential", "strided"]) -> list[list[int]]:
    """Indices of the tensors in each fragment: strided round-robin, or contiguous runs of similar size."""
    if pattern == "strided":
        return [list(range(f, len(sizes), count)) for f in range(count)]
    if pattern != "sequential":
        raise ValueError(f"fragment_pattern: must be 'sequential' or 'strided', got {pattern!r}")
    fragments: list[list[int]] = [[] for _ in range(count)]
    total, seen, current = sum(sizes), 0, -1
    for i, size in enumerate(sizes):
        by_size = min(seen * count // total, count - 1)
        # never skip a fragment, and leave at least one tensor for each fragment after this one
        current = max(min(by_size, current + 1), count - (len(sizes) - i))
        fragments[current].append(i)
        seen += size
    return fragments


class StreamingDiLoCo(DiLoCo):
    """DiLoCo whose outer steps are staggered over ``num_fragments`` pieces of the model."""

    OPTIONS = (
        Option("num_fragments", 4, "P: the pieces of the model whose outer steps are staggered", integer(ge=1)),
        Option("fragment_pattern", "sequential", "how fragments split the model: sequential (contiguous runs of "
               "layers) or strided (every P-th tensor)", Literal["sequential", "strided"]),
    )

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, **options: Any) -> None:
        super().__init__(model, optimizer, **options)
        count = self.option_values["num_fragments"]
        if count > len(self.params):
            raise ValueError(f"num_fragments: {count} is more than the model's {len(self.params)} tensors")
        pattern = self.option_values["fragment_pattern"]
        self.fragments = split_fragments([p.numel() for p in self.params], count, pattern)
        self.offsets = [f * self.sync_interval // count for f in range(count)]
