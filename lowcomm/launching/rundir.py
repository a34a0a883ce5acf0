"""The run directory (``--out``): refuse one that holds another run or something else, lock it while
the run uses it, clear lowcomm's own files from it for ``--overwrite`` (only where lowcomm's marker
says it is a run: see :mod:`lowcomm.ownership`), record the resolved config in it, and read it back.

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

from lowcomm.algorithms import ALGORITHMS
from lowcomm.atomic import write_atomically
from lowcomm.checkpointing.checkpoint import checkpoint_step, checkpoints_of, newest_complete_checkpoint
from lowcomm.checkpointing.storage import Storage
from lowcomm.communication.peers import Peers
from lowcomm.ownership import MARKER, is_empty, lock, mark, owner, remove_own
from lowcomm.training.config import TrainConfig, run_identity

CONFIG_FILE = "config.yaml"
TOKEN_FILE = ".storage_token"
"""In ``--out``: the token of the launch whose node prepared it last."""
RUN_FILES = (CONFIG_FILE, "metrics.jsonl", "summary.json", "checkpoints", "tensorboard", "loss.png", "samples.txt",
             "tokenizer.json", "model.safetensors", TOKEN_FILE, "group_*", ".*.tmp", MARKER)
"""What a run writes into ``--out`` (live mode: ``group_G/``), and so all that ``--overwrite`` deletes."""


def prepare_run_directory(config: TrainConfig) -> None:
    """Make ``config.out`` ready for this run, locked by this process until it exits, and write
    ``config.yaml``; raise a one-line ValueError (having written nothing but the lock) if it holds
    something else or another run uses it."""
    out = config.out
    holds_run = check_run_directory(config)
    try:
        out.mkdir(parents=True, exist_ok=True)
        lock(out, "--out")
        if holds_run and config.overwrite:
            remove_own(out, RUN_FILES)
        mark(out, "run")
        write_atomically(out / CONFIG_FILE, lambda temporary: temporary.write_text(config.to_yaml()))
    except OSError as error:
        raise ValueError(f"--out: cannot write to {out}: {error.strerror}") from None


def check_run_directory(config: TrainConfig) -> bool:
    """Raise a one-line ValueError unless ``config.out`` may hold this run (changing nothing);
    return whether it holds a run already."""
    out = config.out
    if out.is_symlink() and config.overwrite:
        raise ValueError(f"--out: {out} is a symbolic link; --overwrite takes the directory itself")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out: {out} is not a directory")
    if not out.is_dir() or is_empty(out):
        if config.resume and not config.overwrite:
            raise ValueError(f"--out: {out} holds no run to resume; start one without --resume")
        return False
    if owner(out) != "run":
        raise ValueError(f"--out: {out} is not empty and holds no lowcomm run (no {MARKER} marker); "
                         "choose another directory")
    if config.resume and not config.overwrite:
        check_same_run(config, out / CONFIG_FILE)
        if os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0":  # a restart may precede any checkpoint
            check_resumable(config)
    elif not config.overwrite:
        raise ValueError(f"--out: {out} already holds a run; pass --resume to continue it or --overwrite to replace it")
    return True


def check_resumable(config: TrainConfig) -> None:
    """Raise a one-line ValueError if ``config.out`` holds no intact checkpoint to resume (live mode:
    in no group's directory; the groups without one are healed from those with one)."""
    runs = sorted(config.out.glob("group_*")) if config.live else [config.out]
    newest = [newest_complete_checkpoint(checkpoints_of(run)) for run in runs]
    if all(found is None for found, _ in newest):
        skipped = [entry for _, entries in newest for entry in entries]
        why = f" ({skipped[0][0].name}: {skipped[0][1]})" if skipped else ""
        raise ValueError(f"--resume: {config.out} holds no intact checkpoint{why}; start afresh with --overwrite")


def check_same_run(config: TrainConfig, saved_config: os.PathLike[str]) -> None:
    """Raise unless the run recorded in ``saved_config`` computes the same thing as ``config``."""
    try:
        with open(saved_config, encoding="utf-8") as file:
            saved = yaml.safe_load(file)
        saved_identity = run_identity(saved)
    except (OSError, yaml.YAMLError, UnicodeDecodeError, AttributeError):
        raise ValueError(f"--out: cannot read the run recorded in {saved_config}") from None
    if (saved.get("groups") is None) != (config.groups is None):
        had = "without" if saved.get("groups") is None else "with"
        raise ValueError(f"--out: {config.out} holds a run {had} worker groups; resume it {had} them "
                         "(its checkpoints hold another layout), or choose another --out")
    identity = config.run_identity()
    saved_identity = {key: saved_identity.get(key, default_of(config.algo, key)) for key in identity} | saved_identity
    for key in sorted(identity.keys() | saved_identity.keys()):
        if key != "steps" and identity.get(key) != saved_identity.get(key):
            raise ValueError(
                f"--out: {config.out} holds a different run ({key}: {saved_identity.get(key)!r} there, "
                f"{identity.get(key)!r} here); choose another --out or pass --overwrite"
            )
    if identity["steps"] != saved_identity.get("steps"):
        check_steps_not_done(config)


def default_of(algo: str, key: str) -> Any:
    """What ``key`` was in a run recorded before lowcomm had that field: its default then and now
    (a new field's default keeps the old behaviour), the algorithm's declared one for its options."""
    declared = ALGORITHMS[algo].options() if algo in ALGORITHMS else {}
    if key in declared:
        return declared[key].default
    return TrainConfig.model_fields[key].default if key in TrainConfig.model_fields else None


def check_steps_not_done(config: TrainConfig) -> None:
    """Raise if the run in ``config.out`` has already trained more than ``config.steps`` steps."""
    found, _ = newest_complete_checkpoint(checkpoints_of(config.out))
    done = 0 if found is None else checkpoint_step(found)
    if config.steps < done:
        raise ValueError(
            f"--steps: {config.out} has already trained {done} steps; resume it with --steps {done} or more"
        )


def read_run_config(run_dir: Path) -> dict[str, Any]:
    """The configuration recorded in ``run_dir``; a one-line ValueError if there is none."""
    if not run_dir.is_dir():
        raise ValueError(f"RUN_DIR: {run_dir} is not a directory")
    try:
        config = yaml.safe_load((run_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"RUN_DIR: {run_dir} holds no lowcomm run ({CONFIG_FILE} is missing)") from None
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        raise ValueError(f"RUN_DIR: cannot read {run_dir / CONFIG_FILE}") from None
    if not isinstance(config, dict):
        raise ValueError(f"RUN_DIR: {run_dir / CONFIG_FILE} is not a lowcomm run's configuration")
    return config


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
        write_atomically(config.out / TOKEN_FILE, lambda temporary: temporary.write_text(token))
    except ValueError as error:
        return None, str(error)
    except OSError as error:
        return None, f"--out: cannot write to {config.out}: {error.strerror}"
    return token, None


def holds_token(config: TrainConfig, token: str) -> bool:
    try:
        return (config.out / TOKEN_FILE).read_text() == token
    except (OSError, UnicodeDecodeError):
        return False
