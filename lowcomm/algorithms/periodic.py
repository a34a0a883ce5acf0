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

Adaptive local steps (``local_steps="adaptive"``, :data:`LOCAL_STEPS`; Local SGD, DiLoCo, PALSGD and
Streaming DiLoCo take it). The rounds are the fixed rule's: a synchronisation closes each round of
H nominal steps (after the warm-up, rounds end at the multiples of H, and at ``run_steps``, the
loop's last step, where it tells it), but in each round worker k takes H_k local steps:

- H_k = H in the first round (nothing measured yet). At the end of each round every worker's step
  time over it is exchanged in one all-gather of one number per worker (with worker groups, first
  averaged within the group), not counted as training traffic: the median wall-clock time of its
  local steps that trained a batch, each from the start of its first forward pass with gradients
  (or, without one, of its inner optimizer's step) to the end of its inner update. The loop's own
  work between steps (data, evaluations, checkpoints, a collective of its own that waits for the
  slowest worker) is not the worker's speed, and the median keeps a pause on one worker from being
  taken for it; a worker that trained no batch in the round (PALSGD's pseudo-synchronisations
  only) keeps its time from before, or is unmeasured. From the times every rank computes the same
  H_k for the next round (:func:`local_step_counts`): the fastest runs H, and so does a worker whose
  time is within 10% of the fastest's (``t_k <= 1.1 t_fastest``), so that equal speeds give
  exactly the fixed rule despite timing jitter, and an unmeasured one; any other
  ``max(1, round(H * t_fastest / t_k))`` (rounded half up). A round cut short (the first after the
  warm-up, the last at ``run_steps``) of L nominal steps scales L the same way.
- ``step_count`` is nominal, the same on every worker at the end of each round: after its j-th local
  step of a round starting at s, worker k is at ``s + floor(j * L / H_k)``, so the learning-rate
  schedule, the run's length, evaluations, checkpoints and Streaming DiLoCo's fragment offsets all
  count nominal steps. A synchronisation point a worker's count jumps over is taken after the step
  that crosses it, in the order of the points, so every worker runs the same collectives in the same
  order. :attr:`aligned` is False inside a round whose H_k differ: a loop runs its own collectives
  at the round's end (``lowcomm train`` does); a library loop runs ``while strategy.step_count <
  run_steps`` with ``strategy.run_steps`` set.
- The merge is weighted by the tokens each worker trained since the last synchronisation of the same
  parameters, n_k, counted in batches (``lowcomm train`` gives every worker batches of the same size;
  PALSGD's pseudo-synchronisation steps train none): ``Delta = sum_k n_k Delta_k / sum_k n_k`` (Local
  SGD: ``x = sum_k n_k x_k / sum_k n_k``), the floating-point buffers alike. Each worker sends
  ``n_k * Delta_k`` and ``n_k`` with the finite flag in the same all-reduce, so the weighted mean
  takes no extra collective; a non-finite worker is left out of both sums. Where the rounds the
  synchronisation covers all had equal H_k, the fixed rule's plain mean runs (bit for bit the fixed
  rule at equal speeds). With compression the weighted values are what is compressed. Not with live
  fault tolerance, nor with the simulation's batched passes (every worker's step taken together).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import nn

from lowcomm.algorithms.base import Strategy
from lowcomm.algorithms.options import Option, integer

Members = Callable[[], tuple[int | None, int]]

LOCAL_STEPS = Option(
    "local_steps", "fixed", "fixed: H local steps per round on every worker; adaptive: as many as fit in the time "
    "the fastest worker takes for H, the merge weighted by the tokens each trained", Literal["fixed", "adaptive"],
)
"""The option of the algorithms that take adaptive local steps (Local SGD, DiLoCo and their kin)."""

SAME_SPEED = 0.1
"""A worker whose step time is within this share of the fastest's runs the whole round."""


def local_step_counts(length: int, step_times: Sequence[float]) -> list[int]:
    """Each worker's local steps in a round of ``length`` nominal steps, from its step time over the
    last round: ``length`` for the fastest, any within :data:`SAME_SPEED` of it and any unmeasured
    (NaN), else ``max(1, round(length * t_fastest / t_k))``, rounded half up."""
    fastest = min((t for t in step_times if not math.isnan(t)), default=math.nan)
    return [length if math.isnan(t) or t <= (1 + SAME_SPEED) * fastest
            else max(1, math.floor(length * fastest / t + 0.5)) for t in step_times]


@dataclass
class Round:
    """One round of adaptive local steps: nominal steps ``start`` to ``end``, each worker's local steps
    in it (``counts``, the same on every rank), the local steps this worker has taken, and the batches
    trained before it (this worker's, and every worker's summed)."""

    start: int
    end: int
    counts: list[int]
    taken: int = 0
    own_batches_before: int = 0
    workers_batches_before: float = 0.0

    @property
    def uneven(self) -> bool:
        return len(set(self.counts)) > 1

    def position(self, rank: int) -> int:
        """The nominal step count of worker ``rank`` after its ``taken`` local steps."""
        return self.start + self.taken * (self.end - self.start) // self.counts[rank]


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
        self.adaptive = self.option_values.get("local_steps") == "adaptive"
        self.round: Round | None = None  # adaptive: the round under way (None between rounds)
        self.last_uneven: tuple[int, int] | None = None  # adaptive: the last round with unequal counts, (start, end)
        self.step_times: list[float] = []  # adaptive: the times of this round's local steps that trained a batch
        self.measured_times: list[float] | None = None  # adaptive: every worker's step time over the last round
        self.step_start: float | None = None  # adaptive: when this step's work started
        self.batches_trained = 0  # local steps that trained a batch, all along
        self.merged_batches: dict[int, int] = {}  # batches_trained at each fragment's last synchronisation
        self.workers_batches = 0.0  # adaptive: every worker's batches trained, summed (see after_update)

    @property
    def in_warmup(self) -> bool:
        return self.step_count <= self.warmup_steps

    def averages_gradients(self, step: int) -> bool:
        return step <= self.warmup_steps

    def next_step_count(self) -> int:
        """One more in the warm-up and with fixed local steps; adaptive, this worker's position in its
        round after one more local step (a round is planned at its first)."""
        if not self.adaptive or self.step_count < self.warmup_steps:
            return self.step_count + 1
        self.step_start = self.step_start or time.perf_counter()  # a step without a forward pass
        if self.round is None:
            self.round = self.planned_round()
        self.round.taken += 1
        return self.round.position(self.comm.rank)

    def attach(self) -> bool:
        attached = super().attach()
        if attached and self.adaptive:
            self.hooks.append(self.local_model.register_forward_pre_hook(self.start_step_clock))
        return attached

    def start_step_clock(self, *_: Any) -> None:
        """Forward pre-hook (adaptive): a local step's work starts at its first forward pass with
        gradients (an evaluation's has none)."""
        if torch.is_grad_enabled():
            self.step_start = self.step_start or time.perf_counter()

    def planned_round(self) -> Round:
        """The round starting now: up to the next multiple of H (or ``run_steps``), each worker's local
        steps scaled by its measured speed (:func:`local_step_counts`; all the length at first)."""
        start = self.step_count
        end = start - start % self.sync_interval + self.sync_interval
        if self.run_steps is not None and start < self.run_steps:
            end = min(end, self.run_steps)
        length = end - start
        times = self.measured_times or [1.0] * self.comm.world_size
        planned = Round(start, end, local_step_counts(length, times), 0, self.batches_trained, self.workers_batches)
        if planned.uneven:
            self.last_uneven = (start, end)
        return planned

    @property
    def aligned(self) -> bool:
        return self.round is None or not self.round.uneven

    def after_update(self) -> None:
        """After each step: the local step's synchronisation, or the end of the warm-up. Adaptive, it
        also counts :attr:`workers_batches`, every worker's batches trained: exact at the end of each
        round (the counts are exchanged with the step times), and in between this worker's batches
        scaled by the round's local steps (``sum_k H_k / H_rank``)."""
        if not self.in_warmup:
            trained = self.trained_batch()
            self.batches_trained += trained
            if self.adaptive and trained:
                self.step_times.append(time.perf_counter() - self.step_start)
                self.workers_batches += sum(self.round.counts) / self.round.counts[self.comm.rank]
            self.after_local_step()
            if self.round is not None and self.round.taken == self.round.counts[self.comm.rank]:
                self.close_round()
        else:
            if self.adaptive:
                self.workers_batches += self.comm.world_size  # every worker trains each warm-up step
            if self.step_count == self.warmup_steps:
                self.begin_local_phase()
        self.step_start = None

    def trained_batch(self) -> bool:
        """Whether this local step trained a batch (every step here)."""
        return True

    def close_round(self) -> None:
        """End the round: every worker's median step time over it and the batches it trained in it,
        exchanged (an all-gather not counted as training traffic; with worker groups first averaged
        within the group), for the next plan and :attr:`workers_batches`. A worker that trained no
        batch in it keeps its time from before (NaN, unmeasured, if none)."""
        median = statistics.median(self.step_times) if self.step_times else math.nan
        trained = self.batches_trained - self.round.own_batches_before
        measured = torch.tensor([median, trained], dtype=torch.float64, device=self.params[0].device)
        if self.inner_comm is not None:
            self.inner_comm.all_reduce_mean([measured], accounted=False)
        gathered = [times[0].tolist() for times in self.comm.all_gather([measured], accounted=False)]
        previous = self.measured_times or [new for new, _ in gathered]
        self.measured_times = [old if math.isnan(new) else new for (new, _), old in zip(gathered, previous)]
        self.workers_batches = self.round.workers_batches_before + sum(batches for _, batches in gathered)
        self.round, self.step_times = None, []

    def merge_weight(self, point: int, fragment: int = 0) -> float | None:
        """Called at each synchronisation of ``fragment`` (the whole model: 0), that of nominal step
        ``point``: the tokens this worker trained since the fragment's last one, n_k in batches, to
        weight the merge by; None (the plain mean) where no round of unequal counts overlaps the H
        steps up to ``point`` (the same answer on every rank)."""
        trained = self.batches_trained - self.merged_batches.get(fragment, 0)
        self.merged_batches[fragment] = self.batches_trained
        if self.last_uneven is None:
            return None
        start, end = self.last_uneven
        return float(trained) if start < point and end > point - self.sync_interval else None

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

    def zero_unless_finite(self, tensors: Sequence[torch.Tensor], weight: float | None = None) -> torch.Tensor:
        """Zero ``tensors`` unless they are finite on every rank of this worker's group (so they add
        nothing to a sum), and return the flag to mean-all-reduce along with them: 1 if they were
        finite, else 0; its mean is the share of finite workers. With a merge ``weight`` n_k the
        tensors are multiplied by it and the flag holds a second element, n_k if finite, else 0."""
        finite = self.shards.group_finite(tensors)
        if not finite:
            for t in tensors:
                t.zero_()
        values = [float(finite)]
        if weight is not None:
            for t in tensors:
                t.mul_(weight)
            values.append(float(finite) * weight)
        return torch.tensor(values, dtype=tensors[0].dtype, device=tensors[0].device)

    def finite_share(self, flag: torch.Tensor, what: str, **details: Any) -> float:
        """The averaged flag of :meth:`zero_unless_finite`: the share of finite workers; below 1 the
        exclusion of the others is recorded."""
        share = float(flag[0])
        if share < 1:
            self.record_excluded(what, round(share * self.comm.world_size), **details)
        return share

    @staticmethod
    def merged_divisor(flag: torch.Tensor) -> float:
        """What the averaged sum divides by to be the finite workers' (weighted) mean: the share of
        finite workers, or with a merge weight the mean of the finite workers' n_k."""
        return float(flag[-1])

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
        state = {**super().state_dict(), "finished_step": self.finished_step}
        if self.adaptive:
            state["adaptive_local_steps"] = self.adaptive_state()
        return state

    def adaptive_state(self) -> dict[str, Any]:
        """Where this worker is in adaptive local steps: the round under way (its nominal span, every
        worker's local steps, this worker's taken), the last uneven round, this round's step times, the
        times measured over the last round, and the batches trained (this worker's all along and at each
        fragment's last synchronisation, and every worker's summed)."""
        return {"round": None if self.round is None else asdict(self.round), "last_uneven": self.last_uneven,
                "step_times": list(self.step_times), "measured_times": self.measured_times,
                "batches_trained": self.batches_trained, "merged_batches": dict(self.merged_batches),
                "workers_batches": self.workers_batches}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.finished_step = int(state.get("finished_step", 0))
        if self.adaptive:
            saved = state["adaptive_local_steps"]
            self.round = None if saved["round"] is None else Round(**saved["round"])
            self.last_uneven = None if saved["last_uneven"] is None else tuple(saved["last_uneven"])
            self.step_times = list(saved["step_times"])
            self.measured_times = saved["measured_times"]
            self.batches_trained = int(saved["batches_trained"])
            self.merged_batches = {int(k): int(v) for k, v in saved["merged_batches"].items()}
            self.workers_batches = float(saved["workers_batches"])
