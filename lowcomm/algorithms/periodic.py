"""The shape shared by Local SGD, Post-Local SGD, DiLoCo, PALSGD and NoLoCo.

Steps are numbered from 1 and every step counts. The first ``warmup_steps`` steps average the
gradients over all workers before the inner optimizer steps (DDP semantics); after them each worker
steps on its own, and after every step ``t > warmup_steps`` with ``t % sync_interval == 0`` the
workers synchronise in the algorithm's own way.

At a synchronisation a worker whose contribution (its parameters, or its pseudo-gradient) is not
finite is left out of it: the others' values are used, the worker takes the synchronised model and a
fresh inner optimizer state, and the strategy records a ``nonfinite_pseudo_gradient`` event.

With worker groups a worker is a group: synchronisations run between groups on each rank's shard
(``self.shards``), the warm-up averages the gradient shards across groups, and a group is left out
when any of its ranks is non-finite.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from itertools import chain
from typing import Any

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh

from lowcomm.algorithms.base import Closure, Strategy, check_positive_int
from lowcomm.communication.communicator import Communicator
from lowcomm.communication.groups import to_plain


class PeriodicStrategy(Strategy):
    """Optional synchronous warm-up, then local steps with a synchronisation every H steps."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        sync_interval: int,
        warmup_steps: int = 0,
        mesh: DeviceMesh | None = None,
        communicator: Communicator | None = None,
        max_grad_norm: float | None = None,
    ) -> None:
        self.sync_interval = check_positive_int("sync_interval", sync_interval)
        self.warmup_steps = check_positive_int("warmup_steps", warmup_steps, minimum=0)
        super().__init__(model, optimizer, mesh=mesh, communicator=communicator, max_grad_norm=max_grad_norm)
        self.buffers = [b for b in model.buffers() if b.is_floating_point()]

    @property
    def in_warmup(self) -> bool:
        return self.step_count <= self.warmup_steps

    def step(self, closure: Closure | Sequence[Closure]) -> torch.Tensor | None:
        self.step_count += 1
        if self.in_warmup:
            loss = self._synchronous_step(closure)
            if self.step_count == self.warmup_steps:
                self.begin_local_phase()
            return loss
        loss = self.local_step(closure)
        self.communicate()
        return loss

    def _synchronous_step(self, closure: Closure | Sequence[Closure]) -> torch.Tensor:
        loss = self._backward(closure)
        self.average_gradients()
        self._optimizer_step()
        return loss

    def local_step(self, closure: Closure | Sequence[Closure]) -> torch.Tensor | None:
        """One step on this worker alone."""
        loss = self._backward(closure)
        self._optimizer_step()
        return loss

    def begin_local_phase(self) -> None:
        """Called once, after the last warm-up step."""

    def communicate(self) -> None:
        """Called after every local step: synchronise when the step is a multiple of H."""
        if self.step_count % self.sync_interval == 0:
            self.synchronize()

    @abstractmethod
    def synchronize(self) -> None:
        """The algorithm's periodic communication."""

    def group_buffers(self) -> list[torch.Tensor]:
        """The floating-point buffers, first averaged within the group where its ranks' differ (FSDP
        inside: each rank's own batches move its batch-norm statistics; DDP copies its first rank's)."""
        if self.inner == "fsdp" and self.buffers:
            self.inner_comm.all_reduce_mean(self.buffers)
        return self.buffers

    def finite_flag(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        """A one-element tensor to mean-all-reduce along with ``tensors``: 1 if they are finite on every
        rank of this worker's group, else 0 (and they are zeroed, adding nothing to the sum). Its mean
        is the share of finite workers."""
        finite = self.shards.group_finite(tensors)
        if not finite:
            for t in tensors:
                t.zero_()
        return torch.full((1,), float(finite), dtype=tensors[0].dtype, device=tensors[0].device)

    def record_nonfinite(self, finite_workers: int, **details: Any) -> None:
        """Record that workers with a non-finite contribution were left out of this step's synchronisation."""
        self.events.append(
            {"event": "nonfinite_pseudo_gradient", "step": self.step_count, **details, "finite_workers": finite_workers}
        )

    def averaged_state_dict(self) -> dict[str, torch.Tensor]:
        """The workers' mean model (a collective: every worker must call it)."""
        averaged = [t.clone() for t in self.shards.local() + self.buffers]
        self.comm.all_reduce_mean(averaged, accounted=False)
        return self.state_dict_with(averaged[: len(self.params)], averaged[len(self.params) :])

    def state_dict_with(self, shards: list[torch.Tensor], buffers: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """The model's state dict, whole plain tensors, with the trainable parameters' shards and the
        floating-point buffers replaced by ``shards`` and ``buffers`` (a collective within a group)."""
        value_of = {id(t): v for t, v in zip(self.params + self.buffers, self.shards.full(shards) + buffers)}
        model = self.local_model
        named = chain(model.named_parameters(remove_duplicate=False), model.named_buffers(remove_duplicate=False))
        replacement = {name: value_of[id(t)] for name, t in named if id(t) in value_of}
        return {
            key: (replacement[key] if key in replacement else to_plain(tensor)).detach().to(tensor.device, copy=True)
            for key, tensor in model.state_dict().items()
        }
