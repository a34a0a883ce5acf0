"""DDP: PyTorch's ``DistributedDataParallel`` (Li et al., "PyTorch Distributed", VLDB 2020), the baseline.

Rule: every step, gradients are averaged over all workers (bucketed all-reduce overlapped with the
backward pass) before the inner optimizer steps. This is torch's own implementation with a
communication hook that counts bytes; lowcomm adds nothing else (and finish has nothing to do).

With worker groups, DDP inside: DistributedDataParallel over all K x G ranks. Its ring runs in rank
order and K of its K x G links leave a group, so each rank's bytes count K/(K x G) as between
groups and the rest as within (see :class:`~lowcomm.communication.ddp_hooks.CountingState`), and
its waits as between groups. FSDP inside: HSDP done by lowcomm: FSDP averages the gradient
shards within the group (its reduce-scatter), then lowcomm averages them across groups every step.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.nn.parallel import DistributedDataParallel

from lowcomm.algorithms.base import Strategy, wrap_ddp
from lowcomm.communication.communicator import ProcessGroupCommunicator
from lowcomm.communication.ddp_hooks import CountingState


class DDP(Strategy):
    """``DistributedDataParallel`` behind the strategy API; call ``strategy.model`` in the closure.

    Extra keyword arguments go to ``DistributedDataParallel``.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        mesh: DeviceMesh | None = None,
        communicator: ProcessGroupCommunicator | None = None,
        max_grad_norm: float | None = None,
        **ddp_options: Any,
    ) -> None:
        if communicator is not None and not isinstance(communicator, ProcessGroupCommunicator):
            raise ValueError("communicator: DDP needs a ProcessGroupCommunicator")
        self.ddp_options = ddp_options
        super().__init__(model, optimizer, mesh=mesh, communicator=communicator, max_grad_norm=max_grad_norm)

    def data_parallel(self) -> tuple[DistributedDataParallel | None, CountingState | None]:
        if self.inner == "fsdp":
            return None, None
        if self.mesh is None:
            return wrap_ddp(self.local_model, self.comm, self.comm.stats, **self.ddp_options)
        if self.comm.world_size == 1:  # one group: no link leaves it
            return wrap_ddp(self.local_model, ProcessGroupCommunicator(), self.inner_comm.stats, **self.ddp_options)
        return wrap_ddp(self.local_model, ProcessGroupCommunicator(), self.comm.stats, within=self.inner_comm.stats,
                        crossing_links=self.comm.world_size, **self.ddp_options)

    def broadcast_initial_state(self) -> None:
        """DistributedDataParallel broadcasts worker 0's state itself (its bytes are charged)."""
        if self.inner == "fsdp":
            super().broadcast_initial_state()

    def averages_gradients(self, step: int) -> bool:
        """FSDP inside: lowcomm averages the gradient shards across groups (DistributedDataParallel
        averages its own gradients during the backward pass)."""
        return self.inner == "fsdp"
