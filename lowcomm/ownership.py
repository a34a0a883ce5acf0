"""What lowcomm may delete or replace: only a directory that its own marker file names as one of its
runs (or benches), and in it only the files that lowcomm writes there; and while a run uses a
directory, a lock in it keeps every other lowcomm process out."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from filelock import FileLock, Timeout

from lowcomm.atomic import write_atomically

MARKER = ".lowcomm"
"""In a directory lowcomm made: ``{"kind": "run"}`` or ``{"kind": "bench"}``."""
LOCK = ".lowcomm.lock"
HELD: dict[Path, FileLock] = {}
"""The directories this process holds locked, until it exits."""


def owner(directory: Path) -> str | None:
    """What lowcomm's marker in ``directory`` says it is (``run``, ``bench``); None without one."""
    try:
        kind = json.loads((directory / MARKER).read_text(encoding="utf-8")).get("kind")
    except (OSError, ValueError, AttributeError):
        return None
    return kind if isinstance(kind, str) else None


def is_empty(directory: Path) -> bool:
    """Whether ``directory`` holds nothing but, perhaps, lowcomm's lock."""
    return all(path.name == LOCK for path in directory.iterdir())


def mark(directory: Path, kind: str) -> None:
    write_atomically(directory / MARKER, lambda temporary: temporary.write_text(json.dumps({"kind": kind})))


def remove_own(directory: Path, patterns: tuple[str, ...]) -> None:
    """Delete what lowcomm wrote into ``directory`` (the names matching ``patterns``), nothing else;
    a symbolic link is removed itself, never what it points to."""
    for pattern in patterns:
        for path in directory.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()


def lock(directory: Path, option: str) -> None:
    """Hold ``directory`` locked until this process exits; a one-line ValueError if another holds it."""
    key = directory.resolve()
    if key in HELD:
        return
    held = FileLock(key / LOCK)
    try:
        held.acquire(timeout=0)
    except Timeout:
        raise ValueError(f"{option}: another lowcomm process is using {directory}; wait for it to end "
                         "or choose another directory") from None
    HELD[key] = held
