"""The simulated workers' forward and backward passes, batched into one (``--backend sim``).

Simulated workers are threads of one process (:mod:`lowcomm.communication.simulated`), so the
algorithms run unchanged. Their passes, though, would run one replica at a time. Here each worker's
loss closure hands its micro-batch to the others; worker 0 stacks the K replicas' parameters and
runs them as one pass with ``torch.func.vmap`` over ``functional_call``, and each worker gets back
its own loss with its gradients attached, so its strategy's ``loss.backward()`` stores them. Every
worker must compute the same number of micro-batches in the same order (as with collectives).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from lowcomm.communication.simulated import SimulatedCommunicator
from lowcomm.training.loss import cross_entropy


class _PrecomputedGradients(torch.autograd.Function):
    """``loss`` as a function of ``params`` whose gradients are already known."""

    @staticmethod
    def forward(ctx: Any, loss: Tensor, gradients: Sequence[Tensor], *params: Tensor) -> Tensor:
        ctx.gradients = gradients
        return loss.detach().clone()

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        return (None, None, *(grad_output * g for g in ctx.gradients))


def batched_losses(
    models: Sequence[nn.Module], inputs: Sequence[Tensor], targets: Sequence[Tensor], bf16: bool = False
) -> list[tuple[Tensor, list[Tensor]]]:
    """Each replica's :func:`~lowcomm.training.loss.cross_entropy` on its own batch and the
    gradients of its trainable parameters, computed as one batched pass over the stacked replicas.
    Buffers the pass updates (batch-norm statistics) are written back to each replica."""
    named = [dict(model.named_parameters()) for model in models]
    params = {
        name: torch.stack([replica[name].detach() for replica in named]).requires_grad_(p.requires_grad)
        for name, p in named[0].items()
    }
    named_buffers = [dict(model.named_buffers()) for model in models]
    buffers = {name: torch.stack([replica[name] for replica in named_buffers]) for name in named_buffers[0]}

    def loss(params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        return cross_entropy(partial(functional_call, models[0], (params, buffers)), x, y, bf16)

    with warnings.catch_warnings():  # CPU flash attention has no batching rule: it runs replica by replica
        warnings.filterwarnings("ignore", "There is a performance drop because we have not yet implemented")
        losses = vmap(loss, randomness="different")(params, buffers, torch.stack(list(inputs)), torch.stack(list(targets)))
    losses.sum().backward()
    with torch.no_grad():
        for replica, stacked in zip(named_buffers, zip(*buffers.values())):
            for buffer, value in zip(replica.values(), stacked):
                buffer.copy_(value)
    gradients = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params.values() if p.requires_grad]
    return [(losses[k].detach(), [g[k] for g in gradients]) for k in range(len(models))]


class ReplicaBatcher:
    """One simulated worker's door to the batched pass; its :meth:`loss` replaces ``cross_entropy``."""

    def __init__(self, communicator: SimulatedCommunicator) -> None:
        self.comm = communicator

    def loss(self, model: nn.Module, inputs: Tensor, targets: Tensor, bf16: bool = False) -> Tensor:
        """This worker's loss on its batch, computed with every other worker's in one pass."""
        everyone = self.comm.all_gather_object((model, inputs, targets))
        results = batched_losses(*zip(*everyone), bf16=bf16) if self.comm.rank == 0 else None
        loss, gradients = self.comm.all_gather_object(results)[0][self.comm.rank]
        params = [p for p in model.parameters() if p.requires_grad]
        return _PrecomputedGradients.apply(loss, gradients, *params)
