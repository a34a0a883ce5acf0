"""Start the workers: torch's elastic launcher (the machinery behind ``torchrun``) as a library.

``lowcomm train --workers N`` runs an elastic agent in this process that starts N local workers
and restarts the whole group up to ``--max-restarts`` times when one fails or hangs. Under an
external ``torchrun`` the process is already one worker and trains directly.

``--backend sim`` runs the workers as threads of this process instead, meeting in a
:class:`~lowcomm.communication.simulated.SimulatedGroup`, with their forward and backward passes
batched into one (:mod:`lowcomm.training.batched_replicas`) or each in its thread.

Single-machine runs listen on 127.0.0.1 only: the rendezvous store is a ``TCPStore`` served from a
socket this process binds to the loopback address, the workers' process group keeps its keys in
that same store, and gloo/NCCL are pinned to the loopback interface. ``--bind-all`` listens on
every interface instead.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

from lowcomm.communication.simulated import SimulatedCommunicator, run_simulated
from lowcomm.training.config import TrainConfig, under_torchrun
from lowcomm.training.peers import communicator_peers
from lowcomm.training.worker import StoreAddress, run_worker

LOOPBACK = "127.0.0.1"
SHUTDOWN_GRACE_S = 5
"""Seconds the workers get between SIGTERM and SIGKILL when the launcher stops (Ctrl-C, say).

Restarting a failed group, torch's agent always waits 30 s, so a stopped (hung) worker costs
``--hang-timeout`` plus 30 s before the group resumes."""


def train(config: TrainConfig) -> None:
    """Train ``config`` on all its workers; raise if the group fails more than ``max_restarts`` times."""
    if under_torchrun():
        run_worker(config)
        return
    if config.backend == "sim":
        train_simulated(config)
        return
    if config.live:
        from lowcomm.training.live import train_live  # needs torchft, the optional extra

        train_live(config)
        return
    listener = socket.create_server(("" if config.bind_all else LOOPBACK, 0))
    port = listener.getsockname()[1]
    store = dist.TCPStore(LOOPBACK, port, is_master=True, wait_for_workers=False, master_listen_fd=listener.detach())
    launch_config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=config.workers,
        run_id=f"lowcomm-{uuid.uuid4().hex}",
        rdzv_backend="c10d",
        rdzv_endpoint=f"{LOOPBACK}:{port}",
        rdzv_configs={"is_host": False},
        max_restarts=config.max_restarts,
        start_method="spawn",
        local_addr=LOOPBACK,
        shutdown_timeout=SHUTDOWN_GRACE_S,
    )
    with worker_environment(config.bind_all):
        elastic_launch(launch_config, run_worker)(config, StoreAddress(LOOPBACK, port))
    del store  # the store served the rendezvous and the process groups until here


def train_simulated(config: TrainConfig) -> None:
    """Train ``config`` with its workers simulated in this process, one thread each, on one device,
    their forward and backward passes batched into one or each in its thread (``--sim-passes``)."""
    from lowcomm.training.batched_replicas import ReplicaBatcher
    from lowcomm.training.loss import cross_entropy
    from lowcomm.training.trainer import Trainer  # a launcher of worker processes does not import it

    device = torch.device(config.device)
    batched = config.sim_passes == "batched" or (config.sim_passes == "auto" and device.type == "cuda")
    if device.type == "cpu" and not batched:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // config.workers))

    def worker(communicator: SimulatedCommunicator) -> None:
        loss = ReplicaBatcher(communicator).loss if batched else cross_entropy
        Trainer(config, device, communicator, communicator_peers(communicator), loss).train()

    run_simulated(config.workers, worker, timeout_s=config.hang_timeout)


@contextmanager
def worker_environment(bind_all: bool) -> Iterator[None]:
    """Environment for the agent and the workers it spawns, restored afterwards.

    The agent would otherwise serve a second, all-interface store for the workers; ours replaces it.
    """
    values = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
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


def loopback_interface() -> str:
    """The loopback network interface's name (``lo`` on Linux, ``lo0`` on macOS)."""
    return next(name for _, name in socket.if_nameindex() if name.startswith("lo"))
