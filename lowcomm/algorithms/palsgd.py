"""PALSGD (Naganuma et al., "Pseudo-Asynchronous Local SGD: Robust and Efficient Data-Parallel
Training", TMLR 2025, arXiv 2504.18454), the decoupled post-adaptive variant of the official code:
decoupled, because the inner optimizer (AdamW, its state local to each worker) and the outer
optimizer of z (Nesterov SGD on the averaged pseudo-gradient, as in DiLoCo) are two separate
optimizers (the paper's Algorithm 1, "with Decoupled Optimizers"); post-adaptive, because the pull
towards z is applied to the parameters directly, outside the adaptive inner optimizer, so its
moment estimates never see the pull.

Rule: S warm-up steps with averaged gradients, then ``z <- x``. Each later step draws a coin from a
generator seeded identically on every worker (so all workers take the same kind of step):
- with probability p, a *pseudo-synchronisation* step: no forward or backward pass (the batch is
  skipped) and ``x <- x - (gamma / p) * eta * (x - z)``, gamma the inner learning rate in effect;
- otherwise a gradient step with the inner learning rate multiplied by ``1 / (1 - p)``.
Every H steps, the DiLoCo outer step. ``gamma * eta / p >= 1`` is rejected: the pull would
overshoot z (:meth:`PALSGD.pull_strength`, which the configuration checks too).

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
            self.pull_strength(group.get("initial_lr", group["lr"]), self.eta, self.pseudo_sync_prob)
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
            pull = self.pull_strength(group["lr"], self.eta, self.pseudo_sync_prob)
            for i in (self.index_of[id(x)] for x in group["params"]):
                xs[i].lerp_(self.outer_params[i].to(xs[i].device, non_blocking=True), pull)
        self.shards.complete()

    @staticmethod
    def pull_strength(lr: float, eta: float, pseudo_sync_prob: float) -> float:
        """``gamma * eta / p``, the fraction of the way to z a pseudo-synchronisation moves x (0 when
        p is 0); at least 1 would overshoot z and is rejected."""
        if pseudo_sync_prob == 0:
            return 0.0
        pull = lr * eta / pseudo_sync_prob
        if pull >= 1:
            raise ValueError(f"eta: lr * eta / pseudo_sync_prob = {pull:.4g} >= 1 would overshoot z")
        return pull

    @classmethod
    def check_options(cls, lr: float, options: dict[str, Any]) -> None:
        super().check_options(lr, options)
        cls.pull_strength(lr, options["eta"], options["pseudo_sync_prob"])

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "coins": self.coins.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.coins.set_state(state["coins"])
