"""FSDP2 inside a worker group: every rank of a group holds one shard of each parameter (a ``DTensor``).

:func:`shard_within_groups` shards a model over the mesh's ``"inner"`` dimension; the counted
collectives charge FSDP2's all-gathers and reduce-scatters to lowcomm's byte counters. Kept apart from
:mod:`lowcomm.communication.groups` so that runs without FSDP never import it (half a second per
worker).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, fully_shard

from lowcomm.communication.communicator import CommStats, ProcessGroupCommunicator, payload_bytes

# The collectives FSDP2 runs by default (torch 2.13 renamed them; the old names are deprecated there).
ALL_GATHER = getattr(dist, "all_gather_single", dist.all_gather_into_tensor)
REDUCE_SCATTER = getattr(dist, "reduce_scatter_single", dist.reduce_scatter_tensor)
CUSTOM_FSDP_COLLECTIVES = all(hasattr(FSDPModule, f"set_custom_{name}") for name in ("all_gather", "reduce_scatter"))
"""Whether this torch's FSDP2 runs collectives given to it, through which lowcomm counts its traffic."""


def transformer_blocks(model: nn.Module) -> Sequence[nn.Module]:
    """The children of the first ModuleList or Sequential (in module order) that have parameters."""
    for module in model.modules():
        if isinstance(module, (nn.ModuleList, nn.Sequential)):
            return [child for child in module if any(True for _ in child.parameters())]
    return []


def shard_within_groups(model: nn.Module, mesh: DeviceMesh) -> nn.Module:
    """Shard ``model`` with FSDP2 over ``mesh["inner"]``: each block of its first ModuleList or
    Sequential, then the root. Every rank of a group first takes the group's first rank's parameters
    and buffers (as DistributedDataParallel does). Call it before building the optimizer."""
    if not any(True for _ in model.parameters()):
        raise ValueError("model: FSDP cannot shard a model without parameters")
    inner = mesh["inner"]
    ProcessGroupCommunicator(inner.get_group()).broadcast([t.data for t in model.state_dict().values()], src=0)
    try:
        for block in transformer_blocks(model):
            fully_shard(block, mesh=inner)
        fully_shard(model, mesh=inner)
    except (AssertionError, RuntimeError, TypeError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"model: FSDP cannot shard it: {reason}") from None
    return model


class CountedAllGather:
    """FSDP2's all-gather (``FSDPModule.set_custom_all_gather``), charging what this rank sends:
    its padded shard to each of the G - 1 others (ring)."""

    def __init__(self, stats: CommStats) -> None:
        self.stats = stats

    def allocate(self, size: Sequence[int], *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        return torch.empty(size, dtype=dtype, device=device)

    def __call__(
        self, output_tensor: torch.Tensor, input_tensor: torch.Tensor, group: dist.ProcessGroup, async_op: bool = False
    ) -> dist.Work | None:
        self.stats.operations += 1
        self.stats.bytes_sent += (dist.get_world_size(group) - 1) * payload_bytes([input_tensor])
        return ALL_GATHER(output_tensor, input_tensor, group=group, async_op=async_op)


class CountedReduceScatter(CountedAllGather):
    """FSDP2's reduce-scatter (``FSDPModule.set_custom_reduce_scatter``), charging what this rank
    sends: G - 1 shards (ring)."""

    def __call__(  # type: ignore[override]
        self,
        output_tensor: torch.Tensor,
        input_tensor: torch.Tensor,
        group: dist.ProcessGroup,
        op: dist.ReduceOp,
        async_op: bool = False,
    ) -> dist.Work | None:
        self.stats.operations += 1
        self.stats.bytes_sent += (dist.get_world_size(group) - 1) * payload_bytes([output_tensor])
        return REDUCE_SCATTER(output_tensor, input_tensor, op=op, group=group, async_op=async_op)


def count_fsdp_traffic(model: nn.Module, stats: CommStats) -> bool:
    """Charge the all-gathers and reduce-scatters of every FSDP2 module in ``model`` to ``stats``; where
    this torch cannot (no :data:`CUSTOM_FSDP_COLLECTIVES`), warn that they go uncounted and return False."""
    if not CUSTOM_FSDP_COLLECTIVES:
        warnings.warn("this torch's FSDP2 takes no custom collectives: its traffic within groups is not counted",
                      stacklevel=2)
        return False
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.set_custom_all_gather(CountedAllGather(stats))
            module.set_custom_reduce_scatter(CountedReduceScatter(stats))
    return True
