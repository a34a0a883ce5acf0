"""Live fault tolerance (``--fault-tolerance live``): worker groups that die are left out, and rejoin.

The launcher starts the torchft lighthouse (bound to 127.0.0.1; on several machines it runs apart,
see the README) and each worker group's G processes (``--group-size``, DDP inside the group),
each group a world of its own with its own store, served from the launcher; rank i's traffic with
the other groups goes through its :class:`~lowcomm.communication.live.LiveCommunicator`. The group
is the unit that fails: when one of its processes exits with an error the launcher kills the others
and starts all G again (up to ``--max-restarts`` times per group) while the other groups train on;
once it has built its model it asks for a quorum, receives a live peer's state at the others' next
synchronisation and completes that step with them. Group g writes to ``OUT/group_g/``
(``metrics.jsonl``, ``summary.json``, ``checkpoints/``). When fewer than ``--min-groups`` groups are
live for ``--hang-timeout`` seconds, every group still running saves a checkpoint and stops.

With a ``--bandwidth`` limit on the real network (``--network none``) group g runs in network
namespace g of a :class:`~lowcomm.launching.netns.LimitedNetwork` (links of that rate), and the
lighthouse and the stores listen on the namespaces' bridge (:data:`~lowcomm.launching.netns.HUB`),
reachable from the groups only. A group whose link goes down (a site cut off) is left out like a
dead one, keeps asking for a quorum, and rejoins healed once its link is back.
"""

from __future__ import annotations

import gc
import math
import multiprocessing
import os
import socket
import sys
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from lowcomm.communication.communicator import ProcessGroupCommunicator
from lowcomm.communication.live import LiveCommunicator, LiveSettings, TooFewGroups
from lowcomm.communication.network_model import parse_rate
from lowcomm.launching.netns import HUB, INTERFACE, LimitedNetwork, enter, entered
from lowcomm.launching.worker import LOOPBACK, join_process_group, loopback_interface
from lowcomm.training.config import TrainConfig
from lowcomm.training.cpu_share import cpu_share, remove_killed_workers_cgroups

HEARTBEAT_TIMEOUT_MS = 2000
"""A group whose heartbeats the lighthouse misses this long is left out of the next quorum."""
JOIN_TIMEOUT_SHARE = 0.5
"""The lighthouse waits this share of ``--hang-timeout`` for a live group that has not asked for the
quorum yet (a straggler) before forming it without that group; the groups' own wait for a quorum is
the whole of ``--hang-timeout``, so a straggler cannot make them give up while every group is live."""
COLLECTIVE_TIMEOUT_S = 10.0
"""An all-reduce or a healing transfer between groups fails after this long (a peer died during it)."""
TOO_FEW_GROUPS = 3
"""A group's exit code when it stopped because too few groups were live."""


class LiveFailure(RuntimeError):
    """The live run could not finish: a group failed more often than allowed, or too few were live."""


def group_directory(out: Path, group: int) -> Path:
    return out / f"group_{group}"


@dataclass(frozen=True)
class Place:
    """Where a group's processes run: their network namespace (None: this machine's), the address the
    other groups reach them at, and the address of the launcher's servers (lighthouse, stores)."""

    namespace: str | None
    address: str
    servers: str


@dataclass(frozen=True)
class Sites:
    """The groups' places: every group on this machine's network (127.0.0.1, or its host name with
    ``--bind-all``), or group g in namespace g of ``network``, the servers on its bridge."""

    network: LimitedNetwork | None
    bind_all: bool

    @property
    def hub(self) -> str:
        """The address the lighthouse listens on, and the stores (also on every interface with
        ``--bind-all`` on this machine's network)."""
        return LOOPBACK if self.network is None else HUB

    def store_listener(self) -> socket.socket:
        with self.serving():
            return socket.create_server(("" if self.bind_all and self.network is None else self.hub, 0))

    def serving(self) -> AbstractContextManager[None]:
        """Inside, the sockets opened are the servers': in the bridge's namespace when there is one."""
        return nullcontext() if self.network is None else entered(self.network.hub_namespace)

    def place(self, group: int) -> Place:
        if self.network is not None:
            return Place(self.network.namespace(group), self.network.address(group), HUB)
        host = socket.gethostname() if self.bind_all else LOOPBACK
        return Place(None, host, host)


def train_live(config: TrainConfig) -> None:
    """Run this machine's worker groups (all K, or ``--live-group``) until they finish; raise
    :class:`LiveFailure` with one line if one cannot."""
    network = config.network
    limited = not math.isinf(parse_rate(network.bandwidth))
    with LimitedNetwork(config.layout.groups, network.bandwidth) if limited else nullcontext() as namespaces:
        run_groups(config, Sites(namespaces, network.bind_all))


def run_groups(config: TrainConfig, sites: Sites) -> None:
    """:func:`train_live` at ``sites``."""
    os.environ.setdefault("RUST_LOG", "warn")  # torchft's log, else a long line per quorum (read by the groups too)
    from torchft.coordination import LighthouseServer

    lighthouse, address = None, config.fault_tolerance.lighthouse
    if address is None:
        with sites.serving():
            lighthouse = LighthouseServer(
                bind=f"{sites.hub}:0",
                min_replicas=config.fault_tolerance.min_groups,
                join_timeout_ms=int(config.fault_tolerance.hang_timeout * 1000 * JOIN_TIMEOUT_SHARE),
                heartbeat_timeout_ms=HEARTBEAT_TIMEOUT_MS,
            )
        address = f"{sites.hub}:{lighthouse.address().rsplit(':', 1)[1]}"
    live_group = config.fault_tolerance.live_group
    groups = range(config.layout.groups) if live_group is None else [live_group]
    running = {group: GroupProcesses(config, group, 0, f"http://{address}", sites) for group in groups}
    restarts = dict.fromkeys(groups, 0)
    failures: list[str] = []
    try:
        while running:
            time.sleep(0.2)
            for group, processes in list(running.items()):
                exit_code = processes.exit_code()
                if exit_code is None:
                    continue
                del running[group]
                if exit_code == TOO_FEW_GROUPS:
                    faults = config.fault_tolerance
                    failures.append(f"group {group} stopped: fewer than {faults.min_groups} groups were live for "
                                    f"{faults.hang_timeout:g} s; its checkpoint is in "
                                    f"{group_directory(config.run.out, group)}")
                elif exit_code != 0 and restarts[group] < config.fault_tolerance.max_restarts:
                    restarts[group] += 1
                    print(f"lowcomm train: group {group} failed (exit code {exit_code}); restarting it "
                          f"({restarts[group]} of {config.fault_tolerance.max_restarts})", file=sys.stderr)
                    running[group] = GroupProcesses(config, group, restarts[group], f"http://{address}", sites)
                elif exit_code != 0:
                    failures.append(f"group {group} failed (exit code {exit_code}); see its log above")
    finally:
        for processes in running.values():
            processes.kill()
        if config.conditions.cpu_share is not None:
            remove_killed_workers_cgroups()
        if lighthouse is not None:
            lighthouse.shutdown()
    if failures:
        raise LiveFailure("; ".join(failures))


class GroupProcesses:
    """One start of a worker group: its store (served from here, fresh for each start) and its G
    processes. The group is the unit that fails: when one of its processes exits with an error, the
    others are killed."""

    def __init__(self, config: TrainConfig, group: int, restart: int, lighthouse: str, sites: Sites) -> None:
        listener = sites.store_listener()
        port = listener.getsockname()[1]
        with sites.serving():
            self.store = dist.TCPStore(sites.hub, port, is_master=True, wait_for_workers=False,
                                       master_listen_fd=listener.detach())
        context = multiprocessing.get_context("spawn")
        place = sites.place(group)
        self.processes = [
            context.Process(target=run_group, args=(config, group, inner_rank, restart, lighthouse, port, place))
            for inner_rank in range(config.layout.group_size)
        ]
        for process in self.processes:
            process.start()

    def exit_code(self) -> int | None:
        """None while the group runs; else its exit code: the first error's (its other processes then
        killed), or 0 (or :data:`TOO_FEW_GROUPS`) once every process has exited so."""
        codes = [process.exitcode for process in self.processes]
        failed = [code for code in codes if code not in (None, 0, TOO_FEW_GROUPS)]
        if failed:
            self.kill()
            return failed[0]
        if None in codes:
            return None
        return max(codes)

    def kill(self) -> None:
        for process in self.processes:
            process.kill()
        for process in self.processes:
            process.join()


def run_group(
    config: TrainConfig, group: int, inner_rank: int, restart: int, lighthouse: str, store_port: int, place: Place
) -> None:
    """One process of a worker group, at ``place``: rank ``inner_rank`` of the group's own world (a
    process group in the group's store), its live communicator to rank ``inner_rank`` of the other
    groups, training (within its CPU share where ``--cpu-share`` gives one)."""
    if place.namespace is not None:
        enter(place.namespace)  # before any socket, and before torch's threads (which inherit it)
        os.environ["GLOO_SOCKET_IFNAME"] = INTERFACE
    elif not config.network.bind_all:
        os.environ["GLOO_SOCKET_IFNAME"] = loopback_interface()
    os.environ.update(RANK=str(inner_rank), WORLD_SIZE=str(config.layout.group_size),
                      TORCHELASTIC_RESTART_COUNT=str(restart))
    local_groups = config.layout.groups if config.fault_tolerance.live_group is None else 1
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // (local_groups * config.layout.group_size)))
    share = config.conditions.cpu_share
    with nullcontext() if share is None else cpu_share(share):
        train_group(config, group, inner_rank, restart, lighthouse, store_port, place)


def train_group(
    config: TrainConfig, group: int, inner_rank: int, restart: int, lighthouse: str, store_port: int, place: Place
) -> None:
    """:func:`run_group` once this process is in its place and CPU share."""
    from lowcomm.training.live_trainer import LiveTrainer  # the launcher that imports this module does not train
    store = dist.TCPStore(place.servers, store_port, is_master=False)
    join_process_group("gloo", config.fault_tolerance.hang_timeout, store)
    group_config = config.with_run(out=group_directory(config.run.out, group))
    group_config.run.out.mkdir(parents=True, exist_ok=True)
    trainer: LiveTrainer | None = None
    settings = LiveSettings(
        lighthouse=lighthouse,
        group=group,
        groups=config.layout.groups,
        min_groups=config.fault_tolerance.min_groups,
        store_host=place.servers,
        store_port=store_port,
        inner_rank=inner_rank,
        group_size=config.layout.group_size,
        hostname=place.address,
        quorum_timeout_s=config.fault_tolerance.hang_timeout,
        collective_timeout_s=COLLECTIVE_TIMEOUT_S,
        manager_bind=None if config.network.bind_all else place.address,
    )
    within = ProcessGroupCommunicator() if config.layout.group_size > 1 else None
    communicator = LiveCommunicator(settings, lambda: trainer.live_state(),
                                    lambda state: trainer.load_live_state(state), within)
    if restart == 0:
        communicator.connect()
    try:
        trainer = LiveTrainer(group_config, torch.device("cpu"), communicator)
        trainer.train()
    except TooFewGroups as error:
        print(f"lowcomm train: group {group}: {error}", file=sys.stderr)
        sys.exit(TOO_FEW_GROUPS)
    finally:
        communicator.shutdown()
        trainer = None
        gc.collect()  # the trainer's process groups go before the default one (see worker.train_as_this_rank)
        dist.destroy_process_group()
