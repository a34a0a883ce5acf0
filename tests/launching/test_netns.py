"""Namespaced workers with real bandwidth limits: they reach each other, at the rate, and leave nothing.

All traffic goes to the 10.213.0.x addresses of namespaces these tests create. Skipped unless root
with iproute2.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from lowcomm.launching.netns import HUB, LimitedNetwork, available, cleanup_stale, entered, set_link
from lowcomm.communication.network_model import NetworkModel

PREFIX = "lctest"
ROOT = Path(__file__).resolve().parents[2]
PORT = 29500

RECEIVER = """
import socket, sys, threading, time
host, port, senders = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
server = socket.create_server((host, port))
server.settimeout(20)
print("listening", flush=True)
sizes, firsts, lasts = [], [], []

def drain(connection):
    connection.settimeout(20)
    size = 0
    while chunk := connection.recv(1 << 16):
        if size == 0:
            firsts.append(time.perf_counter())
        size += len(chunk)
    lasts.append(time.perf_counter())
    sizes.append(size)

threads = [threading.Thread(target=drain, args=(server.accept()[0],)) for _ in range(senders)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(sum(sizes), max(lasts) - min(firsts))
"""

SENDER = """
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20) as connection:
    connection.sendall(bytes(int(sys.argv[3])))
"""

CONNECT = """
import socket, sys, time
start = time.perf_counter()
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1).close()
    print("connected", time.perf_counter() - start)
except OSError:
    print("failed", time.perf_counter() - start)
"""

HOLDER = f"""
import signal, time
from lowcomm.launching.netns import LimitedNetwork
signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, even if our launcher ignores it
with LimitedNetwork(2, "10mbit", prefix="{PREFIX}"):
    print("ready", flush=True)
    time.sleep(30)
"""

ALL_REDUCE = """
import sys, time
from datetime import timedelta
import torch
import torch.distributed as dist
rank, master, port = int(sys.argv[1]), sys.argv[2], sys.argv[3]
torch.set_num_threads(1)
dist.init_process_group("gloo", init_method=f"tcp://{master}:{port}", rank=rank, world_size=2,
                        timeout=timedelta(seconds=30))
tensor = torch.full((2_000_000,), float(rank + 1))
dist.barrier()
start = time.perf_counter()
dist.all_reduce(tensor)
elapsed = time.perf_counter() - start
assert torch.all(tensor == 3.0), tensor
print(elapsed)
dist.destroy_process_group()
"""


@pytest.fixture(scope="module", autouse=True)
def namespaces_available() -> None:
    usable, reason = available(PREFIX)
    if not usable:
        pytest.skip(reason)


def python_in(network: LimitedNetwork, worker: int, code: str, *args: object, **env: str) -> subprocess.Popen:
    command = [*network.command_prefix(worker), sys.executable, "-c", code, *map(str, args)]
    return subprocess.Popen(command, cwd=ROOT, env={**os.environ, **env}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(process: subprocess.Popen) -> str:
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    return out


def start_receiver(network: LimitedNetwork, worker: int, senders: int) -> subprocess.Popen:
    receiver = python_in(network, worker, RECEIVER, network.address(worker), PORT, senders)
    assert receiver.stdout.readline() == "listening\n", receiver.communicate(timeout=60)[1]
    return receiver


def transfer(network: LimitedNetwork, senders: list[int], receiver: int, nbytes: int) -> tuple[int, float]:
    """Every sender sends ``nbytes`` to the receiver at once; return bytes received and seconds taken."""
    listening = start_receiver(network, receiver, len(senders))
    sending = [python_in(network, s, SENDER, network.address(receiver), PORT, nbytes) for s in senders]
    for process in sending:
        finish(process)
    size, seconds = finish(listening).split()
    return int(size), float(seconds)


def our_namespaces(pid: int) -> list[str]:
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in listing.splitlines() if line.startswith(f"{PREFIX}{pid}")]


def host_links() -> list[str]:
    listing = subprocess.run(["ip", "-brief", "link"], capture_output=True, text=True, check=True).stdout
    return sorted(line.split()[0] for line in listing.splitlines())


def test_every_worker_reaches_every_other_and_nothing_else() -> None:
    with LimitedNetwork(3, "unlimited", prefix=PREFIX) as network:
        assert [network.address(i) for i in range(3)] == ["10.213.0.1", "10.213.0.2", "10.213.0.3"]
        assert network.command_prefix(2) == ["ip", "netns", "exec", f"{PREFIX}{os.getpid()}w2"]
        for i in range(3):
            routes = subprocess.run([*network.command_prefix(i), "ip", "-4", "route"],
                                    capture_output=True, text=True, check=True).stdout
            assert routes.splitlines() == [
                f"10.213.0.0/24 dev eth0 proto kernel scope link src {network.address(i)} "
            ]  # no default route: the workers can reach each other only
        receivers = [start_receiver(network, j, senders=2) for j in range(3)]
        sending = [python_in(network, i, SENDER, network.address(j), PORT, 1000 * (i + 1))
                   for j in range(3) for i in range(3) if i != j]
        for process in sending:
            finish(process)
        received = [int(finish(receiver).split()[0]) for receiver in receivers]
    assert received == [2000 + 3000, 1000 + 3000, 1000 + 2000]


def test_tcp_throughput_matches_the_rate() -> None:
    with LimitedNetwork(2, "20mbit", prefix=PREFIX) as network:
        size, seconds = transfer(network, senders=[0], receiver=1, nbytes=4_000_000)
    assert size == 4_000_000
    # 4 MB at 20 Mbit/s is 1.6 s; TCP/IP headers take about 4% of the link
    assert 8 * size / seconds == pytest.approx(20e6, rel=0.25)


def test_a_worker_receives_at_the_rate_however_many_send() -> None:
    with LimitedNetwork(3, "20mbit", prefix=PREFIX) as network:
        size, seconds = transfer(network, senders=[0, 1], receiver=2, nbytes=2_000_000)
    assert size == 4_000_000
    assert 8 * size / seconds == pytest.approx(20e6, rel=0.25)  # not 40 Mbit/s: ingress is capped too


def test_gloo_all_reduce_across_namespaces_takes_the_modelled_time() -> None:
    with LimitedNetwork(2, "100mbit", prefix=PREFIX) as network:
        env = {"GLOO_SOCKET_IFNAME": network.interface}
        ranks = [python_in(network, r, ALL_REDUCE, r, network.address(0), PORT, **env) for r in range(2)]
        seconds = [float(finish(rank)) for rank in ranks]
    # ring all-reduce of 8 MB between two workers: each sends 8 MB at 100 Mbit/s = 0.64 s
    modelled = NetworkModel(100e6).all_reduce_s(8_000_000, 2)
    assert modelled == pytest.approx(0.64)
    assert all(0.9 * modelled <= s <= 3 * modelled for s in seconds), seconds


def test_leaving_the_block_removes_everything_even_on_error() -> None:
    links = host_links()
    with LimitedNetwork(2, "10mbit", prefix=PREFIX) as network:
        assert len(our_namespaces(os.getpid())) == 3  # two workers and the bridge
        assert host_links() == links
    assert our_namespaces(os.getpid()) == []
    with pytest.raises(KeyError):
        with LimitedNetwork(2, "10mbit", prefix=PREFIX):
            raise KeyError("boom")
    assert our_namespaces(os.getpid()) == []
    assert host_links() == links
    with pytest.raises(ValueError, match="worker index"):
        network.address(2)


def start_holder() -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER], cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert holder.stdout.readline() == "ready\n", holder.communicate(timeout=60)[1]
    assert len(our_namespaces(holder.pid)) == 3
    return holder


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_tears_down_then_ends_the_process(signum: int) -> None:
    holder = start_holder()
    holder.send_signal(signum)
    holder.communicate(timeout=20)
    assert holder.returncode == -signum  # the signal still ends the process as it would have
    assert our_namespaces(holder.pid) == []


def test_cleanup_stale_removes_what_a_killed_process_left() -> None:
    holder = start_holder()
    holder.kill()
    holder.communicate(timeout=20)
    assert len(our_namespaces(holder.pid)) == 3  # SIGKILL cannot be caught
    assert sorted(cleanup_stale(PREFIX)) == [f"{PREFIX}{holder.pid}{end}" for end in ("br", "w0", "w1")]
    assert our_namespaces(holder.pid) == []


def test_entering_removes_stale_namespaces_and_spares_live_ones() -> None:
    finished = subprocess.Popen(["true"])
    finished.wait()
    stale, live = f"{PREFIX}{finished.pid}w0", f"{PREFIX}{os.getpid()}w9"
    for name in (stale, live):
        subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        with LimitedNetwork(1, "10mbit", prefix=PREFIX):
            assert our_namespaces(finished.pid) == []
            ours = [f"{PREFIX}{os.getpid()}{end}" for end in ("br", "w0", "w9")]
            assert sorted(our_namespaces(os.getpid())) == ours
    finally:
        subprocess.run(["ip", "netns", "delete", live], check=True)


@pytest.mark.parametrize(
    ("arguments", "argument"),
    [((0, "10mbit"), "num_workers"), ((254, "10mbit"), "num_workers"), ((2, "fast"), "rate"),
     ((2, "10mbit", "lc9"), "prefix")],
)
def test_bad_arguments_are_named(arguments: tuple, argument: str) -> None:
    with pytest.raises(ValueError, match=argument):
        LimitedNetwork(*arguments)


def connects(network: LimitedNetwork, worker: int, port: int) -> tuple[str, float]:
    """Whether worker ``worker`` connects to ``HUB:port`` within a second, and how long it took to know."""
    outcome, seconds = finish(python_in(network, worker, CONNECT, HUB, port)).split()
    return outcome, float(seconds)


def test_a_cut_link_reaches_nothing_until_it_is_up_again() -> None:
    """The hook of the live cut-off test: worker 1's link down, its connects to the hub (a launcher's
    server) fail within the second they may take while worker 0's succeed; up again, they succeed."""
    with LimitedNetwork(2, "unlimited", prefix=PREFIX) as network:
        with entered(network.hub_namespace):
            server = socket.create_server((HUB, 0), backlog=16)
        with server:
            port = server.getsockname()[1]
            assert [connects(network, i, port)[0] for i in range(2)] == ["connected", "connected"]
            set_link(os.getpid(), 1, up=False, prefix=PREFIX)
            outcome, seconds = connects(network, 1, port)
            assert outcome == "failed" and seconds < 1.5
            assert connects(network, 0, port)[0] == "connected"
            set_link(os.getpid(), 1, up=True, prefix=PREFIX)
            assert connects(network, 1, port)[0] == "connected"
        with pytest.raises(OSError):  # back in its own namespace, which has no such address
            socket.create_server((HUB, 0))
