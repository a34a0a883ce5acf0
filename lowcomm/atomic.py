"""Atomic, durable writes: a reader, or the run after a crash, finds the old version or the new
one, never part of one.

The new version is written next to the old one under a temporary name, fsynced, renamed over it,
and the directory fsynced, so that the rename itself survives a crash.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path


def fsync_path(path: Path) -> None:
    """fsync a file or directory by its path."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def commit(temporary: Path, path: Path) -> None:
    """Put ``temporary`` (a file, or a directory whose files are fsynced) in place of ``path`` at
    once and durably. ``path`` must not be a non-empty directory."""
    fsync_path(temporary)
    os.replace(temporary, path)
    fsync_path(path.parent)


def write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """Replace ``path`` by the file that ``write(temporary)`` writes at the temporary path it is
    given; if ``write`` raises, ``path`` is left as it was and the temporary file is removed."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        write(temporary)
        commit(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
