"""Fault injection for the opt-in live tests (tests/training/test_live.py), test code only.

Python imports ``sitecustomize`` at start-up, so every process of a live run whose PYTHONPATH begins
with this folder (:data:`PATH`) loads this module. ``LOWCOMM_LIVE_TEST_FAULT=GROUP:STEP:KIND`` then
makes group GROUP's first process, on its first start, in its torchft step STEP:

- ``stop``: stop itself (SIGSTOP) inside an all-reduce, after its first bucket and before the rest,
  so that the others wait in the collective while a test kills it;
- ``stop_exchange``: the same inside an exchange, its receives posted and its sends not (so that its
  peers wait for it);
- ``error``: report an error at the end of the step (as the last receive of an all-reduce a peer
  died in may, on one group only), so that it alone fails the step.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

VARIABLE = "LOWCOMM_LIVE_TEST_FAULT"
KINDS = ("stop", "stop_exchange", "error")
PATH = str(Path(__file__).parent)


def install(group: int, step: int, kind: str) -> None:
    """Wrap :class:`~lowcomm.communication.live.LiveCommunicator` so that the fault happens once, in
    the targeted process's torchft step ``step``."""
    from lowcomm.communication.live import LiveCommunicator

    connect, end_step, exchange, all_reduce = (LiveCommunicator.connect, LiveCommunicator.end_step,
                                               LiveCommunicator._exchange, LiveCommunicator._all_reduce_mean)
    armed = {"fault": True, "in_exchange": False, "works": []}

    def targeted(comm: LiveCommunicator) -> bool:
        restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        return comm.settings.group == group and comm.settings.inner_rank == 0 and restart == "0"

    def take(comm: LiveCommunicator, now: str) -> bool:
        """Whether to inject the fault of kind ``now`` here (once, in its torchft step)."""
        if not (armed["fault"] and kind == now and targeted(comm) and comm.manager.current_step() == step):
            return False
        armed["fault"] = False
        return True

    def connect_faulty(comm: LiveCommunicator) -> None:
        connect(comm)
        if not targeted(comm):
            return
        manager_allreduce, send = comm.manager.allreduce, comm.process_group.send

        def allreduce_faulty(tensor: Any, *args: Any, **kwargs: Any) -> Any:
            works = armed["works"]
            if works and take(comm, "stop"):  # after the all-reduce's first bucket, before the rest
                works[0].wait()
                os.kill(os.getpid(), signal.SIGSTOP)
            works.append(manager_allreduce(tensor, *args, **kwargs))
            return works[-1]

        def send_faulty(*args: Any, **kwargs: Any) -> Any:
            if armed["in_exchange"] and take(comm, "stop_exchange"):  # the receives are posted
                os.kill(os.getpid(), signal.SIGSTOP)
            return send(*args, **kwargs)

        comm.manager.allreduce, comm.process_group.send = allreduce_faulty, send_faulty

    def all_reduce_faulty(comm: LiveCommunicator, tensors: list[Any]) -> Any:
        armed["works"] = []
        return all_reduce(comm, tensors)

    def exchange_faulty(comm: LiveCommunicator, tensors: list[Any], peers: list[int]) -> Any:
        armed["in_exchange"] = True
        try:
            return exchange(comm, tensors, peers)
        finally:
            armed["in_exchange"] = False

    def end_step_faulty(comm: LiveCommunicator) -> None:
        if comm.quorum_started and take(comm, "error"):
            comm.manager.report_error(RuntimeError(f"{VARIABLE}: injected"))
        end_step(comm)

    LiveCommunicator.connect = connect_faulty
    LiveCommunicator._all_reduce_mean = all_reduce_faulty
    LiveCommunicator._exchange = exchange_faulty
    LiveCommunicator.end_step = end_step_faulty


def install_from_environment() -> None:
    target, step, kind = (os.environ.get(VARIABLE, "").split(":") + ["", ""])[:3]
    if kind in KINDS:
        install(int(target), int(step), kind)


install_from_environment()
