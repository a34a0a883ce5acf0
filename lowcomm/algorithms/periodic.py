"""The shape shared by Local SGD, Post-Local SGD, DiLoCo, PALSGD and NoLoCo.

Steps are numbered from 1 and every step counts. The first ``warmup_steps`` steps average the
gradients over all workers before the inner optimizer steps (DDP semantics); then the outer model z
(DiLoCo, PALSGD, NoLoCo) starts from the workers' model. After that each worker steps on its own,
and :meth:`~PeriodicStrategy.after_local_step` runs after every local step: by default it calls
:meth:`~PeriodicStrategy.synchronize`, the algorithm's own synchronisation, after every step ``t``
with ``t % sync_interval == 0``. DiLoCo overrides ``after_local_step`` instead (its fragments and
overlapped outer steps keep a schedule of their own).

At a synchronisation a worker whose contribution (its parameters, or its pseudo-gradient) is not
finite is left out of it: the others' values are used, the worker takes the synchronised model and a
fresh inner optimizer state, and the strategy records a ``nonfinite_worker_excluded`` event whose
``what`` names the contribution.

With worker groups a worker is a group: synchronisations run between groups on each rank's shard
(``self.shards``), the warm-up averages the gradient shards across groups, and a group is left out
when any of its ranks is non-finite.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain
from typing import Any

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh

from lowcomm.algorithms.base import Closure, Strategy
from lowcomm.algorithms.options import Option, at_least
from lowcomm.communication.communicator import Communicator
from lowcomm.communication.groups import to_plain


class PeriodicStrategy(Strategy):
    """Optional synchronous warm-up, then local steps with a synchronisation every H steps."""

    OPTIONS = (Option("sync_interval", 32, at_least(1)), Option("warmup_steps", 0, at_least(0)))

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
        self.sync_interval = self.check_option("sync_interval", sync_interval)
        self.warmup_steps = self.check_option("warmup_steps", warmup_steps)
        super().__init__(model, optimizer, mesh=mesh, communicator=communicator, max_grad_norm=max_grad_norm)
        self.buffers = [b for b in model.buffers() if b.is_floating_point()]
        self.outer_params: list[torch.Tensor] = []  # z, this rank's shards, for algorithms with an outer model

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
        self.after_local_step()
        return loss

    def local_step(self, closure: Closure | Sequence[Closure]) -> torch.Tensor | None:
        """One step on this worker alone."""
        loss = self._backward(closure)
        self._optimizer_step()
        return loss

    def begin_local_phase(self) -> None:
        """Called once, after the last warm-up step: ``z <- x``."""
        for x, z in zip(self.shards.local(), self.outer_params):
            z.copy_(x)

    def complete_joined_step(self) -> None:
        """Finish the current step as a worker that has just taken a peer's state, captured when the
        peer began this step's communication: average the gradients and step (warm-up), or
        synchronise. The worker's own contribution is left out by the communicator."""
        if not self.in_warmup:
            self.after_local_step()
            return
        self.averaged_step()
        if self.step_count == self.warmup_steps:
            self.begin_local_phase()

    def after_local_step(self) -> None:
        """Called after every local step: :meth:`synchronize` when the step is a multiple of H."""
        if self.step_count % self.sync_interval == 0:
            self.synchronize()

    def synchronize(self) -> None:
        """The algorithm's synchronisation, run after every H-th step."""
        raise NotImplementedError(f"{type(self).__name__} must implement synchronize or after_local_step")

    def restart_from(self, model: list[torch.Tensor]) -> None:
        """``x <- model`` (this rank's shards: z, or the last synchronised model) with a fresh inner
        optimizer state: a worker's restart after its model turned non-finite."""
        for x, saved in zip(self.shards.local(), model):
            x.copy_(saved)
        self.shards.complete()
        self.optimizer.state.clear()

    def group_buffers(self) -> list[torch.Tensor]:
        """The floating-point buffers, first averaged within the group where its ranks' differ (FSDP
        inside: each rank's own batches move its batch-norm statistics; DDP copies its first rank's)."""
        if self.inner == "fsdp" and self.buffers:
            self.inner_comm.all_reduce_mean(self.buffers)
        return self.buffers

    def zero_unless_finite(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        """Zero ``tensors`` unless they are finite on every rank of this worker's group (so they add
        nothing to a sum), and return the flag to mean-all-reduce along with them: one element, 1 if
        they were finite, else 0. Its mean is the share of finite workers."""
        finite = self.shards.group_finite(tensors)
        if not finite:
            for t in tensors:
                t.zero_()
        return torch.full((1,), float(finite), dtype=tensors[0].dtype, device=tensors[0].device)

    def finite_share(self, flag: torch.Tensor, what: str, **details: Any) -> float:
        """The averaged flag of :meth:`zero_unless_finite`, the share of finite workers; below 1 the
        exclusion of the others is recorded."""
        share = float(flag)
        if share < 1:
            self.record_excluded(what, round(share * self.comm.world_size), **details)
        return share

    def record_excluded(self, what: str, finite_workers: int, **details: Any) -> None:
        """Record that workers whose ``what`` was not finite were left out of this step's synchronisation."""
        self.events.append({"event": "nonfinite_worker_excluded", "step": self.step_count, "what": what, **details,
                            "finite_workers": finite_workers})

    def averaged_state_dict(self) -> dict[str, torch.Tensor]:
        """The workers' mean model (a collective: every worker must call it)."""
        averaged = [t.clone() for t in self.shards.local() + self.buffers]
        self.comm.all_reduce_mean(averaged, accounted=False)
        return self.state_dict_with(averaged[: len(self.params)], averaged[len(self.params) :])

    def synchronised_state_dict(self, model: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """The model of the last synchronisation, ``model`` (this rank's shards: z, or Local SGD's x0)
        with the current buffers; during the warm-up every worker's own model, which they all share."""
        if self.in_warmup:
            return super().global_state_dict()
        return self.state_dict_with(model, self.buffers)

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
