"""The training loss: mean next-token (or class) cross-entropy."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


def cross_entropy(model: Callable[[Tensor], Tensor], inputs: Tensor, targets: Tensor, bf16: bool = False) -> Tensor:
    """The mean cross-entropy of ``model``'s logits (next tokens, or image classes), in float32;
    with ``bf16`` the forward pass runs under bfloat16 autocast."""
    with torch.autocast(inputs.device.type, dtype=torch.bfloat16, enabled=bf16):
        logits = model(inputs)
    return F.cross_entropy(logits.float().flatten(0, -2), targets.flatten())
