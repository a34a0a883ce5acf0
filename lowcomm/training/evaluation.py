"""The evaluation of the global model: its mean loss on the held-out batches."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lowcomm.training.loss import cross_entropy


class Evaluator:
    """Evaluates a copy of the model (taken before the strategy wraps it) loaded with the global
    model's state, so that evaluating changes nothing the training sees."""

    def __init__(self, model: nn.Module, batches: Sequence[tuple[Tensor, Tensor]], device: torch.device) -> None:
        self.model = copy.deepcopy(model).eval()
        self.batches = batches
        self.device = device

    def __call__(self, global_model: dict[str, Tensor]) -> float:
        """The mean loss per target of the model holding ``global_model``."""
        self.model.load_state_dict(global_model)
        total, count = 0.0, 0
        with torch.no_grad():
            for batch in self.batches:
                inputs, targets = (t.to(self.device, non_blocking=True) for t in batch)
                total += cross_entropy(self.model, inputs, targets).item() * targets.numel()
                count += targets.numel()
        return total / count
