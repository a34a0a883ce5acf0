"""Live fault tolerance (``--fault-tolerance live``): worker groups that die are left out, and rejoin.

The launcher starts the torchft lighthouse (bound to 127.0.0.1; on several machines it runs apart,
see the README) and one process per worker group, each a world of its own whose traffic with the
other groups goes through a :class:`~lowcomm.communication.live.LiveCommunicator`. A group that
exits with an error is started again (up to ``--max-restarts`` times per group) while the others
train on; it asks for a quorum at once, receives a live peer's state at the others' next
synchronisation and completes that step with them. Group g writes to ``OUT/group_g/``
(``metrics.jsonl``, ``summary.json``, ``checkpoints/``). When fewer than ``--min-groups`` groups are
live for ``--hang-timeout`` seconds, every group still running saves a checkpoint and stops.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from lowcomm.communication.live import LiveCommunicator, LiveSettings, TooFewGroups, injected_fault
from lowcomm.training.config import TrainConfig
from lowcomm.training.peers import Peers
from lowcomm.training.rng import seed_everything
from lowcomm.training.trainer import Restored, Trainer

LOOPBACK = "127.0.0.1"
HEARTBEAT_TIMEOUT_MS = 2000
"""A group whose heartbeats the lighthouse misses this long is left out of the next quorum."""
COLLECTIVE_TIMEOUT_S = 10.0
"""An all-reduce or a healing transfer between groups fails after this long (a peer died during it)."""
TOO_FEW_GROUPS = 3
"""A group's exit code when it stopped because too few groups were live."""
RESTART_VARIABLE = "LOWCOMM_LIVE_RESTART"


class LiveFailure(RuntimeError):
    """The live run could not finish: a group failed more often than allowed, or too few were live."""


def group_directory(out: Path, group: int) -> Path:
    return out / f"group_{group}"


def train_live(config: TrainConfig) -> None:
    """Run this machine's worker groups (all K, or ``--live-group``) until they finish; raise
    :class:`LiveFailure` with one line if one cannot."""
    os.environ.setdefault("RUST_LOG", "warn")  # torchft's log, else a long line per quorum (read by the groups too)
    from torchft.coordination import LighthouseServer

    lighthouse, address = None, config.lighthouse
    if address is None:
        lighthouse = LighthouseServer(
            bind=f"{LOOPBACK}:0",
            min_replicas=config.min_groups,
            join_timeout_ms=int(config.hang_timeout * 1000),
            heartbeat_timeout_ms=HEARTBEAT_TIMEOUT_MS,
        )
        address = f"{LOOPBACK}:{lighthouse.address().rsplit(':', 1)[1]}"
    groups = range(config.groups) if config.live_group is None else [config.live_group]
    context = multiprocessing.get_context("spawn")

    def start(group: int, restart: int) -> multiprocessing.Process:
        process = context.Process(target=run_group, args=(config, group, restart, f"http://{address}"))
        process.start()
        return process

    running = {group: start(group, 0) for group in groups}
    restarts = dict.fromkeys(groups, 0)
    failures: list[str] = []
    try:
        while running:
            time.sleep(0.2)
            for group, process in list(running.items()):
                if process.exitcode is None:
                    continue
                del running[group]
                if process.exitcode == TOO_FEW_GROUPS:
                    failures.append(f"group {group} stopped: fewer than {config.min_groups} groups were live for "
                                    f"{config.hang_timeout:g} s; its checkpoint is in {group_directory(config.out, group)}")
                elif process.exitcode != 0 and restarts[group] < config.max_restarts:
                    restarts[group] += 1
                    print(f"lowcomm train: group {group} failed (exit code {process.exitcode}); restarting it "
                          f"({restarts[group]} of {config.max_restarts})", file=sys.stderr)
                    running[group] = start(group, restarts[group])
                elif process.exitcode != 0:
                    failures.append(f"group {group} failed (exit code {process.exitcode}); see its log above")
    finally:
        for process in running.values():
            process.kill()
        if lighthouse is not None:
            lighthouse.shutdown()
    if failures:
        raise LiveFailure("; ".join(failures))


def run_group(config: TrainConfig, group: int, restart: int, lighthouse: str) -> None:
    """One worker group's process: its own store, the live communicator, training."""
    host = "" if config.bind_all else LOOPBACK
    if not config.bind_all:
        interface = next(name for _, name in socket.if_nameindex() if name.startswith("lo"))
        os.environ["GLOO_SOCKET_IFNAME"] = interface
    os.environ[RESTART_VARIABLE] = str(restart)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // config.groups))
    listener = socket.create_server((host, 0))
    port = listener.getsockname()[1]
    store = dist.TCPStore(LOOPBACK, port, is_master=True, wait_for_workers=False, master_listen_fd=listener.detach())
    group_config = config.model_copy(update={"out": group_directory(config.out, group)})
    group_config.out.mkdir(parents=True, exist_ok=True)
    trainer: LiveTrainer | None = None
    settings = LiveSettings(
        lighthouse=lighthouse,
        group=group,
        groups=config.groups,
        min_groups=config.min_groups,
        store_host=LOOPBACK if not config.bind_all else socket.gethostname(),
        store_port=port,
        hostname=LOOPBACK if not config.bind_all else socket.gethostname(),
        quorum_timeout_s=config.hang_timeout,
        collective_timeout_s=COLLECTIVE_TIMEOUT_S,
        fault=injected_fault(group) if restart == 0 else None,
    )
    communicator = LiveCommunicator(settings, lambda: trainer.live_state(),
                                    lambda state: trainer.load_live_state(state))
    try:
        trainer = LiveTrainer(group_config, torch.device("cpu"), communicator, restart)
        trainer.train()
    except TooFewGroups as error:
        print(f"lowcomm train: group {group}: {error}", file=sys.stderr)
        sys.exit(TOO_FEW_GROUPS)
    finally:
        communicator.shutdown()
        del store


class LiveTrainer(Trainer):
    """A worker group's training loop in a live run: it joins the others (healed when behind), logs
    the groups that leave and join, and saves a checkpoint before stopping for want of groups."""

    def __init__(self, config: TrainConfig, device: torch.device, communicator: LiveCommunicator, restart: int):
        self.live = communicator
        self.restart = restart
        self.joining = False
        peers = Peers(0, 1, lambda value: [value])
        super().__init__(config, device, communicator, peers, data_shard=(communicator.rank, config.groups))
        if self.step > 0:
            communicator.resume_at(self.step)

    def train(self) -> None:
        try:
            self.join()
            super().train()
        except TooFewGroups:
            self.log_live_events()
            self.save()
            raise

    def join(self) -> None:
        """The first quorum: take a peer's state if the others are ahead and complete their current
        step with them (a synchronisation, or an averaged warm-up gradient), else only end the quorum
        (also when the peer was joining too: a group resumed from a checkpoint is at the end of its step).
        A quorum whose healing failed is asked for again: training on from this group's own state would
        run another collective than the others'."""
        self.joining = True
        state = self.live.join()
        while state is None and self.live.failed():  # behind, but the peer's state did not arrive: ask again
            self.live.end_step()
            self.log_live_events()
            state = self.live.join()
        self.joining = False
        if state is not None:
            self.load_live_state(state)
        if state is not None and not state["joining"] and self.step > 0:
            self.strategy.complete_joined_step()
            self.scheduler.step()
        self.live.end_step()
        self.log_live_events()

    def train_step(self) -> None:
        super().train_step()
        self.live.end_step()
        self.log_live_events()

    def log_live_events(self) -> None:
        if self.log is not None:
            for event in self.live.events:
                self.log.write({"step": self.step, **event})
        self.live.events.clear()

    def live_state(self) -> dict[str, Any]:
        """What a group that is behind receives: the strategy (z, outer optimizer, coins, residuals,
        step), the learning-rate schedule, the position in the data and the tokens seen."""
        return {
            "strategy": self.strategy.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "data": self.data.train.state_dict(),
            "tokens": self.progress.tokens,
            "joining": self.joining,  # at the end of its step (resumed), not inside a step's communication
        }

    def load_live_state(self, state: dict[str, Any]) -> None:
        """Take a peer's state (at this group's first quorum, or inside a step: the peer's at that
        step), keeping this group's own byte counters; its data stream continues at the peer's
        position (the same fraction of the epoch) in its own shard, its generators seeded afresh from
        (seed, group, step)."""
        own_counters = self.strategy.comm_stats.as_dict()
        self.strategy.load_state_dict(state["strategy"])
        self.strategy.comm_stats.load(own_counters)
        self.scheduler.load_state_dict(state["scheduler"])
        peer, shard_size = state["data"], self.data.train.state_dict()["shard_size"]
        offset = int(peer["offset"] / peer["shard_size"] * shard_size)  # shards may differ by one example
        self.data.train.load_state_dict({"epoch": peer["epoch"], "offset": offset, "shard_size": shard_size})
        self.progress.tokens = int(state["tokens"])
        seed_everything(self.config.seed + self.shard_index + self.shard_count * self.step)

    def restore(self) -> Restored:
        """A restarted group is healed from a live peer, not from a checkpoint; its metrics.jsonl
        keeps what it wrote before."""
        if self.restart == 0:
            return super().restore()
        metrics = self.config.out / "metrics.jsonl"
        return Restored(metrics_offset=metrics.stat().st_size if metrics.exists() else 0)
