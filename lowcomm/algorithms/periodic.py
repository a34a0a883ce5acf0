"""The shape shared by Local SGD, Post-Local SGD, DiLoCo, PALSGD and NoLoCo.

Steps are numbered from 1 and every step counts. The first ``warmup_steps`` steps average the
gradients over all workers before the inner optimizer steps (DDP semantics); then the outer model z
(DiLoCo, PALSGD, NoLoCo) starts from the workers' model. After that each worker steps on its own,
and :meth:`~PeriodicStrategy.after_local_step` runs after every local step: by default it calls
:meth:`~PeriodicStrategy.synchronize`, the algorithm's own synchronisation, after every step ``t``
with ``t % sync_interval == 0``. DiLoCo overrides ``after_local_step`` instead (its fragments and
overlapped outer steps keep a schedule of their own).

:meth:`~PeriodicStrategy.finish` runs the synchronisation once more after the last step if any step
was trained since the last one (H need not divide the steps): the global model then holds every step.

At a synchronisation a worker whose contribution (its parameters, or its pseudo-gradient) is not
finite is left out of it: the others' values are used, the worker takes the synchronised model and a
fresh inner optimizer state, and the strategy records a ``nonfinite_worker_excluded`` event whose
``what`` names the contribution.

With worker groups a worker is a group: synchronisations run between groups on each rank's shard
(``self.shards``), the warm-up averages the gradient shards across groups, and a group is left out
when any of its ranks is non-finite.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from lowcomm.algorithms.base import Strategy
from lowcomm.algorithms.options import Option, integer

Members = Callable[[], tuple[int | None, int]]


class PeriodicStrategy(Strategy):
    """Optional synchronous warm-up, then local steps with a synchronisation every H steps."""

    OPTIONS = (
        Option("sync_interval", 32, "H: steps between synchronisations", integer(ge=1)),
        Option("warmup_steps", 0, "S: synchronous steps (averaged gradients) before the local ones", integer(ge=0)),
    )
    runs_live = True

    averages_on_demand = True
    """Whether the global model is the workers' mean, asked for on demand (a collective); else the
    model of the last synchronisation (:meth:`synchronised_model`)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, **options: Any) -> None:
        super().__init__(model, optimizer, **options)
        self.sync_interval: int = self.option_values["sync_interval"]
        self.warmup_steps: int = self.option_values["warmup_steps"]
        self.finished_step = 0  # the last step finish() synchronised
        self.outer_params: list[torch.Tensor] = []  # z, this rank's shards, for algorithms with an outer model
        # this worker's index among those in a synchronisation (None: it sits it out), and their number
        self.members: Members = lambda: (self.comm.rank, self.comm.world_size)

    @property
    def in_warmup(self) -> bool:
        return self.step_count <= self.warmup_steps

    def averages_gradients(self, step: int) -> bool:
        return step <= self.warmup_steps

    def after_update(self) -> None:
        if not self.in_warmup:
            self.after_local_step()
        elif self.step_count == self.warmup_steps:
            self.begin_local_phase()

    def begin_local_phase(self) -> None:
        """Called once, after the last warm-up step: ``z <- x``."""
        for x, z in zip(self.shards.local(), self.outer_params):
            z.copy_(x)

    def make_elastic(self, members: Members) -> None:
        """Let the workers change from one synchronisation to the next (live fault tolerance):
        ``members`` tells each synchronisation's, and the global model is the model of the last
        synchronisation, as no mean can be asked for outside one. Call it before loading a state."""
        self.members = members
        self.averages_on_demand = False

    def after_local_step(self) -> None:
        """Called after every local step: :meth:`synchronize` when the step is a multiple of H."""
        if self.step_count % self.sync_interval == 0:
            self.synchronize()

    def synchronize(self) -> None:
        """The algorithm's synchronisation, run after every H-th step."""
        raise NotImplementedError(f"{type(self).__name__} must implement synchronize or after_local_step")

    def last_synchronised(self, offset: int = 0) -> int:
        """The last step after which a synchronisation of period H and phase ``offset`` started (the
        end of the warm-up, or :meth:`finish`, where later)."""
        on_schedule = self.step_count - (self.step_count - offset) % self.sync_interval
        return max(on_schedule, self.warmup_steps, self.finished_step)

    def finish(self) -> None:
        """The algorithm's synchronisation once more, if any step was trained since the last one."""
        super().finish()
        if self.step_count > self.last_synchronised():
            self.synchronize()
        self.finished_step = self.step_count

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

    def global_values(self) -> tuple[list[torch.Tensor], list[torch.Tensor]] | None:
        """The workers' mean model where it is asked for on demand; else the model of the last
        synchronisation (during the warm-up every worker holds it)."""
        if self.averages_on_demand:
            return self.averaged_values()
        return None if self.in_warmup else (self.synchronised_model(), self.buffers)

    def synchronised_model(self) -> list[torch.Tensor]:
        """The model of the last synchronisation, this rank's shards (by default z)."""
        return self.outer_params

    def averaged_values(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The workers' mean model (a collective: every worker must call it)."""
        averaged = [t.clone() for t in self.shards.local() + self.buffers]
        self.comm.all_reduce_mean(averaged, accounted=False)
        return averaged[: len(self.params)], averaged[len(self.params) :]

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "finished_step": self.finished_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.finished_step = int(state.get("finished_step", 0))
