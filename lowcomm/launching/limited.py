"""Launch K workers (or K worker groups of G) under a real bandwidth limit: one torchrun agent per
worker (per group), each in a network namespace of a :class:`~lowcomm.launching.netns.LimitedNetwork`.

Agent ``i`` runs ``python -m torch.distributed.run --nnodes K --nproc-per-node G --node-rank i``
(static rendezvous, so its processes are ranks ``i * G ...``, group i) with the rendezvous store on
agent 0's address, and gloo pinned to the namespace's interface: the multi-node path of ``lowcomm
train``, over real limited links. The ranks of one group talk to each other at the namespace's own
address, which the kernel delivers over its loopback, so only the links between groups are limited.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from types import FrameType

from lowcomm.communication.network_model import parse_rate
from lowcomm.launching.netns import LimitedNetwork, available
from lowcomm.training.cpu_share import join, quota_cgroup

RENDEZVOUS_PORT = 29400
STOP_GRACE_S = 10
POLL_S = 0.2


def real_limit(network: str, bandwidth: str, backend: str) -> tuple[bool, str | None]:
    """Whether workers (or worker groups) with these options run behind real links of ``bandwidth``,
    and, when such links are asked for (the real network, ``--network none``, with a finite rate) but
    impossible here, the warning that says the link is modelled instead (``--network model``)."""
    if network != "none" or math.isinf(parse_rate(bandwidth)):
        return False, None
    if backend == "sim":
        reason = "--backend sim runs every worker in this one process"
    else:
        usable, reason = available()
        if usable:
            return True, None
    return False, f"no real bandwidth limit ({reason}): the {bandwidth} link is modelled (--network model)"


def agent_command(network: LimitedNetwork, worker: int, command: Sequence[str], group_size: int = 1) -> list[str]:
    """The command that runs ``python -m COMMAND...`` as worker (group) ``worker`` inside its namespace."""
    return [
        *network.command_prefix(worker),
        sys.executable, "-m", "torch.distributed.run",
        "--nnodes", str(network.num_workers),
        "--nproc-per-node", str(group_size),
        "--node-rank", str(worker),
        "--master-addr", network.address(0),
        "--master-port", str(RENDEZVOUS_PORT),
        "-m", *command,
    ]


def run_limited(
    workers: int, rate: str, command: Sequence[str], group_size: int = 1, cpu_share: float | None = None
) -> int:
    """Run ``python -m COMMAND...`` on ``workers`` processes, ``group_size`` to a namespaced agent,
    whose namespaces' links carry ``rate``; with ``cpu_share`` (cores per worker), each agent and its
    workers in a CPU cgroup of their own with a quota of ``cpu_share * group_size`` cores, made here
    because ``ip netns exec`` hides the cgroup filesystem from the workers (:mod:`lowcomm.training.cpu_share`).

    Return 0 once all succeed, or the exit code of the first to fail, having stopped the others
    (which would otherwise wait for it until their collectives time out). The network is gone on return.
    """
    agents_needed = workers // group_size
    with terminate_unwinds(), LimitedNetwork(agents_needed, rate) as network:
        # The workers share this machine's cores, which torchrun (one node's workers per agent) cannot know.
        threads = str(max(1, (os.cpu_count() or 1) // workers))
        environment = {**os.environ, "GLOO_SOCKET_IFNAME": network.interface, "OMP_NUM_THREADS": threads}
        cgroups = [] if cpu_share is None else [
            quota_cgroup(cpu_share * group_size, f"lowcomm-{os.getpid()}-{i}") for i in range(agents_needed)]
        agents = [subprocess.Popen(agent_command(network, i, command, group_size), env=environment,
                                   preexec_fn=None if cpu_share is None else partial(join, cgroups[i]))
                  for i in range(agents_needed)]
        try:
            while True:
                codes = [agent.poll() for agent in agents]
                failure = next((code for code in codes if code not in (None, 0)), None)
                if failure is not None:
                    return failure
                if all(code == 0 for code in codes):
                    return 0
                time.sleep(POLL_S)
        finally:
            stop(agents)
            for cgroup in cgroups:
                cgroup.rmdir()


@contextmanager
def terminate_unwinds() -> Iterator[None]:
    """Inside, SIGTERM raises ``SystemExit`` instead of ending the process at once, so that the
    agents are stopped (and the network removed) on the way out rather than left running."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def exit_now(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, exit_now)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def stop(processes: list[subprocess.Popen]) -> None:
    """Terminate the processes still running, and kill those that ignore it."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
