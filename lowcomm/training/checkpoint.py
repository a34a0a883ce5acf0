"""Checkpoints: one directory per step, written atomically and verified before use.

    OUT/checkpoints/step_00000128/
        rank_00000.pt ...   one per worker: strategy, LR scheduler, data position, RNG, progress
        sharded/            with worker groups: the strategies' tensors, one DCP checkpoint
                            (see :mod:`lowcomm.training.sharded_state`); the rank files hold the rest
        model.safetensors   the global model, for evaluation and export
        manifest.json       the step, the world size (and layout), and every file's size and SHA-256

A checkpoint is written into a hidden staging directory; each file is fsynced, then the manifest,
then the directory, which is renamed into place before its parent is fsynced. A directory whose
manifest is missing or disagrees with its files is incomplete or corrupt, and resuming skips it.
Files are loaded with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch
from safetensors.torch import save as safetensors_bytes

from lowcomm.atomic import commit, fsync_path
from lowcomm.training.peers import Peers, process_group_peers
from lowcomm.training.sharded_state import SHARDED_DIRECTORY, save_sharded

MANIFEST = "manifest.json"
GLOBAL_MODEL = "model.safetensors"
STAGING_PREFIX = ".staging_"
CHECKPOINT_NAME = re.compile(r"step_(\d{8})")

FileRecord = dict[str, dict[str, Any]]


def checkpoints_of(out: Path) -> Path:
    """Where the run in ``out`` keeps its checkpoints."""
    return out / "checkpoints"


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}"


def checkpoint_step(directory: Path) -> int:
    """The step a checkpoint directory holds, from its name."""
    return int(CHECKPOINT_NAME.fullmatch(directory.name)[1])


def rank_file(rank: int) -> str:
    return f"rank_{rank:05d}.pt"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_durably(path: Path, write: Callable[[IO[bytes]], Any]) -> FileRecord:
    """Write a file with ``write``, fsync it, and return its manifest entry."""
    with path.open("wb") as file:
        write(file)
        file.flush()
        os.fsync(file.fileno())
    return {path.name: {"bytes": path.stat().st_size, "sha256": sha256(path)}}


def save_checkpoint(
    root: Path,
    step: int,
    worker_state: dict[str, Any],
    global_model: dict[str, torch.Tensor] | None,
    keep: int | None = None,
    peers: Peers | None = None,
    sharded: dict[str, torch.Tensor] | None = None,
    layout: dict[str, int] | None = None,
) -> Path:
    """Collective: every rank saves its ``worker_state`` (and its ``sharded`` tensors into one DCP
    checkpoint, with worker groups); rank 0 adds ``global_model``, records ``layout`` and commits.

    Rank 0 then deletes all but the newest ``keep`` checkpoints. ``peers`` defaults to the
    ``torch.distributed`` process group's.
    """
    peers = peers or process_group_peers()
    rank, world_size = peers.rank, peers.world_size
    staging = root / (STAGING_PREFIX + checkpoint_name(step))
    final = root / checkpoint_name(step)
    if rank == 0:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    peers.barrier()
    files = write_durably(staging / rank_file(rank), lambda file: torch.save(worker_state, file))
    if sharded is not None:
        save_sharded(staging / SHARDED_DIRECTORY, sharded)
    if rank == 0:
        tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in global_model.items()}
        files |= write_durably(staging / GLOBAL_MODEL, lambda file: file.write(safetensors_bytes(tensors)))
        if sharded is not None:
            files |= {path.relative_to(staging).as_posix(): {"bytes": path.stat().st_size, "sha256": sha256(path)}
                      for path in sorted((staging / SHARDED_DIRECTORY).iterdir())}
            fsync_path(staging / SHARDED_DIRECTORY)
    gathered: list[FileRecord] = peers.all_gather(files)
    if rank == 0:
        manifest = {"step": step, "world_size": world_size, "files": {k: v for f in gathered for k, v in f.items()}}
        if layout is not None:
            manifest["layout"] = layout
        write_durably(staging / MANIFEST, lambda file: file.write(json.dumps(manifest, indent=1).encode()))
        shutil.rmtree(final, ignore_errors=True)
        commit(staging, final)
        if keep is not None:
            for old in checkpoint_directories(root)[:-keep]:
                shutil.rmtree(old)
    return final


def checkpoint_directories(root: Path) -> list[Path]:
    """Every ``step_XXXXXXXX`` directory under ``root``, oldest first, complete or not."""
    if not root.is_dir():
        return []
    return sorted(path for path in root.iterdir() if path.is_dir() and CHECKPOINT_NAME.fullmatch(path.name))


def discard_staging(root: Path) -> None:
    """Delete the staging directories of writes that never finished."""
    if root.is_dir():
        for path in root.glob(STAGING_PREFIX + "*"):
            shutil.rmtree(path)


def problem_with(directory: Path) -> str | None:
    """Why ``directory`` is not a complete, intact checkpoint; ``None`` if it is one."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
        step, files = manifest["step"], manifest["files"]
        expected = {name: (int(entry["bytes"]), str(entry["sha256"])) for name, entry in files.items()}
    except FileNotFoundError:
        return "no manifest (an unfinished write)"
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        return f"unreadable manifest ({type(error).__name__})"
    if checkpoint_name(step) != directory.name:
        return f"its manifest is for step {step}"
    for name, (size, digest) in expected.items():
        path = directory / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, the manifest says {size}"
        if sha256(path) != digest:
            return f"{name} fails its SHA-256 check"
    return None


def newest_complete_checkpoint(root: Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest intact checkpoint under ``root`` (or ``None``), and the newer ones that are not,
    each with its problem."""
    skipped = []
    for directory in reversed(checkpoint_directories(root)):
        problem = problem_with(directory)
        if problem is None:
            return directory, skipped
        skipped.append((directory, problem))
    return None, skipped


def read_manifest(directory: Path) -> dict[str, Any]:
    return json.loads((directory / MANIFEST).read_text())


def load_worker_state(directory: Path, rank: int, world_size: int, device: torch.device) -> dict[str, Any]:
    """This rank's state from a checkpoint written by the same number of workers."""
    saved_world_size = read_manifest(directory)["world_size"]
    if saved_world_size != world_size:
        raise ValueError(f"resume: {directory} was written by {saved_world_size} workers, this run has {world_size}")
    return load_rank_file(directory, rank, device)


def load_rank_file(directory: Path, rank: int, device: torch.device) -> dict[str, Any]:
    """What rank ``rank`` wrote into the checkpoint ``directory``, loaded with ``weights_only=True``."""
    return torch.load(directory / rank_file(rank), map_location=device, weights_only=True)
