"""The simulation's batched pass: each replica's loss and gradients, as if it ran alone."""

from __future__ import annotations

import copy
import threading
from functools import partial

import pytest
import torch

from lowcomm.algorithms.gradient_averaging import GradientAveraging
from lowcomm.communication.simulated import run_simulated
from lowcomm.models import build_model
from lowcomm.training.batched_replicas import ReplicaBatcher, batched_losses
from lowcomm.training.loss import cross_entropy

MODEL_LOCK = threading.Lock()


def replicas(name: str, count: int, **options) -> list[torch.nn.Module]:
    """``count`` models of one shape with different parameters."""
    torch.manual_seed(0)
    return [build_model(name, **options) for _ in range(count)]


def alone(model, inputs, targets):
    model.zero_grad(set_to_none=True)
    loss = cross_entropy(model, inputs, targets)
    loss.backward()
    return loss.detach(), [p.grad for p in model.parameters()]


def test_each_replica_gets_its_own_loss_and_gradients() -> None:
    models = replicas("gpt-tiny", 3, vocab_size=64)
    inputs = torch.randint(64, (3, 4, 16))
    targets = torch.randint(64, (3, 4, 16))
    batched = batched_losses(models, list(inputs), list(targets))
    for model, x, y, (loss, gradients) in zip(models, inputs, targets, batched):
        expected_loss, expected_gradients = alone(model, x, y)
        assert loss.item() == pytest.approx(expected_loss.item(), rel=1e-6)
        assert len(gradients) == len(expected_gradients)
        for gradient, expected in zip(gradients, expected_gradients):
            torch.testing.assert_close(gradient, expected, rtol=1e-5, atol=1e-7)
    assert batched[0][0] != batched[1][0]


def test_batch_norm_statistics_are_each_replicas_own() -> None:
    models = replicas("resnet18-cifar", 2)
    twins = copy.deepcopy(models)
    images = torch.randn(2, 4, 3, 32, 32)
    labels = torch.randint(10, (2, 4))
    batched_losses(models, list(images), list(labels))
    for model, twin, x, y in zip(models, twins, images, labels):
        alone(twin, x, y)
        for (name, buffer), expected in zip(model.named_buffers(), twin.buffers()):
            torch.testing.assert_close(buffer, expected, msg=name)
    assert not torch.equal(models[0].stem[1].running_mean, models[1].stem[1].running_mean)


def test_strategies_train_the_same_with_a_batched_pass() -> None:
    """Three simulated workers averaging gradients over two micro-batches per step: the batched
    pass leaves every worker with the parameters that separate passes give."""

    def train(batched: bool, comm) -> list[torch.Tensor]:
        with MODEL_LOCK:
            torch.manual_seed(comm.rank)
            model = build_model("gpt-tiny", vocab_size=64)
        strategy = GradientAveraging(model, torch.optim.SGD(model.parameters(), lr=0.1), communicator=comm)
        loss = ReplicaBatcher(comm).loss if batched else cross_entropy
        data = torch.Generator().manual_seed(comm.rank)
        for _ in range(3):
            batches = [torch.randint(64, (2, 9), generator=data) for _ in range(2)]
            strategy.step([partial(loss, model, b[:, :-1], b[:, 1:]) for b in batches])
        return [p.detach() for p in model.parameters()]

    separate = run_simulated(3, partial(train, False))
    batched = run_simulated(3, partial(train, True))
    for mine, theirs in zip(batched, separate):
        for a, b in zip(mine, theirs):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(batched[0], batched[2]))
