"""Questions the model tests ask of any module."""

from __future__ import annotations

import torch
from torch import nn


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def changed_positions(
    model: nn.Module, input_ids: torch.Tensor, position: int, vocab_size: int
) -> set[int]:
    """Positions whose logits move when the token at ``position`` is replaced by another."""
    edited = input_ids.clone()
    edited[:, position] = (edited[:, position] + 1) % vocab_size
    with torch.no_grad():
        moved = (model(input_ids) - model(edited)).abs().amax(dim=(0, 2)) > 1e-6
    return set(moved.nonzero().flatten().tolist())
