"""A worker group's training loop in a live run (``--fault-tolerance live``, see
:mod:`lowcomm.launching.live`)."""

from __future__ import annotations

from typing import Any

import torch

from lowcomm.communication.live import LiveCommunicator, TooFewGroups
from lowcomm.communication.peers import process_group_peers
from lowcomm.training.config import TrainConfig
from lowcomm.training.trainer import Restored, Trainer, restart_count


class LiveTrainer(Trainer):
    """A worker group's training loop in a live run: it joins the others (healed when behind), logs
    the groups that leave and join, and saves a checkpoint before stopping for want of groups."""

    def __init__(self, config: TrainConfig, device: torch.device, communicator: LiveCommunicator):
        self.live = communicator
        self.joining = False
        peers = process_group_peers()
        size = config.layout.group_size
        super().__init__(config, device, communicator, peers,
                         data_shard=(communicator.rank * size + peers.rank, config.layout.groups * size))
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
        while self.live.failed():  # the peer's state did not arrive (on a rank of this group): ask again
            self.live.end_step()
            self.log_live_events()
            state = self.live.join()
        self.joining = False
        if state is not None:
            self.load_live_state(state)
        if state is not None and not state["joining"] and self.step > 0:
            self.complete_joined_step()
            self.scheduler.step()
        self.log_strategy_events()
        self.live.end_step()
        self.log_live_events()

    def complete_joined_step(self) -> None:
        """Finish the others' current step as a group that has just taken a peer's state, captured
        when the peer began this step's communication: the warm-up step whose gradients it was
        averaging (not yet counted), run through the strategy's optimizer hooks; or the
        synchronisation after a local step. The communicator leaves this group's contribution out."""
        strategy = self.strategy
        if not strategy.averages_gradients(strategy.step_count + 1):
            strategy.after_local_step()
            return
        attached = strategy.attach()
        try:
            strategy.optimizer.step()
        finally:
            if attached:
                strategy.detach()

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
        """What a group that is behind receives (:meth:`~lowcomm.training.state.TrainingState.healing_state`)."""
        return self.state.healing_state(self.joining)

    def load_live_state(self, state: dict[str, Any]) -> None:
        """Take a peer's state (at this group's first quorum, or inside a step: the peer's at that
        step); its data stream continues at the peer's position (the same fraction of the epoch) in
        its own shard, its generators seeded afresh from (seed, group, step)."""
        self.state.load_healing_state(state, (self.shard_index, self.shard_count))

    def restore(self) -> Restored:
        """The strategy is first made elastic (its state loaded then holds what that needs); a
        restarted group is healed from a live peer, not from a checkpoint; its metrics.jsonl keeps
        what it wrote before."""
        self.strategy.make_elastic(self.live.participants)
        if restart_count() == 0:
            return super().restore()
        metrics = self.config.run.out / "metrics.jsonl"
        return Restored(metrics_offset=metrics.stat().st_size if metrics.exists() else 0)
