"""A synchronisation whose communication failed (live fault tolerance: a peer died during it) leaves
its tensors as they were and ``should_commit()`` false: DiLoCo goes back to z without an outer step,
Local SGD and NoLoCo keep their models, a warm-up step takes no optimizer step; nothing is recorded
as a non-finite worker. One worker of two, scalar SGD (lr 0.1) on ``0.5 * (w - 2) ** 2``, worked out
by hand: w = 1 -> 1.1 -> 1.19."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from lowcomm import ALGORITHMS
from lowcomm.communication.communicator import Communicator
from tests.algorithms.scalar import EXAMPLES, scalar_model


class FailingCommunicator(Communicator):
    """Worker 0 of 2, every communication of which fails as a live one does: nothing arrives and the
    tensors stay as they were."""

    def __init__(self) -> None:
        super().__init__(0, 2)

    def should_commit(self) -> bool:
        return False

    def _all_reduce_mean(self, tensors: list[torch.Tensor]) -> Callable[[], None]:
        return lambda: None

    def _exchange(self, tensors: list[torch.Tensor], peers: list[int]) -> list[list[torch.Tensor]]:
        return [[torch.zeros_like(t) for t in tensors] for _ in peers]

    def _broadcast(self, tensors: list[torch.Tensor], src: int) -> None:
        """Nothing arrives: every worker built the same model."""

    def _all_gather_object(self, value: Any) -> list[Any]:
        return [value, value]


def two_steps(algo: str, **options: Any) -> tuple[list[float], Any, float]:
    """w after each of two steps (a synchronisation or a warm-up average at each), the strategy, and
    its global w."""
    model = scalar_model(0)
    communicator = FailingCommunicator()
    strategy = ALGORITHMS[algo](model, torch.optim.SGD(model.parameters(), lr=0.1),
                                communicator=communicator, **options)
    strategy.make_elastic(lambda: (communicator.rank, communicator.world_size))  # no mean on demand, as live
    a, b = EXAMPLES[0]
    x = torch.tensor([[a]], dtype=torch.float64)
    weights = []
    for _ in range(2):
        strategy.step(lambda: 0.5 * (strategy.model(x)[0, 0] - b) ** 2)
        weights.append(model.weight.item())
    assert strategy.events == []  # a failed step is no worker's non-finite model
    return weights, strategy, strategy.global_state_dict()["weight"].item()


@pytest.mark.parametrize("algo", ["localsgd", "postlocalsgd"])
def test_local_sgd_keeps_its_model_and_its_last_synchronised_one(algo):
    options = {"sync_interval": 2} if algo == "localsgd" else {"sync_interval": 1, "warmup_steps": 1}
    weights, strategy, global_w = two_steps(algo, **options)
    if algo == "localsgd":
        assert weights == pytest.approx([1.1, 1.19], abs=1e-12)
        assert global_w == 1.0  # the last synchronised model: the initial one
    else:  # the warm-up step's average failed: no step; then a local step and a failed synchronisation
        assert weights == pytest.approx([1.0, 1.1], abs=1e-12)
        assert global_w == 1.0  # the model at the end of the warm-up
    assert [x0.item() for x0 in strategy.synced] == [1.0]


@pytest.mark.parametrize("algo", ["diloco", "palsgd", "streamingdiloco"])
def test_diloco_goes_back_to_z_without_an_outer_step(algo):
    options = {"sync_interval": 2, "outer_momentum": 0.0}
    if algo == "palsgd":
        options |= {"warmup_steps": 0, "pseudo_sync_prob": 0.0}
    if algo == "streamingdiloco":
        options |= {"num_fragments": 1}
    weights, strategy, global_w = two_steps(algo, **options)
    assert weights == pytest.approx([1.1, 1.0], abs=1e-12)
    assert [z.item() for z in strategy.outer_params] == [1.0] and global_w == 1.0
    assert strategy.outer_optimizer.state_dict()["state"] == {}  # no outer step was taken
    assert strategy.sync_diagnostics == {}


def test_noloco_keeps_its_model_outer_model_and_momentum():
    weights, strategy, global_w = two_steps("noloco", sync_interval=2, outer_momentum=0.5)
    assert weights == pytest.approx([1.1, 1.19], abs=1e-12)
    assert [z.item() for z in strategy.outer_params] == [1.0] and global_w == 1.0  # its own z
    assert [m.item() for m in strategy.momentum] == [0.0]


def test_a_failed_warm_up_average_takes_no_optimizer_step():
    weights, _, global_w = two_steps("diloco", sync_interval=2, warmup_steps=2)
    assert weights == [1.0, 1.0] and global_w == 1.0
