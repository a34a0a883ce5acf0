"""What a worker resumes from, in one object used by checkpoints, live healing and resharding.

:class:`TrainingState` gathers the strategy's state (the local model, the inner optimizer, and the
algorithm's own: z, the outer optimizer, residuals, previous pseudo-gradients, the outer steps in
flight, counters; per-parameter tensors keyed by the parameter's name), the learning-rate schedule,
the position in the training data, the random generators and the running totals (:class:`Progress`).
It is the only place that knows how these are laid out:

- a checkpoint's rank file holds :meth:`TrainingState.state_dict` (checkpoint format :data:`FORMAT`,
  recorded in the manifest); with worker groups the strategy's tensors go to one DCP checkpoint
  instead (:mod:`lowcomm.checkpointing.sharded_state`), which reshards them for another layout;
- a live group that is behind receives :meth:`TrainingState.healing_state` from a peer.

Resumed in the layout it was saved in, a rank continues exactly. In another one (see
:mod:`lowcomm.training.trainer`) each rank's data stream starts at the position in its epoch that
rank 0 had reached, its random generators are seeded afresh from (seed, rank, step), and a new
group starts from the global model with a fresh inner optimizer state.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch.distributed.device_mesh import DeviceMesh
from torch.optim.lr_scheduler import LambdaLR

from lowcomm.algorithms.base import Strategy
from lowcomm.data.batches import Batches
from lowcomm.checkpointing.checkpoint import (
    GLOBAL_MODEL,
    SHARDED_DIRECTORY,
    Checkpointer,
    load_rank_file,
    load_worker_state,
    read_manifest,
)
from lowcomm.checkpointing.rng import rng_state, seed_everything, set_rng_state
from lowcomm.checkpointing.storage import Storage

FORMAT = 2
"""The checkpoint format: 2 keys the strategy's per-parameter state by parameter name (1: by position)."""


@dataclass
class Progress:
    """Running totals a checkpoint carries over to the resumed run."""

    tokens: int = 0
    elapsed_s: float = 0.0
    compute_s: float = 0.0
    eval_loss: float | None = None
    metrics_offset: int = 0
    """Where metrics.jsonl ended (durably) when the checkpoint was written."""
    step_s: float = 0.0
    slowdown_s: float = 0.0
    sync_wait_s: float = 0.0
    """This worker's seconds in steps, and those it waited for its speed and in the strategy's
    communication (:class:`~lowcomm.training.conditions.StepTimes`)."""
    local_steps: int = 0
    own_tokens: int = 0
    """This worker's own steps and tokens trained (with adaptive local steps, fewer on a slower worker)."""


@dataclass
class TrainingState:
    """Everything one worker resumes from (see the module docstring). ``planned_steps`` is the run
    length the learning-rate schedule is planned for; ``continue_data`` (live runs, whose groups may
    come back in another number) continues the data at the saved share of the epoch even in the
    saved layout."""

    strategy: Strategy
    scheduler: LambdaLR
    data: Batches
    progress: Progress
    planned_steps: int
    seed: int
    continue_data: bool = False

    def state_dict(self) -> dict[str, Any]:
        """This rank's whole state, as its checkpoint file holds it."""
        return {"strategy": self.strategy.state_dict(), **self.besides_strategy()}

    def besides_strategy(self) -> dict[str, Any]:
        """:meth:`state_dict` but for the strategy's (which a sharded checkpoint keeps apart)."""
        return {
            "scheduler": self.scheduler.state_dict(),
            "lr_schedule_steps": self.planned_steps,
            "data": self.data.state_dict(),
            "rng": rng_state(),
            "progress": asdict(self.progress),
        }

    def load_state_dict(self, state: dict[str, Any]) -> int:
        """Take ``state`` (:meth:`state_dict`'s, saved in this layout); return the run length the
        saved schedule was planned for."""
        self.strategy.load_state_dict(state["strategy"])
        return self.load_besides_strategy(state, same_layout=True)

    def load_besides_strategy(self, state: dict[str, Any], same_layout: bool) -> int:
        """:meth:`load_state_dict` but for the strategy; in another layout the data continues at the
        saved share of the epoch and the generators are left for :meth:`reseed`."""
        self.scheduler.load_state_dict(state["scheduler"])
        if same_layout and not self.continue_data:
            self.data.load_state_dict(state["data"])
        else:
            self.data.continue_from(state["data"])
        if same_layout:
            set_rng_state(state["rng"])
        vars(self.progress).update(state["progress"])
        return int(state["lr_schedule_steps"])

    def reseed(self, index: int, count: int) -> None:
        """Seed the generators afresh from (seed, ``index`` of ``count``, step): a rank that cannot
        continue its own generators (another layout, or a healed live group)."""
        seed_everything(self.seed + index + count * self.strategy.step_count)

    def healing_state(self, joining: bool) -> dict[str, Any]:
        """What a live group that is behind receives: the strategy, the learning-rate schedule, the
        position in the data and the tokens seen; ``joining``: this group is at the end of its step
        (resumed), not inside a step's communication."""
        return {
            "strategy": self.strategy.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "data": self.data.state_dict(),
            "tokens": self.progress.tokens,
            "joining": joining,
        }

    def load_healing_state(self, state: dict[str, Any], shard: tuple[int, int]) -> None:
        """Take a peer's :meth:`healing_state`, keeping this group's own byte counters; the data
        continues at the peer's share of the epoch in this group's ``shard`` (index, count), whose
        generators are seeded afresh."""
        own_counters = self.strategy.comm_stats.as_dict()
        self.strategy.load_state_dict(state["strategy"])
        self.strategy.comm_stats.load(own_counters)
        self.scheduler.load_state_dict(state["scheduler"])
        self.data.continue_from(state["data"])  # the peer's shard may differ by one example
        self.progress.tokens = int(state["tokens"])
        self.reseed(*shard)

    def save(self, checkpointer: Checkpointer, step: int, global_model: dict[str, torch.Tensor] | None,
             mesh: DeviceMesh | None = None) -> Path:
        """Collective: checkpoint this state; with ``mesh`` (worker groups), the strategy's tensors go
        into a DCP checkpoint, its shards described as the DTensors they are parts of."""
        if mesh is None:
            return checkpointer.save(step, self.state_dict(), global_model, manifest={"format": FORMAT})
        from lowcomm.checkpointing.sharded_state import Position, split  # DCP: worker groups only

        skeleton, sharded = split(self.strategy.distributed_state_dict(), Position.of(mesh))
        layout = {"groups": mesh.size(0), "group_size": mesh.size(1), "inner": self.strategy.inner or "ddp"}
        return checkpointer.save(step, {"strategy": skeleton, **self.besides_strategy()}, global_model, sharded,
                                 {"format": FORMAT, "layout": layout})

    def restore(self, directory: Path, rank: int, world_size: int, device: torch.device,
                mesh: DeviceMesh | None = None, storage: Storage | None = None) -> int:
        """Load this rank's state from the checkpoint ``directory`` (with ``mesh``, saved in this
        layout or another); return the run length its schedule was planned for. ValueError (one
        line) for a checkpoint of another format, or one that cannot be resharded here."""
        saved_format = read_manifest(directory).get("format", 1)
        if saved_format != FORMAT:
            raise ValueError(f"resume: {directory.name} has checkpoint format {saved_format}, this lowcomm reads "
                             f"format {FORMAT}; resume it with the lowcomm that wrote it, or start afresh")
        if mesh is None:
            return self.load_state_dict(load_worker_state(directory, rank, world_size, device))
        return self.restore_grouped(directory, rank, world_size, device, mesh, storage)

    def restore_grouped(self, directory: Path, rank: int, world_size: int, device: torch.device, mesh: DeviceMesh,
                        storage: Storage) -> int:
        """:meth:`restore` from a sharded checkpoint, whose DTensors DCP reshards for this layout."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        from lowcomm.checkpointing.sharded_state import Position, load_sharded

        saved = read_manifest(directory).get("layout")
        if saved is None:
            raise ValueError(f"resume: {directory} was written without worker groups")
        position = Position.of(mesh)
        here = (position.groups, position.group_size)
        inner = self.strategy.inner or "ddp"
        if saved["inner"] != inner:
            raise ValueError(f"resume: {directory.name} was saved with --inner {saved['inner']}, this run has {inner}")
        if not (here == (saved["groups"], saved["group_size"]) or storage.shared):
            raise ValueError(
                f"resume: {directory.name} was saved as {saved['groups']} x {saved['group_size']} on nodes without a "
                f"shared --out, and resumes only in that layout: resharding to {position.groups} x "
                f"{position.group_size} would read other nodes' checkpoint files")
        source = position.source(saved["groups"], saved["group_size"])
        own = load_rank_file(directory, source.group * source.group_size + source.inner, device)
        skeleton = own["strategy"]
        if saved["group_size"] != position.group_size:  # each rank's own state starts afresh
            fresh = self.strategy.state_dict()
            skeleton = {**skeleton, **{key: fresh[key] for key in self.strategy.RANK_STATE if key in fresh}}
        strategy = self.strategy
        strategy.load_distributed_state_dict(
            load_sharded(directory / SHARDED_DIRECTORY, skeleton, source, mesh, device, storage.group))
        if position.group >= saved["groups"]:  # a new group starts from the global model
            global_model = load_file(directory / GLOBAL_MODEL, device=str(device))
            set_model_state_dict(strategy.local_model, global_model, options=StateDictOptions(full_state_dict=True))
            strategy.optimizer.state.clear()
        if here == (saved["groups"], saved["group_size"]):
            return self.load_besides_strategy(own, same_layout=True)
        planned = self.load_besides_strategy(load_rank_file(directory, 0, device), same_layout=False)
        self.reseed(rank, world_size)
        return planned
