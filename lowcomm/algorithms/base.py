"""What every algorithm shares: one worker's training step, driven by the user's own loop.

A strategy wraps the user's model and inner optimizer. Two ways drive it, with the same result:

- Hook mode: inside ``with strategy:`` the user's loop runs the forward pass through
  ``strategy.model``, ``loss.backward()``, their own clipping, ``optimizer.step()`` (or a
  ``GradScaler``'s) and ``optimizer.zero_grad()``. The optimizer's step hooks count each step the
  inner optimizer is asked to take (a step a ``GradScaler`` skips is not one), clip with
  ``max_grad_norm``, scale the inner learning rates where the algorithm says so and then run the
  algorithm's synchronisations. A synchronous step (DDP's rule: a warm-up step) averages the
  gradients over the workers when the backward pass through the model's output ends, as DDP does,
  so the user's clipping and a ``GradScaler`` see the averaged gradients; around every micro-batch
  but the last, ``strategy.no_sync()`` defers it. Leaving the block calls :meth:`Strategy.finish`.
- :meth:`Strategy.step` takes a closure that runs the forward pass and returns the loss (or one
  closure per micro-batch), back-propagates and calls ``optimizer.step()`` under the same hooks.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from itertools import chain
from typing import Any, ClassVar, Literal

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.nn.parallel import DistributedDataParallel
from torch.utils._pytree import tree_leaves

from lowcomm.algorithms.options import Option, options_docstring
from lowcomm.communication.communicator import (
    CommStats, Communicator, Handle, ProcessGroupCommunicator, payload_bytes,
)
from lowcomm.communication.ddp_hooks import CountingState, counting_allreduce_hook
from lowcomm.communication.groups import GroupShards, inner_kind, to_plain

Closure = Callable[[], torch.Tensor]


class Strategy:
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
        options: the algorithm's own (:meth:`options`: declared once, in ``OPTIONS``).
    """

    OPTIONS: ClassVar[tuple[Option, ...]] = ()
    """The options this class adds to its bases', or changes in them (see :meth:`options`)."""

    min_workers: ClassVar[int] = 1
    """The fewest workers the algorithm runs with."""

    runs_live: ClassVar[bool] = False
    """Whether it runs with live fault tolerance (``--fault-tolerance live``): its traffic between
    workers is blocking and belongs to training steps, and a failed synchronisation has a rule."""

    traffic: ClassVar[Literal["all_reduce", "gossip"]] = "all_reduce"
    """How its traffic between workers travels, for the network model: ring all-reduces among all
    workers, or exchanges within the pairs of :func:`~lowcomm.algorithms.noloco.gossip_groups`."""

    SHARDED_STATE: ClassVar[tuple[str, ...]] = ()
    """The entries of :meth:`state_dict` that hold per-parameter state keyed by the parameter's name,
    each value this rank's shard of it (with worker groups: :attr:`shards`)."""

    RANK_STATE: ClassVar[tuple[str, ...]] = ()
    """The entries of :meth:`state_dict` that each rank holds for its shards as a whole (error-feedback
    residuals): resumed in another group size, they start afresh."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """State the class's options (its declarations, merged along its bases) in its docstring."""
        super().__init_subclass__(**kwargs)
        if cls.__doc__ and cls.options():
            cls.__doc__ = f"{inspect.cleandoc(cls.__doc__)}\n\n{options_docstring(cls.options())}\n"

    @classmethod
    def options(cls) -> dict[str, Option]:
        """The keyword arguments of the constructor besides the model, the optimizer, ``mesh``,
        ``communicator`` and ``max_grad_norm``: the ``OPTIONS`` of the class and of its bases, where
        a class's declaration of a name replaces its base's."""
        return {option.name: option for klass in reversed(cls.__mro__) for option in vars(klass).get("OPTIONS", ())}

    @classmethod
    def resolve_options(cls, given: Mapping[str, Any], lrs: Iterable[float] = ()) -> dict[str, Any]:
        """``given`` with every declared default filled in, each value checked by its declaration and
        the rules between them (:meth:`check_options`) for each peak inner learning rate of ``lrs``;
        a one-line error for a keyword the class does not declare (TypeError) or a value it refuses."""
        declared = cls.options()
        if unknown := [name for name in given if name not in declared]:
            takes = ", ".join(declared) or "no options"
            raise TypeError(f"{cls.__name__}: unknown option {unknown[0]!r}; it takes {takes}")
        options = {name: option.checked(given.get(name, option.default)) for name, option in declared.items()}
        for lr in dict.fromkeys(lrs):
            cls.check_options(lr, options)
        return options

    @classmethod
    def check_options(cls, lr: float, options: dict[str, Any]) -> None:
        """Reject options that cannot run together, before any worker starts: ``lr`` the peak inner
        learning rate, ``options`` as :meth:`resolve_options` returns them (each already meets its
        own check). None here; a subclass adds its rules."""

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
        **options: Any,
    ) -> None:
        lrs = [group.get("initial_lr", group["lr"]) for group in optimizer.param_groups]
        self.option_values = self.resolve_options(options, lrs)  # every declared option: given, or its default
        if isinstance(model, DistributedDataParallel):
            raise ValueError("model: it is already wrapped in DistributedDataParallel; pass the plain module "
                             "(model.module): the strategy wraps it where DDP belongs, as strategy.model")
        self.param_names = [name for name, p in model.named_parameters() if p.requires_grad]
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("model: it has no trainable parameters")
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        if held != {id(p) for p in self.params}:
            raise ValueError("optimizer: it must hold exactly the model's trainable parameters; build it from "
                             "the parameters of the model given to the strategy")
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
        self.buffers = [b for b in model.buffers() if b.is_floating_point()]
        self.step_count = 0
        self.previous_step_count = 0  # before the last step
        self.run_steps: int | None = None  # the loop's last step, where it tells (adaptive local steps end there)
        self.hooks: list[Any] = []  # hook mode's, while attached
        self.sync_gradients = True  # False inside no_sync()
        self.averaging_queued = False  # a gradient average waits for the end of this backward pass
        self.gradients_averaged = False  # this step's gradients were averaged over the workers
        self.saved_lrs: list[float] = []
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

    # The step. Hook mode (``with strategy:``) and :meth:`step` share it: the user's optimizer.step()
    # runs :meth:`before_update` (clipping, the inner learning-rate scale, or no inner update at all)
    # and :meth:`after_update` (the algorithm's synchronisations) around the inner optimizer's update.

    def __enter__(self) -> Strategy:
        """Hook mode: inside the block, the user's own ``optimizer.step()`` drives the algorithm."""
        self.attach()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: Any) -> None:
        """Leave hook mode; after a normal exit, :meth:`finish` (a collective)."""
        self.detach()
        if exc_type is None:
            self.finish()

    def attach(self) -> bool:
        """Install the optimizer's step hooks and the model's forward hook; False if already installed."""
        if self.hooks:
            return False
        self.hooks = [
            self.optimizer.register_step_pre_hook(self.before_optimizer_step),
            self.optimizer.register_step_post_hook(self.after_optimizer_step),
            self.local_model.register_forward_hook(self.after_forward),
        ]
        return True

    def detach(self) -> None:
        """Remove what :meth:`attach` installed."""
        for hook in self.hooks:
            hook.remove()
        self.hooks = []

    @contextlib.contextmanager
    def no_sync(self) -> Iterator[None]:
        """Around the backward passes of every micro-batch but the last: their gradients accumulate
        without being averaged (over the group's ranks, or over the workers in a synchronous step)."""
        self.sync_gradients = False
        try:
            with self.micro_batch_context(last=False):
                yield
        finally:
            self.sync_gradients = True

    def averages_gradients(self, step: int) -> bool:
        """Whether step ``step`` averages the gradients over all workers before the inner update."""
        return False

    def next_step_count(self) -> int:
        """The step count after the step about to be taken: one more (adaptive local steps may count more)."""
        return self.step_count + 1

    @property
    def aligned(self) -> bool:
        """Whether every worker's step count is this one now, so that a loop may run a collective of its
        own (an evaluation, a checkpoint, a clock check): always, but inside an uneven round of
        adaptive local steps."""
        return True

    def next_step_needs_batch(self) -> bool:
        """Whether the next ``optimizer.step()`` uses a gradient. Where it does not (a PALSGD
        pseudo-synchronisation), a loop may skip the batch and call ``optimizer.step()`` directly."""
        return True

    def after_forward(self, module: nn.Module, args: Any, output: Any) -> None:
        """Forward hook: before a synchronous step, the backward pass through this output ends by
        averaging the gradients over all workers (after DDP's or FSDP's own reductions), as DDP does."""
        if not (torch.is_grad_enabled() and self.averages_gradients(self.step_count + 1)):
            return
        self.gradients_averaged = False  # new gradients are coming (a step the scaler skipped left the flag)
        if not self.sync_gradients:
            return
        for tensor in tree_leaves(output):
            if isinstance(tensor, torch.Tensor) and tensor.requires_grad:
                tensor.register_hook(self.backward_started)

    def backward_started(self, grad: torch.Tensor) -> None:
        """Queue the gradient average to run when this backward pass ends: queued again from the end,
        it runs after every callback queued during the pass (DDP's and FSDP's)."""
        if not self.averaging_queued:
            self.averaging_queued = True
            engine = torch.autograd.Variable._execution_engine
            engine.queue_callback(lambda: engine.queue_callback(self.average_after_backward))

    def average_after_backward(self) -> None:
        self.averaging_queued = False
        self.average_gradients()
        self.gradients_averaged = True

    def before_optimizer_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        """Optimizer pre-step hook: count the step, then clip and scale the learning rates for the
        inner update, or drop the gradients where the step takes none."""
        if any(a is not None for a in args[1:]) or kwargs.get("closure") is not None:  # args[0]: the optimizer
            raise ValueError("optimizer.step(): in lowcomm's hook mode call it without a closure, after the "
                             "backward pass (run closure() first)")
        self.previous_step_count, self.step_count = self.step_count, self.next_step_count()
        if self.counting is not None:
            self.counting.end_step()
        if self.averages_gradients(self.step_count) and not self.gradients_averaged:
            self.average_gradients()  # the loss did not come through the model's forward pass
        lr_scale = self.before_update()
        if lr_scale is None:
            self.optimizer.zero_grad(set_to_none=True)
            return
        if self.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
        if lr_scale != 1.0:
            self.saved_lrs = [group["lr"] for group in self.optimizer.param_groups]
            for group in self.optimizer.param_groups:
                group["lr"] = group["lr"] * lr_scale

    def after_optimizer_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        """Optimizer post-step hook: restore the learning rates, then the algorithm's part of the step."""
        for group, lr in zip(self.optimizer.param_groups, self.saved_lrs):
            group["lr"] = lr
        self.saved_lrs = []
        self.gradients_averaged = False
        self.after_update()

    def before_update(self) -> float | None:
        """Called once the step is counted: the factor of the inner learning rates for this step's
        update, or None for no update. A synchronous step whose average did not commit takes none."""
        if self.averages_gradients(self.step_count) and not self.committed():
            return None
        return 1.0

    def committed(self, handle: Handle | None = None) -> bool:
        """Complete a synchronisation's communication (``handle``, where it is still in flight) and
        tell whether it took effect (:meth:`Communicator.should_commit`): every algorithm asks here,
        once per synchronisation. One that did not (live fault tolerance: a peer died during it) left
        its tensors as they were."""
        if handle is not None:
            handle.wait()
        return self.comm.should_commit()

    def after_update(self) -> None:
        """Called after the inner optimizer's update (or in its place): the algorithm's own work."""

    def step(self, closure: Closure | Sequence[Closure]) -> torch.Tensor | None:
        """One step, the forward passes in ``closure`` (or one closure per micro-batch, each loss
        scaled by 1/len before its backward pass): back-propagate, then ``optimizer.step()`` as in
        hook mode. Return the mean loss, or None where the step computed no batch."""
        closures = checked_closures(closure)
        attached = self.attach()
        try:
            if not self.next_step_needs_batch():
                self.optimizer.step()
                return None
            self.optimizer.zero_grad(set_to_none=True)
            total = torch.zeros((), device=self.params[0].device)
            for i, micro_batch in enumerate(closures):
                with self.no_sync() if i < len(closures) - 1 else contextlib.nullcontext():
                    loss = micro_batch()
                    (loss / len(closures)).backward()
                total += loss.detach()
            self.optimizer.step()
            return total / len(closures)
        finally:
            if attached:
                self.detach()

    def finish(self) -> None:
        """Synchronise what was trained since the last synchronisation, so that the global model
        holds every step (a collective: call it on every rank). Leaving ``with strategy:`` calls it."""
        self.wait()

    def global_values(self) -> tuple[list[torch.Tensor], list[torch.Tensor]] | None:
        """The global model as this rank's shards of the trainable parameters and the floating-point
        buffers (a collective where the algorithm averages on demand); None where the local model is it."""
        return None

    def global_state_dict(self) -> dict[str, torch.Tensor]:
        """The model to evaluate and save, whole tensors on every rank: the global model. A collective
        for every algorithm: call it on every rank."""
        values = self.global_values()
        if values is None:
            return {k: to_plain(v.detach()).clone() for k, v in self.local_model.state_dict().items()}
        return self.state_dict_with(*values)

    @contextlib.contextmanager
    def global_weights(self) -> Iterator[nn.Module]:
        """Inside, ``strategy.model`` holds the global model (to evaluate it without a second model);
        the local weights come back on exit. A collective, like :meth:`global_state_dict`."""
        values = self.global_values()
        if values is None:
            yield self.model
            return
        local = self.shards.local() + self.buffers
        saved = [t.clone() for t in local]
        with torch.no_grad():
            for t, value in zip(local, values[0] + values[1]):
                t.copy_(value)
        self.shards.complete()
        try:
            yield self.model
        finally:
            with torch.no_grad():
                for t, value in zip(local, saved):
                    t.copy_(value)
            self.shards.complete()

    def state_dict_with(self, shards: list[torch.Tensor], buffers: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """The model's state dict, whole plain tensors, with the trainable parameters' shards and the
        floating-point buffers replaced by ``shards`` and ``buffers`` (a collective within a group)."""
        value_of = {id(t): v for t, v in zip(self.params + self.buffers, self.shards.full(shards) + buffers)}
        model = self.local_model
        named = chain(model.named_parameters(remove_duplicate=False), model.named_buffers(remove_duplicate=False))
        replacement = {name: value_of[id(t)] for name, t in named if id(t) in value_of}
        return {
            key: (replacement[key] if key in replacement else to_plain(tensor)).detach().to(tensor.device, copy=True)
            for key, tensor in model.state_dict().items()
        }

    def wait(self) -> None:
        """Block until every communication this strategy started has completed (call it before
        dropping the strategy or leaving the process group; results not yet due stay unapplied)."""

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume this worker exactly: model, optimizers, counters. Tensors held
        per trainable parameter (and optimizer state) are keyed by the parameter's name."""
        return {
            "step": self.step_count,
            "model": self.local_model.state_dict(),
            "optimizer": optimizer_state_by_name(self.optimizer, self.named(self.params)),
            "comm_stats": self.comm.stats.as_dict(),
            "inner_comm_stats": self.inner_comm_stats.as_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step_count = self.previous_step_count = int(state["step"])
        self.local_model.load_state_dict(state["model"])
        load_optimizer_state_by_name(self.optimizer, self.named(self.params), state["optimizer"])
        self.comm.stats.load(state["comm_stats"])
        if self.inner_comm is not None and "inner_comm_stats" in state:
            self.inner_comm.stats.load(state["inner_comm_stats"])

    def distributed_state_dict(self) -> dict[str, Any]:
        """:meth:`state_dict` with a mesh, each shard in ``SHARDED_STATE`` described as a part of the
        DTensor it is a shard of (see :meth:`GroupShards.described`), for DCP to reshard."""
        return self.map_shards(self.state_dict(), lambda t, i: self.shards.described(t, i, self.mesh))

    def load_distributed_state_dict(self, state: dict[str, Any]) -> None:
        """Load a state shaped as :meth:`distributed_state_dict`'s (this rank's parts of its DTensors)."""
        shapes = [shard.shape for shard in self.shards.local()]
        self.load_state_dict(self.map_shards(state, lambda t, i: t.to_local().reshape(shapes[i])))

    def map_shards(self, state: dict[str, Any],
                   function: Callable[[torch.Tensor, int], torch.Tensor]) -> dict[str, Any]:
        """``state`` with each shard of the entries in ``SHARDED_STATE`` replaced by ``function(shard,
        index of its parameter)``; a shard is a tensor of at least one dimension under a parameter's name."""
        index_of = {name: i for i, name in enumerate(self.param_names)}

        def walk(node: Any, index: int | None) -> Any:
            if isinstance(node, dict):
                return {key: walk(value, index_of.get(key, index)) for key, value in node.items()}
            if isinstance(node, list):
                return [walk(value, index) for value in node]
            if isinstance(node, torch.Tensor) and index is not None and node.dim() > 0:
                return function(node, index)
            return node

        return {key: walk(value, None) if key in self.SHARDED_STATE else value for key, value in state.items()}

    def named(self, tensors: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """``tensors``, one per trainable parameter in order (this rank's shards of z, say), keyed by
        the parameter's name."""
        return dict(zip(self.param_names, tensors))

    def load_named(self, tensors: Sequence[torch.Tensor], saved: dict[str, torch.Tensor]) -> None:
        """Copy ``saved`` (as :meth:`named` keys it) into ``tensors``, one per trainable parameter."""
        for name, tensor in zip(self.param_names, tensors):
            tensor.copy_(saved[name])


def optimizer_state_by_name(optimizer: torch.optim.Optimizer, names: dict[str, torch.Tensor]) -> dict[str, Any]:
    """``optimizer.state_dict()`` with each parameter's index replaced by its name in ``names``."""
    name_of = {id(tensor): name for name, tensor in names.items()}
    order = [name_of[id(p)] for group in optimizer.param_groups for p in group["params"]]
    state = optimizer.state_dict()
    return {
        "state": {order[index]: value for index, value in state["state"].items()},
        "param_groups": [{**group, "params": [order[i] for i in group["params"]]} for group in state["param_groups"]],
    }


def load_optimizer_state_by_name(optimizer: torch.optim.Optimizer, names: dict[str, torch.Tensor],
                                 state: dict[str, Any]) -> None:
    """Load a state :func:`optimizer_state_by_name` returned into ``optimizer`` (over the same names)."""
    name_of = {id(tensor): name for name, tensor in names.items()}
    index = {name_of[id(p)]: i for i, p in enumerate(p for group in optimizer.param_groups for p in group["params"])}
    optimizer.load_state_dict({
        "state": {index[name]: value for name, value in state["state"].items()},
        "param_groups": [{**group, "params": [index[name] for name in group["params"]]}
                         for group in state["param_groups"]],
    })


def checked_closures(closure: Closure | Sequence[Closure]) -> list[Closure]:
    """``closure`` as a non-empty list of callables, or a one-line error that says what to pass."""
    if isinstance(closure, torch.Tensor):
        raise TypeError("closure: got a tensor; pass a function that runs the forward pass and returns the loss, "
                        "or compute the loss yourself inside `with strategy:` and call loss.backward() and "
                        "optimizer.step()")
    closures = [closure] if callable(closure) else list(closure) if isinstance(closure, Sequence) else None
    if closures is None or not all(callable(c) for c in closures):
        raise TypeError(f"closure: expected a function returning the loss, or a list of them; got "
                        f"{type(closure).__name__}")
    if not closures:
        raise ValueError("closure: at least one closure is needed")
    return closures


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

