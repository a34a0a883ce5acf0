"""Post-Local SGD (Lin et al., "Don't Use Large Mini-Batches, Use Local SGD", ICLR 2020, arXiv 1808.07217).

Rule: for the first S steps, gradients are averaged over all workers every step (mini-batch SGD,
DDP semantics); afterwards Local SGD: every H steps, ``x_k <- mean_k x_k``; finish: one more mean if steps were trained
since the last.
"""

from __future__ import annotations

from lowcomm.algorithms.local_sgd import LocalSGD
from lowcomm.algorithms.options import Option, integer


class PostLocalSGD(LocalSGD):
    """Local SGD after ``warmup_steps`` (at least one) synchronous steps."""

    OPTIONS = (Option("warmup_steps", 32, "S: synchronous steps (averaged gradients) before the local ones",
                      integer(ge=1)),)
