"""Worker groups: fast links inside a group (DDP or FSDP2), the slow link between groups.

A 2-D :class:`DeviceMesh` with dimensions ``("group", "inner")`` lays out K groups of G ranks; rank
``g * G + i`` is rank i of group g. Inside a group the ranks train one model together, with torch's
DistributedDataParallel (every rank holds the whole model) or FSDP2 (every rank holds one shard of
each parameter, a ``DTensor``). Between groups, rank i of every group synchronises only its own
shard with rank i of the other groups (over ``mesh["group"]``), so the slow link carries one model's
worth per group, spread over G rank pairs. :class:`GroupShards` says which part of each parameter
that is.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from typing import Literal

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from lowcomm.communication.communicator import Communicator

Inner = Literal["ddp", "fsdp"]


def worker_groups(num_groups: int, group_size: int) -> DeviceMesh:
    """The ``(num_groups, group_size)`` mesh over every rank of the default process group, dimensions
    ``("group", "inner")``; on CUDA when the default backend is nccl, else on CPU."""
    for name, value in (("num_groups", num_groups), ("group_size", group_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: must be an integer >= 1, got {value!r}")
    world_size = dist.get_world_size()
    if world_size != num_groups * group_size:
        raise ValueError(f"world size {world_size} is not num_groups x group_size = {num_groups} x {group_size}")
    device_type = "cuda" if "nccl" in str(dist.get_backend()) else "cpu"
    return init_device_mesh(device_type, (num_groups, group_size), mesh_dim_names=("group", "inner"))


def is_dtensor(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is a ``DTensor``. None exists before ``torch.distributed.tensor`` is imported
    (by :mod:`lowcomm.communication.fsdp`, say), and importing it only to ask costs every worker half a
    second at start-up."""
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(tensor, module.DTensor)


def inner_kind(params: Sequence[torch.Tensor], mesh: DeviceMesh | None) -> Inner | None:
    """``"fsdp"`` for DTensor parameters, ``"ddp"`` for plain ones on a mesh with G > 1, else None."""
    if any(is_dtensor(p) for p in params):
        if not all(is_dtensor(p) for p in params):
            raise ValueError("model: either every trainable parameter is a DTensor (FSDP) or none is")
        if mesh is None:
            raise ValueError("mesh: a model sharded with FSDP needs the mesh it was sharded over")
        return "fsdp"
    return "ddp" if mesh is not None and mesh["inner"].size() > 1 else None


def to_plain(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a DTensor (a collective over its mesh), or the tensor itself."""
    return tensor.full_tensor() if is_dtensor(tensor) else tensor


class GroupShards:
    """The part of each parameter this rank synchronises between groups, as views to write into.

    - FSDP inside: the rank's FSDP shard, ``p.to_local()``.
    - DDP inside: rank i of the group owns chunk i of each flattened parameter (``torch.chunk``'s
      sizes, those of DTensor's ``Shard(0)``; trailing chunks may be empty); after an update written
      into the chunks, :meth:`complete` all-gathers them within the group.
    - no groups: the parameters themselves.
    """

    def __init__(self, params: Sequence[torch.Tensor], kind: Inner | None, inner: Communicator | None) -> None:
        self.params = list(params)
        self.kind = kind
        self.inner = inner
        self.group_size = inner.world_size if inner is not None and kind is not None else 1
        if kind == "ddp":
            rank = inner.rank
            self.spans = []
            for p in self.params:
                size = math.ceil(p.numel() / self.group_size)
                start = min(rank * size, p.numel())
                self.spans.append((start, min(start + size, p.numel()), size))

    def local(self) -> list[torch.Tensor]:
        """This rank's shard of every parameter (views: writes land in the parameters)."""
        return [self.shard_of(p.detach(), i) for i, p in enumerate(self.params)]

    def grads(self) -> list[torch.Tensor]:
        """The matching shards of the gradients (zero gradients are made for parameters without one)."""
        for p in self.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        return [self.shard_of(p.grad, i) for i, p in enumerate(self.params)]

    def shard_of(self, tensor: torch.Tensor, index: int) -> torch.Tensor:
        if self.kind == "fsdp":
            return tensor.to_local()
        if self.kind == "ddp":
            start, end, _ = self.spans[index]
            return tensor.view(-1)[start:end]
        return tensor

    def complete(self, indices: Sequence[int] | None = None) -> None:
        """Make every rank of the group hold the whole of the given parameters (all by default) again."""
        indices = list(range(len(self.params)) if indices is None else indices)
        self.gather([self.params[i].detach() for i in indices], indices)

    def complete_grads(self) -> None:
        """Make every rank of the group hold the whole of every gradient again."""
        self.gather([p.grad for p in self.params], list(range(len(self.params))))

    def gather(self, tensors: list[torch.Tensor], indices: list[int], accounted: bool = True) -> None:
        """DDP inside: fill each tensor from its chunks, all-gathered (padded) within the group."""
        if self.kind != "ddp" or self.group_size == 1 or not tensors:
            return
        padded = []
        for tensor, i in zip(tensors, indices):
            start, end, size = self.spans[i]
            chunk = tensor.new_zeros(size)
            chunk[: end - start] = tensor.view(-1)[start:end]
            padded.append(chunk)
        gathered = self.inner.all_gather(padded, accounted=accounted)
        with torch.no_grad():
            for j, tensor in enumerate(tensors):
                whole = torch.cat([chunks[j] for chunks in gathered])[: tensor.numel()]
                tensor.view(-1).copy_(whole)

    def full(self, values: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Whole plain tensors, shaped like the parameters, from shard-shaped ``values`` (a collective
        within the group, not counted: for evaluation and saving)."""
        if self.kind == "fsdp":
            from torch.distributed.tensor import DTensor  # loaded already: the parameters are DTensors

            return [
                DTensor.from_local(v.to(p.device), p.device_mesh, p.placements, shape=p.shape, stride=p.stride(),
                                   run_check=False).full_tensor()
                for v, p in zip(values, self.params)
            ]
        if self.kind == "ddp":
            whole = [torch.zeros_like(p, device=v.device) for v, p in zip(values, self.params)]
            for i, (w, v) in enumerate(zip(whole, values)):
                start, end, _ = self.spans[i]
                w.view(-1)[start:end] = v
            self.gather(whole, list(range(len(whole))), accounted=False)
            return whole
        return [v.detach() for v in values]

    def described(self, value: torch.Tensor, index: int, mesh: DeviceMesh) -> torch.Tensor:
        """``value``, this rank's shard of parameter ``index`` (z's, say), as a part of the DTensor it
        is a shard of over the group's ranks, so that ``torch.distributed.checkpoint`` reshards it for
        another group size: ``Shard(0)`` of the parameter's shape under FSDP, of the flattened
        parameter otherwise (a group of one rank holds all of it)."""
        from torch.distributed.tensor import DTensor, Shard

        p = self.params[index]
        if self.kind == "fsdp":
            return DTensor.from_local(value, p.device_mesh, p.placements, shape=p.shape, stride=p.stride(),
                                      run_check=False)
        return DTensor.from_local(value.reshape(-1), mesh["inner"], [Shard(0)], shape=(p.numel(),), stride=(1,),
                                  run_check=False)

    def group_finite(self, tensors: Sequence[torch.Tensor]) -> bool:
        """Whether ``tensors`` are finite on every rank of the group (all ranks get the same answer)."""
        finite = all(bool(torch.isfinite(t).all()) for t in tensors)
        if self.group_size == 1:
            return finite
        flag = torch.full((1,), float(finite), dtype=torch.float64)
        if tensors and tensors[0].is_cuda:
            flag = flag.to(tensors[0].device)
        self.inner.all_reduce_mean([flag])  # the mean of G flags is 1 exactly iff every flag is 1
        return bool(flag == 1)
