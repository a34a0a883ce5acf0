"""Which strategy class runs an algorithm over a given communicator."""

from __future__ import annotations

from lowcomm.algorithms import ALGORITHMS, DDP, Strategy
from lowcomm.algorithms.gradient_averaging import GradientAveraging
from lowcomm.communication.communicator import Communicator, ProcessGroupCommunicator


def strategy_class(algo: str, communicator: Communicator) -> type[Strategy]:
    """The class that runs ``algo`` over ``communicator``: DDP itself needs a process group, so
    elsewhere (the simulation, the network model) :class:`GradientAveraging` stands in for it."""
    cls = ALGORITHMS[algo]
    if cls is DDP and not isinstance(communicator, ProcessGroupCommunicator):
        return GradientAveraging
    return cls
