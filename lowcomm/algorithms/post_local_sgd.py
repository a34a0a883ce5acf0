"""Post-Local SGD (Lin et al., "Don't Use Large Mini-Batches, Use Local SGD", ICLR 2020, arXiv 1808.07217).

Rule: for the first S steps, gradients are averaged over all workers every step (mini-batch SGD,
DDP semantics); afterwards Local SGD: every H steps, ``x_k <- mean_k x_k``; finish: one more mean if steps were trained
since the last.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh

from lowcomm.algorithms.local_sgd import LocalSGD
from lowcomm.algorithms.options import Option, at_least
from lowcomm.communication.communicator import Communicator


class PostLocalSGD(LocalSGD):
    """Local SGD after ``warmup_steps`` (at least one) synchronous steps."""

    OPTIONS = (Option("warmup_steps", 32, at_least(1)),)

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        sync_interval: int = 32,
        warmup_steps: int = 32,
        mesh: DeviceMesh | None = None,
        compress: str = "none",
        compress_block_size: int | None = None,
        communicator: Communicator | None = None,
        max_grad_norm: float | None = None,
    ) -> None:
        super().__init__(
            model,
            optimizer,
            sync_interval=sync_interval,
            warmup_steps=warmup_steps,
            mesh=mesh,
            compress=compress,
            compress_block_size=compress_block_size,
            communicator=communicator,
            max_grad_norm=max_grad_norm,
        )
