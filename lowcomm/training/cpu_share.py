"""A fixed CPU share per worker process, so that a worker's speed does not depend on its neighbours'.

On a machine with fewer cores than busy threads, a worker that waits (a slow one's slowdown, a fast
one blocked at a synchronisation) frees CPU for the others, which then run faster than they would
alone. With ``--cpu-share F`` every worker runs ``max(1, floor(F))`` intra-op threads and lives in
a CPU cgroup of its own with a CFS quota of F cores (cgroup v1: ``cpu.cfs_quota_us`` over
``cpu.cfs_period_us`` under the ``cpu`` controller's mount; v2: ``cpu.max``), so it never runs on
more than F cores, however idle the others are. The cgroup is created beside the process's own,
named ``lowcomm-<pid>``, and removed when the worker ends; a worker killed outright (SIGKILL) cannot
remove its own, so each new worker first removes the empty ``lowcomm-<pid>`` cgroups beside it whose
process is gone (only those: lowcomm deletes only what it created).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from pathlib import Path

import torch

CGROUP_ROOT = Path("/sys/fs/cgroup")
PERIOD_US = 10_000
"""The CFS period of a worker's quota: 10 ms (the kernel's default is 100 ms), so that a step of a few
milliseconds is throttled evenly, not in bursts."""


def usable_cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def own_cgroup() -> tuple[Path, str] | None:
    """The directory of this process's CPU cgroup and its version (``v1`` or ``v2``); None without one."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "cpu" in controllers.split(",") and (CGROUP_ROOT / "cpu" / "cpu.cfs_quota_us").is_file():
            return CGROUP_ROOT / "cpu" / path.lstrip("/"), "v1"
    if any(line.startswith("0::") for line in lines) and (CGROUP_ROOT / "cgroup.controllers").is_file():
        path = next(line for line in lines if line.startswith("0::")).split(":", 2)[2]
        return CGROUP_ROOT / path.lstrip("/"), "v2"
    return None


def quota_problem() -> str | None:
    """Why a worker cannot put itself in a CPU cgroup of its own with a quota here (None if it can)."""
    found = own_cgroup()
    if found is None:
        return "this machine has no CPU cgroup controller mounted under /sys/fs/cgroup"
    parent, version = found
    if version == "v2" and "cpu" not in read(parent / "cgroup.subtree_control").split():
        return f"the cgroup v2 {parent} does not delegate the cpu controller to its children"
    if not os.access(parent, os.W_OK):
        return f"{parent} is not writable by this user (a CPU quota needs root or a delegated cgroup)"
    return None


def read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def resolve_share(share: float | str, local_workers: int) -> float:
    """``share`` in cores per worker (``auto``: this machine's usable cores over its ``local_workers``);
    a one-line ValueError where the share cannot be given."""
    cores = usable_cores()
    cores_each = cores / local_workers if share == "auto" else float(share)
    if cores_each * local_workers > cores + 1e-9:
        raise ValueError(f"cpu_share: {local_workers} workers x {cores_each:g} cores exceed the {cores} cores here")
    if (problem := quota_problem()) is not None:
        raise ValueError(f"cpu_share: cannot give each worker a CPU quota: {problem}")
    return cores_each


def quota_cgroup(cores: float, name: str) -> Path:
    """A new CPU cgroup ``name`` beside this process's own, with a CFS quota of ``cores``."""
    parent, version = own_cgroup()
    remove_orphans(parent)
    cgroup = parent / name
    cgroup.mkdir()
    quota = max(1000, round(cores * PERIOD_US))  # the kernel's smallest quota is 1 ms
    if version == "v1":
        (cgroup / "cpu.cfs_period_us").write_text(str(PERIOD_US))
        (cgroup / "cpu.cfs_quota_us").write_text(str(quota))
    else:
        (cgroup / "cpu.max").write_text(f"{quota} {PERIOD_US}")
    return cgroup


def remove_orphans(parent: Path) -> None:
    """Remove the empty ``lowcomm-<pid>`` cgroups in ``parent`` whose process no longer exists (the
    kernel refuses to remove one that still holds a task)."""
    for cgroup in parent.glob("lowcomm-*"):
        pid = cgroup.name.removeprefix("lowcomm-")
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            with contextlib.suppress(OSError):
                cgroup.rmdir()


def remove_killed_workers_cgroups() -> None:
    """Remove the cgroups that this process's workers, killed outright, left beside its own cgroup
    (where they made theirs)."""
    if (found := own_cgroup()) is not None:
        remove_orphans(found[0])


def join(cgroup: Path) -> None:
    """Move this process into ``cgroup`` (its children are born there)."""
    (cgroup / "cgroup.procs").write_text(str(os.getpid()))


@contextlib.contextmanager
def cpu_share(cores: float) -> Iterator[Path]:
    """Inside, this process runs ``max(1, floor(cores))`` intra-op threads in a CPU cgroup of its own
    with a quota of ``cores``; on leaving, it returns to its cgroup and removes the one it made."""
    torch.set_num_threads(max(1, math.floor(cores)))
    own = quota_cgroup(cores, f"lowcomm-{os.getpid()}")
    try:
        join(own)
        try:
            yield own
        finally:
            join(own.parent)
    finally:
        own.rmdir()
