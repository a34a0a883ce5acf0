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

With ``outer_repeats`` R > 1, each outer step is followed by R - 1 more steps of the outer
optimizer on a zero pseudo-gradient. This reproduces the configuration of the official code's
README (``--is_intended_impl False``, R its 16 micro-batches per step), which runs the outer step
on each of R micro-batch calls in a row (the last of the synchronisation step, then the first R - 1
of the next, whose gradients it takes at the intermediate z; here they see the final z): after the
first the workers hold z, so their pseudo-gradient is 0 and only the momentum moves z. With
Nesterov SGD (lr gamma_o, momentum mu) the repeats move z by a further
``gamma_o * mu**2 * (1 - mu**(R - 1)) / (1 - mu) * b``, b the momentum buffer after the first step,
which they leave at ``mu**(R - 1) * b``. With the paper's 0.1 and 0.9 and R = 16 that is 0.64 b
after the first step's ``0.1 * (Delta + 0.9 b)``: at the first outer step (b = Delta), z moves by
0.83 Delta instead of 0.19 Delta.

Finish: DiLoCo's (the outer repeats included).

With worker groups every rank of every group draws the same coins, and the pull works on this
rank's shards, after which the group completes its model.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lowcomm.algorithms.diloco import DiLoCo
from lowcomm.algorithms.options import Option, integer, number


class PALSGD(DiLoCo):
    """DiLoCo whose workers, with probability p per step, pull towards z instead of computing a gradient."""

    OPTIONS = (
        Option("warmup_steps", 32, "S: synchronous steps (averaged gradients) before the local ones", integer(ge=0)),
        Option("pseudo_sync_prob", 0.2, "p: the probability of a pseudo-synchronisation step, in [0, 1)",
               number(ge=0, lt=1)),
        Option("eta", 1.0, "the strength of the pull towards z", number(gt=0)),
        Option("outer_lr", 0.1, "outer learning rate", number(gt=0)),
        Option("independent_coins", False, "draw each worker's coins from its own generator", bool, flag=False),
        Option("seed", 0, "seeds the coin generator (lowcomm train: the run's --seed)", integer(ge=0), flag=False),
        Option("outer_repeats", 1, "R: outer-optimizer steps per outer step, the R - 1 after the first on a zero "
               "pseudo-gradient (16: the official code's is_intended_impl False)", integer(ge=1)),
    )

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, **options: Any) -> None:
        super().__init__(model, optimizer, **options)
        chosen = self.option_values
        self.pseudo_sync_prob: float = chosen["pseudo_sync_prob"]
        self.eta: float = chosen["eta"]
        self.outer_repeats: int = chosen["outer_repeats"]
        own_coins = self.comm.rank if chosen["independent_coins"] else 0
        self.coins = torch.Generator().manual_seed(chosen["seed"] + own_coins)
        self.pulls = False  # this step is a pseudo-synchronisation
        self.index_of = {id(x): i for i, x in enumerate(self.params)}

    def next_step_needs_batch(self) -> bool:
        """False where the next step is a pseudo-synchronisation (its coin read ahead, not drawn)."""
        if self.step_count + 1 <= self.warmup_steps:
            return True
        ahead = torch.Generator()
        ahead.set_state(self.coins.get_state())
        return not self.pseudo_sync_coin(ahead)

    def pseudo_sync_coin(self, coins: torch.Generator) -> bool:
        """The coin of one local step: True (probability p) for a pseudo-synchronisation."""
        p = self.pseudo_sync_prob
        return p > 0 and torch.rand((), generator=coins).item() < p

    def before_update(self) -> float | None:
        """A local step draws its coin: no inner update for a pseudo-synchronisation, else the inner
        learning rates times ``1 / (1 - p)``."""
        if self.in_warmup:
            return super().before_update()
        self.pulls = self.pseudo_sync_coin(self.coins)
        return None if self.pulls else 1 / (1 - self.pseudo_sync_prob)

    def after_update(self) -> None:
        if not self.in_warmup and self.pulls:
            self.pseudo_synchronize()
        super().after_update()

    def trained_batch(self) -> bool:
        """A pseudo-synchronisation trains no batch (adaptive local steps weight the merge by batches)."""
        return not self.pulls

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

    def outer_step(self, indices: list[int], deltas: list[torch.Tensor]) -> None:
        """DiLoCo's outer step, then ``outer_repeats - 1`` more on a zero pseudo-gradient."""
        super().outer_step(indices, deltas)
        for _ in range(self.outer_repeats - 1):
            super().outer_step(indices, [torch.zeros_like(delta) for delta in deltas])

    @classmethod
    def check_options(cls, lr: float, options: dict[str, Any]) -> None:
        super().check_options(lr, options)
        cls.pull_strength(lr, options["eta"], options["pseudo_sync_prob"])

    @classmethod
    def skipped_batch_share(cls, options: dict[str, Any]) -> float:
        """p: a pseudo-synchronisation step skips its batch."""
        return options["pseudo_sync_prob"]

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "coins": self.coins.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.coins.set_state(state["coins"])
