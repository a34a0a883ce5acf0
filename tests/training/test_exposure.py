"""What a running ``lowcomm train`` exposes to other local users and hosts (issue #25): the launcher
serves no store at all (torch's ``c10d`` rendezvous kept its state pickled in a TCP store that any
local process could rewrite, and the launcher unpickled it), and the workers listen on loopback only;
in live mode too (torchft's manager servers listened on every interface)."""

import importlib.util
import os
import signal
import stat
import subprocess
import sys
import time

import pytest

from tests.train_runs import PERIODIC, SHORT, listening_addresses, worker_pids


def test_a_run_serves_no_store_and_listens_on_loopback_only(cache_dir, tmp_path):
    out, temporary = tmp_path / "out", tmp_path / "tmp"
    temporary.mkdir()
    launcher = subprocess.Popen(
        [sys.executable, "-m", "lowcomm", "train", *SHORT, *PERIODIC, "--steps", "400", "--checkpoint-every", "400",
         "--cache-dir", cache_dir, "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "TMPDIR": str(temporary)},
    )
    workers = []
    try:
        while not (out / "metrics.jsonl").exists() and launcher.poll() is None:
            time.sleep(0.01)
        workers = worker_pids(launcher.pid)
        assert len(workers) == 2
        assert listening_addresses([launcher.pid]) == set()  # no rendezvous store to rewrite
        assert listening_addresses(workers) == {"127.0.0.1"}  # gloo's sockets
        (private,) = temporary.glob("lowcomm-store-*")  # the workers' FileStore
        assert stat.S_IMODE(private.stat().st_mode) == 0o700
    finally:
        for pid in [launcher.pid, *workers]:
            os.kill(pid, signal.SIGKILL)
        launcher.communicate()


@pytest.mark.skipif(importlib.util.find_spec("torchft") is None, reason="needs the ft extra (pip install 'lowcomm[ft]')")
def test_a_live_run_listens_on_loopback_only(cache_dir, tmp_path):
    """torchft's manager server of each group bound ``[::]`` (any host could send it a ``Kill``)."""
    out = tmp_path / "out"
    launcher = subprocess.Popen(
        [sys.executable, "-m", "lowcomm", "train", "--fault-tolerance", "live", "--groups", "2", *SHORT, *PERIODIC,
         "--steps", "4000", "--checkpoint-every", "4000", "--cache-dir", cache_dir, "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    groups = []
    try:
        while not all((out / f"group_{g}" / "metrics.jsonl").exists() for g in range(2)):
            assert launcher.poll() is None, launcher.communicate()[1][-3000:]
            time.sleep(0.05)
        time.sleep(1)  # past the first quorum: every manager server is up
        groups = worker_pids(launcher.pid)
        assert len(groups) == 2
        assert listening_addresses([launcher.pid, *groups]) == {"127.0.0.1"}
    finally:
        for pid in [launcher.pid, *groups]:
            os.kill(pid, signal.SIGKILL)
        launcher.communicate()
