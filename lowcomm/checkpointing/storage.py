"""Which ranks share a run directory: nodes with or without a shared filesystem.

Under torchrun every node has its own ``--out``, which may be one directory on storage that all
nodes reach or a directory of the node's own. The nodes whose ``--out`` is the same directory form a
storage domain (found by :func:`lowcomm.launching.rundir.prepare_node_directories`); each domain's
first rank (its leader) writes that directory's shared files. A node's ranks share its filesystem.

With one domain (a shared filesystem, one node, or lowcomm's own launcher) everything is written as
on one machine. With several, each domain holds its own ranks' checkpoint files, and global rank 0
alone writes the run's reports (see :mod:`lowcomm.checkpointing.checkpoint`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


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
