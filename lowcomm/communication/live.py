"""The traffic between worker groups through torchft: groups may die and rejoin while the others train.

Each worker group is one torchft replica group: its G ranks (one process each) run one torchft
``Manager`` each, over the group's own store, rank 0's serving the group's quorum and commits. Rank
i's :class:`LiveCommunicator` is the algorithm's communicator between groups for rank i's shard
(:class:`~lowcomm.communication.groups.GroupShards`): its process group connects rank i of every
live group, and healing sends rank i's state to rank i. Every training step that communicates is
one torchft step (a quorum from the lighthouse at its first communication, all its all-reduces
and NoLoCo's exchanges over torchft's reconfigurable gloo process group, a commit at
:meth:`LiveCommunicator.end_step`). One quorum per step, not per all-reduce: a DiLoCo
synchronisation with ``diagnostics`` is two all-reduces (the pseudo-gradient, then the workers'
spread), and a group that joined at the second quorum would run the first one's collective against
the others' second (gloo aborts on the mismatched sizes). The mean is over the groups in the
quorum; NoLoCo's pairs are drawn among them. A group that has died is left out of the next quorum once the lighthouse misses its
heartbeats; a group that is behind the others is healed: at its quorum a live peer sends it the
state lowcomm registered (z, the outer optimizer, coins, error-feedback residuals, step, schedule,
data position) over the same process group, and it sits out that step's all-reduces (its
contribution is zero, the mean is the others') and exchanges. A group is behind when it (re)starts,
or when its last step failed where a peer's succeeded.

An all-reduce or exchange that failed (a peer died during it, or did not answer within the
collective timeout) leaves its tensors as they were, the step is not committed, and
:meth:`LiveCommunicator.should_commit` says so to the strategy: DiLoCo (and PALSGD, Streaming
DiLoCo) takes no outer step and goes back to z, Local SGD and NoLoCo keep their models, a warm-up
step takes no optimizer step (the trainer logs ``step_failed``); the next quorum goes on without the
dead peer. The ranks of a group agree on whether a step failed (a collective within the group), so
that they all skip it alike.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
from torch.utils._pytree import tree_leaves

from lowcomm.communication.communicator import (
    Communicator, CommStats, Handle, dtype_buckets, flatten, payload_bytes, unflatten,
)

EXTRA = "pip install 'lowcomm[ft]'"


def require_torchft() -> None:
    """Raise a one-line ValueError naming the extra when torchft is not installed."""
    try:
        found = importlib.util.find_spec("torchft") is not None
    except ValueError:  # a module set to None in sys.modules: blocked
        found = False
    if not found:
        raise ValueError(f"fault_tolerance: live needs torchft, which is not installed: {EXTRA}")


class TooFewGroups(RuntimeError):
    """Fewer than ``min_groups`` groups were live for longer than the quorum timeout."""


@dataclass(frozen=True)
class LiveSettings:
    """How one group talks to the lighthouse and its peers, and how long it waits for them."""

    lighthouse: str
    group: int
    groups: int
    min_groups: int
    store_host: str
    store_port: int
    hostname: str
    quorum_timeout_s: float
    inner_rank: int = 0
    group_size: int = 1
    collective_timeout_s: float = 10.0
    quorum_retries: int = 20
    heartbeat_ms: int = 100
    manager_bind: str | None = None
    """The address group rank 0's torchft manager server listens on; None: every interface."""


@contextmanager
def manager_bound_to(host: str | None) -> Iterator[None]:
    """While torchft's ``Manager`` is built, its server listens on ``host`` (None: torchft's ``[::]``,
    every interface). torchft 0.2.0 takes no address for it, only a port, so its ``ManagerServer`` is
    given ``host`` in place of ``[::]`` here."""
    import torchft.manager as torchft_manager

    server = torchft_manager.ManagerServer

    def bound(**arguments: Any) -> Any:
        port = arguments["bind"].rsplit(":", 1)[1]
        return server(**arguments | {"bind": f"{host}:{port}"})

    if host is not None:
        torchft_manager.ManagerServer = bound
    try:
        yield
    finally:
        torchft_manager.ManagerServer = server


class CountingTransport:
    """torchft's process-group checkpoint transport, counting the bytes this group sends to heal others
    and keeping what it received for lowcomm to apply (:meth:`LiveCommunicator.take_healing_state`)."""

    def __init__(self, transport: Any, stats: CommStats) -> None:
        self.transport = transport
        self.stats = stats
        self.received: dict[str, Any] | None = None

    def metadata(self) -> str:
        return self.transport.metadata()

    def disallow_checkpoint(self) -> None:
        self.transport.disallow_checkpoint()

    def send_checkpoint(self, dst_ranks: list[int], step: int, state_dict: Any, timeout: timedelta) -> None:
        tensors = [leaf for leaf in tree_leaves(state_dict) if isinstance(leaf, torch.Tensor)]
        self.stats.bytes_sent += payload_bytes(tensors) * len(dst_ranks)
        self.transport.send_checkpoint(dst_ranks, step, state_dict, timeout)

    def recv_checkpoint(self, src_rank: int, metadata: str, step: int, timeout: timedelta) -> Any:
        state = self.transport.recv_checkpoint(src_rank, metadata, step, timeout)
        self.received = state["user"]["lowcomm"]
        return state

    def shutdown(self, wait: bool = True) -> None:
        self.transport.shutdown(wait)


class LiveCommunicator(Communicator):
    """Mean all-reduces and exchanges among the live worker groups, through a torchft ``Manager``.

    ``state_fn`` gives the state a peer that is behind receives; ``heal_fn`` takes such a state
    when this group is found behind inside a step (at its first quorum :meth:`join` returns it).
    ``rank`` is this group's index among the groups it was started with and ``world_size`` the
    number of groups in the current quorum (what the byte counters price a ring with). Its
    collectives belong to training steps: the strategy is made elastic
    (:meth:`~lowcomm.algorithms.periodic.PeriodicStrategy.make_elastic`) with :meth:`participants`.
    :attr:`events` collects ``group_left``, ``group_joined``, ``group_healed`` and ``step_failed``
    records for the trainer to log.
    """

    def __init__(
        self,
        settings: LiveSettings,
        state_fn: Callable[[], dict[str, Any]],
        heal_fn: Callable[[dict[str, Any]], None],
        within: Communicator | None = None,
    ) -> None:
        super().__init__(settings.group, settings.groups)
        self.settings = settings
        self.state_fn = state_fn
        self.heal_fn = heal_fn
        self.within = within
        self.manager: Any = None
        self.resumed_step: int | None = None
        self.failed_in_step = False
        self.members: set[int] | None = None
        self.step_membership: tuple[torch.Tensor, int] | None = None
        self.quorum_started = False
        self.quorum_ranks: list[int] = []  # the up-to-date groups' ranks in the quorum's process group
        self.step_started = time.perf_counter()
        self.events: list[dict[str, Any]] = []

    def connect(self) -> None:
        """Start this rank's torchft ``Manager`` (rank 0's serves the group and heartbeats to the
        lighthouse, which from then on counts the group as live: the others' quorums wait for it, up
        to the lighthouse's join timeout). Groups that start together connect at once, so that their
        first quorum has them all; a restarted group is connected at its first quorum, not while it
        still builds its model and the others would wait for it."""
        from torchft.checkpointing.pg_transport import PGTransport
        from torchft.manager import Manager
        from torchft.process_group import ProcessGroupGloo

        settings = self.settings
        timeout = timedelta(seconds=settings.collective_timeout_s)
        self.process_group = ProcessGroupGloo(timeout=timeout)
        self.transport = CountingTransport(PGTransport(self.process_group, timeout, torch.device("cpu")), self.stats)
        with manager_bound_to(settings.manager_bind):
            self.manager = Manager(
                pg=self.process_group,
                load_state_dict=None,
                state_dict=None,
                min_replica_size=settings.min_groups,
                use_async_quorum=True,
                timeout=timeout,
                quorum_timeout=timedelta(seconds=settings.quorum_timeout_s),
                connect_timeout=timedelta(seconds=settings.quorum_timeout_s),
                rank=settings.inner_rank,
                world_size=settings.group_size,
                store_addr=settings.store_host,
                store_port=settings.store_port,
                lighthouse_addr=settings.lighthouse,
                replica_id=f"lowcomm_group_{settings.group}",
                hostname=settings.hostname,
                heartbeat_interval=timedelta(milliseconds=settings.heartbeat_ms),
                checkpoint_transport=self.transport,
                init_sync=False,
                quorum_retries=settings.quorum_retries,
            )
        # lowcomm applies a healing state itself as soon as it arrives, before this step's all-reduce,
        # so that a rejoining group knows which collective the others are in (warm-up or outer step)
        self.manager.register_state_dict_fn("lowcomm", lambda _: None, self.state_fn)
        if self.resumed_step is not None:
            self.manager.load_state_dict({"step": self.resumed_step, "batches_committed": 0})

    def start_quorum(self) -> bool:
        """Ask the lighthouse for this step's quorum unless this step has one; True when it did.
        Raise :class:`TooFewGroups` when none with at least ``min_groups`` groups forms within the
        quorum timeout."""
        if self.quorum_started:
            return False
        self.step_started = time.perf_counter()
        self.failed_in_step = False
        if self.manager is None:
            self.connect()
        self.manager.start_quorum()
        self.quorum_started = True
        try:
            self.manager.wait_quorum()
        except Exception as error:  # the lighthouse's timeout comes back as the client's error
            raise TooFewGroups(
                f"fewer than {self.settings.min_groups} worker groups were live for "
                f"{self.settings.quorum_timeout_s:g} s (--hang-timeout): {str(error).splitlines()[0][:200]}"
            ) from None
        self.world_size = max(1, self.manager.num_participants())
        return True

    def resume_at(self, step: int) -> None:
        """A group resumed from a checkpoint of ``step``: groups resumed from older checkpoints (or
        none) are behind it, and are healed from it at their first quorum."""
        self.resumed_step = step
        if self.manager is not None:
            self.manager.load_state_dict({"step": step, "batches_committed": 0})

    def take_healing_state(self) -> dict[str, Any] | None:
        """The state a peer sent this group at its quorum (None when it was not behind)."""
        state, self.transport.received = self.transport.received, None
        return state

    def join(self) -> dict[str, Any] | None:
        """A (re)started group's first quorum: the state a peer sent if this group was behind, else
        None. The step's all-reduces (if it completes the others' step) follow in the same quorum;
        :meth:`end_step` ends it."""
        self.start_quorum()
        state = self.take_healing_state()
        if state is not None:
            self.events.append({"event": "group_joined", "group": self.rank, "live_groups": self.world_size + 1,
                                "stalled_s": round(time.perf_counter() - self.step_started, 3)})
        return state

    def end_step(self) -> None:
        """Commit this step's torchft step, if it had a quorum; on success record the groups that
        left or joined since the last committed step."""
        if not self.quorum_started:
            return
        self.quorum_started = False
        committed = self.manager.should_commit()
        membership, self.step_membership = self.step_membership, None
        if committed and membership is not None:
            self.note_members(*membership, time.perf_counter() - self.step_started)
        elif not committed:
            self.events.append({"event": "step_failed", "group": self.rank, "live_groups": self.world_size,
                                "stalled_s": round(time.perf_counter() - self.step_started, 3)})

    def begin(self) -> None:
        """This step's quorum, at its first communication; a group found behind takes a peer's state.
        The wait for the quorum (for the slowest group) and the healing count as communication."""
        started = time.perf_counter()
        if self.start_quorum():
            state = self.take_healing_state()
            if state is not None:  # behind inside a step: a peer's state replaces this group's
                self.heal_fn(state)
                self.events.append({"event": "group_healed", "group": self.rank, "live_groups": self.world_size + 1,
                                    "stalled_s": round(time.perf_counter() - self.step_started, 3)})
            self.stats.wait_s += time.perf_counter() - started

    def all_reduce_mean(
        self, tensors: list[torch.Tensor], async_op: bool = False, accounted: bool = True
    ) -> Handle:
        self.begin()
        return super().all_reduce_mean(tensors, async_op, accounted)

    def participants(self) -> tuple[int | None, int]:
        """This group's index among the groups in the step's quorum that are up to date (None while it
        is healed, or when the step has failed) and their number: one small mean all-reduce, which
        also tells each group its partners' ranks in the quorum's process group."""
        self.begin()
        ranks = torch.zeros(self.settings.groups, dtype=torch.float64)
        if self.manager.errored() is None:  # else the quorum's process group may not be configured
            ranks[self.rank] = self.process_group.parent.rank() + 1
        self.all_reduce_mean([ranks])
        ranks = (ranks * self.world_size).round().long().tolist()
        self.quorum_ranks = [rank - 1 for rank in ranks if rank > 0]
        if self.failed_in_step or ranks[self.rank] == 0:
            return None, len(self.quorum_ranks)
        return self.quorum_ranks.index(ranks[self.rank] - 1), len(self.quorum_ranks)

    def should_commit(self) -> bool:
        """False once a collective of this step has failed on any rank of this group."""
        return not self.failed_in_step

    def failed(self) -> bool:
        """Whether a collective of this step has failed on any rank of this group (torchft then skips
        the rest of the step's): a collective within the group, so that its ranks agree. The answer
        stays in :attr:`failed_in_step` until the next quorum."""
        failed = self.manager.errored() is not None
        if self.within is not None:
            flag = torch.tensor([float(failed)], dtype=torch.float64)
            self.within.all_reduce_mean([flag], accounted=False)
            failed = bool(flag > 0)
        self.failed_in_step |= failed
        return failed

    def _all_reduce_mean(self, tensors: list[torch.Tensor]) -> Callable[[], None]:
        live = self.world_size
        membership = torch.zeros(self.settings.groups, dtype=torch.float64)
        membership[self.rank] = 1.0
        buckets = dtype_buckets(tensors) + [[membership]]
        pending = []
        for bucket in buckets:
            flat = flatten(bucket)
            pending.append((bucket, flat, self.manager.allreduce(flat)))

        def finish() -> None:
            for _, _, work in pending:
                work.wait()
            if self.failed():
                return
            for bucket, flat, _ in pending:
                for tensor, reduced in zip(bucket, unflatten(flat, bucket)):
                    tensor.copy_(reduced)
            if self.step_membership is None:
                self.step_membership = (membership, live)

        return finish

    def note_members(self, membership: torch.Tensor, live: int, seconds: float) -> None:
        """Record the groups that left or joined since the last committed step (a group that is being
        healed sits out its step's all-reduces: the others see it join at the next step)."""
        members = {g for g, share in enumerate((membership * live).round().tolist()) if share > 0} | {self.rank}
        if self.members is not None:
            for kind, groups in (("group_left", self.members - members), ("group_joined", members - self.members)):
                for group in sorted(groups):
                    self.events.append(
                        {"event": kind, "group": group, "live_groups": len(members), "stalled_s": round(seconds, 3)}
                    )
        self.members = members

    def _exchange(self, tensors: list[torch.Tensor], peers: list[int]) -> list[list[torch.Tensor]]:
        """Point-to-point with the peers of :meth:`participants` (indices among the up-to-date groups)
        over the quorum's process group; an error (a peer died) fails the step, as in an all-reduce."""
        self.begin()
        flat = flatten(tensors)
        inboxes = [torch.zeros_like(flat) for _ in peers]
        if self.manager.errored() is None:
            try:
                works = [self.process_group.recv([inbox], self.quorum_ranks[peer], 0)
                         for peer, inbox in zip(peers, inboxes)]
                works += [self.process_group.send([flat], self.quorum_ranks[peer], 0) for peer in peers]
                for work in works:
                    work.wait()
            except Exception as error:  # gloo's errors when a peer is gone come in several kinds
                self.manager.report_error(error)
        self.failed()
        return [unflatten(inbox, tensors) for inbox in inboxes]

    def _all_gather_object(self, value: Any) -> list[Any]:
        raise NotImplementedError("a live group's bookkeeping (checkpoints, totals) stays inside the group")

    def _broadcast(self, tensors: list[torch.Tensor], src: int) -> None:
        """Every group builds the same initial model from the seed; a group that joins later is healed
        at its first quorum, so the initial broadcast sends nothing."""

    def shutdown(self) -> None:
        if self.manager is not None:
            self.manager.shutdown(wait=False)

