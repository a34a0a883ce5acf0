"""DDP: PyTorch's ``DistributedDataParallel`` (Li et al., "PyTorch Distributed", VLDB 2020), the baseline.

Rule: every step, gradients are averaged over all workers (bucketed all-reduce overlapped with the
backward pass) before the inner optimizer steps. This is torch's own implementation with a
communication hook that counts bytes; lowcomm adds nothing else.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from lowcomm.algorithms.base import Closure, Strategy
from lowcomm.communication.communicator import ProcessGroupCommunicator, payload_bytes
from lowcomm.communication.ddp_hooks import CountingState, counting_allreduce_hook


class DDP(Strategy):
    """``DistributedDataParallel`` behind the strategy API; call ``strategy.model`` in the closure.

    Extra keyword arguments go to ``DistributedDataParallel``.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        communicator: ProcessGroupCommunicator | None = None,
        max_grad_norm: float | None = None,
        **ddp_options: Any,
    ) -> None:
        if communicator is not None and not isinstance(communicator, ProcessGroupCommunicator):
            raise ValueError("communicator: DDP needs a ProcessGroupCommunicator")
        super().__init__(model, optimizer, communicator=communicator, max_grad_norm=max_grad_norm)
        device = self.params[0].device
        self.ddp = DistributedDataParallel(
            model,
            device_ids=[device] if device.type == "cuda" else None,
            process_group=self.comm.group,
            **ddp_options,
        )
        self.counting = CountingState(self.comm)
        self.ddp.register_comm_hook(self.counting, counting_allreduce_hook)

    def broadcast_initial_state(self) -> None:
        """DistributedDataParallel broadcasts worker 0's state itself; its bytes are charged here."""
        self.comm.stats.operations += 1
        if self.comm.rank == 0:
            self.comm.stats.bytes_sent += payload_bytes(list(self.local_model.state_dict().values()))

    @property
    def model(self) -> nn.Module:
        return self.ddp

    def step(self, closure: Closure | Sequence[Closure]) -> torch.Tensor:
        self.step_count += 1
        loss = self._backward(closure)
        self.counting.end_step()
        self._optimizer_step()
        return loss

    def micro_batch_context(self, last: bool) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext() if last else self.ddp.no_sync()
