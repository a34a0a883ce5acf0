"""The run directory (``--out``): refuse one that holds another run or something else, lock it while
the run uses it, clear lowcomm's own files from it for ``--overwrite`` (only where lowcomm's marker
says it is a run: see :mod:`lowcomm.ownership`), record the config in it (as given, ``config.yaml``,
and the values resolved for this machine, ``resolved.yaml``), and read it back.

Under torchrun every node prepares its own ``--out``, and the nodes find which of them share one
(their storage domains, :class:`~lowcomm.checkpointing.storage.Storage`), one domain per round: the first
node not yet placed prepares its ``--out`` and writes a fresh token into it, once every node has
checked its own (so that a refusal leaves every ``--out`` untouched); every node not yet placed that
reads that token in its ``--out`` joins the domain.

A resumed run is the same run: every option that decides what it computes must match, except
``--steps``, which may extend (or shorten) it down to the steps already done; the trainer then
re-plans the learning-rate schedule for the new length.
"""

from __future__ import annotations

import os
import secrets
import socket
from pathlib import Path
from typing import Any

import torch.distributed as dist
import yaml

from lowcomm.atomic import write_atomically
from lowcomm.checkpointing.checkpoint import checkpoint_step, checkpoints_of, newest_complete_checkpoint
from lowcomm.checkpointing.storage import Storage
from lowcomm.communication.peers import Peers
from lowcomm.ownership import MARKER, is_empty, lock, mark, owner, remove_own
from lowcomm.training.config import FLAG_PATHS, TrainConfig, flag_default, flatten, merge, nest, run_identity

CONFIG_FILE = "config.yaml"
RESOLVED_FILE = "resolved.yaml"
"""In ``--out``: what :func:`~lowcomm.training.config.resolve` filled in (``device: auto``, the layout, ...)."""
TOKEN_FILE = ".storage_token"
"""In ``--out``: the token of the launch whose node prepared it last."""
RUN_FILES = (CONFIG_FILE, RESOLVED_FILE, "metrics.jsonl", "summary.json", "checkpoints", "tensorboard", "loss.png",
             "samples.txt", "tokenizer.json", "model.safetensors", TOKEN_FILE, "group_*", ".*.tmp", MARKER)
"""What a run writes into ``--out`` (live mode: ``group_G/``), and so all that ``--overwrite`` deletes."""


def prepare_run_directory(config: TrainConfig) -> None:
    """Make ``config.run.out`` ready for the resolved ``config``, locked by this process until it
    exits, and write ``config.yaml`` and ``resolved.yaml``; raise a one-line ValueError (having
    written nothing but the lock) if it holds something else or another run uses it."""
    out = config.run.out
    holds_run = check_run_directory(config)
    try:
        out.mkdir(parents=True, exist_ok=True)
        lock(out, "--out")
        if holds_run and config.run.overwrite:
            remove_own(out, RUN_FILES)
        mark(out, "run")
        write_atomically(out / CONFIG_FILE, lambda temporary: temporary.write_text(config.to_yaml()))
        write_atomically(out / RESOLVED_FILE, lambda temporary: temporary.write_text(config.resolved_yaml()))
    except OSError as error:
        raise ValueError(f"--out: cannot write to {out}: {error.strerror}") from None


def check_run_directory(config: TrainConfig) -> bool:
    """Raise a one-line ValueError unless ``config.run.out`` may hold this run (changing nothing);
    return whether it holds a run already."""
    out = config.run.out
    if out.is_symlink() and config.run.overwrite:
        raise ValueError(f"--out: {out} is a symbolic link; --overwrite takes the directory itself")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out: {out} is not a directory")
    if not out.is_dir() or is_empty(out):
        if config.run.resume and not config.run.overwrite:
            raise ValueError(f"--out: {out} holds no run to resume; start one without --resume")
        return False
    if owner(out) != "run":
        raise ValueError(f"--out: {out} is not empty and holds no lowcomm run (no {MARKER} marker); "
                         "choose another directory")
    if config.run.resume and not config.run.overwrite:
        check_same_run(config)
        if os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0":  # a restart may precede any checkpoint
            check_resumable(config)
    elif not config.run.overwrite:
        raise ValueError(f"--out: {out} already holds a run; pass --resume to continue it or --overwrite to replace it")
    return True


def check_resumable(config: TrainConfig) -> None:
    """Raise a one-line ValueError if ``config.run.out`` holds no intact checkpoint to resume (live mode:
    in no group's directory; the groups without one are healed from those with one)."""
    runs = sorted(config.run.out.glob("group_*")) if config.live else [config.run.out]
    newest = [newest_complete_checkpoint(checkpoints_of(run)) for run in runs]
    if all(found is None for found, _ in newest):
        skipped = [entry for _, entries in newest for entry in entries]
        why = f" ({skipped[0][0].name}: {skipped[0][1]})" if skipped else ""
        raise ValueError(f"--resume: {config.run.out} holds no intact checkpoint{why}; start afresh with --overwrite")


def check_same_run(config: TrainConfig) -> None:
    """Raise unless the run recorded in ``config.run.out`` computes the same thing as ``config``."""
    out = config.run.out
    try:
        saved = recorded_values(out)
    except (OSError, yaml.YAMLError, UnicodeDecodeError, AttributeError, TypeError):
        raise ValueError(f"--out: cannot read the run recorded in {out / CONFIG_FILE}") from None
    saved_identity = run_identity(saved)
    if (saved.get("groups") is None) != (config.layout.groups is None):
        had = "without" if saved.get("groups") is None else "with"
        raise ValueError(f"--out: {out} holds a run {had} worker groups; resume it {had} them "
                         "(its checkpoints hold another layout), or choose another --out")
    identity = config.run_identity()
    saved_identity = {key: saved_identity.get(key, default_of(config.algo, key)) for key in identity} | saved_identity
    for key in sorted(identity.keys() | saved_identity.keys()):
        if key != "steps" and identity.get(key) != saved_identity.get(key):
            raise ValueError(
                f"--out: {out} holds a different run ({key}: {saved_identity.get(key)!r} there, "
                f"{identity.get(key)!r} here); choose another --out or pass --overwrite"
            )
    if identity["steps"] != saved_identity.get("steps"):
        check_steps_not_done(config)


def default_of(algo: str, key: str) -> Any:
    """What ``key`` was in a run recorded before lowcomm had that flag: its default then and now
    (a new field's default keeps the old behaviour), the algorithm's declared one for its options."""
    return flag_default(key, algo) if key in FLAG_PATHS else None


def recorded_values(run_dir: Path) -> dict[str, Any]:
    """The values of the run recorded in ``run_dir`` by flag name: its ``config.yaml`` (in sections,
    or flat from an older lowcomm) with the ``resolved.yaml`` beside it (if any) over it."""
    layers = []
    for name in (CONFIG_FILE, RESOLVED_FILE):
        path = run_dir / name
        if name == CONFIG_FILE or path.is_file():
            layers.append(nest(yaml.safe_load(path.read_text(encoding="utf-8")) or {}))
    return flatten(merge(*layers))


def check_steps_not_done(config: TrainConfig) -> None:
    """Raise if the run in ``config.run.out`` has already trained more than ``config.run.steps`` steps."""
    found, _ = newest_complete_checkpoint(checkpoints_of(config.run.out))
    done = 0 if found is None else checkpoint_step(found)
    if config.run.steps < done:
        raise ValueError(
            f"--steps: {config.run.out} has already trained {done} steps; resume it with --steps {done} or more"
        )


def read_run_config(run_dir: Path) -> dict[str, Any]:
    """The values recorded in ``run_dir`` by flag name (:func:`recorded_values`); a one-line
    ValueError if there is no run."""
    if not run_dir.is_dir():
        raise ValueError(f"RUN_DIR: {run_dir} is not a directory")
    try:
        return recorded_values(run_dir)
    except FileNotFoundError:
        raise ValueError(f"RUN_DIR: {run_dir} holds no lowcomm run ({CONFIG_FILE} is missing)") from None
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        raise ValueError(f"RUN_DIR: cannot read {run_dir / CONFIG_FILE}") from None
    except (AttributeError, TypeError):
        raise ValueError(f"RUN_DIR: {run_dir / CONFIG_FILE} is not a lowcomm run's configuration") from None


def node_name() -> str:
    """This node as messages name it: torchrun's node rank and the host."""
    return f"node {os.environ.get('GROUP_RANK', '0')} ({socket.gethostname()})"


def prepare_node_directories(config: TrainConfig, peers: Peers) -> Storage:
    """Collective under torchrun: prepare every node's ``--out`` and find the storage domains.

    A refused ``--out`` raises the same one-line ValueError, naming its node, on every rank.
    """
    names = peers.all_gather(node_name())
    first_rank: dict[str, int] = {}
    for rank, name in enumerate(names):
        first_rank.setdefault(name, rank)
    unplaced = sorted(first_rank, key=first_rank.get)

    def on_node(error: object, name: str) -> str:
        return f"{error} (on {name})" if len(first_rank) > 1 else str(error)

    refusal = None
    if first_rank[names[peers.rank]] == peers.rank:  # every node checks its --out before any is written
        try:
            check_run_directory(config)
        except ValueError as error:
            refusal = on_node(error, names[peers.rank])
    refused = [refusal for refusal in peers.all_gather(refusal) if refusal is not None]
    if refused:
        raise ValueError(refused[0])
    domains: list[tuple[int, ...]] = []
    while unplaced:
        preparer = first_rank[unplaced[0]]
        prepared = None
        if peers.rank == preparer:
            prepared = prepare_with_token(config)
        token, error = peers.all_gather(prepared)[preparer]
        if error is not None:
            raise ValueError(on_node(error, unplaced[0]))
        mine = names[peers.rank]
        sees = mine in unplaced and first_rank[mine] == peers.rank and holds_token(config, token)
        seen = peers.all_gather(sees)
        joined = [name for name in unplaced if seen[first_rank[name]]]
        domains.append(tuple(rank for rank, name in enumerate(names) if name in joined))
        unplaced = [name for name in unplaced if name not in joined]
    domain_names = tuple(" and ".join(dict.fromkeys(names[rank] for rank in ranks)) for ranks in domains)
    group = None
    if len(domains) > 1:
        group, _ = dist.new_subgroups_by_enumeration([list(ranks) for ranks in domains])
    return Storage(peers.rank, tuple(domains), domain_names, group)


def prepare_with_token(config: TrainConfig) -> tuple[str | None, str | None]:
    """Prepare ``--out`` and write a fresh token into it: (the token, None), or (None, why not)."""
    try:
        prepare_run_directory(config)
        token = secrets.token_hex(16)
        write_atomically(config.run.out / TOKEN_FILE, lambda temporary: temporary.write_text(token))
    except ValueError as error:
        return None, str(error)
    except OSError as error:
        return None, f"--out: cannot write to {config.run.out}: {error.strerror}"
    return token, None


def holds_token(config: TrainConfig, token: str) -> bool:
    try:
        return (config.run.out / TOKEN_FILE).read_text() == token
    except (OSError, UnicodeDecodeError):
        return False
