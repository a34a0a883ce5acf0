"""The training loss under bfloat16 autocast: computed in bf16, returned in float32."""

from __future__ import annotations

import torch

from lowcomm.models import build_model
from lowcomm.training.loss import cross_entropy


def test_bf16_autocast_loss_is_close_to_float32_and_differs() -> None:
    torch.manual_seed(0)
    model = build_model("gpt-tiny", vocab_size=64)
    inputs = torch.randint(0, 64, (2, 16))
    targets = torch.randint(0, 64, (2, 16))
    full = cross_entropy(model, inputs, targets)
    half = cross_entropy(model, inputs, targets, bf16=True)
    assert half.dtype == torch.float32
    assert 0 < abs(half.item() - full.item()) < 0.02 * full.item()
    half.backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters())
