"""DDP's rule through any communicator, for where torch's DistributedDataParallel cannot run.

DistributedDataParallel needs a real process group and hides its traffic inside it, so the
simulation (no process group) and the network model (which must delay every operation) run the
``ddp`` baseline as :class:`GradientAveraging` instead: every step averages the gradients over all
workers, then the inner optimizer steps. That is mathematically DDP; only the bucketing and the
overlap of communication with the backward pass differ.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh

from lowcomm.algorithms import ALGORITHMS, DDP, Strategy
from lowcomm.algorithms.periodic import PeriodicStrategy
from lowcomm.communication.communicator import Communicator, ProcessGroupCommunicator


class GradientAveraging(PeriodicStrategy):
    """Average the gradients every step: a periodic strategy that never leaves its synchronous warm-up."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        mesh: DeviceMesh | None = None,
        communicator: Communicator | None = None,
        max_grad_norm: float | None = None,
    ) -> None:
        super().__init__(
            model, optimizer, sync_interval=1, mesh=mesh, communicator=communicator, max_grad_norm=max_grad_norm
        )

    @property
    def in_warmup(self) -> bool:
        return True

    def synchronize(self) -> None:
        """Never called: there are no local steps."""


def strategy_class(algo: str, communicator: Communicator) -> type[Strategy]:
    """The class that runs ``algo`` over ``communicator``: DDP itself needs a process group."""
    cls = ALGORITHMS[algo]
    if cls is DDP and not isinstance(communicator, ProcessGroupCommunicator):
        return GradientAveraging
    return cls
