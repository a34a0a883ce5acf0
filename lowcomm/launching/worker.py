"""One worker process: pick its device, join the process group, (under torchrun) prepare the
nodes' run directories, train, leave. A refusal or a failed checkpoint write ends it with one line
on stderr and a non-zero exit code."""

from __future__ import annotations

import contextlib
import gc
import os
import socket
import sys
from datetime import timedelta
from typing import NoReturn

import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import record

from lowcomm.checkpointing.checkpoint import CheckpointError
from lowcomm.checkpointing.storage import shared_storage
from lowcomm.communication.communicator import ProcessGroupCommunicator
from lowcomm.communication.peers import process_group_peers
from lowcomm.exit_codes import USAGE_ERROR
from lowcomm.launching.rundir import prepare_node_directories
from lowcomm.training.config import TrainConfig
from lowcomm.training.cpu_share import cpu_share

LOOPBACK = "127.0.0.1"
"""The address the workers, their stores and the lighthouse listen on, unless ``--bind-all``."""


@record
def run_worker(config: TrainConfig, store_file: str | None = None) -> None:
    """Train as the rank the elastic agent (ours or torchrun's) assigned through the environment,
    joining the process group in the launcher's ``store_file`` (None: torchrun's ``env://``), within its
    CPU share where ``--cpu-share`` gives one."""
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    if config.run.device == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
        if "OMP_NUM_THREADS" not in os.environ:  # a user's (or our namespaced launcher's) choice stands
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world_size))
    share = config.conditions.cpu_share
    with contextlib.nullcontext() if share is None else cpu_share(share):
        store = None if store_file is None else dist.FileStore(store_file, -1)
        join_process_group("nccl" if device.type == "cuda" else "gloo", config.fault_tolerance.hang_timeout, store)
        try:
            train_as_this_rank(config, device, store is not None)
            gc.collect()  # a trainer kept alive by a reference cycle goes while its process groups still exist
        finally:
            dist.destroy_process_group()


def train_as_this_rank(config: TrainConfig, device: torch.device, launched_here: bool) -> None:
    """Prepare this node's run directory, build the trainer and train.

    The trainer (its DDP reducer and process groups) is released when this returns, before the
    caller destroys the default process group: a gloo group freed after that, from Python, can
    deadlock joining its worker threads while they wait for the GIL.
    """
    from lowcomm.training.trainer import Trainer, restart_count  # the launcher that imports this module needs neither

    peers = process_group_peers()
    try:
        if not launched_here:  # torchrun's: every node has its own --out, shared or not
            # torchrun counts restarts per node: a node restarted for another node's failure counts none
            if any(peers.all_gather(restart_count() > 0)):
                config = config.with_run(resume=True, overwrite=False)
            storage = prepare_node_directories(config, peers)
        else:
            storage = shared_storage(peers.rank, peers.world_size)
        trainer = Trainer(config, device, ProcessGroupCommunicator(), peers, storage=storage)
    except ValueError as error:  # refused on every rank alike, before training
        fail(str(error), USAGE_ERROR)
    try:
        trainer.train()
    except CheckpointError as error:
        fail(str(error), 1)


def fail(message: str, exit_code: int) -> NoReturn:
    """Stop this worker with one line on stderr, written whole in one call: every rank of a node may
    write the same error to the same stream at once (print writes the line and its end apart)."""
    sys.stderr.write(f"lowcomm train: error: {message}\n")
    sys.stderr.flush()
    raise SystemExit(exit_code)


def join_process_group(backend: str, hang_timeout_s: float, store: dist.Store | None) -> None:
    """Join this worker's process group; a collective waiting over ``hang_timeout_s`` fails the worker.

    Under torchrun the group forms from its environment (``env://``); under a lowcomm launcher, in
    ``store``, under a key prefix fresh for each restart of the group.
    """
    timeout = timedelta(seconds=hang_timeout_s)
    if store is None:
        dist.init_process_group(backend, timeout=timeout)
        return
    store.set_timeout(timeout)
    attempt = os.environ["TORCHELASTIC_RESTART_COUNT"]
    dist.init_process_group(
        backend,
        store=dist.PrefixStore(f"lowcomm/process_group/attempt_{attempt}", store),
        rank=int(os.environ["RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]),
        timeout=timeout,
    )


def loopback_interface() -> str:
    """The loopback network interface's name (``lo`` on Linux, ``lo0`` on macOS)."""
    return next(name for _, name in socket.if_nameindex() if name.startswith("lo"))
