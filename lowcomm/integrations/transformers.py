"""Hugging Face ``Trainer`` with a lowcomm algorithm: :class:`LowCommTrainer`.

Under torchrun (or any initialised ``torch.distributed`` world) each rank trains its own copy of the
model on its own shard of the data, and the algorithm alone moves data between workers (in hook
mode, ``with strategy:``): accelerate prepares the model for its device and mixed precision but does
not wrap it in DistributedDataParallel. What the Trainer does maps onto the strategy:

- ``gradient_accumulation_steps``: every micro-batch but the last runs under ``strategy.no_sync()``;
- ``max_grad_norm``: the Trainer clips, before ``optimizer.step()``, the gradients the step uses
  (averaged over the workers in a synchronous warm-up step);
- a step that needs no batch (a PALSGD pseudo-synchronisation) skips its forward and backward
  passes; it reports the loss of the last step that computed one;
- ``evaluate()``, ``predict()`` and ``save_model()`` (so every checkpoint's model) see the global
  model (``strategy.global_weights()``);
- each ``checkpoint-N/`` also holds every rank's ``strategy.state_dict()``
  (``lowcomm_rank{R}.pt``), loaded after the Trainer's optimizer and scheduler on resume;
- the end of ``train()`` calls ``strategy.finish()``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from lowcomm.algorithms import ALGORITHMS, Strategy
from lowcomm.atomic import write_atomically
from lowcomm.communication import worker_groups

STATE_NAME = "lowcomm_rank{rank}.pt"


class LowCommTrainer(Trainer):
    """``transformers.Trainer`` whose workers train with a lowcomm algorithm instead of DDP.

    Args:
        algo: a key of :data:`lowcomm.ALGORITHMS` (``"diloco"``, ``"palsgd"``, ...).
        groups: run the algorithm between this many worker groups of ``group_size`` ranks each
            (:func:`lowcomm.worker_groups`; DDP inside a group); None: every rank is a worker.
        group_size: ranks per group, with ``groups``.
        **kwargs: ``Trainer``'s keyword arguments, and the algorithm's options
            (``lowcomm.ALGORITHMS[algo].options()``, e.g. ``sync_interval=32``).

    ``strategy`` holds the :class:`~lowcomm.Strategy` once ``train()`` has built it.
    """

    def __init__(self, *args: Any, algo: str = "diloco", groups: int | None = None, group_size: int = 1,
                 **kwargs: Any) -> None:
        if algo not in ALGORITHMS:
            raise ValueError(f"algo: expected one of {sorted(ALGORITHMS)}, got {algo!r}")
        declared = ALGORITHMS[algo].options()
        self.algo, self.groups, self.group_size = algo, groups, group_size
        self.algo_options = {name: kwargs.pop(name) for name in list(kwargs) if name in declared}
        self.strategy: Strategy | None = None
        self.step_loss: torch.Tensor | float = 0.0  # the micro-batches' losses of the step in progress
        self.last_loss: torch.Tensor | float = 0.0  # of the last step that computed one
        super().__init__(*args, **kwargs)
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("LowCommTrainer needs an initialised torch.distributed world: launch it with torchrun")
        if self.args.world_size != dist.get_world_size():
            raise ValueError(f"args: the Trainer sees {self.args.world_size} of the {dist.get_world_size()} ranks, so "
                             "each would read every batch; on CPU pass TrainingArguments(use_cpu=True)")
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            raise ValueError("LowCommTrainer: DeepSpeed and accelerate's FSDP are not supported (use groups= for "
                             "data parallelism inside groups)")
        if self.args.load_best_model_at_end or self.model_init is not None:
            raise ValueError("load_best_model_at_end, model_init (hyperparameter search): not supported by "
                             "LowCommTrainer")
        # each worker's loss is normalised by its own token count: no all-gather per step
        self.args.average_tokens_across_devices = False

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """The Trainer's optimizer (or the one passed in ``optimizers``), driving the strategy built
        around it the first time (a collective: rank 0's model is broadcast)."""
        optimizer = super().create_optimizer(model)
        if self.strategy is None:
            mesh = None if self.groups is None else worker_groups(self.groups, self.group_size)
            self.strategy = ALGORITHMS[self.algo](self.model, optimizer, mesh=mesh, **self.algo_options)
        self.strategy.attach()
        return optimizer

    def _wrap_model(self, model: nn.Module, training: bool = True, dataloader: Any = None) -> nn.Module:
        """For training, ``strategy.model`` prepared by accelerate for its device and precision, never
        wrapped in accelerate's DistributedDataParallel."""
        if not training or self.strategy is None:
            return super()._wrap_model(model, training, dataloader)
        return self.accelerator.prepare_model(self.strategy.model, evaluation_mode=True)

    def train(self, *args: Any, **kwargs: Any) -> Any:
        """``Trainer.train``, then ``strategy.finish()``: the global model holds every step."""
        try:
            output = super().train(*args, **kwargs)
        finally:
            if self.strategy is not None:
                self.strategy.detach()
        self.strategy.finish()
        return output

    def training_step(self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None) -> torch.Tensor:
        """One micro-batch under ``strategy.no_sync()`` unless it is the step's last; none where the
        step needs no batch (its loss: the last computed step's)."""
        if not self.strategy.next_step_needs_batch():
            return torch.as_tensor(self.last_loss, device=self.args.device) / self.current_gradient_accumulation_steps
        last = self.accelerator.sync_gradients
        with contextlib.nullcontext() if last else self.strategy.no_sync():
            loss = super().training_step(model, inputs, num_items_in_batch)
        self.step_loss = self.step_loss + loss
        if last:
            self.last_loss, self.step_loss = self.step_loss, 0.0
        return loss

    @contextlib.contextmanager
    def global_weights(self) -> Iterator[None]:
        """Inside, the model holds the global model (a collective once training has begun)."""
        with contextlib.nullcontext() if self.strategy is None else self.strategy.global_weights():
            yield

    def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        """``Trainer.evaluate`` on the global model (call it on every rank)."""
        with self.global_weights():
            return super().evaluate(*args, **kwargs)

    def predict(self, *args: Any, **kwargs: Any) -> Any:
        """``Trainer.predict`` with the global model (call it on every rank)."""
        with self.global_weights():
            return super().predict(*args, **kwargs)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save the global model (call it on every rank; the main process writes)."""
        with self.global_weights():
            super().save_model(output_dir, _internal_call)

    def state_file(self, checkpoint: str) -> str:
        return os.path.join(checkpoint, STATE_NAME.format(rank=self.args.process_index))

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        """The Trainer's checkpoint, and beside it this rank's ``strategy.state_dict()``."""
        super()._save_checkpoint(model, trial)
        checkpoint = os.path.join(self._get_output_dir(trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        os.makedirs(checkpoint, exist_ok=True)
        state = self.strategy.state_dict()
        write_atomically(Path(self.state_file(checkpoint)), lambda temporary: torch.save(state, temporary))

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        """The Trainer's optimizer and scheduler, then this rank's strategy state (its own inner
        optimizer state over rank 0's that the Trainer saved)."""
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        path = self.state_file(checkpoint)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no lowcomm state for this rank; resume from a checkpoint that "
                                    "LowCommTrainer saved with as many ranks")
        device = self.strategy.params[0].device
        self.strategy.load_state_dict(torch.load(path, weights_only=True, map_location=device))
