"""Real bandwidth limits for several worker processes on one Linux machine, with network namespaces.

Worker ``i`` runs in namespace ``{prefix}{pid}w{i}`` whose only interface, ``eth0``, has the address
``10.213.0.{i+1}/24`` and is one end of a veth pair. The other ends hang on a bridge in a namespace of
its own, ``{prefix}{pid}br``, so the host's network is untouched and the workers have no route to
anything but each other and the bridge's own address, :data:`HUB` (where a launcher listens for them,
its listening sockets opened :func:`entered` the bridge's namespace). A token bucket filter (tc-tbf) on both ends of every pair caps what a
worker sends and what it receives at the rate, like a full-duplex link. Needs root and iproute2.
Deleting a namespace deletes its interfaces, so teardown is deleting the namespaces. :func:`set_link`
takes a worker's link down (a site cut off) and up again.
"""

from __future__ import annotations

import ctypes
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType, TracebackType

from lowcomm.communication.network_model import parse_rate

SUBNET = "10.213.0"
INTERFACE = "eth0"
MAX_WORKERS = 253
HUB = f"{SUBNET}.254"
"""The bridge's address, in the bridge's namespace: reachable from every worker."""
_BRIDGE = "br0"
_TICKS_PER_S = 250  # the bucket must hold a timer tick's worth of traffic (HZ=250)
_MIN_BURST_BYTES = 4096
_QUEUE_LATENCY = "50ms"  # longest a packet may wait in the bucket's queue before it is dropped
_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_PREFIX = re.compile(r"[A-Za-z_-]+")
_CLONE_NEWNET = 0x40000000


class LimitedNetwork:
    """``num_workers`` network namespaces joined by links of ``rate`` (tc-style, e.g. ``"100mbit"``;
    ``"unlimited"`` for no limit), alive inside a ``with`` block, at most one per process at a time.

    Everything is removed on leaving the block, on an exception, and on SIGINT or SIGTERM (after
    which the signal takes its usual course). Leftovers of a process killed outright are removed by
    :func:`cleanup_stale`, which entering calls.
    """

    def __init__(self, num_workers: int, rate: str, prefix: str = "lc") -> None:
        if not 1 <= num_workers <= MAX_WORKERS:
            raise ValueError(f"num_workers must be in 1..{MAX_WORKERS}, got {num_workers}")
        _check_prefix(prefix)
        self.num_workers = num_workers
        self.rate_bps = parse_rate(rate)
        self.prefix = prefix
        self.interface = INTERFACE
        self._owner_pid = os.getpid()
        self._name = f"{prefix}{self._owner_pid}"
        self._bridge_namespace = f"{self._name}br"
        self._created: list[str] = []
        self._previous_handlers: dict[int, Callable[[int, FrameType | None], object] | int] = {}

    def namespace(self, i: int) -> str:
        return f"{self._name}w{self._check_worker(i)}"

    def address(self, i: int) -> str:
        return f"{SUBNET}.{self._check_worker(i) + 1}"

    @property
    def hub_namespace(self) -> str:
        """The bridge's namespace, where :data:`HUB` is."""
        return self._bridge_namespace

    def command_prefix(self, i: int) -> list[str]:
        """Prepend to a command to run it as worker ``i``."""
        return ["ip", "netns", "exec", self.namespace(i)]

    def __enter__(self) -> LimitedNetwork:
        cleanup_stale(self.prefix)
        self._install_signal_handlers()
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Remove every namespace this network made; safe to call twice."""
        self._restore_signal_handlers()
        if os.getpid() != self._owner_pid:  # a forked child must not tear down its parent's network
            return
        while self._created:
            _delete_namespace(self._created.pop())

    def _build(self) -> None:
        self._add_namespace(self._bridge_namespace)
        bridge_link = ["ip", "-n", self._bridge_namespace, "link"]
        _run(*bridge_link, "add", _BRIDGE, "type", "bridge")
        _run(*bridge_link, "set", _BRIDGE, "up")
        _run("ip", "-n", self._bridge_namespace, "addr", "add", f"{HUB}/24", "dev", _BRIDGE)
        _run(*bridge_link, "set", "lo", "up")  # the launcher's connections to its own servers at HUB
        for i in range(self.num_workers):
            namespace, port = self.namespace(i), f"w{i}"
            self._add_namespace(namespace)
            _run(*bridge_link, "add", port, "type", "veth", "peer", "name", INTERFACE, "netns", namespace)
            _run(*bridge_link, "set", port, "master", _BRIDGE, "up")
            _run("ip", "-n", namespace, "addr", "add", f"{self.address(i)}/24", "dev", INTERFACE)
            _run("ip", "-n", namespace, "link", "set", INTERFACE, "up")
            _run("ip", "-n", namespace, "link", "set", "lo", "up")
            self._limit(namespace, INTERFACE)  # what the worker sends
            self._limit(self._bridge_namespace, port)  # what it receives

    def _limit(self, namespace: str, device: str) -> None:
        if math.isinf(self.rate_bps):
            return
        burst = max(int(self.rate_bps / 8 / _TICKS_PER_S), _MIN_BURST_BYTES)
        _run("tc", "-n", namespace, "qdisc", "add", "dev", device, "root", "tbf",
             "rate", f"{round(self.rate_bps)}bit", "burst", str(burst), "latency", _QUEUE_LATENCY)

    def _add_namespace(self, name: str) -> None:
        _run("ip", "netns", "add", name)
        self._created.append(name)

    def _check_worker(self, i: int) -> int:
        if not 0 <= i < self.num_workers:
            raise ValueError(f"worker index i must be in 0..{self.num_workers - 1}, got {i}")
        return i

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in _SIGNALS:
            previous = signal.getsignal(signum)
            if previous not in (signal.SIG_IGN, None):
                self._previous_handlers[signum] = previous
                signal.signal(signum, self._on_signal)

    def _restore_signal_handlers(self) -> None:
        handlers, self._previous_handlers = self._previous_handlers, {}
        for signum, previous in handlers.items():
            signal.signal(signum, previous)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        previous = self._previous_handlers.get(signum, signal.SIG_DFL)
        self.close()
        if callable(previous):
            previous(signum, frame)
        else:  # SIG_DFL, now restored: die of the signal as if it had never been caught
            os.kill(os.getpid(), signum)


def set_link(owner_pid: int, worker: int, up: bool, prefix: str = "lc") -> None:
    """Take worker ``worker``'s link in the network of process ``owner_pid`` down, or up again, at the
    bridge's end of its pair: while it is down the worker reaches nothing and nothing reaches it, and
    its open connections wait (TCP retransmits) rather than break."""
    _check_prefix(prefix)
    _run("ip", "-n", f"{prefix}{owner_pid}br", "link", "set", f"w{worker}", "up" if up else "down")


def enter(namespace: str) -> None:
    """Move the calling thread into network namespace ``namespace`` (a process's first thread: the
    process, as the threads it starts afterwards inherit it)."""
    target = os.open(f"/run/netns/{namespace}", os.O_RDONLY)
    try:
        _setns(target)
    finally:
        os.close(target)


@contextmanager
def entered(namespace: str) -> Iterator[None]:
    """Inside, the calling thread is in network namespace ``namespace``; the sockets it opens there stay
    there after it leaves."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        enter(namespace)
        yield
    finally:
        _setns(own)
        os.close(own)


def _setns(descriptor: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(descriptor, _CLONE_NEWNET) != 0:
        raise RuntimeError(f"setns: {os.strerror(ctypes.get_errno())}")


def cleanup_stale(prefix: str = "lc") -> list[str]:
    """Delete the namespaces of networks with this prefix whose process is gone; return their names."""
    _check_prefix(prefix)
    pattern = re.compile(rf"{re.escape(prefix)}(\d+)(?:br|w\d+)")
    stale = [name for name in _namespaces()
             if (match := pattern.fullmatch(name)) and not _alive(int(match.group(1)))]
    for name in stale:
        _delete_namespace(name)
    return stale


def available(prefix: str = "lc") -> tuple[bool, str]:
    """Whether :class:`LimitedNetwork` can run here, and if not, why."""
    if sys.platform != "linux":
        return False, f"network namespaces need Linux, not {sys.platform}"
    if os.geteuid() != 0:
        return False, "network namespaces need root"
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if missing:
        return False, f"{' and '.join(missing)} not found: install iproute2"
    try:
        with LimitedNetwork(1, "1mbit", prefix):
            pass
    except RuntimeError as error:
        return False, f"cannot build a namespace network: {error}"
    return True, "ok"


def _namespaces() -> list[str]:
    return [line.split()[0] for line in _run("ip", "netns", "list").splitlines() if line.strip()]


def _delete_namespace(name: str) -> None:
    """Delete a namespace unless someone else already has."""
    try:
        _run("ip", "netns", "delete", name)
    except RuntimeError:
        if name in _namespaces():
            raise


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but another user's
        pass
    return True


def _check_prefix(prefix: str) -> None:
    if not _PREFIX.fullmatch(prefix):
        raise ValueError(f"prefix must be letters, '_' or '-' (no digits), got {prefix!r}")


def _run(*command: str) -> str:
    result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {result.stderr.strip()}")
    return result.stdout
