"""The evaluator: the global model's mean loss per target, computed in a copy of the model."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lowcomm.training.evaluation import Evaluator


def test_the_global_model_is_scored_per_target_in_a_copy_of_the_model():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    batches = [(torch.randn(5, 4), torch.randint(0, 3, (5,))), (torch.randn(2, 4), torch.randint(0, 3, (2,)))]
    evaluator = Evaluator(model, batches, torch.device("cpu"))

    assert evaluator({"weight": torch.zeros(3, 4), "bias": torch.zeros(3)}) == pytest.approx(math.log(3))
    weight, bias = torch.randn(3, 4), torch.randn(3)
    inputs, targets = torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])
    per_target = F.cross_entropy(inputs @ weight.T + bias, targets).item()  # not the mean of the batches' means
    assert evaluator({"weight": weight, "bias": bias}) == pytest.approx(per_target)
    assert all(torch.equal(model.state_dict()[name], tensor) for name, tensor in before.items())
