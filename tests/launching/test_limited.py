"""``lowcomm train --bandwidth``: workers behind real limited links, and nothing left when it is stopped.

Skipped unless root with iproute2.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lowcomm.launching.netns import available
from tests.train_runs import GROUPED, OUTER_SYNCS, SHORT, diloco_bytes_between_groups, lowcomm_train


@pytest.fixture(autouse=True)
def namespaces_available() -> None:
    usable, reason = available()
    if not usable:
        pytest.skip(reason)


def namespaces_of(pid: int) -> list[str]:
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in listing.splitlines() if line.startswith(f"lc{pid}")]


def descendants(pid: int) -> set[int]:
    """The processes below ``pid`` (its children, their children, ...)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_limited_run_trains_behind_the_links_and_sigterm_leaves_nothing(cache_dir: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    launcher = subprocess.Popen(
        [sys.executable, "-m", "lowcomm", "train", "--algo", "ddp", *SHORT, "--steps", "100000",
         "--bandwidth", "50mbit", "--cache-dir", cache_dir, "--out", str(out)],
        stdout=subprocess.DEVNULL, stderr=(tmp_path / "stderr").open("w"),
    )
    try:
        deadline = time.monotonic() + 180
        while not (out / "metrics.jsonl").exists() or '"loss"' not in (out / "metrics.jsonl").read_text():
            assert launcher.poll() is None, (tmp_path / "stderr").read_text()[-3000:]
            assert time.monotonic() < deadline, "no training step within 180 s"
            time.sleep(0.2)
        assert len(namespaces_of(launcher.pid)) == 3  # two workers and the bridge
        started = descendants(launcher.pid)
        assert len(started) >= 4  # an agent and a worker per namespace, at least
        launcher.send_signal(signal.SIGTERM)
        launcher.wait(timeout=60)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode != 0
    deadline = time.monotonic() + 30
    while any(map(alive, started)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [pid for pid in started if alive(pid)] == []
    assert namespaces_of(launcher.pid) == []


def test_with_worker_groups_only_the_links_between_groups_are_limited(cache_dir: str, tmp_path: Path) -> None:
    """2 groups x 2 ranks at 20 Mbit/s: one namespace per group (and the bridge's); the ranks of a
    group reach each other at full speed, while the traffic between groups waits for the link."""
    out, rate = tmp_path / "out", 20e6
    seen: list[int] = []
    watching = threading.Event()

    def count_namespaces() -> None:
        while not watching.is_set():
            listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
            seen.append(sum(line.startswith("lc") for line in listing.splitlines()))
            time.sleep(0.5)

    watcher = threading.Thread(target=count_namespaces)
    watcher.start()
    try:
        lowcomm_train(*GROUPED, "--bandwidth", "20mbit", "--cache-dir", cache_dir, "--out", str(out))
    finally:
        watching.set()
        watcher.join()
    assert max(seen) >= 3  # two groups and the bridge
    summary = json.loads((out / "summary.json").read_text())
    between, within = summary["comm_bytes_between_groups"], summary["comm_bytes_within_groups"]
    assert between == diloco_bytes_between_groups(summary["parameters"])
    # What crosses one group's link, each way, at the rate: the broadcast, 4 warm-up steps and the syncs
    link_s = between / 2 * 8 / rate
    assert summary["comm_wait_s"] >= 0.5 * link_s * (4 + len(OUTER_SYNCS)) / (5 + len(OUTER_SYNCS))
    assert summary["wall_time_s"] < within / 2 * 8 / rate  # inside a group it would take longer than this
