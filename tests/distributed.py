"""Run a function on K real worker processes joined by a gloo process group on localhost.

The processes are forked from a fork server that imported what lowcomm's launcher preloads for its
workers (:data:`~lowcomm.launching.launch.WORKER_MODULES`) and lowcomm once for the whole session,
instead of each importing them anew (two seconds of CPU each): every process still starts from that
untouched state, as a spawned one would.
"""

from __future__ import annotations

import os
import socket
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lowcomm.launching.launch import WORKER_MODULES


PRELOADED = [*WORKER_MODULES, "lowcomm", "tests.distributed"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, outdir: str, fn: Callable[..., Any], args: tuple) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        result = fn(*args)
        torch.save({"result": result}, Path(outdir) / f"{rank}.pt")
        dist.barrier()  # no rank tears the group down while a peer still talks to it
    except BaseException:
        (Path(outdir) / f"{rank}.err").write_text(traceback.format_exc())
        raise
    finally:
        dist.destroy_process_group()
    # The result is saved: leave without interpreter finalization, during which gloo's threads can
    # still abort the process (see pytorch/pytorch#179291).
    os._exit(0)


def run_workers(fn: Callable[..., Any], world_size: int, *args: Any, timeout: float = 120) -> list[Any]:
    """Call ``fn(*args)`` on every rank of a fresh gloo group; return the results in rank order.

    ``fn`` must be importable (defined at module level); its result must be picklable.
    """
    with tempfile.TemporaryDirectory() as outdir:
        context = mp.get_context("forkserver")
        context.set_forkserver_preload(PRELOADED)
        port = free_port()
        processes = [
            context.Process(target=_worker, args=(rank, world_size, port, outdir, fn, args))
            for rank in range(world_size)
        ]
        for p in processes:
            p.start()
        for p in processes:
            p.join(timeout)
        for p in processes:
            if p.is_alive():
                p.kill()
        errors = sorted(Path(outdir).glob("*.err"))
        if errors:
            raise AssertionError("worker failed:\n" + errors[0].read_text())
        if any(p.exitcode != 0 for p in processes):
            raise AssertionError(f"worker exit codes {[p.exitcode for p in processes]}")
        return [torch.load(Path(outdir) / f"{r}.pt", weights_only=False)["result"] for r in range(world_size)]
