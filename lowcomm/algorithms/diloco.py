"""DiLoCo (Douillard et al., "DiLoCo: Distributed Low-Communication Training of Language Models",
2023, arXiv 2311.08105).

Rule: after the warm-up, ``z <- x``. Every H steps:
``Delta = mean_k (z - x_k)``; the outer optimizer steps z with Delta as its gradient (default SGD,
lr 0.7, Nesterov momentum 0.9); then ``x_k <- z``. The inner optimizer's state stays local.

Overlap (Streaming DiLoCo's rule, arXiv 2501.18512): with ``overlap_steps`` tau > 0 the all-reduce of
Delta runs in the background while the workers take tau more inner steps; then z takes its outer
step and each worker merges ``x <- (1 - alpha) * z + alpha * x``. tau = 0 is the blocking rule above
(and takes no alpha).

Compression (``compress="bf16" | "int8" | "int4" | "topk:F"``): the pseudo-gradients are averaged by
:class:`~lowcomm.communication.compression.CompressedMean` (each worker encodes its chunks, the
chunk owners average and re-encode them, an all-gather returns them; error feedback on both
sides), about ``2(K-1)/K`` x the compressed payload per worker; buffers and the finite flag are
all-reduced uncompressed; the byte counters see what is sent. The compressed mean blocks: with
``overlap_steps`` only the all-reduce of buffers and flag is in flight during the tau steps.

Finish (:meth:`DiLoCo.finish`): the outer steps in flight are applied (merged), then each fragment
trained since its last outer step began takes one more, blocking (``x <- z``), on the
pseudo-gradient of those steps: the global model z holds every step.

Diagnostics: each outer step leaves in ``sync_diagnostics`` the averaged pseudo-gradient's norm
``||Delta||`` and the cosine between Delta and the previous outer step's Delta of the same
parameters (None at the first), both computed from the mean the step received; with
``diagnostics=True`` also the workers' spread (the mean over workers of ``||x_k - mean_k x_k||``,
each worker's ``||(z - x_k) - Delta||`` averaged by one more blocking all-reduce of one number, not
counted as training traffic: a round trip per outer step, so off by default, ``worker_spread``
None). With overlap, x_k is the model when the step is applied; under FSDP groups, this rank's shard.

A worker whose pseudo-gradient (or a floating-point buffer) is not finite is left out of that outer
step (the others' mean is used; with none left the step is skipped), restarts from z with a fresh
inner optimizer state, and the step is recorded in ``events`` (``what``: ``pseudo_gradient``).
When the mean itself fails (live fault tolerance: a peer died during it), z takes no step and
``x <- z``, as torchft's DiLoCo restores its global model.

Adaptive local steps (``local_steps="adaptive"``, see :mod:`lowcomm.algorithms.periodic`): where the
workers took unequal local steps since the last outer step of the same parameters, ``Delta =
sum_k n_k (z - x_k) / sum_k n_k``, n_k the tokens worker k trained since then (compressed: the
weighted pseudo-gradients are encoded). An outer step's point (and an overlapped one's ``tau``
steps later) is nominal: a worker whose count jumps over it takes it after the step that crosses it.

With worker groups, x, z, the outer optimizer's state and the error-feedback residuals are this
rank's shards (``self.shards``), and each outer step ends with the group completing its model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from lowcomm.algorithms.base import load_optimizer_state_by_name, optimizer_state_by_name
from lowcomm.algorithms.options import COMPRESSION, Option, integer, number
from lowcomm.algorithms.periodic import LOCAL_STEPS, PeriodicStrategy
from lowcomm.communication.communicator import Handle
from lowcomm.communication.compression import compressed_mean, mean_compressing

OuterOptimizerFactory = Callable[[list[torch.Tensor]], torch.optim.Optimizer]
DEFAULT_MERGE_ALPHA = 0.5


def check_overlap(overlap_steps: int, sync_interval: int, merge_alpha: float | None) -> tuple[int, float]:
    """tau < H, and alpha only where tau > 0 (default 0.5), for values that meet their own checks:
    the (tau, alpha) to use."""
    if overlap_steps >= sync_interval:
        raise ValueError(f"overlap_steps: must be < sync_interval ({sync_interval}), got {overlap_steps}")
    if merge_alpha is None:
        return overlap_steps, DEFAULT_MERGE_ALPHA
    if overlap_steps == 0:
        raise ValueError("merge_alpha: only an overlapped outer step merges; give overlap_steps > 0 or no merge_alpha")
    return overlap_steps, float(merge_alpha)


def nesterov_sgd(lr: float, momentum: float) -> OuterOptimizerFactory:
    """SGD with Nesterov momentum; plain SGD when ``momentum`` is 0."""
    return lambda params: torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=momentum > 0)


@dataclass
class PendingSync:
    """One fragment's outer step in flight: the payload being averaged and when to apply it."""

    fragment: int
    payload: list[torch.Tensor]  # pseudo-gradients, then buffers (fragment 0 only), then a finite flag
    apply_at: int
    locally_finite: bool
    merge: bool = True  # overlapped: merge x with z (only such steps stay in flight, and are saved)
    handle: Handle | None = None

    def wait(self) -> None:
        if self.handle is not None:
            self.handle.wait()


class DiLoCo(PeriodicStrategy):
    """Local steps, then an outer optimizer step on the averaged pseudo-gradient every H steps."""

    OPTIONS = (
        Option("outer_lr", 0.7, "outer learning rate", number(gt=0)),
        Option("outer_momentum", 0.9, "outer (Nesterov) momentum, in [0, 1)", number(ge=0, lt=1)),
        Option("outer_optimizer", None, "builds the outer optimizer from the outer parameters (overrides outer_lr "
               "and outer_momentum)", flag=False),
        Option("outer_device", None, "where z and the outer optimizer's state live: cpu keeps them in pinned host "
               "memory (default: the model's device)", Literal["cpu"] | None),
        Option("overlap_steps", 0, "tau: inner steps taken while the outer all-reduce is in flight (< H)",
               integer(ge=0)),
        Option("merge_alpha", None, "alpha: the weight of the local model in the merge after an overlapped outer "
               "step (only with overlap_steps > 0; default 0.5)", number(ge=0, le=1) | None),
        *COMPRESSION,
        Option("diagnostics", False, "also log the workers' spread at each outer step (one more blocking "
               "all-reduce)", bool),
        LOCAL_STEPS,
    )
    SHARDED_STATE = ("outer_params", "outer_optimizer", "previous_delta", "pending")
    RANK_STATE = ("residuals",)

    averages_on_demand = False  # the global model is z

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, **options: Any) -> None:
        super().__init__(model, optimizer, **options)
        chosen = self.option_values
        self.diagnostics: bool = chosen["diagnostics"]
        self.overlap_steps, self.merge_alpha = check_overlap(
            chosen["overlap_steps"], chosen["sync_interval"], chosen["merge_alpha"]
        )
        self.compressed_mean = compressed_mean(chosen["compress"], chosen["compress_block_size"])
        factory: OuterOptimizerFactory = chosen["outer_optimizer"] or nesterov_sgd(
            chosen["outer_lr"], chosen["outer_momentum"]
        )
        outer_device = chosen["outer_device"]
        device = torch.device(outer_device) if outer_device is not None else None
        pin = device is not None and device.type == "cpu" and self.params[0].is_cuda
        for x in self.shards.local():
            z = x.to(device or x.device, copy=True)
            self.outer_params.append(z.pin_memory() if pin else z)
        self.outer_optimizer = factory(self.outer_params)
        self.fragments: list[list[int]] = [list(range(len(self.params)))]
        self.offsets: list[int] = [0]
        self.pending: list[PendingSync] = []
        self.previous_delta: dict[int, torch.Tensor] = {}

    @classmethod
    def check_options(cls, lr: float, options: dict[str, Any]) -> None:
        super().check_options(lr, options)
        check_overlap(options["overlap_steps"], options["sync_interval"], options["merge_alpha"])

    def after_local_step(self) -> None:
        """At each step crossed since the last local step (this one; with adaptive local steps maybe
        more), in order: apply the outer steps whose tau steps are over, then start those whose turn it is."""
        first = self.previous_step_count + 1 if self.adaptive else self.step_count
        for point in range(first, self.step_count + 1):
            for pending in [p for p in self.pending if p.apply_at == point]:
                self.pending.remove(pending)
                self.apply(pending)
            for fragment, offset in enumerate(self.offsets):
                if (point - offset) % self.sync_interval == 0:
                    self.start(fragment, self.overlap_steps, point)

    def finish(self) -> None:
        """Apply the outer steps in flight, then a blocking outer step (``x <- z``) of every fragment
        trained since its last outer step began."""
        self.wait()
        for pending in self.pending:
            self.apply(pending)
        self.pending = []
        for fragment, offset in enumerate(self.offsets):
            if self.step_count > self.last_synchronised(offset):
                self.start(fragment, 0, self.step_count)
        self.finished_step = self.step_count

    def start(self, fragment: int, overlap_steps: int, point: int) -> None:
        """Launch the mean of this fragment's pseudo-gradient ``Delta = z - x`` (and of the buffers),
        the outer step of step ``point``, to apply ``overlap_steps`` steps later (at once, ``x <- z``, for 0)."""
        xs = self.shards.local()
        deltas = [self.outer_params[i].to(xs[i].device) - xs[i] for i in self.fragments[fragment]]
        buffers = [b.clone() for b in self.group_buffers()] if fragment == 0 else []
        flag = self.zero_unless_finite(deltas + buffers, self.merge_weight(point, fragment))
        pending = PendingSync(fragment, deltas + buffers + [flag], point + overlap_steps, bool(flag[0]),
                              merge=overlap_steps > 0)
        exact = buffers + [flag]
        pending.handle = mean_compressing(self.comm, self.compressed_mean, fragment, deltas, exact, async_op=True)
        if overlap_steps == 0:
            self.apply(pending)
        else:
            self.pending.append(pending)

    def apply(self, pending: PendingSync) -> None:
        """With the mean Delta: the outer step of z, then ``x <- z`` (or the merge after an overlap)."""
        indices = self.fragments[pending.fragment]
        if self.committed(pending.handle):  # else z stays as it was
            self.step_outer_model(pending)
        xs = self.shards.local()
        for i in indices:
            z = self.outer_params[i].to(xs[i].device, non_blocking=True)
            if not pending.merge:
                xs[i].copy_(z)
            else:
                xs[i].lerp_(z, 1 - self.merge_alpha)
        self.shards.complete(indices)
        if not pending.locally_finite:
            self.restart_from(self.outer_params)  # after a non-finite pseudo-gradient

    def step_outer_model(self, pending: PendingSync) -> None:
        """The outer step of z on the finite workers' mean pseudo-gradient (none if no worker was finite)."""
        indices = self.fragments[pending.fragment]
        deltas, buffers, flag = pending.payload[: len(indices)], pending.payload[len(indices) : -1], pending.payload[-1]
        share = self.finite_share(flag, "pseudo_gradient", fragment=pending.fragment)
        divisor = self.merged_divisor(flag)
        means = [delta / divisor for delta in deltas] if share > 0 else deltas
        self.diagnose(indices, means, pending.locally_finite, share)
        if share > 0:
            for buffer, mean in zip(self.buffers, buffers):
                buffer.copy_(mean / divisor)
            self.outer_step(indices, means)

    def diagnose(self, indices: list[int], means: list[torch.Tensor], locally_finite: bool, finite_share: float) -> None:
        """Fill ``sync_diagnostics`` for the outer step of ``indices`` with averaged pseudo-gradients ``means``."""
        spread = self.worker_spread(indices, means, locally_finite, finite_share) if self.diagnostics else None
        norm = float(torch.stack([m.double().square().sum() for m in means]).sum().sqrt())
        cosine = None
        if all(i in self.previous_delta for i in indices):
            previous = [self.previous_delta[i].to(m.device).double() for i, m in zip(indices, means)]
            dot = float(torch.stack([(m.double() * p).sum() for m, p in zip(means, previous)]).sum())
            previous_norm = float(torch.stack([p.square().sum() for p in previous]).sum().sqrt())
            cosine = dot / (norm * previous_norm) if norm > 0 and previous_norm > 0 else None
        for i, mean in zip(indices, means):
            self.previous_delta[i] = mean.detach().to(self.outer_params[i].device, copy=True)
        self.sync_diagnostics = {"pseudo_grad_norm": norm,
                                 "worker_spread": spread, "pseudo_grad_cosine": cosine}

    def worker_spread(
        self, indices: list[int], means: list[torch.Tensor], locally_finite: bool, finite_share: float
    ) -> float | None:
        """The mean over the finite workers of ``||(z - x_k) - Delta||`` over ``indices`` (None if
        there is none), by a one-number all-reduce not counted as training traffic."""
        xs = self.shards.local()
        squares = [(self.outer_params[i].to(xs[i].device) - xs[i] - m).double().square().sum()
                   for i, m in zip(indices, means)]
        spread = torch.stack(squares).sum().sqrt().reshape(1) if locally_finite else squares[0].new_zeros(1)
        self.comm.all_reduce_mean([spread], accounted=False)
        return float(spread) / finite_share if finite_share > 0 else None

    def outer_step(self, indices: list[int], deltas: list[torch.Tensor]) -> None:
        """Step the outer optimizer on the given tensors of z with ``deltas`` as their gradients."""
        self.outer_optimizer.zero_grad(set_to_none=True)
        for i, delta in zip(indices, deltas):
            self.outer_params[i].grad = delta.to(self.outer_params[i].device)
        self.outer_optimizer.step()
        self.outer_optimizer.zero_grad(set_to_none=True)

    def wait(self) -> None:
        for pending in self.pending:
            pending.wait()

    def state_dict(self) -> dict[str, Any]:
        """Besides the base state: z, the outer optimizer's state, the previous pseudo-gradients (for
        the cosine) and the outer steps in flight, each pseudo-gradient keyed by its parameter's name;
        the error-feedback residuals, keyed by fragment (a fragment's tensors travel in one payload)."""
        self.wait()
        return {
            **super().state_dict(),
            "outer_params": self.named([z.detach().clone() for z in self.outer_params]),
            "outer_optimizer": optimizer_state_by_name(self.outer_optimizer, self.named(self.outer_params)),
            "residuals": {} if self.compressed_mean is None else self.compressed_mean.state_dict(),
            "previous_delta": {self.param_names[i]: d.clone() for i, d in self.previous_delta.items()},
            "pending": [self.pending_state(p) for p in self.pending],
        }

    def pending_state(self, pending: PendingSync) -> dict[str, Any]:
        """An outer step in flight: its pseudo-gradients by name, then the buffers and the finite flag."""
        names = [self.param_names[i] for i in self.fragments[pending.fragment]]
        return {"fragment": pending.fragment, "apply_at": pending.apply_at, "locally_finite": pending.locally_finite,
                "pseudo_gradients": {name: t.clone() for name, t in zip(names, pending.payload)},
                "buffers_and_flag": [t.clone() for t in pending.payload[len(names):]]}

    def loaded_pending(self, state: dict[str, Any]) -> PendingSync:
        """The outer step in flight that :meth:`pending_state` saved."""
        names = [self.param_names[i] for i in self.fragments[state["fragment"]]]
        payload = [state["pseudo_gradients"][name] for name in names] + list(state["buffers_and_flag"])
        return PendingSync(state["fragment"], payload, state["apply_at"], state["locally_finite"])

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.load_named(self.outer_params, state["outer_params"])
        load_optimizer_state_by_name(self.outer_optimizer, self.named(self.outer_params), state["outer_optimizer"])
        self.pending = [self.loaded_pending(p) for p in state["pending"]]
        index = {name: i for i, name in enumerate(self.param_names)}
        self.previous_delta = {index[name]: d.clone() for name, d in state["previous_delta"].items()}
        if self.compressed_mean is not None:
            self.compressed_mean.load_state_dict(state["residuals"])
