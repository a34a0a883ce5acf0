"""Checkpoints: one directory per step, written atomically and verified before use.

    OUT/checkpoints/step_00000128/
        rank_00000.pt ...   one per worker: its training state (:mod:`lowcomm.training.state`)
        sharded/            with worker groups: the strategies' tensors, one DCP checkpoint
                            (see :mod:`lowcomm.checkpointing.sharded_state`); the rank files hold the rest
        model.safetensors   the global model, for evaluation and export
        manifest.json       the step, the world size, the state's format (and layout), the ranks whose
                            files the directory holds, and every file's size and SHA-256

Nodes without a shared filesystem (several storage domains, :mod:`lowcomm.checkpointing.storage`) each
hold their own ranks' rank files and a DCP checkpoint of their ranks' tensors (``sharded/``, with its
own ``.metadata``), and a manifest of those; rank 0's node also holds ``model.safetensors``, and its
manifest lists every other node's files (``other_nodes``) by size and SHA-256 as they reported them.
A node reads only its own files: resuming needs every rank on the node that saved it, in the same
layout (resharding would read other nodes' shards; it needs a run saved on a shared filesystem).
Resuming picks the newest checkpoint that every node holds intact (:func:`agreed_checkpoint`).

A checkpoint is written into a hidden staging directory; each file is fsynced, then the manifest,
then the directory, which is renamed into place before its parent is fsynced. A directory whose
manifest is missing or disagrees with its files is incomplete or corrupt, and resuming skips it.
Old checkpoints are pruned only once every node has committed the new one.
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
from lowcomm.checkpointing.storage import Storage, shared_storage
from lowcomm.communication.peers import Peers, process_group_peers

MANIFEST = "manifest.json"
GLOBAL_MODEL = "model.safetensors"
SHARDED_DIRECTORY = "sharded"
"""Where a run with worker groups keeps its DCP checkpoint (:mod:`lowcomm.checkpointing.sharded_state`)."""
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


class CheckpointError(RuntimeError):
    """A checkpoint could not be written; raised on every rank alike, with one line naming the node."""


class Checkpointer:
    """Collective checkpoint writes into ``root``, and their pruning.

    Each step of a save runs on every rank and is agreed: if it failed on any rank (an ``OSError``),
    every rank raises the same :class:`CheckpointError`. ``peers`` defaults to the
    ``torch.distributed`` process group's, ``storage`` to one domain; after a save each domain keeps
    its newest ``keep`` checkpoints (all when ``None``).
    """

    def __init__(self, root: Path, peers: Peers | None = None, storage: Storage | None = None,
                 keep: int | None = None) -> None:
        self.root = root
        self.peers = peers or process_group_peers()
        self.storage = storage or shared_storage(self.peers.rank, self.peers.world_size)
        self.keep = keep

    def save(self, step: int, rank_state: dict[str, Any], global_model: dict[str, torch.Tensor] | None,
             sharded: dict[str, torch.Tensor] | None = None, manifest: dict[str, Any] | None = None) -> Path:
        """Collective: every rank writes its ``rank_state`` (and its ``sharded`` tensors into one DCP
        checkpoint per storage domain); rank 0 adds ``global_model``; each domain's leader adds
        ``manifest``'s entries to its manifest and commits its directory. Once every domain has
        committed, each leader prunes. Return the checkpoint's directory."""
        staging = self.root / (STAGING_PREFIX + checkpoint_name(step))
        final = self.root / checkpoint_name(step)
        self.agree(final, lambda: self.start(staging))
        written = self.agree(final, lambda: self.write(staging, rank_state, global_model))
        if sharded is not None:
            self.write_sharded(staging, final, sharded)
            for leader, files in enumerate(self.agree(final, lambda: self.sharded_files(staging))):
                written[leader] |= files
        self.agree(final, lambda: self.commit(step, staging, final, written, manifest or {}))
        self.agree(final, self.prune)  # only once every domain holds this checkpoint
        return final

    def agree(self, final: Path, action: Callable[[], Any]) -> list[Any]:
        """Every rank's result of ``action``; if it failed on any rank, CheckpointError on all."""
        try:
            outcome = (action(), None)
        except OSError as error:
            outcome = (None, f"checkpoint {final.name}: cannot write {error.filename or self.root} on "
                             f"{self.storage.name}: {error.strerror}")
        gathered = self.peers.all_gather(outcome)
        failure = next((error for _, error in gathered if error is not None), None)
        if failure is not None:
            raise CheckpointError(failure)
        return [result for result, _ in gathered]

    def start(self, staging: Path) -> None:
        """The domain's leader makes an empty staging directory."""
        if self.storage.leader:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)

    def write(self, staging: Path, rank_state: dict[str, Any],
              global_model: dict[str, torch.Tensor] | None) -> FileRecord:
        """This rank's file (and rank 0's global model), durably; their manifest entries."""
        files = write_durably(staging / rank_file(self.peers.rank), lambda file: torch.save(rank_state, file))
        if self.peers.rank == 0:
            tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in global_model.items()}
            files |= write_durably(staging / GLOBAL_MODEL, lambda file: file.write(safetensors_bytes(tensors)))
        return files

    def write_sharded(self, staging: Path, final: Path, sharded: dict[str, torch.Tensor]) -> None:
        """Collective within the domain: its ranks' tensors into one DCP checkpoint."""
        from lowcomm.checkpointing.sharded_state import ShardedStateError, save_sharded  # DCP: worker groups only

        try:
            save_sharded(staging / SHARDED_DIRECTORY, sharded, self.storage.group)
        except ShardedStateError as error:
            raise CheckpointError(f"checkpoint {final.name}: the sharded state could not be written on "
                                  f"{self.storage.name}: {first_line(error)}") from None

    def sharded_files(self, staging: Path) -> FileRecord:
        """The leader's manifest entries for the DCP checkpoint's files, once they are durable."""
        if not self.storage.leader:
            return {}
        fsync_path(staging / SHARDED_DIRECTORY)
        return {path.relative_to(staging).as_posix(): {"bytes": path.stat().st_size, "sha256": sha256(path)}
                for path in sorted((staging / SHARDED_DIRECTORY).iterdir())}

    def commit(self, step: int, staging: Path, final: Path, written: list[FileRecord],
               extra: dict[str, Any]) -> None:
        """The leader writes its domain's manifest (rank 0's, without a shared filesystem, lists
        every other node's files too) and renames the staging directory into place."""
        storage = self.storage
        if not storage.leader:
            return
        files = {k: v for rank, f in enumerate(written) if storage.domain_of(rank) == storage.domain
                 for k, v in f.items()}
        manifest = {"step": step, "world_size": self.peers.world_size, "ranks": list(storage.domains[storage.domain]),
                    "files": files, **extra}
        if self.peers.rank == 0 and not storage.shared:  # every other node's files, as they reported them
            manifest["other_nodes"] = {
                storage.names[domain]: {"ranks": list(ranks), "files": {
                    k: v for r in ranks for k, v in written[r].items()}}
                for domain, ranks in enumerate(storage.domains) if domain != storage.domain}
        write_durably(staging / MANIFEST, lambda file: file.write(json.dumps(manifest, indent=1).encode()))
        shutil.rmtree(final, ignore_errors=True)
        commit(staging, final)

    def prune(self) -> None:
        """The leader deletes all but the newest ``keep`` checkpoints of its domain."""
        if self.storage.leader and self.keep is not None:
            for old in checkpoint_directories(self.root)[:-self.keep]:
                shutil.rmtree(old)


def checkpoint_directories(root: Path) -> list[Path]:
    """Every ``step_XXXXXXXX`` directory under ``root``, oldest first, complete or not."""
    if not root.is_dir():
        return []
    return sorted(path for path in root.iterdir() if path.is_dir() and CHECKPOINT_NAME.fullmatch(path.name))


def discard_staging(root: Path) -> None:
    """Delete the staging directories of writes that never finished; a file or symlink of that name is
    not lowcomm's, and stays (a symlink is never followed)."""
    if root.is_dir():
        for path in root.glob(STAGING_PREFIX + "*"):
            if path.is_dir() and not path.is_symlink():
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
    if (directory / SHARDED_DIRECTORY).is_dir():
        from lowcomm.checkpointing.sharded_state import metadata_problem  # DCP: worker groups only

        return metadata_problem(directory / SHARDED_DIRECTORY)
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


def agreed_checkpoint(root: Path, peers: Peers, storage: Storage) -> tuple[Path | None, list[tuple[str, str]]]:
    """Collective: the newest checkpoint that every storage domain holds intact under its ``root``
    (or ``None``), and the names of the newer ones that some domain does not, each with the problems.

    Each domain's leader checks its own directory (and discards unfinished writes). With several
    domains, a domain's files must also be those that rank 0's manifest lists for its ranks: a
    directory left by another attempt at the same step does not count. ValueError (one line, naming
    the node and step) where resuming would lose a checkpoint: no checkpoint is intact on every
    domain while some domain holds one, or a domain holds another domain's ranks' files.
    """
    if storage.leader:
        discard_staging(root)
    if storage.shared:
        choice = None
        if storage.leader:
            found, skipped = newest_complete_checkpoint(root)
            choice = None if found is None else found.name, [(d.name, problem) for d, problem in skipped]
        name, skipped = peers.all_gather(choice)[0]
        return None if name is None else root / name, skipped
    listed = peers.all_gather([d.name for d in checkpoint_directories(root)] if storage.leader else [])
    skipped = []
    partly_intact: tuple[str, str] | None = None
    for name in sorted({name for names in listed for name in names}, reverse=True):
        gathered = peers.all_gather(directory_report(root / name) if storage.leader else None)
        problems = domain_problems(name, [gathered[ranks[0]] for ranks in storage.domains], storage)
        if not problems:
            return root / name, skipped
        skipped.append((name, "; ".join(problems.values())))
        if partly_intact is None and len(problems) < len(storage.domains):
            partly_intact = name, next(iter(problems.values()))
    if partly_intact is not None:
        name, problem = partly_intact
        raise ValueError(f"resume: no checkpoint is intact on every node; {name} is intact on some, not on {problem}")
    return None, skipped


def directory_report(directory: Path) -> dict[str, Any]:
    """What a leader tells the others about one of its checkpoint directories."""
    problem = problem_with(directory) if directory.is_dir() else "no such checkpoint"
    if problem is not None:
        return {"problem": problem}
    manifest = read_manifest(directory)
    return {"problem": None, "ranks": manifest.get("ranks"), "files": manifest["files"],
            "other_nodes": manifest.get("other_nodes", {})}


def domain_problems(name: str, reports: list[dict[str, Any]], storage: Storage) -> dict[int, str]:
    """Each domain's problem with checkpoint ``name`` (none: it may be resumed), from their reports."""
    problems = {d: f"{storage.names[d]}: {r['problem']}" for d, r in enumerate(reports) if r["problem"] is not None}
    listing = {tuple(entry["ranks"]): entry["files"] for entry in reports[0].get("other_nodes", {}).values()}
    for domain, report in enumerate(reports):
        if report["problem"] is not None:
            continue
        ranks = storage.domains[domain]
        if report["ranks"] != list(ranks):
            raise ValueError(
                f"resume: {storage.names[domain]} holds the checkpoint files of ranks {report['ranks']} ({name}) but "
                f"runs ranks {list(ranks)}; without a shared --out every node must keep its ranks (torchrun orders "
                "nodes by host name)")
        if domain > 0 and listing.get(ranks) != report["files"]:
            problems[domain] = (f"{storage.names[domain]}: its files are not those rank 0's manifest lists "
                                "(an older write)")
    return problems


def read_manifest(directory: Path) -> dict[str, Any]:
    return json.loads((directory / MANIFEST).read_text())


def load_worker_state(directory: Path, rank: int, world_size: int, device: torch.device) -> dict[str, Any]:
    """This rank's state from a checkpoint written by the same number of workers."""
    saved_world_size = read_manifest(directory)["world_size"]
    if saved_world_size != world_size:
        raise ValueError(f"resume: {directory} was written by {saved_world_size} workers, this run has {world_size}")
    return load_rank_file(directory, rank, device)


def first_line(error: BaseException) -> str:
    """An exception as one line: its type and the first line of its message."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def load_rank_file(directory: Path, rank: int, device: torch.device) -> dict[str, Any]:
    """What rank ``rank`` wrote into the checkpoint ``directory``, loaded with ``weights_only=True``."""
    return torch.load(directory / rank_file(rank), map_location=device, weights_only=True)
