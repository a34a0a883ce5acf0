"""A one-parameter problem whose every step can be worked out by hand.

Worker k holds one example (a_k, b_k) and the loss ``0.5 * (w * a_k - b_k) ** 2``, whose gradient
is ``(w * a_k - b_k) * a_k``. Everything runs in float64 so references in plain Python match.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from lowcomm import ALGORITHMS

EXAMPLES = [(1.0, 2.0), (2.0, 1.0), (1.0, 0.0), (3.0, 1.0)]


def scalar_model(rank: int) -> nn.Linear:
    model = nn.Linear(1, 1, bias=False, dtype=torch.float64)
    with torch.no_grad():
        model.weight.fill_(1.0 if rank == 0 else 7.0 + rank)  # the broadcast must start all at 1.0
    return model


def scalar_trajectory(algo: str, options: dict[str, Any], steps: int, lr: float) -> dict[str, Any]:
    """Run ``steps`` steps on this worker's example; return w after each step and the global w."""
    rank = dist.get_rank()
    model = scalar_model(rank)
    strategy = ALGORITHMS[algo](model, torch.optim.SGD(model.parameters(), lr=lr), **options)
    a, b = EXAMPLES[rank]
    x = torch.tensor([[a]], dtype=torch.float64)
    trajectory, computed, diagnostics = [], [], []
    for _ in range(steps):
        loss = strategy.step(lambda: 0.5 * (strategy.model(x)[0, 0] - b) ** 2)
        computed.append(loss is not None)
        trajectory.append(model.weight.item())
        diagnostics.append(dict(getattr(strategy, "sync_diagnostics", {})))
        getattr(strategy, "sync_diagnostics", {}).clear()
    strategy.wait()
    return {
        "x": trajectory,
        "computed": computed,
        "global": strategy.global_state_dict()["weight"].item(),
        "bytes": strategy.comm_stats.bytes_sent,
        "diagnostics": diagnostics,
    }


def grad(w: float, k: int) -> float:
    a, b = EXAMPLES[k]
    return (w * a - b) * a


def nesterov(z: float, buf: float, delta: float, lr: float, mu: float) -> tuple[float, float]:
    """torch.optim.SGD's Nesterov step for one scalar: returns the new (z, momentum buffer)."""
    buf = mu * buf + delta
    return z - lr * (delta + mu * buf), buf


def first_seed_with_coins(pattern: list[bool], p: float) -> int:
    """The smallest seed whose first coins are ``pattern`` (True = pseudo-synchronisation)."""
    for seed in range(1000):
        coins = torch.Generator().manual_seed(seed)
        if [torch.rand((), generator=coins).item() < p for _ in pattern] == pattern:
            return seed
    raise AssertionError("no seed found")
