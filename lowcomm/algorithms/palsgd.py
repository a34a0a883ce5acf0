"""PALSGD (Naganuma et al., "Pseudo-Asynchronous Local SGD: Robust and Efficient Data-Parallel
Training", TMLR 2025, arXiv 2504.18454), the decoupled post-adaptive variant of the official code.

Rule: S warm-up steps with averaged gradients, then ``z <- x``. Each later step draws a coin from a
generator seeded identically on every worker (so all workers take the same kind of step):
- with probability p, a *pseudo-synchronisation* step: no forward or backward pass (the batch is
  skipped) and ``x <- x - (gamma / p) * eta * (x - z)``, gamma the inner learning rate in effect;
- otherwise a gradient step with the inner learning rate multiplied by ``1 / (1 - p)``.
Every H steps, the DiLoCo outer step. ``gamma * eta / p >= 1`` is rejected: the pull would
overshoot z.

With worker groups every rank of every group draws the same coins, and the pull works on this
rank's shards, after which the group completes its model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from lowcomm.algorithms.base import Closure, check_positive
from lowcomm.algorithms.diloco import DiLoCo


class PALSGD(DiLoCo):
    """DiLoCo whose workers, with probability p per step, pull towards z instead of computing a gradient.

    Args:
        pseudo_sync_prob: p, the probability of a pseudo-synchronisation step, in [0, 1).
        eta: the strength of the pull towards z.
        independent_coins: draw each worker's coins from its own generator.
        seed: seeds the coin generator.
        diloco_options: the rest of :class:`DiLoCo`'s options (outer optimizer and device, overlap,
            communicator, clipping).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        sync_interval: int = 32,
        warmup_steps: int = 32,
        pseudo_sync_prob: float = 0.2,
        eta: float = 1.0,
        outer_lr: float = 0.1,
        outer_momentum: float = 0.9,
        independent_coins: bool = False,
        seed: int = 0,
        **diloco_options: Any,
    ) -> None:
        if not (isinstance(pseudo_sync_prob, (int, float)) and 0 <= pseudo_sync_prob < 1):
            raise ValueError(f"pseudo_sync_prob: must be in [0, 1), got {pseudo_sync_prob!r}")
        self.pseudo_sync_prob = float(pseudo_sync_prob)
        self.eta = check_positive("eta", eta)
        for group in optimizer.param_groups:
            self._pull_strength(group.get("initial_lr", group["lr"]))
        super().__init__(
            model,
            optimizer,
            sync_interval=sync_interval,
            warmup_steps=warmup_steps,
            outer_lr=outer_lr,
            outer_momentum=outer_momentum,
            **diloco_options,
        )
        self.coins = torch.Generator().manual_seed(seed + (self.comm.rank if independent_coins else 0))
        self.index_of = {id(x): i for i, x in enumerate(self.params)}

    def local_step(self, closure: Closure | Sequence[Closure]) -> torch.Tensor | None:
        p = self.pseudo_sync_prob
        if p > 0 and torch.rand((), generator=self.coins).item() < p:
            self.pseudo_synchronize()
            return None
        loss = self._backward(closure)
        self._optimizer_step(lr_scale=1 / (1 - p))
        return loss

    def pseudo_synchronize(self) -> None:
        """``x <- x - (gamma / p) * eta * (x - z)`` for every parameter group."""
        xs = self.shards.local()
        for group in self.optimizer.param_groups:
            pull = self._pull_strength(group["lr"])
            for i in (self.index_of[id(x)] for x in group["params"]):
                xs[i].lerp_(self.outer_params[i].to(xs[i].device, non_blocking=True), pull)
        self.shards.complete()

    def _pull_strength(self, lr: float) -> float:
        p = self.pseudo_sync_prob
        if p == 0:
            return 0.0
        pull = lr * self.eta / p
        if pull >= 1:
            raise ValueError(
                f"eta: gamma * eta / p = {lr} * {self.eta} / {p} = {pull:.4g} >= 1 overshoots z; "
                "lower eta or the learning rate, or raise pseudo_sync_prob"
            )
        return pull

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "coins": self.coins.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.coins.set_state(state["coins"])
