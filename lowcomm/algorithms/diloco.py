"""DiLoCo (Douillard et al., "DiLoCo: Distributed Low-Communication Training of Language Models",
2023, arXiv 2311.08455).

Rule: after the warm-up, ``z <- x``. Every H steps:
``Delta = mean_k (z - x_k)``; the outer optimizer steps z with Delta as its gradient (default SGD,
lr 0.7, Nesterov momentum 0.9); then ``x_k <- z``. The inner optimizer's state stays local.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from lowcomm.algorithms.base import check_positive
from lowcomm.algorithms.periodic import PeriodicStrategy
from lowcomm.communication.communicator import Communicator

OuterOptimizerFactory = Callable[[list[torch.Tensor]], torch.optim.Optimizer]


def nesterov_sgd(lr: float, momentum: float) -> OuterOptimizerFactory:
    """SGD with Nesterov momentum; plain SGD when ``momentum`` is 0."""
    check_positive("outer_lr", lr)
    if not 0 <= momentum < 1:
        raise ValueError(f"outer_momentum: must be in [0, 1), got {momentum!r}")
    return lambda params: torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=momentum > 0)


class DiLoCo(PeriodicStrategy):
    """Local steps, then an outer optimizer step on the averaged pseudo-gradient every H steps.

    Args:
        outer_optimizer: builds the outer optimizer from the outer parameters; overrides
            ``outer_lr`` and ``outer_momentum``.
        outer_device: where z and the outer optimizer's state live (e.g. ``"cpu"`` to save GPU
            memory); defaults to the model's device.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        sync_interval: int = 32,
        warmup_steps: int = 0,
        outer_lr: float = 0.7,
        outer_momentum: float = 0.9,
        outer_optimizer: OuterOptimizerFactory | None = None,
        outer_device: torch.device | str | None = None,
        communicator: Communicator | None = None,
        max_grad_norm: float | None = None,
    ) -> None:
        factory = outer_optimizer or nesterov_sgd(outer_lr, outer_momentum)
        super().__init__(
            model,
            optimizer,
            sync_interval=sync_interval,
            warmup_steps=warmup_steps,
            communicator=communicator,
            max_grad_norm=max_grad_norm,
        )
        device = torch.device(outer_device) if outer_device is not None else None
        pin = device is not None and device.type == "cpu" and self.params[0].is_cuda
        self.outer_params = []
        for p in self.params:
            z = p.detach().to(device or p.device, copy=True)
            self.outer_params.append(z.pin_memory() if pin else z)
        self.outer_optimizer = factory(self.outer_params)
        self.outer_of = {id(x): z for x, z in zip(self.params, self.outer_params)}

    def begin_local_phase(self) -> None:
        for x, z in zip(self.params, self.outer_params):
            z.copy_(x.detach())

    def synchronize(self) -> None:
        deltas = [z.to(x.device) - x.detach() for x, z in zip(self.params, self.outer_params)]
        self.comm.all_reduce_mean(deltas + self.buffers)
        self.outer_step(deltas)

    def outer_step(self, deltas: list[torch.Tensor]) -> None:
        """Step z with the averaged pseudo-gradient, then reset every worker to it: ``x <- z``."""
        for z, delta in zip(self.outer_params, deltas):
            z.grad = delta.to(z.device)
        self.outer_optimizer.step()
        self.outer_optimizer.zero_grad(set_to_none=True)
        for x, z in zip(self.params, self.outer_params):
            x.data.copy_(z)

    def global_state_dict(self) -> dict[str, torch.Tensor]:
        if self.in_warmup:
            return super().global_state_dict()
        return self.state_dict_with(self.outer_params + self.buffers)

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "outer_params": [z.detach().clone() for z in self.outer_params],
            "outer_optimizer": self.outer_optimizer.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        for z, saved in zip(self.outer_params, state["outer_params"]):
            z.copy_(saved)
        self.outer_optimizer.load_state_dict(state["outer_optimizer"])
