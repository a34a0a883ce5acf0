"""The DDP stand-in trains exactly as torch's DistributedDataParallel does."""

from __future__ import annotations

import threading

import torch

from lowcomm import DDP, ProcessGroupCommunicator
from lowcomm.algorithms.gradient_averaging import GradientAveraging
from lowcomm.communication.communicator import Communicator
from lowcomm.communication.simulated import run_simulated
from lowcomm.training.strategy_choice import strategy_class
from tests.algorithms import mlp
from tests.distributed import run_workers

MODEL_LOCK = threading.Lock()


def train(comm: Communicator | None = None) -> tuple[type, list[torch.Tensor]]:
    comm = comm or ProcessGroupCommunicator()
    with MODEL_LOCK:
        model = mlp.mlp()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05)
    strategy = strategy_class("ddp", comm)(model, optimizer, communicator=comm, max_grad_norm=0.5)
    params = []
    for t in range(1, 7):
        data = mlp.batch(comm.rank, t)
        strategy.step(lambda: mlp.loss_of(strategy.model, data))
        params.append(mlp.flat(model))
    return type(strategy), params


def test_simulated_ddp_is_torch_ddp() -> None:
    ddp = run_workers(train, 2)
    averaged = run_simulated(2, train)
    assert [cls for cls, _ in ddp] == [DDP, DDP]
    assert [cls for cls, _ in averaged] == [GradientAveraging, GradientAveraging]
    for rank in range(2):
        # two workers: halving and adding two numbers is exact in any order, so bit for bit
        assert all(torch.equal(a, b) for a, b in zip(averaged[rank][1], ddp[rank][1]))
    assert not torch.equal(ddp[0][1][0], ddp[0][1][1])

