"""A run with worker groups checkpointed with ``torch.distributed.checkpoint`` (DCP), resharded on load.

A rank's strategy state (:meth:`~lowcomm.algorithms.base.Strategy.distributed_state_dict`) splits
into its tensors, which DCP saves, and a skeleton (everything else, with a marker where each tensor
was), which the rank's own file keeps and ``torch.load(..., weights_only=True)`` reads back, so DCP
never unpickles anything but its metadata, and that is read by :class:`MetadataReader`, whose
unpickler admits only DCP's metadata types. Tensors are keyed by the group and, unless they are
``DTensor``s, by the rank inside it:

- a ``DTensor`` is one tensor per group, ``group_{g}/{path}``, which DCP reassembles and reshards
  for any group size: an FSDP2 parameter or its optimizer state, and every shard of per-parameter
  state (z, the outer optimizer's state, ...), described as its part of a ``Shard(0)`` DTensor;
- a plain tensor is one per rank, ``group_{g}/rank_{i}/{path}``: the same on every rank of a group
  (DistributedDataParallel's replicas and their optimizer state, the coins) or the rank's own (the
  error-feedback residuals, which resume only in the same group size).

Resuming K x G as K' x G': group g' < K loads group g's state; a new group g' >= K loads group 0's
(and then starts from the global model with a fresh inner optimizer state); a plain tensor comes
from rank i of the saved group, or its rank 0 where the saved group has no rank i.
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

    def key(self, path: str, distributed: bool) -> str:
        """The DCP key of this rank's tensor at ``path``: one per group for a DTensor, else one per rank."""
        return f"group_{self.group}/{path}" if distributed else f"group_{self.group}/rank_{self.inner}/{path}"


def split(state: Any, position: Position, path: str = "") -> tuple[Any, dict[str, torch.Tensor]]:
    """``state`` as (its skeleton, its tensors keyed for DCP); the skeleton holds a marker per tensor
    (with a DTensor's mesh dimensions and placements, or where a plain tensor lives)."""
    if isinstance(state, torch.Tensor):
        marker: dict[str, Any] = {MARKER: path}
        if isinstance(state, DTensor):
            marker["mesh"] = list(state.device_mesh.mesh_dim_names)
            marker["placements"] = [describe(p) for p in state.placements]
        else:
            marker["device"] = state.device.type
        return marker, {position.key(path, isinstance(state, DTensor)): state}
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


def save_sharded(directory: Path, tensors: dict[str, torch.Tensor], group: ProcessGroup | None = None) -> None:
    """Collective over ``group`` (default: every rank): its ranks' ``tensors`` into one DCP
    checkpoint in ``directory``, whose metadata its first rank writes."""
    with dcp_errors():
        dcp.save(tensors, storage_writer=dcp.FileSystemWriter(directory), process_group=group)


def load_sharded(
    directory: Path,
    skeleton: Any,
    source: Position,
    mesh: DeviceMesh,
    device: torch.device,
    group: ProcessGroup | None = None,
) -> Any:
    """Collective over ``group`` (the ranks that saved ``directory``; default: every rank): the state
    ``skeleton`` describes, its tensors read from the DCP checkpoint in ``directory``: a DTensor
    resharded onto this rank's part of ``mesh``, a plain tensor as rank ``source`` saved it (on
    ``device``, or the CPU where it was saved from the CPU)."""
    saved = MetadataReader(directory).read_metadata().state_dict_metadata
    targets: dict[str, torch.Tensor] = {}

    def target(marker: dict[str, Any]) -> torch.Tensor:
        distributed = "mesh" in marker
        key = source.key(marker[MARKER], distributed)
        if key not in saved:
            raise ValueError(f"resume: the checkpoint in {directory} has no {key}")
        size, dtype = saved[key].size, saved[key].properties.dtype
        if distributed:
            placements = [placement(p) for p in marker["placements"]]
            targets[key] = torch.distributed.tensor.empty(size, dtype=dtype, device_mesh=mesh[tuple(marker["mesh"])],
                                                          placements=placements)
        else:
            targets[key] = torch.empty(size, dtype=dtype, device="cpu" if marker["device"] == "cpu" else device)
        return targets[key]

    state = join(skeleton, target)
    with dcp_errors():
        dcp.load(targets, storage_reader=MetadataReader(directory), process_group=group)
    return state
