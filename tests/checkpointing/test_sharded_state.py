"""Sharded checkpoints of worker groups on 4 real gloo processes: saved as 2 x 2, loaded as 2 x 2
(exactly), 1 x 4 and 4 x 1 (resharded by DCP; a new group loads group 0's)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor, Shard, distribute_tensor

from lowcomm.checkpointing.sharded_state import Position, load_sharded, save_sharded, split
from tests.distributed import run_workers

ROWS, COLUMNS = 5, 3  # 5 rows split in 2: chunks of 3 and 2; in 4: 2, 2, 1, 0


def group_tensor(group: int) -> torch.Tensor:
    """A tensor that differs between groups, the same on every rank of one."""
    return torch.arange(ROWS * COLUMNS, dtype=torch.float32).reshape(ROWS, COLUMNS) + 100 * group


def chunk(tensor: torch.Tensor, rank: int, size: int) -> torch.Tensor:
    """Rank ``rank``'s dim-0 chunk of ``size``, in torch.chunk's sizes, empty at the end."""
    step = -(-tensor.shape[0] // size)
    start = min(rank * step, tensor.shape[0])
    return tensor[start : start + step]


def state_of(position: Position, mesh) -> dict:
    """Every kind of state a strategy holds with groups, for this rank at ``position``: a replica, an
    FSDP parameter, a shard of z (a chunk of the flattened parameter, described as a DTensor), and
    optimizer state."""
    values = group_tensor(position.group)
    flat = chunk(values.flatten(), position.inner, position.group_size).clone()
    return {
        "step": 7,
        "model": {"replica": values.clone(), "sharded": distribute_tensor(values, mesh["inner"], [Shard(0)])},
        "outer_params": {"w": DTensor.from_local(flat, mesh["inner"], [Shard(0)], shape=(ROWS * COLUMNS,),
                                                 stride=(1,), run_check=False)},
        "optimizer": {"state": {"w": {"step": torch.tensor(3.0)}}, "param_groups": [{"lr": 0.1, "params": ["w"]}]},
    }


def save_then_load() -> dict:
    """Save the state of a 2 x 2 layout; load it as 2 x 2, 1 x 4 and 4 x 1; return what each layout
    loaded, as plain tensors."""
    names = [tempfile.mkdtemp(prefix="lowcomm-sharded-") if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(names, src=0)
    directory = Path(names[0]) / "sharded"
    saved_mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("group", "inner"))
    skeleton, tensors = split(state_of(Position.of(saved_mesh), saved_mesh), Position.of(saved_mesh))
    save_sharded(directory, tensors)
    gathered = [None] * 4
    dist.all_gather_object(gathered, skeleton)
    loaded = {}
    for layout in ((2, 2), (1, 4), (4, 1)):
        mesh = init_device_mesh("cpu", layout, mesh_dim_names=("group", "inner"))
        source = Position.of(mesh).source(2, 2)
        state = load_sharded(directory, gathered[source.group * 2 + source.inner], source, mesh, torch.device("cpu"))
        sharded, z = state["model"]["sharded"], state["outer_params"]["w"]
        loaded[layout] = {
            "step": state["step"],
            "replica": state["model"]["replica"],
            "sharded": sharded.full_tensor(),
            "sharded_local": sharded.to_local(),
            "z_local": z.to_local(),
            "optimizer_step": state["optimizer"]["state"]["w"]["step"],
            "is_dtensor": isinstance(sharded, DTensor) and isinstance(z, DTensor),
        }
    return loaded


def test_a_2x2_state_loads_exactly_and_reshards_into_1x4_and_4x1():
    results = run_workers(save_then_load, 4)
    for rank, loaded in enumerate(results):
        for (groups, size), state in loaded.items():
            group, inner = divmod(rank, size)
            source_group = group if group < 2 else 0  # a new group starts from group 0's state
            values = group_tensor(source_group)
            assert state["step"] == 7 and state["is_dtensor"] and float(state["optimizer_step"]) == 3.0
            assert torch.equal(state["replica"], values)
            assert torch.equal(state["sharded"], values)
            assert torch.equal(state["sharded_local"], chunk(values, inner, size))
            assert torch.equal(state["z_local"], chunk(values.flatten(), inner, size))
