"""The traffic between worker groups through torchft: groups may die and rejoin while the others train.

Each worker group is one torchft replica group. Its :class:`LiveCommunicator` is the algorithm's
communicator between groups: every mean all-reduce is one torchft step (a quorum from the
lighthouse, the all-reduce over torchft's reconfigurable gloo process group, a commit). The mean is
over the groups in the quorum. A group that has died is left out of the next quorum once the
lighthouse misses its heartbeats; a group that (re)starts behind the others is healed: at its first
quorum a live peer sends it the state lowcomm registered (z, the outer optimizer, coins,
error-feedback residuals, step, schedule, data position) over the same process group, and it sits
out that one all-reduce (its contribution is zero, the mean is the others').

A step whose all-reduce failed (a peer died during it) or whose commit was refused comes back as
zeros, the mean of no contribution: DiLoCo and PALSGD read their finite flag as 0 and skip the
outer step, every group alike, as for an outer step where every worker was non-finite.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
from torch.utils._pytree import tree_leaves

from lowcomm.communication.communicator import (
    Communicator, CommStats, Handle, dtype_buckets, flatten, payload_bytes, unflatten,
)

EXTRA = "pip install 'lowcomm[ft]'"
LIVE_ALGORITHMS = ("diloco", "palsgd")
"""The algorithms whose traffic between groups is one blocking mean all-reduce per step that has any."""


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
    collective_timeout_s: float = 10.0
    quorum_retries: int = 20
    heartbeat_ms: int = 100


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
    """Mean all-reduces among the live worker groups, through a torchft ``Manager``.

    ``state_fn`` gives the state a peer that is behind receives. ``rank`` is this group's index
    among the groups it was started with and ``world_size`` the number of groups in the current
    quorum (what the byte counters price a ring with). :attr:`events` collects ``group_left`` and
    ``group_joined`` records for the trainer to log.
    """

    def __init__(self, settings: LiveSettings, state_fn: Callable[[], dict[str, Any]]) -> None:
        from torchft.checkpointing.pg_transport import PGTransport
        from torchft.manager import Manager
        from torchft.process_group import ProcessGroupGloo

        super().__init__(settings.group, settings.groups)
        self.settings = settings
        timeout = timedelta(seconds=settings.collective_timeout_s)
        self.process_group = ProcessGroupGloo(timeout=timeout)
        self.transport = CountingTransport(PGTransport(self.process_group, timeout, torch.device("cpu")), self.stats)
        self.manager = Manager(
            pg=self.process_group,
            load_state_dict=None,
            state_dict=None,
            min_replica_size=settings.min_groups,
            use_async_quorum=True,
            timeout=timeout,
            quorum_timeout=timedelta(seconds=settings.quorum_timeout_s),
            connect_timeout=timedelta(seconds=settings.quorum_timeout_s),
            rank=0,
            world_size=1,
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
        self.manager.register_state_dict_fn("lowcomm", lambda _: None, state_fn)
        self.members: set[int] | None = None
        self.quorum_started = False
        self.step_started = time.perf_counter()
        self.events: list[dict[str, Any]] = []

    def start_quorum(self) -> None:
        """Ask the lighthouse for this step's quorum (once per step); raise :class:`TooFewGroups`
        when none with at least ``min_groups`` groups forms within the quorum timeout."""
        if not self.quorum_started:
            self.step_started = time.perf_counter()
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

    def resume_at(self, step: int) -> None:
        """A group resumed from a checkpoint of ``step``: groups resumed from older checkpoints (or
        none) are behind it, and are healed from it at their first quorum."""
        self.manager.load_state_dict({"step": step, "batches_committed": 0})

    def take_healing_state(self) -> dict[str, Any] | None:
        """The state a peer sent this group at its quorum (None when it was not behind)."""
        state, self.transport.received = self.transport.received, None
        return state

    def join(self) -> dict[str, Any] | None:
        """A quorum without an all-reduce, as a (re)started group's first: the state a peer sent if
        this group was behind, else None. :meth:`commit` ends it unless an all-reduce follows."""
        self.start_quorum()
        state = self.take_healing_state()
        if state is not None:
            self.events.append({"event": "group_joined", "group": self.rank, "live_groups": self.world_size + 1,
                                "stalled_s": round(time.perf_counter() - self.step_started, 3)})
        return state

    def commit(self) -> None:
        """End a step that had a quorum and no all-reduce."""
        self.quorum_started = False
        self.manager.should_commit()

    def all_reduce_mean(
        self, tensors: list[torch.Tensor], async_op: bool = False, accounted: bool = True
    ) -> Handle:
        self.start_quorum()
        return super().all_reduce_mean(tensors, async_op, accounted)

    def _all_reduce_mean(self, tensors: list[torch.Tensor]) -> Callable[[], None]:
        self.quorum_started = False
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
            committed = self.manager.should_commit()
            for bucket, flat, _ in pending:
                if not committed:
                    flat.zero_()
                for tensor, reduced in zip(bucket, unflatten(flat, bucket)):
                    tensor.copy_(reduced)
            if committed:
                self.note_members(membership, live, time.perf_counter() - self.step_started)

        return finish

    def note_members(self, membership: torch.Tensor, live: int, seconds: float) -> None:
        """Record the groups that left or joined since the last committed all-reduce (a group that is
        being healed sits out its first one: the others see it join at the next)."""
        members = {g for g, share in enumerate((membership * live).round().tolist()) if share > 0} | {self.rank}
        if self.members is not None:
            for kind, groups in (("group_left", self.members - members), ("group_joined", members - self.members)):
                for group in sorted(groups):
                    self.events.append(
                        {"event": kind, "group": group, "live_groups": len(members), "stalled_s": round(seconds, 3)}
                    )
        self.members = members

    def _exchange(self, tensors: list[torch.Tensor], peers: list[int]) -> list[list[torch.Tensor]]:
        raise NotImplementedError("live fault tolerance supports mean all-reduces between groups only")

    def _all_gather_object(self, value: Any) -> list[Any]:
        raise NotImplementedError("a live group's bookkeeping (checkpoints, totals) stays inside the group")

    def _broadcast(self, tensors: list[torch.Tensor], src: int) -> None:
        """Every group builds the same initial model from the seed; a group that joins later is healed
        at its first quorum, so the initial broadcast sends nothing."""

    def shutdown(self) -> None:
        self.manager.shutdown(wait=False)

