"""A run with worker groups checkpointed with ``torch.distributed.checkpoint`` (DCP), resharded on load.

A rank's strategy state splits into its tensors, which DCP saves, and a skeleton (everything else,
with a marker where each tensor was), which the rank's own file keeps and ``torch.load(...,
weights_only=True)`` reads back, so DCP never unpickles anything but its metadata, and that is read by
:class:`MetadataReader`, whose unpickler admits only DCP's metadata types. Tensors are keyed by
the group and, unless they are ``DTensor``s, by the rank inside it:

- a ``DTensor`` (an FSDP2 parameter or its optimizer state, sharded over the group's ranks) is one
  tensor per group, ``group_{g}/{path}``, which DCP reassembles and reshards for any group size;
- a plain tensor is one per rank, ``group_{g}/rank_{i}/{path}``: the same layout restores it exactly.
  In another group size, a plain tensor is taken to be either the same on every rank of a group
  (DistributedDataParallel's replicas and their optimizer state) or the rank's chunk along dim 0,
  in ``torch.chunk``'s sizes with empty trailing chunks (``DTensor``'s ``Shard(0)``), of the tensor
  or of it flattened (the shards of z and the outer optimizer state). Where every rank of the saved
  group holds a tensor of this rank's shape, it is a replica and taken as it is; otherwise the saved
  group's chunks are joined and this rank's chunk is cut out (flattened where the tensor here is
  flat, reshaped where it is whole). Chunks that all had this rank's shape start where its chunk
  starts, so taking them as they are is right too.

Resuming K x G as K' x G': group g' < K loads group g's state; a new group g' >= K loads group 0's
and then starts from the global model (``z``) with a fresh inner optimizer state.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta
from torch.distributed import ProcessGroup
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Placement, Replicate, Shard

MARKER = "__dcp_tensor__"


class ShardedStateError(RuntimeError):
    """DCP could not save or load a sharded state."""


METADATA_TYPES = {
    "torch.distributed.checkpoint.metadata": {
        "Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "TensorProperties", "ChunkStorageMetadata",
        "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING",
    },
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "torch": {"Size"},
    "pathlib": {"PosixPath", "PurePosixPath"},
}
"""What a DCP ``.metadata`` pickle may name (besides torch's dtypes): nothing that runs code."""


class MetadataUnpickler(pickle.Unpickler):
    """Unpickles DCP checkpoint metadata and refuses any other global (a pickled payload)."""

    def find_class(self, module: str, name: str) -> Any:
        dtype = module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        if dtype or name in METADATA_TYPES.get(module, ()):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not checkpoint metadata")


class MetadataReader(dcp.FileSystemReader):
    """DCP's file reader, its ``.metadata`` read by :class:`MetadataUnpickler`."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        with self.fs.create_stream(self._get_metadata_path(kwargs.get("rank")), "rb") as file:
            metadata = MetadataUnpickler(file).load()
        if not isinstance(metadata, Metadata):
            raise pickle.UnpicklingError("not checkpoint metadata")
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


def metadata_problem(directory: Path) -> str | None:
    """Why the DCP metadata in ``directory`` may not be loaded (one line); None if it may."""
    try:
        MetadataReader(directory).read_metadata()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as error:
        return f"its sharded metadata is refused ({error})"
    return None


@contextmanager
def dcp_errors() -> Iterator[None]:
    """DCP's ``CheckpointException``, which is no ``Exception`` (it derives from ``BaseException``),
    raised again as a one-line :class:`ShardedStateError`."""
    try:
        yield
    except dcp.CheckpointException as error:
        lines = str(error).strip().splitlines()
        raise ShardedStateError(lines[0] if lines else type(error).__name__) from None


@dataclass(frozen=True)
class Position:
    """Where a rank sits: group ``group`` of ``groups``, rank ``inner`` of ``group_size`` inside it."""

    group: int
    inner: int
    groups: int
    group_size: int

    @classmethod
    def of(cls, mesh: DeviceMesh) -> Position:
        return cls(
            mesh.get_local_rank("group"), mesh.get_local_rank("inner"), mesh.size(0), mesh.size(1)
        )

    def source(self, saved_groups: int, saved_group_size: int) -> Position:
        """The saved rank whose state this rank loads (see the module docstring)."""
        group = self.group if self.group < saved_groups else 0
        inner = self.inner if self.inner < saved_group_size else 0
        return Position(group, inner, saved_groups, saved_group_size)

    def key(self, path: str, tensor: torch.Tensor) -> str:
        if isinstance(tensor, DTensor):
            return f"group_{self.group}/{path}"
        return f"group_{self.group}/rank_{self.inner}/{path}"


def split(state: Any, position: Position, path: str = "") -> tuple[Any, dict[str, torch.Tensor]]:
    """``state`` as (its skeleton, its tensors keyed for DCP); the skeleton holds a marker per tensor."""
    if isinstance(state, torch.Tensor):
        marker = {MARKER: path}
        if isinstance(state, DTensor):
            marker["mesh"] = list(state.device_mesh.mesh_dim_names)
            marker["placements"] = [describe(p) for p in state.placements]
        return marker, {position.key(path, state): state}
    tensors: dict[str, torch.Tensor] = {}
    if isinstance(state, dict):
        skeleton = {}
        for name, value in state.items():
            skeleton[name], found = split(value, position, f"{path}/{name}" if path else str(name))
            tensors |= found
        return skeleton, tensors
    if isinstance(state, (list, tuple)):
        items = []
        for index, value in enumerate(state):
            item, found = split(value, position, f"{path}/{index}" if path else str(index))
            items.append(item)
            tensors |= found
        return type(state)(items), tensors
    return state, tensors


def join(skeleton: Any, tensor_at: Callable[[dict[str, Any]], torch.Tensor]) -> Any:
    """The state ``skeleton`` describes, each marker replaced by ``tensor_at(marker)``."""
    if isinstance(skeleton, dict):
        if MARKER in skeleton:
            return tensor_at(skeleton)
        return {name: join(value, tensor_at) for name, value in skeleton.items()}
    if isinstance(skeleton, (list, tuple)):
        return type(skeleton)(join(value, tensor_at) for value in skeleton)
    return skeleton


def describe(placement: Placement) -> list[Any]:
    """A placement as plain values (``weights_only`` loads no placement objects)."""
    if isinstance(placement, Shard):
        return ["shard", placement.dim]
    if isinstance(placement, Replicate):
        return ["replicate"]
    raise ValueError(f"state: cannot checkpoint a DTensor placed as {placement}")


def placement(described: list[Any]) -> Placement:
    return Shard(described[1]) if described[0] == "shard" else Replicate()


def initialise_state(optimizer: torch.optim.Optimizer) -> None:
    """Give an optimizer without state its state tensors (zeros), leaving the parameters unchanged:
    a step on zero gradients with the learning rates set to 0. Loading a checkpoint needs them as
    templates of the layout here (what ``torch.distributed.checkpoint.state_dict`` does too)."""
    if optimizer.state:
        return
    saved_lrs = [group["lr"] for group in optimizer.param_groups]
    for group in optimizer.param_groups:
        group["lr"] = 0.0
        for p in group["params"]:
            p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    for group, lr in zip(optimizer.param_groups, saved_lrs):
        group["lr"] = lr


def save_sharded(directory: Path, tensors: dict[str, torch.Tensor], group: ProcessGroup | None = None) -> None:
    """Collective over ``group`` (default: every rank): its ranks' ``tensors`` into one DCP
    checkpoint in ``directory``, whose metadata its first rank writes."""
    with dcp_errors():
        dcp.save(tensors, storage_writer=dcp.FileSystemWriter(directory), process_group=group)


def load_sharded(
    directory: Path,
    skeleton: Any,
    template: Any,
    position: Position,
    source: Position,
    mesh: DeviceMesh,
    device: torch.device,
    group: ProcessGroup | None = None,
) -> Any:
    """Collective over ``group`` (the ranks that saved ``directory``; default: every rank): the state
    ``skeleton`` describes, its tensors read from the DCP checkpoint in ``directory`` as saved by
    rank ``source``, resharded onto this rank, at ``position``.

    A tensor lands in the matching tensor of ``template`` (this rank's current state, which gives
    the layout here); one the template lacks (optimizer state before the first step, say) is made
    with the saved placements, or whole.
    """
    _, here = split(template, source)
    saved = MetadataReader(directory).read_metadata().state_dict_metadata
    targets: dict[str, torch.Tensor] = {}
    rechunked: list[tuple[torch.Tensor, list[torch.Tensor]]] = []

    def saved_tensor(key: str) -> torch.Tensor:
        if key not in saved:
            raise ValueError(f"resume: the checkpoint in {directory} has no {key}")
        targets[key] = torch.empty(saved[key].size, dtype=saved[key].properties.dtype, device=device)
        return targets[key]

    def target(marker: dict[str, Any]) -> torch.Tensor:
        path = marker[MARKER]
        if "mesh" in marker:
            key = f"group_{source.group}/{path}"
            if key not in here:
                tensor = saved_tensor(key)
                placements = [placement(p) for p in marker["placements"]]
                targets[key] = torch.distributed.tensor.empty(
                    tensor.shape, dtype=tensor.dtype, device_mesh=mesh[tuple(marker["mesh"])], placements=placements
                )
                return targets[key]
            targets[key] = here[key]
            return here[key]
        key = f"group_{source.group}/rank_{source.inner}/{path}"
        tensor = here.get(key)
        if tensor is None:
            return saved_tensor(key)
        group_keys = [f"group_{source.group}/rank_{i}/{path}" for i in range(source.group_size)]
        if source.group_size == position.group_size or all(
            key in saved and tuple(saved[key].size) == tuple(tensor.shape) for key in group_keys
        ):
            targets[key] = tensor
            return tensor
        chunks = [saved_tensor(key) for key in group_keys]
        rechunked.append((tensor, chunks))
        return tensor

    state = join(skeleton, target)
    with dcp_errors():
        dcp.load(targets, storage_reader=MetadataReader(directory), process_group=group)
    for tensor, chunks in rechunked:
        whole = torch.cat([chunk.reshape(-1) if tensor.dim() == 1 else chunk for chunk in chunks])
        size = -(-whole.shape[0] // position.group_size)
        start = min(position.inner * size, whole.shape[0])
        mine = whole[start : start + size]
        if mine.numel() == tensor.numel():  # chunks of the flattened tensor, or the whole of it
            mine = mine.reshape(tensor.shape)
        if mine.shape != tensor.shape:
            raise ValueError(f"resume: a saved tensor of shape {tuple(whole.shape)} cannot be resharded into this "
                             f"rank's {tuple(tensor.shape)}")
        tensor.copy_(mine)
    return state
