"""Helpers for tests that run ``lowcomm train``: short gpt-tiny settings, running the command,
reading ``metrics.jsonl`` and checkpoint manifests, and finding a launcher's workers and sockets."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

STEPS, BATCH, SEQ_LEN, WORKERS = 32, 8, 32, 2
SHORT = ["--steps", str(STEPS), "--batch-size", str(BATCH), "--seq-len", str(SEQ_LEN), "--eval-every", "8"]
SHORT += ["--checkpoint-every", "8", "--eval-batches", "2", "--lr-warmup", "2"]
PERIODIC = ["--sync-interval", "4", "--warmup-steps", "4"]
OUTER_SYNCS = [8, 12, 16, 20, 24, 28, 32]  # with PERIODIC: t > S = 4 with t % H == 0, H = 4
GROUPED = ["--algo", "diloco", *SHORT, *PERIODIC, "--groups", "2", "--group-size", "2"]


def diloco_bytes_between_groups(parameters, groups=2, group_size=2):
    """What the K groups of a ``GROUPED`` run send each other, all ranks summed: every all-reduce
    between groups is a ring among K, in which each group sends 2(K-1)/K of one model's bytes
    M = 4 x parameters, spread over its ranks, and each rank adds its 4-byte finite flag to an outer
    step's. Group 0 first broadcasts its model (M); each warm-up step all-reduces the gradients.
    (gpt-tiny has no buffers.)"""
    model_bytes, ring = 4 * parameters, 2 * (groups - 1) / groups
    warmup, syncs = 4, len(OUTER_SYNCS)
    per_sync = groups * ring * (model_bytes + group_size * 4)
    return round(model_bytes + warmup * groups * ring * model_bytes + syncs * per_sync)


def lowcomm_train(*args, cwd=None, env=None, timeout=240):
    result = subprocess.run(
        [sys.executable, "-m", "lowcomm", "train", *args], capture_output=True, text=True, cwd=cwd, env=env,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def records(out, kind=None):
    """The records in ``out/metrics.jsonl``; ``kind`` picks train, eval, sync or event records."""
    lines = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    kinds = {"train": "loss", "eval": "eval_loss", "sync": "sync", "event": "event"}
    return [r for r in lines if kind is None or kinds[kind] in r]


def without_timing(out):
    """Every record but the events, without wall-clock fields: what must replay exactly."""
    return [{k: v for k, v in r.items() if k not in ("elapsed_s", "comm_wait_s")} for r in records(out) if "event" not in r]


def manifest(out, step):
    return json.loads((Path(out) / "checkpoints" / f"step_{step:08d}" / "manifest.json").read_text())


def child_pids(parent_pid, command_part=b""):
    """The processes whose parent is ``parent_pid`` and whose command line holds ``command_part``."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            command = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError):
            continue
        if parent == parent_pid and command_part in command:
            pids.append(int(stat.parent.name))
    return pids


def worker_pids(launcher_pid):
    """The launcher's worker processes: its fork server's children (live mode: its spawned children)."""
    servers = child_pids(launcher_pid, b"multiprocessing.forkserver")
    return child_pids(launcher_pid, b"spawn_main") + [pid for server in servers for pid in child_pids(server)]


def listening_addresses(pids):
    """The addresses on which these processes hold listening TCP sockets (read from /proc)."""
    inodes = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except FileNotFoundError:  # closed since listed (the listing's own descriptor, say)
                continue
            if target.startswith("socket:["):
                inodes.add(target.removeprefix("socket:[").removesuffix("]"))
    addresses = set()
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # state 0A: LISTEN
                hex_address = fields[1].split(":")[0]  # 32-bit words, each little-endian
                words = [bytes.fromhex(hex_address[i : i + 8])[::-1] for i in range(0, len(hex_address), 8)]
                addresses.add(socket.inet_ntop(family, b"".join(words)))
    return addresses


def live_records(out):
    """The complete lines of an ``out/metrics.jsonl`` that is being written (none before it exists)."""
    path = out / "metrics.jsonl"
    text = path.read_text() if path.exists() else ""
    return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines()]


def attempts(out):
    """The ``start`` and ``resume`` events as (event, restart): one per attempt of the group, unless
    the next resumed from the same checkpoint (and cut the file back to it)."""
    return [(r["event"], r.get("restart", 0)) for r in live_records(out) if r.get("event") in ("start", "resume")]


def progress(out):
    """(the restart the group is on, the newest step it logged); (-1, -1) before it logs anything."""
    lines = live_records(out)
    begun = [i for i, r in enumerate(lines) if r.get("event") in ("start", "resume")]
    if not begun:
        return -1, -1
    return lines[begun[-1]].get("restart", 0), max(r["step"] for r in lines[begun[-1] :])


def leftover_cgroups():
    """The ``lowcomm-<pid>`` CPU cgroups on this machine (cgroup v1's ``cpu`` controller) whose process
    is gone: a run that cleaned up adds none (another run's, still going, are not leftovers)."""
    return {cgroup for cgroup in Path("/sys/fs/cgroup/cpu").glob("**/lowcomm-*")
            if not Path("/proc", cgroup.name.removeprefix("lowcomm-")).exists()}


def assert_paced(fast, slow):
    """Two workers' ``worker_times`` (summary.json), ``fast`` at speed 1 as rank 0, ``slow`` at 0.5 as
    rank 1: each one's time in steps outside communication is 1/speed of its compute (within 20%), the
    fast one is never slowed and waits at the synchronisations for most of the slow one's extra time,
    so its idle share is the larger."""
    assert (fast["rank"], fast["speed"], slow["rank"], slow["speed"]) == (0, 1.0, 1, 0.5)
    for worker in (fast, slow):
        outside_communication = worker["step_s"] - worker["sync_wait_s"]
        assert outside_communication / worker["compute_s"] == pytest.approx(1 / worker["speed"], rel=0.2)
    assert fast["slowdown_s"] == 0
    assert fast["sync_wait_s"] > 0.5 * slow["slowdown_s"]
    assert slow["idle_share"] < fast["idle_share"]


def wait_for(condition, launcher, timeout_s=120):
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert launcher.poll() is None, "the launcher exited early"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)
