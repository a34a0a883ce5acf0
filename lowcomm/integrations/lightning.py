"""lowcomm inside Lightning: ``L.Trainer(strategy=LowCommStrategy(algo="diloco", sync_interval=32), ...)``.

:class:`LowCommStrategy` is Lightning's DDP strategy (its launcher, process group, samplers, logging
reductions) without DistributedDataParallel: once ``configure_optimizers`` has built the one
optimizer, it builds the lowcomm algorithm over the LightningModule and drives it in hook mode
(``with strategy:``), so that Lightning's own ``optimizer.step()`` runs the algorithm:

- Lightning's closure (training step, backward, ``on_before_optimizer_step``, gradient clipping)
  runs in an optimizer pre-step hook, before lowcomm's; the inner optimizer then steps without it.
  The training step runs through the module's ``__call__``, so a synchronous (warm-up) step averages
  the gradients when the backward pass ends, before Lightning clips them.
- ``accumulate_grad_batches``: every micro-batch but the last runs under ``no_sync()``.
- A PALSGD pseudo-synchronisation skips its batch: its training steps (every micro-batch of the
  step) are not run and give Lightning a zero loss without a graph; the batch is still loaded.
- Validation runs on the global model (``global_weights()``); ``fit`` ends with ``finish()`` and
  leaves the global model in the LightningModule on every rank.
- Checkpoints hold the global model as ``state_dict``; each rank's ``algorithm.state_dict()`` (local
  model, inner optimizer, outer state, counters, coins) is saved beside the checkpoint as
  ``<checkpoint>.lowcomm-rank{r}.pt`` and restored in place of rank 0's optimizer state, so a
  resumed run continues exactly (on a filesystem every rank can reach, with as many processes).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.collectives.torch_collective import default_pg_timeout
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.trainer.states import TrainerFn
from torch.utils.hooks import RemovableHandle

from lowcomm.algorithms import ALGORITHMS, Strategy
from lowcomm.atomic import write_atomically


def rank_state_path(checkpoint: _PATH, rank: int) -> Path:
    """Where rank ``rank`` keeps its lowcomm state beside ``checkpoint``."""
    return Path(f"{checkpoint}.lowcomm-rank{rank}.pt")


def run_closure_first(optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict[str, Any]) -> tuple | None:
    """Optimizer pre-step hook: run Lightning's closure now and step without it (hook mode takes none)."""
    closure = kwargs.get("closure", args[1] if len(args) > 1 else None)
    if closure is None:
        return None
    closure()
    return args[:1], {k: v for k, v in kwargs.items() if k != "closure"}


class LowCommStrategy(DDPStrategy):
    """Lightning strategy that trains with a lowcomm algorithm between the processes.

    Args:
        algo: one of :data:`lowcomm.ALGORITHMS` (``ddp``, ``localsgd``, ``postlocalsgd``, ``diloco``,
            ``palsgd``, ``noloco``, ``streamingdiloco``).
        options: the algorithm's options (``ALGORITHMS[algo].options()``) and ``max_grad_norm``; for
            ``ddp``, DistributedDataParallel's keyword arguments.
        process_group_backend, timeout, start_method: as for Lightning's ``DDPStrategy``.

    After ``setup``, :attr:`algorithm` is the lowcomm strategy (``algorithm.comm_stats.bytes_sent``:
    the bytes this rank sent).
    """

    def __init__(
        self,
        algo: str,
        *,
        process_group_backend: str | None = None,
        timeout: timedelta | None = default_pg_timeout,
        start_method: str = "popen",
        **options: Any,
    ) -> None:
        if algo not in ALGORITHMS:
            raise ValueError(f"algo: expected one of {', '.join(ALGORITHMS)}, got {algo!r}")
        unknown = set(options) - set(ALGORITHMS[algo].options()) - {"max_grad_norm"}
        if unknown and algo != "ddp":
            raise ValueError(f"{algo} takes no option {', '.join(sorted(unknown))}; "
                             f"its options: {', '.join(ALGORITHMS[algo].options())}")
        super().__init__(process_group_backend=process_group_backend, timeout=timeout, start_method=start_method)
        self.algo = algo
        self.options = options
        self.algorithm: Strategy | None = None
        self.closure_hook: RemovableHandle | None = None
        self.global_view: contextlib.ExitStack | None = None  # holds global_weights() during validation
        self.resumed_from: _PATH | None = None

    def configure_ddp(self) -> None:
        """No DistributedDataParallel: the algorithm is built in :meth:`setup`, once the optimizer is."""

    def setup(self, trainer: pl.Trainer) -> None:
        super().setup(trainer)
        if trainer.state.fn != TrainerFn.FITTING:
            return
        if len(self.optimizers) != 1:
            raise ValueError(f"LowCommStrategy: configure_optimizers must return one optimizer over all trainable "
                             f"parameters, got {len(self.optimizers)}")
        optimizer = self.optimizers[0]
        self.algorithm = ALGORITHMS[self.algo](self.lightning_module, optimizer, **self.options)
        self.model = self.algorithm.model
        self.closure_hook = optimizer.register_step_pre_hook(run_closure_first)  # before lowcomm's
        self.algorithm.attach()

    @property
    def fitting(self) -> bool:
        return self.algorithm is not None and self.lightning_module.trainer.state.fn == TrainerFn.FITTING

    def skips_batch(self) -> bool:
        """Whether the coming optimizer step takes no gradient (a PALSGD pseudo-synchronisation)."""
        return self.lightning_module.automatic_optimization and not self.algorithm.next_step_needs_batch()

    def training_step(self, *args: Any, **kwargs: Any) -> Any:
        """The module's training step, called through its ``__call__`` (lowcomm's forward hook sees
        the loss); a zero loss without a graph where the step skips its batch."""
        if self.skips_batch():
            return torch.zeros((), device=self.root_device, requires_grad=True)
        with self.precision_plugin.train_step_context():
            return self._forward_redirection(self.model, self.lightning_module, "training_step", *args, **kwargs)

    def optimizer_step(
        self,
        optimizer: torch.optim.Optimizer,
        closure: Callable[[], Any],
        model: pl.LightningModule | torch.nn.Module | None = None,
        **kwargs: Any,
    ) -> Any:
        if self.skips_batch():  # the closure only runs the skipped training step(s); no clipping, no scaler
            closure()
            return optimizer.step()
        return super().optimizer_step(optimizer, closure, model, **kwargs)

    @contextlib.contextmanager
    def block_backward_sync(self) -> Iterator[None]:
        """Around every micro-batch but the last."""
        with self.algorithm.no_sync():
            yield

    def on_validation_start(self) -> None:
        """Validation during ``fit`` sees the global model (a collective)."""
        if self.fitting:
            self.global_view = contextlib.ExitStack()
            self.global_view.enter_context(self.algorithm.global_weights())

    def on_validation_end(self) -> None:
        """The module gets its own weights back."""
        if self.global_view is not None:
            self.global_view.close()
            self.global_view = None

    def on_train_end(self) -> None:
        """Synchronise the last steps; the module then holds the global model on every rank."""
        self.algorithm.finish()
        self.lightning_module.load_state_dict(self.algorithm.global_state_dict())

    def teardown(self) -> None:
        self.on_validation_end()
        if self.closure_hook is not None:
            self.algorithm.detach()
            self.closure_hook.remove()
            self.closure_hook = None
        super().teardown()

    def lightning_module_state_dict(self) -> dict[str, Any]:
        """The global model (a collective: Lightning asks every rank)."""
        if self.algorithm is None:
            return super().lightning_module_state_dict()
        return self.algorithm.global_state_dict()

    @contextlib.contextmanager
    def local_weights(self) -> Iterator[None]:
        """Inside, the module holds this rank's own weights, also during validation (a collective)."""
        if self.global_view is None:
            yield
            return
        self.on_validation_end()
        try:
            yield
        finally:
            self.on_validation_start()

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: _PATH, storage_options: Any | None = None) -> None:
        """Rank 0 writes Lightning's checkpoint; every rank first writes its lowcomm state beside it
        (not for a weights-only checkpoint)."""
        if self.algorithm is not None and "optimizer_states" in checkpoint:
            path = rank_state_path(filepath, self.global_rank)
            path.parent.mkdir(parents=True, exist_ok=True)
            with self.local_weights():
                state = self.algorithm.state_dict()
                write_atomically(path, lambda temporary: torch.save(state, temporary))
            self.barrier("lowcomm rank states")  # the checkpoint appears only once every rank's state is there
        super().save_checkpoint(checkpoint, filepath, storage_options)

    def remove_checkpoint(self, filepath: _PATH) -> None:
        rank_state_path(filepath, self.global_rank).unlink(missing_ok=True)
        super().remove_checkpoint(filepath)

    def load_checkpoint(self, checkpoint_path: _PATH, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self.resumed_from = checkpoint_path
        return super().load_checkpoint(checkpoint_path, *args, **kwargs)

    def load_optimizer_state_dict(self, checkpoint: dict[str, Any]) -> None:
        """This rank's lowcomm state (its optimizer's included) from beside the checkpoint."""
        path = rank_state_path(self.resumed_from, self.global_rank)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no lowcomm state for rank {self.global_rank} beside the checkpoint; "
                                    "resume from one LowCommStrategy saved, with as many processes")
        self.algorithm.load_state_dict(torch.load(path, map_location=self.root_device, weights_only=True))
