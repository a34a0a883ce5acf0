"""Local SGD (Stich, "Local SGD Converges Fast and Communicates Little", ICLR 2019, arXiv 1805.09767).

Rule: each worker k steps on its own; every H steps, ``x_k <- mean_k x_k``.

A worker whose parameters (or floating-point buffers) are not finite is left out of the mean and
continues from it with a fresh inner optimizer state; if no worker is finite, training stops with an error.
With worker groups each rank averages its shard across groups, then the group completes its model.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh

from lowcomm.algorithms.periodic import PeriodicStrategy
from lowcomm.communication.communicator import Communicator


class LocalSGD(PeriodicStrategy):
    """Average the workers' parameters (and floating-point buffers) every ``sync_interval`` steps."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        sync_interval: int = 32,
        warmup_steps: int = 0,
        mesh: DeviceMesh | None = None,
        communicator: Communicator | None = None,
        max_grad_norm: float | None = None,
    ) -> None:
        super().__init__(
            model,
            optimizer,
            sync_interval=sync_interval,
            warmup_steps=warmup_steps,
            mesh=mesh,
            communicator=communicator,
            max_grad_norm=max_grad_norm,
        )

    def synchronize(self) -> None:
        tensors = self.shards.local() + self.group_buffers()
        flag = self.finite_flag(tensors)
        locally_finite = bool(flag)
        self.comm.all_reduce_mean(tensors + [flag])
        finite_share = float(flag)
        if finite_share < 1:
            self.record_nonfinite(round(finite_share * self.comm.world_size))
            if finite_share == 0:
                raise FloatingPointError(f"step {self.step_count}: every worker's model is non-finite")
            for t in tensors:
                t.div_(finite_share)
            if not locally_finite:
                self.optimizer.state.clear()
        self.shards.complete()

    def global_state_dict(self) -> dict[str, torch.Tensor]:
        return self.averaged_state_dict()
