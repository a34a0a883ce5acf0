"""DDP's rule through any communicator, for where torch's DistributedDataParallel cannot run.

DistributedDataParallel needs a real process group and hides its traffic inside it, so the
simulation (no process group) and the network model (which must delay every operation) run the
``ddp`` baseline as :class:`GradientAveraging` instead: every step averages the gradients over all
workers, then the inner optimizer steps. That is mathematically DDP; only the bucketing and the
overlap of communication with the backward pass differ.
"""

from __future__ import annotations

from lowcomm.algorithms.base import Strategy


class GradientAveraging(Strategy):
    """Average the gradients over all workers every step, then step the inner optimizer."""

    def averages_gradients(self, step: int) -> bool:
        return True
