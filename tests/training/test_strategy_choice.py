"""The strategy class for an algorithm and a communicator."""

from __future__ import annotations

from lowcomm import LocalSGD
from lowcomm.algorithms.gradient_averaging import GradientAveraging
from lowcomm.communication.simulated import SimulatedGroup
from lowcomm.training.strategy_choice import strategy_class


def test_ddp_without_a_process_group_is_gradient_averaging_and_others_are_themselves() -> None:
    simulated = SimulatedGroup(2).communicators()[0]
    assert strategy_class("ddp", simulated) is GradientAveraging
    assert strategy_class("localsgd", simulated) is LocalSGD
