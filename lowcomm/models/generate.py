"""Continuing a token sequence with a language model, greedily or by seeded sampling.

The model maps ``input_ids [1, T]`` to logits ``[1, T, vocab]``; each new token is chosen from the
logits at the last position, and generation stops after ``max_new_tokens`` tokens or at ``stop_id``
(which is kept). The context is the whole sequence so far, so prompt plus continuation must fit the
model's positions.
"""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def continue_tokens(
    model: nn.Module,
    prompt: list[int],
    max_new_tokens: int,
    *,
    stop_id: int | None = None,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
) -> list[int]:
    """The continuation of ``prompt``: the most likely token each time when ``temperature`` is 0,
    else a draw from ``softmax(logits / temperature)`` with ``generator`` (a CPU generator, so a
    seed gives the same draws on any device)."""
    if temperature < 0:
        raise ValueError(f"temperature: must be >= 0, got {temperature}")
    device = next(model.parameters()).device
    tokens = torch.tensor([prompt], device=device)
    continuation: list[int] = []
    for _ in range(max_new_tokens):
        logits = model(tokens)[0, -1].float().cpu()
        if temperature == 0:
            token = int(logits.argmax())
        else:
            probabilities = torch.softmax(logits / temperature, dim=-1)
            token = int(torch.multinomial(probabilities, 1, generator=generator))
        continuation.append(token)
        if token == stop_id:
            break
        tokens = torch.cat([tokens, torch.tensor([[token]], device=device)], dim=1)
    return continuation
