"""A small MLP regression problem whose batches depend only on (rank, step)."""

from __future__ import annotations

import io
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from lowcomm import ALGORITHMS


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1)).double()


def batch(rank: int, step: int, size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 * rank + step)
    x = torch.randn(size, 4, generator=g, dtype=torch.float64)
    return x, x.sum(dim=1, keepdim=True).sin()


def loss_of(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = data
    return ((model(x) - y) ** 2).mean()


def flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def make(algo: str, options: dict[str, Any], lr: float, optimizer: str = "sgd") -> tuple[nn.Module, Any]:
    model = mlp()
    if optimizer == "sgd":
        inner = torch.optim.SGD(model.parameters(), lr=lr)
    else:
        inner = torch.optim.AdamW(model.parameters(), lr=lr)
    return model, ALGORITHMS[algo](model, inner, **options)


def train(algo: str, options: dict[str, Any], steps: int, lr: float = 0.05, optimizer: str = "sgd",
          rank: int | None = None) -> dict[str, Any]:
    """Train ``steps`` steps; return the parameters after each step and the final global model."""
    rank = dist.get_rank() if rank is None else rank
    model, strategy = make(algo, options, lr, optimizer)
    params, losses = [], []
    for t in range(1, steps + 1):
        data = batch(rank, t)
        loss = strategy.step(lambda: loss_of(strategy.model, data))
        losses.append(None if loss is None else loss.item())
        params.append(flat(model))
    return {"params": params, "losses": losses, "global": strategy.global_state_dict()}


def plain(steps: int, lr: float = 0.05, optimizer: str = "sgd") -> list[torch.Tensor]:
    """Ordinary single-process training, no lowcomm."""
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=lr) if optimizer == "sgd" else torch.optim.AdamW(model.parameters(), lr=lr)
    params = []
    for t in range(1, steps + 1):
        opt.zero_grad()
        loss_of(model, batch(0, t)).backward()
        opt.step()
        params.append(flat(model))
    return params


def resumed(algo: str, options: dict[str, Any], steps: int, split: int, lr: float = 0.01) -> dict[str, Any]:
    """Train straight through, and again from a state_dict saved at ``split`` into fresh objects."""
    rank = dist.get_rank()
    model, strategy = make(algo, options, lr, "adamw")
    saved = None
    for t in range(1, steps + 1):
        data = batch(rank, t)
        strategy.step(lambda: loss_of(strategy.model, data))
        if t == split:
            buffer = io.BytesIO()
            torch.save(strategy.state_dict(), buffer)
            saved = buffer.getvalue()
    straight = flat(model)
    strategy.wait()
    model, strategy = make(algo, options, lr, "adamw")
    strategy.load_state_dict(torch.load(io.BytesIO(saved), weights_only=True))
    for t in range(split + 1, steps + 1):
        data = batch(rank, t)
        strategy.step(lambda: loss_of(strategy.model, data))
    strategy.wait()
    return {"straight": straight, "resumed": flat(model), "bytes": strategy.comm_stats.bytes_sent}
