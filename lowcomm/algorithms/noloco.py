"""NoLoCo (Kolehmainen et al., "NoLoCo: No-all-reduce Low Communication Training Method for Large
Models", 2025, arXiv 2506.10911).

Rule: no all-reduce. Every H steps the workers are split into pairs by a random permutation seeded
by the step number (the same on every worker; with an odd count one group is a triple). Inside its
group P, worker i with outer model z_i and outer momentum m_i exchanges ``x_j - z_j`` and ``z_j``
point-to-point and sets
``m_i <- mu * m_i + alpha * mean_{j in P}(x_j - z_j) + alpha * (mean_{j in P} z_j - z_i)``,
``z_i <- z_i + m_i`` and ``x_i <- z_i``.

Members whose ``x_j - z_j`` or ``z_j`` is not finite are left out of both means (every member sees
every contribution, so all agree; with none left, m and z stay as they are); such a member still
sets ``x_i <- z_i`` and starts a fresh inner optimizer state. The exclusion is recorded in
``events`` on every member of the group (``what``: ``pseudo_gradient_or_outer_model``).

Finish: if steps were trained since the last exchange, one more, with the pairs of the current step.

Live fault tolerance: the pairs are drawn among the synchronisation's members (the groups in the
step's quorum, :meth:`~lowcomm.algorithms.periodic.PeriodicStrategy.make_elastic`); a group being
healed sits the synchronisation out, and a failed exchange (a partner died during it) leaves x, z
and m as they were.

With worker groups the partners are groups: rank i of a group exchanges its shards with rank i of
the partner groups, and a partner is left out when any of the shards its ranks sent is non-finite.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lowcomm.algorithms.options import Option, integer, number
from lowcomm.algorithms.periodic import PeriodicStrategy


def gossip_groups(world_size: int, step: int) -> list[list[int]]:
    """Pairs of workers drawn by a permutation seeded by ``step``; with an odd count the last is a
    triple (a lone worker is a group of its own)."""
    order = torch.randperm(world_size, generator=torch.Generator().manual_seed(step)).tolist()
    groups = [order[i : i + 2] for i in range(0, world_size - world_size % 2, 2)]
    if world_size % 2 and groups:
        groups[-1].append(order[-1])
    elif world_size % 2:
        groups.append(order)
    return groups


class NoLoCo(PeriodicStrategy):
    """Pairwise outer steps with a momentum pulled towards the partners' outer models."""

    OPTIONS = (
        Option("sync_interval", 50, "H: steps between synchronisations", integer(ge=1)),
        Option("outer_lr", 0.7, "alpha: the outer learning rate", number(gt=0)),
        Option("outer_momentum", 0.5, "mu: the outer momentum, in [0, 1)", number(ge=0, lt=1)),
    )
    SHARDED_STATE = ("outer_params", "momentum")
    min_workers = 2
    traffic = "gossip"

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, **options: Any) -> None:
        super().__init__(model, optimizer, **options)
        self.alpha: float = self.option_values["outer_lr"]
        self.mu: float = self.option_values["outer_momentum"]
        self.outer_params = [x.clone() for x in self.shards.local()]
        self.momentum = [torch.zeros_like(z) for z in self.outer_params]

    def synchronize(self) -> None:
        rank, count = self.members()
        if rank is None:  # healed from a peer in this step (live fault tolerance), the worker sits it out
            return
        group = next(g for g in gossip_groups(count, self.step_count) if rank in g)
        peers = [j for j in group if j != rank]
        xs = self.shards.local()
        own = [x - z for x, z in zip(xs, self.outer_params)] + self.outer_params
        received = self.comm.exchange(own, peers)
        if not self.committed():  # a partner died during it: x, z and m stay
            return
        sent_by = dict(zip(peers, received))
        sent_by[rank] = own
        # Sum in rank order so that every member of the group computes bit-identical means.
        finite = [j for j in sorted(group) if self.shards.group_finite(sent_by[j])]
        contributions = [sent_by[j] for j in finite]
        if len(finite) < len(group):
            self.record_excluded("pseudo_gradient_or_outer_model", len(finite), group=sorted(group))
        n = len(self.params)
        with torch.no_grad():
            if contributions:
                for i, (z, m) in enumerate(zip(self.outer_params, self.momentum)):
                    mean_delta = sum(c[i] for c in contributions) / len(contributions)
                    mean_z = sum(c[n + i] for c in contributions) / len(contributions)
                    m.mul_(self.mu).add_(mean_delta, alpha=self.alpha).add_(mean_z - z, alpha=self.alpha)
                    z.add_(m)
            for x, z in zip(xs, self.outer_params):
                x.copy_(z)
        self.shards.complete()
        if rank not in finite:
            self.optimizer.state.clear()

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "outer_params": self.named([z.clone() for z in self.outer_params]),
            "momentum": self.named([m.clone() for m in self.momentum]),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.load_named(self.outer_params, state["outer_params"])
        self.load_named(self.momentum, state["momentum"])
