"""Local SGD (Stich, "Local SGD Converges Fast and Communicates Little", ICLR 2019, arXiv 1805.09767).

Rule: each worker k steps on its own; every H steps, ``x_k <- mean_k x_k``.

Compression (``compress="bf16" | "int8" | "int4" | "topk:F"``): each worker keeps the model of the
last synchronisation, x0 (the same on every worker), and the workers average what they moved since,
``x_k - x0``, with :class:`~lowcomm.communication.compression.CompressedMean`; then
``x_k <- x0 <- x0 + mean_k (x_k - x0)``. Uncompressed this is the rule above; compressed, the
per-block scales fit the small moves rather than the weights.

A worker whose parameters (or floating-point buffers) are not finite is left out of the mean and
continues from it with a fresh inner optimizer state (recorded in ``events``, ``what``: ``parameters``);
if no worker is finite, training stops with an error.

Finish (:meth:`~lowcomm.algorithms.periodic.PeriodicStrategy.finish`): if steps were trained since
the last synchronisation, one more mean.

Adaptive local steps (``local_steps="adaptive"``, see :mod:`lowcomm.algorithms.periodic`): where a
round's workers took unequal local steps, ``x_k <- sum_k n_k x_k / sum_k n_k``, n_k the tokens
worker k trained in the round (compressed: the weighted moves ``n_k (x_k - x0)`` are encoded).

Live fault tolerance: a mean that fails (a peer died during it) leaves each worker its own model;
the global model (evaluated, saved) is x0, the model of the last synchronisation, kept for it.
With worker groups each rank averages its shard (compressed: its shard of the move) across groups,
then the group completes its model.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lowcomm.algorithms.options import COMPRESSION
from lowcomm.algorithms.periodic import LOCAL_STEPS, Members, PeriodicStrategy
from lowcomm.communication.compression import compressed_mean, mean_compressing


class LocalSGD(PeriodicStrategy):
    """Average the workers' parameters (and floating-point buffers) every ``sync_interval`` steps;
    ``compress`` encodes the moves since the last synchronisation on the wire."""

    OPTIONS = (*COMPRESSION, LOCAL_STEPS)
    SHARDED_STATE = ("synced",)
    RANK_STATE = ("residuals",)

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, **options: Any) -> None:
        super().__init__(model, optimizer, **options)
        chosen = self.option_values
        self.compressed_mean = compressed_mean(chosen["compress"], chosen["compress_block_size"])
        self.synced = [x.clone() for x in self.shards.local()] if self.compressed_mean is not None else []

    def begin_local_phase(self) -> None:
        """After the warm-up every worker holds the model of the last synchronisation."""
        for x0, x in zip(self.synced, self.shards.local()):
            x0.copy_(x)

    def synchronize(self) -> None:
        compressing = self.compressed_mean is not None
        xs = self.shards.local()
        averaged = [x - x0 for x, x0 in zip(xs, self.synced)] if compressing else xs
        tensors = averaged + self.group_buffers()
        flag = self.zero_unless_finite(tensors, self.merge_weight(self.step_count))
        locally_finite = bool(flag[0])
        handle = mean_compressing(self.comm, self.compressed_mean, 0, averaged, self.buffers + [flag])
        if not self.committed(handle):  # the worker keeps its model (if finite)
            if not locally_finite:
                self.restart_from(self.synced)
            return
        finite_share = self.finite_share(flag, "parameters")
        if finite_share == 0:
            raise FloatingPointError(f"step {self.step_count}: every worker's model is non-finite")
        divisor = self.merged_divisor(flag)
        if divisor != 1:
            for t in tensors:
                t.div_(divisor)
        if not locally_finite:
            self.optimizer.state.clear()
        for x, x0, move in zip(xs, self.synced, averaged):
            if compressing:
                x.copy_(x0.add_(move))
            else:
                x0.copy_(x)
        self.shards.complete()

    def make_elastic(self, members: Members) -> None:
        """The global model becomes x0, kept from now on."""
        super().make_elastic(members)
        if not self.synced:
            self.synced = [x.clone() for x in self.shards.local()]

    def synchronised_model(self) -> list[torch.Tensor]:
        return self.synced

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.synced:
            state["synced"] = self.named([x0.clone() for x0 in self.synced])
        if self.compressed_mean is not None:
            state["residuals"] = self.compressed_mean.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if self.synced:
            self.load_named(self.synced, state.get("synced", self.named(self.shards.local())))
        if self.compressed_mean is not None:
            self.compressed_mean.load_state_dict(state["residuals"])
