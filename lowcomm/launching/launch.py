"""Start the workers: torch's elastic launcher (the machinery behind ``torchrun``) as a library.

``lowcomm train --workers N`` runs an elastic agent in this process that starts N local workers
and restarts the whole group up to ``--max-restarts`` times when one fails or hangs. The workers
fork from a fork server that imported torch and the trainer once (:data:`WORKER_MODULES`), instead
of each importing them anew, and start from that untouched state as spawned ones would. Under an
external ``torchrun`` the process is already one worker and trains directly.

``--backend sim`` runs the workers as threads of this process instead, meeting in a
:class:`~lowcomm.communication.simulated.SimulatedGroup`, with their forward and backward passes
batched into one (:mod:`lowcomm.training.batched_replicas`) or each in its thread.

A single-machine run serves no store on the network: the agent's rendezvous is this process alone
(:class:`PrivateRendezvous`, an in-memory store, nothing pickled), and the workers' process group
keeps its keys in a ``FileStore`` in a directory only this user can open (mode 0700), removed at the
end. gloo/NCCL are pinned to the loopback interface; ``--bind-all`` lets them listen on every one.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch.distributed.elastic.rendezvous import (
    RendezvousHandler,
    RendezvousInfo,
    RendezvousParameters,
    RendezvousStoreInfo,
)
from torch.distributed.elastic.rendezvous.registry import handler_registry
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

from lowcomm.communication.peers import communicator_peers
from lowcomm.communication.simulated import SimulatedCommunicator, run_simulated
from lowcomm.launching.worker import LOOPBACK, loopback_interface, run_worker
from lowcomm.training.config import TrainConfig, under_torchrun

WORKER_MODULES = ["torch", "torch.distributed", "torch._dynamo", "lowcomm.launching.worker", "lowcomm.training.trainer"]
"""What the workers' fork server imports once for them all (about two seconds of CPU a worker)."""

SHUTDOWN_GRACE_S = 5
"""Seconds the workers get between SIGTERM and SIGKILL when the launcher stops (Ctrl-C, say).

Restarting a failed group, torch's agent always waits 30 s, so a stopped (hung) worker costs
``--hang-timeout`` plus 30 s before the group resumes."""


class Refused(Exception):
    """The simulated workers refused the run before training (a damaged checkpoint, say): one line."""


def train(config: TrainConfig) -> None:
    """Train ``config`` on all its workers; raise if the group fails more than ``max_restarts`` times."""
    if under_torchrun():
        run_worker(config)
        return
    if config.run.backend == "sim":
        train_simulated(config)
        return
    if config.live:
        from lowcomm.launching.live import train_live  # needs torchft, the optional extra

        train_live(config)
        return
    launch_config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=config.layout.workers,
        run_id=f"lowcomm-{uuid.uuid4().hex}",
        rdzv_backend=PrivateRendezvous.BACKEND,
        rdzv_endpoint="",
        max_restarts=config.fault_tolerance.max_restarts,
        start_method="forkserver",
        local_addr=LOOPBACK,
        shutdown_timeout=SHUTDOWN_GRACE_S,
    )
    multiprocessing.get_context("forkserver").set_forkserver_preload(WORKER_MODULES)
    private = tempfile.mkdtemp(prefix="lowcomm-store-")  # mode 0700: only this user's processes open it
    try:
        with worker_environment(config.network.bind_all):
            elastic_launch(launch_config, run_worker)(config, os.path.join(private, "store"))
    finally:
        shutil.rmtree(private, ignore_errors=True)


class PrivateRendezvous(RendezvousHandler):
    """The rendezvous of one agent alone, the only node: an in-memory store in this process, which
    nothing outside it can reach, instead of torch's ``c10d`` rendezvous, whose state it keeps
    pickled in a network store and unpickles."""

    BACKEND = "lowcomm-private"

    def __init__(self, parameters: RendezvousParameters) -> None:
        self.run_id = parameters.run_id
        self.store = dist.HashStore()
        self.closed = False

    def get_backend(self) -> str:
        return self.BACKEND

    def next_rendezvous(self) -> RendezvousInfo:
        # The workers get MASTER_ADDR/MASTER_PORT from this, but join through their FileStore.
        return RendezvousInfo(dist.PrefixStore(self.run_id, self.store), 0, 1, RendezvousStoreInfo(LOOPBACK, 0))

    def is_closed(self) -> bool:
        return self.closed

    def set_closed(self) -> None:
        self.closed = True

    def num_nodes_waiting(self) -> int:
        return 0

    def get_run_id(self) -> str:
        return self.run_id

    def shutdown(self) -> bool:
        return True


handler_registry.register(PrivateRendezvous.BACKEND, PrivateRendezvous)


def train_simulated(config: TrainConfig) -> None:
    """Train ``config`` with its workers simulated in this process, one thread each, on one device,
    their forward and backward passes batched into one or each in its thread (``--sim-passes``)."""
    from lowcomm.training.batched_replicas import ReplicaBatcher
    from lowcomm.training.loss import cross_entropy
    from lowcomm.training.trainer import Trainer  # a launcher of worker processes does not import it

    device = torch.device(config.run.device)
    batched = config.run.sim_passes == "batched" or (config.run.sim_passes == "auto" and device.type == "cuda")
    if device.type == "cpu" and not batched:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // config.layout.workers))

    def worker(communicator: SimulatedCommunicator) -> None:
        loss = ReplicaBatcher(communicator).loss if batched else cross_entropy
        try:
            trainer = Trainer(config, device, communicator, communicator_peers(communicator), loss)
        except ValueError as error:  # as a worker process's refusal (lowcomm.launching.worker)
            raise Refused(str(error)) from None
        trainer.train()

    run_simulated(config.layout.workers, worker, timeout_s=config.fault_tolerance.hang_timeout)


@contextmanager
def worker_environment(bind_all: bool) -> Iterator[None]:
    """Environment for the workers the agent spawns, restored afterwards."""
    values: dict[str, str] = {}
    if not bind_all:
        values.update(GLOO_SOCKET_IFNAME=loopback_interface(), NCCL_SOCKET_IFNAME=loopback_interface())
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name)
            else:
                os.environ[name] = value
