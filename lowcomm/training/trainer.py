"""One worker's training loop: steps, evaluations of the global model, checkpoints and metrics.

Every rank runs the same loop and the same collectives; rank 0 alone evaluates (the global model
is the same on every rank) and reports (metrics, TensorBoard, progress bar, summary, and the
outputs of :mod:`lowcomm.reporting.outputs`: ``loss.png`` at every checkpoint, the last step's
included, and a language model's tokenizer and text samples). A rank is a
worker process, or a thread of the simulation (``--backend sim``): building its data and model
draws from process-wide generators, so ranks take turns at it.

With worker groups (``--groups K --group-size G``) the ranks form a K x G mesh: each group trains one
model with DistributedDataParallel or FSDP2 inside (every rank on its own batches), and the
algorithm runs between groups. Checkpoints are then sharded (:mod:`lowcomm.checkpointing.sharded_state`)
and may resume in another layout (see :mod:`lowcomm.training.state`, what a worker resumes from). In live mode
(:mod:`lowcomm.launching.live`) each group is a world of its own, a 1 x G mesh, and the communicator
between groups is the one given.
"""

from __future__ import annotations

import os
import pickle
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributed.device_mesh import DeviceMesh
from torch.optim.lr_scheduler import LambdaLR

from lowcomm.checkpointing.checkpoint import Checkpointer, agreed_checkpoint, checkpoints_of, first_line
from lowcomm.checkpointing.rng import seed_everything
from lowcomm.checkpointing.storage import Storage, shared_storage
from lowcomm.communication.communicator import Communicator, ProcessGroupCommunicator
from lowcomm.communication.groups import worker_groups
from lowcomm.communication.modelled import ModelledCommunicator
from lowcomm.communication.network_model import NetworkModel, parse_rate
from lowcomm.communication.peers import Peers
from lowcomm.data import load_data
from lowcomm.models import build_model
from lowcomm.reporting.metrics import MetricsLog
from lowcomm.reporting.outputs import held_out_prompt, write_loss_plot, write_samples, write_tokenizer
from lowcomm.reporting.reporter import Reporter
from lowcomm.training.conditions import StepClock, StepTimes, speed_of, worker_times
from lowcomm.training.config import TrainConfig
from lowcomm.training.early_stop import stop_reason
from lowcomm.training.evaluation import Evaluator
from lowcomm.training.loss import cross_entropy
from lowcomm.training.optimizers import inner_optimizer
from lowcomm.training.schedule import lr_schedule
from lowcomm.training.state import Progress, TrainingState
from lowcomm.training.strategy_choice import strategy_class

SETUP_LOCK = threading.Lock()
"""Held while a rank seeds the global generators and builds its data and model."""


def network_communicator(communicator: Communicator, config: TrainConfig) -> Communicator:
    """``communicator``, slowed to the modelled link under ``--network model``. With worker groups the
    link is a group's, shared by its G ranks (each sends its shard to its peers in parallel), so each
    rank's traffic is modelled at 1/G of the rate."""
    if config.network.mode == "none":
        return communicator
    ranks_per_link = config.layout.group_size if config.grouped else 1
    network = NetworkModel(parse_rate(config.network.bandwidth) / ranks_per_link, config.network.latency)
    return ModelledCommunicator(communicator, network)


def restart_count() -> int:
    """How many times the elastic agent has restarted this worker's group (0 outside an agent)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


@dataclass
class Restored:
    """What resuming found: the checkpoint loaded, the newer ones skipped, where metrics.jsonl ends."""

    checkpoint: str | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)
    metrics_offset: int = 0
    planned_steps: int | None = None
    """The run length the checkpoint's learning-rate schedule was planned for, if not this run's."""


class Trainer:
    """Everything one worker trains with, built from the config (and a checkpoint when resuming)."""

    def __init__(
        self,
        config: TrainConfig,
        device: torch.device,
        communicator: Communicator,
        peers: Peers,
        loss: Callable[..., Tensor] = cross_entropy,
        storage: Storage | None = None,
        data_shard: tuple[int, int] | None = None,
    ) -> None:
        """``loss(model, inputs, targets, bf16)`` is the training loss (the simulation batches it).
        ``storage`` says which ranks share ``--out`` (by default, all). ``data_shard`` is (index,
        count) of the data shard to read when it is not (rank, world size): a live worker group is a
        world of its own reading its group's shard."""
        self.config = config
        self.loss = loss
        self.device = device
        self.peers = peers
        self.rank, self.world_size = peers.rank, peers.world_size
        self.storage = storage or shared_storage(self.rank, self.world_size)
        self.shard_index, self.shard_count = data_shard or (self.rank, self.world_size)
        self.mesh: DeviceMesh | None = None
        if config.live and config.layout.group_size > 1:  # a live worker group is a world of its own, one group of G
            self.mesh = worker_groups(1, config.layout.group_size)
        elif config.grouped and not config.live:
            self.mesh = worker_groups(config.layout.groups, config.layout.group_size)
        if self.mesh is not None and config.layout.inner == "fsdp" and not config.live:  # a live group: one machine
            self.refuse_groups_across_domains()
        with SETUP_LOCK:
            model, optimizer = self.build(config, device)
        on_mesh = {}
        if self.mesh is not None:  # the algorithm's communicator connects the groups (in live mode: it is given)
            on_mesh = {"mesh": self.mesh}
            if not config.live:
                communicator = ProcessGroupCommunicator(self.mesh["group"].get_group())
        communicator = network_communicator(communicator, config)
        self.strategy = strategy_class(config.algo, communicator)(
            model, optimizer, communicator=communicator, **on_mesh, **config.algorithm_kwargs()
        )
        self.strategy.run_steps = config.run.steps
        self.adaptive = config.algorithm_options().get("local_steps") == "adaptive"
        for stats in (self.strategy.comm_stats, self.strategy.inner_comm_stats):
            stats.wait_s = 0.0  # waiting for the other ranks to start up is not communication
        seed_everything(config.run.seed + self.shard_index)
        self.progress = Progress()
        self.state = TrainingState(self.strategy, self.scheduler, self.data.train, self.progress, config.run.steps,
                                   config.run.seed, continue_data=config.live)
        self.checkpointer = Checkpointer(checkpoints_of(config.run.out), peers, self.storage,
                                         config.checkpoint.keep_checkpoints)
        restored = self.restore()
        self.aligned_step = self.step  # the last step after which every worker was at the same step
        self.speed = speed_of(config.conditions.worker_speeds, self.shard_index, config.layout.group_size)
        self.step_times = StepTimes(self.progress.step_s, self.progress.slowdown_s, self.progress.sync_wait_s)
        self.clock = StepClock(self.speed, lambda: (self.strategy.comm_stats, self.strategy.inner_comm_stats),
                               self.step_times)
        if self.speed < 1:  # registered before the strategy's hooks: it waits before the step's synchronisation
            self.optimizer.register_step_post_hook(self.clock.pace)
        self.log = MetricsLog(config.run.out, restored.metrics_offset, self.step) if self.rank == 0 else None
        self.reporter = (Reporter(self.log, self.strategy, self.mesh is not None, self.elapsed)
                         if self.rank == 0 else None)
        self.clock_start = time.perf_counter() - self.progress.elapsed_s
        self.clock_every = config.algorithm_options().get("sync_interval", 1)  # where the algorithm synchronises
        self.clock_checked_s = self.progress.elapsed_s  # worker 0's clock at the last check
        self.evaluated_step: int | None = None
        self.stopped: str | None = None
        if self.reporter is not None:
            self.report_start(restored)

    def report_start(self, restored: Restored) -> None:
        """Rank 0 writes the tokenizer and reports how the run started: afresh, or resumed (skipping
        damaged checkpoints, re-planning the learning-rate schedule)."""
        if self.data.tokenizer is not None:
            write_tokenizer(self.config.run.out, self.data.tokenizer)
        for checkpoint, problem in restored.skipped:
            self.reporter.event(self.step, "skipped_checkpoint", checkpoint=checkpoint, problem=problem)
        restart = {"restart": restart_count()} if restart_count() else {}
        if restored.checkpoint is None:
            self.reporter.event(self.step, "start", **restart)
        else:
            self.reporter.event(self.step, "resume", checkpoint=restored.checkpoint, **restart)
        if restored.planned_steps is not None:
            self.report_replanned_schedule(restored.planned_steps)

    def refuse_groups_across_domains(self) -> None:
        """FSDP2's shards of a group spread over nodes that do not share ``--out`` would split one
        tensor over several DCP checkpoints, which none of them could load: refused."""
        size = self.config.layout.group_size
        for group in range(self.config.layout.groups):
            nodes = {self.storage.domain_of(rank) for rank in range(group * size, (group + 1) * size)}
            if len(nodes) > 1:
                raise ValueError(
                    f"--inner fsdp: group {group} spans nodes that do not share --out ("
                    f"{', '.join(self.storage.names[node] for node in sorted(nodes))}), and no node could load its "
                    "sharded checkpoint; make the nodes the groups, or put --out on a shared filesystem")

    def build(self, config: TrainConfig, device: torch.device) -> tuple[nn.Module, torch.optim.Optimizer]:
        """This rank's data, the model (the same on every rank), its optimizer and LR schedule."""
        seed_everything(config.run.seed)
        self.data = load_data(
            config.data.source,
            rank=self.shard_index,
            world_size=self.shard_count,
            batch_size=config.data.batch_size,
            seq_len=config.data.seq_len,
            seed=config.run.seed,
            tokenizer=config.data.tokenizer,
            vocab_size=config.data.vocab_size,
            cache_dir=config.data.cache_dir,
            eval_batches=config.eval.eval_batches,
        )
        if self.data.task == "lm":
            sizes = {"vocab_size": self.data.vocab_size}
        else:
            sizes = {"num_classes": self.data.num_classes}
        model = build_model(config.model.name, implementation=config.model.impl, **sizes).to(device)
        if config.run.compile:
            model.compile()
        self.evaluator = Evaluator(model, self.data.eval_batches, device) if self.rank == 0 else None
        if config.layout.inner == "fsdp":
            from lowcomm.communication.fsdp import shard_within_groups  # FSDP2 is loaded only where it is used

            model = shard_within_groups(model, self.mesh)
        optimizer = inner_optimizer(config, model, device)
        self.optimizer = optimizer
        self.scheduler = LambdaLR(
            optimizer, lr_schedule(config.optimizer.lr_schedule, config.optimizer.lr_warmup, config.run.steps,
                                   config.optimizer.min_lr_ratio)
        )
        return model, optimizer

    @property
    def step(self) -> int:
        return self.strategy.step_count

    def elapsed(self) -> float:
        return time.perf_counter() - self.clock_start

    def train(self) -> None:
        """Train up to ``config.run.steps`` or an early stop, evaluating and checkpointing on schedule and at
        the end."""
        if self.reporter is not None:
            self.reporter.start(self.config.run.steps, self.step, f"{self.config.algo} x{self.world_size}")
        while self.step < self.config.run.steps and self.stopped is None:
            self.train_step()
            if not self.strategy.aligned:  # inside an uneven round of adaptive local steps: at its end
                continue
            if self.due(self.clock_every):
                self.stop_when_out_of_time()
            if self.due(self.config.eval.eval_every):
                self.evaluate()
                self.stop_at_loss()
            if self.due(self.config.checkpoint.checkpoint_every):
                self.save()
            self.aligned_step = self.step
        self.finish()

    def due(self, every: int) -> bool:
        """Whether a thing done every ``every`` steps is due after this step, where every worker is at
        this step: a multiple of ``every`` reached since the last such step (with fixed local steps,
        the step before), the last step, or a stop."""
        return (self.step // every > self.aligned_step // every or self.step == self.config.run.steps
                or self.stopped is not None)

    def stop_when_out_of_time(self) -> None:
        """At a clock check (where the algorithm synchronises: every H steps, every step of DDP), stop if
        worker 0's clock would pass ``--stop-after-s`` by the next check, the next interval taken as long
        as the last (a collective where ``--stop-after-s`` is given). Checked every step, its collective
        would make every worker wait for the slowest after each step, and over a slow link pay its
        latency: the round trips local steps are there to save."""
        now = self.elapsed()
        next_check_s, self.clock_checked_s = 2 * now - self.clock_checked_s, now
        self.stopped = stop_reason(self.config, self.peers, False, None, next_check_s)
        if self.stopped:
            self.strategy.finish()  # out of time: the final model holds every step, as at the last step

    def stop_at_loss(self) -> None:
        """Stop after this evaluation if worker 0's is at most ``--stop-at-loss`` (a collective)."""
        self.stopped = self.stopped or stop_reason(self.config, self.peers, True, self.progress.eval_loss, None)

    def train_step(self) -> None:
        """One strategy step on ``grad_accum`` micro-batches (fetched even if PALSGD skips them).

        Rank 0 logs the step and the events the strategy recorded (a worker left out of an outer
        step for a non-finite pseudo-gradient, say); every rank then forgets them.
        """
        micro_batches = [self.to_device(next(self.data.train)) for _ in range(self.config.data.grad_accum)]
        previous_step = self.step
        stats = self.strategy.comm_stats
        sent_before, waited_before = stats.bytes_sent, stats.wait_s
        lr = self.optimizer.param_groups[0]["lr"]
        start = time.perf_counter()
        bf16 = self.config.run.precision == "bf16"
        self.clock.start()
        loss = self.strategy.step([partial(self.loss, self.strategy.model, x, y, bf16) for x, y in micro_batches])
        if self.step == self.config.run.steps:
            self.strategy.finish()  # the global model holds the steps since the last synchronisation
        loss_value = None if loss is None else loss.item()
        self.clock.stop()
        self.progress.compute_s += time.perf_counter() - start - (stats.wait_s - waited_before)
        for _ in range(self.step - previous_step):  # the schedule follows the step count (adaptive: nominal)
            self.scheduler.step()
        self.progress.local_steps += 1
        batch_tokens = sum(targets.numel() for _, targets in micro_batches)
        if loss_value is not None:
            self.progress.own_tokens += batch_tokens
        if self.adaptive:  # a slower worker trains fewer: every worker's batches, exact at each round's end
            ranks_per_worker = self.world_size // self.strategy.comm.world_size
            self.progress.tokens = round(self.strategy.workers_batches * ranks_per_worker * batch_tokens)
        elif loss_value is not None:  # every worker trains as many
            self.progress.tokens += self.world_size * batch_tokens
        if self.reporter is not None:
            sent = stats.bytes_sent - sent_before
            self.reporter.step(self.step, loss_value, lr, sent, self.progress.tokens, self.rank)
        self.log_strategy_events()

    def log_strategy_events(self) -> None:
        """Rank 0 logs the events the strategy recorded in this step; every rank then forgets them and
        the step's diagnostics."""
        if self.reporter is not None:
            self.reporter.strategy_events(self.step)
        self.strategy.events.clear()
        self.strategy.sync_diagnostics.clear()

    def to_device(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        return tuple(t.to(self.device, non_blocking=True) for t in batch)

    def evaluate(self) -> None:
        """The global model's mean loss on the held-out batches (a collective; rank 0 computes it)."""
        global_model = self.strategy.global_state_dict()
        if self.evaluator is None:
            return
        self.progress.eval_loss = self.evaluator(global_model)
        self.evaluated_step = self.step
        self.reporter.evaluation(self.step, self.progress.eval_loss, self.progress.tokens)

    def save(self) -> None:
        """Checkpoint the training state and the global model (a collective)."""
        global_model = self.strategy.global_state_dict()
        self.progress.elapsed_s = self.elapsed()
        self.keep_step_times()
        self.progress.metrics_offset = self.log.durable_offset() if self.log is not None else 0
        self.state.save(self.checkpointer, self.step, global_model if self.rank == 0 else None, self.mesh)
        if self.log is not None:
            config = self.config
            title = f"{config.algo} x{self.world_size}: {config.model.name} on {config.data.source}"
            write_loss_plot(config.run.out, title)

    def keep_step_times(self) -> None:
        """Copy this worker's step times into the progress a checkpoint carries."""
        times = self.step_times
        self.progress.step_s, self.progress.slowdown_s, self.progress.sync_wait_s = (
            times.step_s, times.slowdown_s, times.sync_wait_s)

    def restore(self) -> Restored:
        """When resuming (``--resume``, or a restart by the elastic agent), load the newest checkpoint
        that every node holds intact, skipping incomplete or corrupt ones with a warning."""
        if not (self.config.run.resume or restart_count()):
            return Restored()
        found, skipped = agreed_checkpoint(self.checkpointer.root, self.peers, self.storage)
        restored = Restored(skipped=skipped)
        if self.rank == 0:
            for name, problem in skipped:
                print(f"lowcomm: warning: skipping checkpoint {name}: {problem}", file=sys.stderr)
        if found is None:
            return restored
        restored.checkpoint = found.name
        try:
            planned_steps = self.state.restore(found, self.rank, self.world_size, self.device, self.mesh, self.storage)
        except (OSError, RuntimeError, pickle.UnpicklingError) as error:
            raise ValueError(f"resume: {found.name} on {self.storage.name}: {first_line(error)}") from None
        except (KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"resume: {found.name} on {self.storage.name} holds a damaged rank file "
                             f"({first_line(error)}); move that checkpoint away to resume from an older one") from None
        restored.metrics_offset = self.progress.metrics_offset
        if planned_steps != self.config.run.steps:
            restored.planned_steps = planned_steps
            self.replan_schedule()
        return restored

    def replan_schedule(self) -> None:
        """Follow this run's learning-rate schedule (planned for ``config.run.steps``) from the resumed
        step on: the learning rate of the next step becomes the new plan's."""
        factor = self.scheduler.lr_lambdas[0]
        for group, base_lr in zip(self.optimizer.param_groups, self.scheduler.base_lrs):
            group["lr"] = base_lr * factor(self.scheduler.last_epoch)

    def report_replanned_schedule(self, planned_steps: int) -> None:
        lr = self.optimizer.param_groups[0]["lr"]
        print(
            f"lowcomm: warning: --steps changed from {planned_steps} to {self.config.run.steps}: the learning-rate "
            f"schedule is re-planned for {self.config.run.steps} steps and followed from step {self.step} "
            f"(next lr {lr:.3g})",
            file=sys.stderr,
        )
        self.reporter.event(self.step, "lr_schedule_replanned", from_steps=planned_steps,
                            to_steps=self.config.run.steps, lr=lr)

    def finish(self) -> None:
        """Sum the traffic and times over all workers; rank 0 writes summary.json, with every worker's
        step times (:func:`~lowcomm.training.conditions.worker_times`)."""
        self.strategy.wait()
        stats, within = self.strategy.comm_stats, self.strategy.inner_comm_stats
        local_steps = self.progress.local_steps if self.adaptive else self.step  # adaptive: a slower worker takes fewer
        own_times = worker_times(self.shard_index, self.speed, local_steps, self.step_times)
        everyone = self.peers.all_gather(
            (stats.bytes_sent, within.bytes_sent, stats.wait_s, stats.overlap_s, stats.overlap_bytes,
             self.progress.compute_s, self.progress.own_tokens, own_times)
        )
        if self.reporter is None:
            return
        wall_time = self.elapsed()
        times = [gathered[-1] for gathered in everyone]
        between, inside, wait_s, overlap_s, overlap_bytes, compute_s, own_tokens = (
            sum(column) for column in zip(*(gathered[:-1] for gathered in everyone)))
        tokens = own_tokens if self.adaptive else self.progress.tokens  # fixed: every worker trains as many
        summary = {
            "algo": self.config.algo,
            "model": self.config.model.name,
            "parameters": sum(p.numel() for p in self.strategy.params),
            "workers": self.world_size,
            **({} if self.mesh is None else self.config.layout.model_dump(include={"groups", "group_size", "inner"})),
            "steps": self.step,
            "final_eval_loss": self.progress.eval_loss,
            **({"stopped": self.stopped} if self.stopped else {}),
            "wall_time_s": wall_time,
            "comm_bytes_total": int(between + inside),
            "comm_bytes_between_groups": int(between),
            "comm_bytes_within_groups": int(inside),
            "compute_s": compute_s / self.world_size,
            "comm_wait_s": wait_s / self.world_size,
            "comm_overlap_s": overlap_s / self.world_size,
            "comm_overlap_bytes": overlap_bytes / self.world_size,
            "tokens": tokens,
            "tokens_per_s": tokens / wall_time,
            **({"worker_speeds": self.config.conditions.worker_speeds} if self.config.conditions.worker_speeds else {}),
            "worker_times": times,
        }
        if self.device.type == "cuda":
            summary["peak_gpu_memory_bytes"] = torch.cuda.max_memory_allocated(self.device)
        if self.data.tokenizer is not None and self.evaluated_step == self.step:  # the evaluator holds the final model
            prompt = held_out_prompt(self.data.eval_batches, self.config.data.seq_len)
            write_samples(self.config.run.out, self.evaluator.model, self.data.tokenizer, prompt,
                          self.config.data.seq_len, self.config.run.seed)
        self.reporter.finish(self.config.run.out, summary)
