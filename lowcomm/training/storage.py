"""Which ranks share a run directory: nodes with or without a shared filesystem.

Under torchrun every node has its own ``--out``, which may be one directory on storage that all
nodes reach or a directory of the node's own. The nodes whose ``--out`` is the same directory form a
storage domain; each domain's first rank (its leader) prepares and writes that directory. Domains
are found over the process group, one per round: the first node not yet placed prepares its
``--out`` (the checks of :func:`~lowcomm.training.rundir.prepare_run_directory`) and writes a fresh
token into it (once every node has checked its ``--out``, so that a refusal leaves every
``--out`` untouched); every node not yet placed that reads that token in its own ``--out`` joins the
domain. A node's ranks share the node's filesystem.

With one domain (a shared filesystem, one node, or lowcomm's own launcher) everything is written as
on one machine. With several, each domain holds its own ranks' checkpoint files, and global rank 0
alone writes the run's reports (see :mod:`lowcomm.training.checkpoint`).
"""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass
from typing import Any

import torch.distributed as dist

from lowcomm.atomic import write_atomically
from lowcomm.training.config import TrainConfig
from lowcomm.training.peers import Peers
from lowcomm.training.rundir import check_run_directory, prepare_run_directory

TOKEN_FILE = ".storage_token"
"""In ``--out``: the token of the launch whose node prepared it last."""


@dataclass(frozen=True)
class Storage:
    """The storage domains of a run: each domain's ranks (ascending; domain 0 holds rank 0), its
    name in messages, and this rank's domain's process group (``None`` with one domain: the default)."""

    rank: int
    domains: tuple[tuple[int, ...], ...]
    names: tuple[str, ...]
    group: Any = None

    @property
    def shared(self) -> bool:
        """Whether every rank writes into the same directory."""
        return len(self.domains) == 1

    @property
    def domain(self) -> int:
        return next(index for index, ranks in enumerate(self.domains) if self.rank in ranks)

    @property
    def leader(self) -> bool:
        """Whether this rank writes its domain's shared files (directories, manifest)."""
        return self.domains[self.domain][0] == self.rank

    @property
    def name(self) -> str:
        return self.names[self.domain]

    def domain_of(self, rank: int) -> int:
        return next(index for index, ranks in enumerate(self.domains) if rank in ranks)


def shared_storage(rank: int, world_size: int) -> Storage:
    """Every rank writes into one directory (one machine, or a shared filesystem)."""
    return Storage(rank, (tuple(range(world_size)),), ("node 0",))


def node_name() -> str:
    """This node as messages name it: torchrun's node rank and the host."""
    return f"node {os.environ.get('GROUP_RANK', '0')} ({socket.gethostname()})"


def prepare_node_directories(config: TrainConfig, peers: Peers, restarted: bool) -> Storage:
    """Collective under torchrun: prepare every node's ``--out`` and find the storage domains.

    A refused ``--out`` raises the same one-line ValueError, naming its node, on every rank. A
    ``restarted`` group (torchrun's ``--max-restarts``) prepares its directories as ``--resume``.
    """
    if restarted:
        config = config.model_copy(update={"resume": True, "overwrite": False})
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
        sees = names[peers.rank] in unplaced and first_rank[names[peers.rank]] == peers.rank and holds_token(config, token)
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
