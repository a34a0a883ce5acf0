"""What every algorithm shares: owning one worker's training step.

A strategy wraps the user's model and inner optimizer. The user hands :meth:`Strategy.step` a
closure that runs the forward pass and returns the loss (or a list of closures, one per
micro-batch, for gradient accumulation); the strategy decides whether to call it, runs the
backward pass, clips, steps the inner optimizer and talks to the other workers.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar, Literal

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.nn.parallel import DistributedDataParallel

from lowcomm.algorithms.options import Option
from lowcomm.communication.communicator import CommStats, Communicator, ProcessGroupCommunicator, payload_bytes
from lowcomm.communication.ddp_hooks import CountingState, counting_allreduce_hook
from lowcomm.communication.groups import GroupShards, inner_kind, to_plain

Closure = Callable[[], torch.Tensor]


class Strategy(ABC):
    """One worker's view of a data-parallel algorithm.

    With worker groups (``mesh`` from :func:`lowcomm.worker_groups`), a worker is a group of G
    ranks: the algorithm runs between groups over ``mesh["group"]`` on each rank's shard of the
    parameters (:class:`~lowcomm.communication.groups.GroupShards`), and inside a group the ranks
    train one model with FSDP2 (when the parameters are DTensors, see
    :func:`lowcomm.shard_within_groups`) or with DistributedDataParallel over ``mesh["inner"]``.

    Args:
        model: the local model; its parameters are broadcast from worker 0 at construction.
        optimizer: any ``torch.optim.Optimizer`` over exactly the model's trainable parameters.
        mesh: worker groups; None (or a group size of 1) makes every rank a worker.
        communicator: between workers; defaults to the default ``torch.distributed`` process group. With a
            mesh it connects the groups (world size K, this rank's group as its rank: a
            :class:`~lowcomm.communication.modelled.ModelledCommunicator` around one over
            ``mesh["group"]``, say) and defaults to one over ``mesh["group"]``. A mesh of one group
            (a live worker group, a world of its own) takes any communicator between groups.
        max_grad_norm: clip the (averaged, where averaged) gradient norm to this value.
    """

    OPTIONS: ClassVar[tuple[Option, ...]] = ()
    """The options this class adds to its bases', or changes in them (see :meth:`options`)."""

    min_workers: ClassVar[int] = 1
    """The fewest workers the algorithm runs with."""

    traffic: ClassVar[Literal["all_reduce", "gossip"]] = "all_reduce"
    """How its traffic between workers travels, for the network model: ring all-reduces among all
    workers, or exchanges within the pairs of :func:`~lowcomm.algorithms.noloco.gossip_groups`."""

    @classmethod
    def options(cls) -> dict[str, Option]:
        """The keyword arguments of the constructor besides the model, the optimizer, ``mesh``,
        ``communicator`` and ``max_grad_norm``: the ``OPTIONS`` of the class and of its bases, where
        a class's declaration of a name replaces its base's."""
        return {option.name: option for klass in reversed(cls.__mro__) for option in vars(klass).get("OPTIONS", ())}

    @classmethod
    def check_option(cls, name: str, value: Any) -> Any:
        """``value`` checked by the rule this class declares for option ``name``."""
        return cls.options()[name].checked(value)

    @classmethod
    def check_options(cls, lr: float, options: dict[str, Any]) -> None:
        """Reject, before any worker starts, options this algorithm cannot run with: ``lr`` the peak
        inner learning rate, ``options`` the constructor's keyword arguments with every default filled
        in. Each declared option meets its own check; a subclass adds the rules between options. The
        constructor applies the same rules."""
        declared = cls.options()
        for name, value in options.items():
            if name in declared:
                declared[name].checked(value)

    @classmethod
    def skipped_batch_share(cls, options: dict[str, Any]) -> float:
        """The expected share of the steps after the warm-up that skip their batch (take no forward
        or backward pass) with ``options`` (as for :meth:`check_options`): 0, every step trains."""
        return 0.0

    @classmethod
    def check_workers(cls, argument: str, count: int, unit: str = "workers") -> None:
        """Reject fewer than :attr:`min_workers` workers (with worker groups: groups), naming ``argument``."""
        if count < cls.min_workers:
            raise ValueError(f"{argument}: {cls.__name__.lower()} needs at least {cls.min_workers} {unit}")

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        mesh: DeviceMesh | None = None,
        communicator: Communicator | None = None,
        max_grad_norm: float | None = None,
    ) -> None:
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("model: it has no trainable parameters")
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        if held != {id(p) for p in self.params}:
            raise ValueError("optimizer: it must hold exactly the model's trainable parameters")
        if max_grad_norm is not None and not max_grad_norm > 0:
            raise ValueError(f"max_grad_norm: must be > 0, got {max_grad_norm}")
        if mesh is not None and mesh.mesh_dim_names != ("group", "inner"):
            raise ValueError(f"mesh: its dimensions must be ('group', 'inner'), got {mesh.mesh_dim_names}")
        if mesh is not None and communicator is not None and mesh["group"].size() > 1 and (
            communicator.world_size, communicator.rank
        ) != (mesh["group"].size(), mesh.get_local_rank("group")):
            raise ValueError("communicator: with a mesh it must connect the groups (world size K, this rank's "
                             "group as its rank)")
        self.local_model = model
        self.optimizer = optimizer
        self.mesh = mesh
        if communicator is None:
            communicator = ProcessGroupCommunicator(None if mesh is None else mesh["group"].get_group())
        self.comm = communicator
        self.inner_comm: ProcessGroupCommunicator | None = None
        if mesh is not None:
            self.inner_comm = ProcessGroupCommunicator(mesh["inner"].get_group())
        self.inner = inner_kind(self.params, mesh)
        self.shards = GroupShards(self.params, self.inner, self.inner_comm)
        if self.inner == "fsdp":
            from lowcomm.communication.fsdp import count_fsdp_traffic  # FSDP2 is loaded only where it is used

            count_fsdp_traffic(model, self.inner_comm.stats)
        self.max_grad_norm = max_grad_norm
        self.step_count = 0
        self.events: list[dict[str, Any]] = []  # notable things that happened, for the caller to log
        self.sync_diagnostics: dict[str, float | None] = {}  # of the last outer step, for the caller to log
        if mesh is None:
            self.check_workers("communicator", self.comm.world_size)
        else:
            self.check_workers("mesh", self.comm.world_size, "groups")
        self.ddp, self.counting = self.data_parallel()
        self.broadcast_initial_state()

    def data_parallel(self) -> tuple[DistributedDataParallel | None, CountingState | None]:
        """The DistributedDataParallel wrapper that trains the model inside a group (DDP inside)."""
        if self.inner != "ddp":
            return None, None
        return wrap_ddp(self.local_model, self.inner_comm, self.inner_comm.stats)

    def broadcast_initial_state(self) -> None:
        """Start every worker from worker 0's parameters and buffers (with groups: each rank's shard
        of the trainable parameters from the first group, then the group completes the model)."""
        if self.inner is None:
            self.comm.broadcast([t.data for t in self.local_model.state_dict().values()], src=0)
            return
        self.comm.broadcast(self.shards.local() + [b.data for b in self.local_model.buffers()], src=0)
        self.shards.complete()

    def micro_batch_context(self, last: bool) -> contextlib.AbstractContextManager[Any]:
        """Entered around each micro-batch's backward pass: DDP and FSDP average only the last's
        (FSDP then reduce-scatters the accumulated gradients)."""
        if last:
            return contextlib.nullcontext()
        if self.ddp is not None:
            return self.ddp.no_sync()
        if self.inner == "fsdp":
            return gradient_sync_off(self.local_model)
        return contextlib.nullcontext()

    @property
    def model(self) -> nn.Module:
        """The module to call inside the closure (the DistributedDataParallel wrapper where there is one)."""
        return self.local_model if self.ddp is None else self.ddp

    @property
    def comm_stats(self) -> CommStats:
        """Traffic between workers (with groups: between groups, the slow link)."""
        return self.comm.stats

    @property
    def inner_comm_stats(self) -> CommStats:
        """Traffic within groups (zeros without them)."""
        return CommStats() if self.inner_comm is None else self.inner_comm.stats

    def average_gradients(self) -> None:
        """Average the gradients over all workers (with groups: the gradient shards across groups,
        the group having averaged them inside already), making zero gradients where there are none."""
        self.comm.all_reduce_mean(self.shards.grads())
        self.shards.complete_grads()

    @abstractmethod
    def step(self, closure: Closure | Sequence[Closure]) -> torch.Tensor | None:
        """Take one training step; return the mean loss, or ``None`` if no batch was computed."""

    def _synchronous_step(self, closure: Closure | Sequence[Closure]) -> torch.Tensor:
        """DDP's rule: back-propagate, average the gradients over all workers, step."""
        loss = self._backward(closure)
        self.averaged_step()
        return loss

    def averaged_step(self) -> None:
        """Average the gradients over all workers and step; a failed average (live fault tolerance)
        takes no step."""
        self.average_gradients()
        if not self.comm.step_failed():
            self._optimizer_step()

    def global_state_dict(self) -> dict[str, torch.Tensor]:
        """The model to evaluate and save, whole tensors on every rank: the global model (a collective)."""
        return {k: to_plain(v.detach()).clone() for k, v in self.local_model.state_dict().items()}

    def wait(self) -> None:
        """Block until every communication this strategy started has completed (call it before
        dropping the strategy or leaving the process group; results not yet due stay unapplied)."""

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume this worker exactly: model, optimizers, counters, RNG."""
        return {
            "step": self.step_count,
            "model": self.local_model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "comm_stats": self.comm.stats.as_dict(),
            "inner_comm_stats": self.inner_comm_stats.as_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step_count = int(state["step"])
        self.local_model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.comm.stats.load(state["comm_stats"])
        if self.inner_comm is not None and "inner_comm_stats" in state:
            self.inner_comm.stats.load(state["inner_comm_stats"])

    def _backward(self, closure: Closure | Sequence[Closure]) -> torch.Tensor:
        """Zero the gradients, run every micro-batch closure and back-propagate its share."""
        closures = [closure] if callable(closure) else list(closure)
        if not closures:
            raise ValueError("closure: at least one closure is needed")
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.params[0].device)
        for i, micro_batch in enumerate(closures):
            with self.micro_batch_context(last=i == len(closures) - 1):
                loss = micro_batch()
                (loss / len(closures)).backward()
            total += loss.detach()
        if self.counting is not None:
            self.counting.end_step()
        return total / len(closures)

    def _optimizer_step(self, lr_scale: float = 1.0) -> None:
        """Clip, then step the inner optimizer with its learning rates scaled by ``lr_scale``."""
        if self.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
        if lr_scale == 1.0:
            self.optimizer.step()
            return
        saved = [group["lr"] for group in self.optimizer.param_groups]
        for group in self.optimizer.param_groups:
            group["lr"] = group["lr"] * lr_scale
        self.optimizer.step()
        for group, lr in zip(self.optimizer.param_groups, saved):
            group["lr"] = lr


@contextlib.contextmanager
def gradient_sync_off(model: nn.Module) -> Iterator[None]:
    """Inside, an FSDP2 model's backward passes accumulate unsharded gradients without reducing them."""
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def wrap_ddp(
    model: nn.Module,
    comm: ProcessGroupCommunicator,
    stats: CommStats,
    within: CommStats | None = None,
    crossing_links: int = 0,
    **options: Any,
) -> tuple[DistributedDataParallel, CountingState]:
    """torch's DistributedDataParallel over ``comm``'s process group, its traffic charged to ``stats``
    (by the returned state, whose ``end_step`` closes each step's count; with ``within``, split as
    :class:`CountingState` says). Rank 0 first broadcasts its state, charged to ``stats``."""
    device = next(model.parameters()).device
    ddp = DistributedDataParallel(
        model, device_ids=[device] if device.type == "cuda" else None, process_group=comm.group, **options
    )
    stats.operations += 1  # DistributedDataParallel broadcasts rank 0's state itself
    if comm.rank == 0:
        stats.bytes_sent += payload_bytes(list(model.state_dict().values()))
    counting = CountingState(comm, stats=stats, within=within, crossing_links=crossing_links)
    ddp.register_comm_hook(counting, counting_allreduce_hook)
    return ddp, counting

