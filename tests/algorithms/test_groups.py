"""Worker groups on 4 real gloo processes: 2 groups x 2 ranks, DDP or FSDP2 inside each group."""

from __future__ import annotations

import io
import math
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

import lowcomm
from lowcomm import ALGORITHMS
from lowcomm.communication.communicator import ProcessGroupCommunicator, ring_all_reduce_bytes
from lowcomm.communication.modelled import ModelledCommunicator
from lowcomm.communication.network_model import NetworkModel
from tests.algorithms import mlp
from tests.distributed import run_workers

STEPS = 6
OPTIONS: dict[str, dict[str, Any]] = {
    "ddp": {"max_grad_norm": 0.5},
    "localsgd": {"sync_interval": 2},
    "postlocalsgd": {"sync_interval": 2, "warmup_steps": 2},
    "diloco": {"sync_interval": 2, "warmup_steps": 1, "max_grad_norm": 0.5},
    "streamingdiloco": {"sync_interval": 2, "num_fragments": 2, "overlap_steps": 1},
    "palsgd": {"sync_interval": 3, "warmup_steps": 1, "pseudo_sync_prob": 0.4},
    "noloco": {"sync_interval": 2},
}
MODEL_BYTES = (4 * 8 + 8 + 8 + 1) * 8  # the float64 MLP


def whole(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([(p.full_tensor() if isinstance(p, DTensor) else p).detach().flatten() for p in model.parameters()])


def build(algo: str, inner: str | None, mesh: Any, options: dict[str, Any]) -> tuple[torch.nn.Module, Any]:
    """The MLP and ``algo``'s strategy: on the mesh with DDP or FSDP inside, or (``inner=None``)
    without it over the given process group."""
    model = mlp.mlp()
    if inner == "fsdp":
        model = lowcomm.shard_within_groups(model, mesh)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.5)
    where = {"communicator": ProcessGroupCommunicator(mesh)} if inner is None else {"mesh": mesh}
    return model, ALGORITHMS[algo](model, optimizer, **options, **where)


def run(algo: str, inner: str | None, mesh: Any, batch_of: Any, poison: bool = False,
        micro_batches: int = 1) -> dict[str, Any]:
    """Train ``algo`` (see :func:`build`); ``batch_of(t)`` is this rank's batch at step t, split into
    ``micro_batches`` closures. ``poison`` writes a NaN into element 20 of the first weight after the
    inner optimizer's step 2 (in rank 1's chunk and FSDP shard)."""
    model, strategy = build(algo, inner, mesh, OPTIONS[algo])
    optimizer = strategy.optimizer
    if poison:
        def nan_at_step_2(*_: Any) -> None:
            if strategy.step_count == 2:
                first = next(model.parameters())
                local = first.to_local() if isinstance(first, DTensor) else first
                local.detach().view(-1)[20 - (16 if isinstance(first, DTensor) else 0)] = float("nan")
        optimizer.register_step_post_hook(nan_at_step_2)
    params, losses = [], []
    for t in range(1, STEPS + 1):
        x, y = batch_of(t)
        parts = [(x[i::micro_batches], y[i::micro_batches]) for i in range(micro_batches)]
        loss = strategy.step([lambda part=part: mlp.loss_of(strategy.model, part) for part in parts])
        losses.append(None if loss is None else loss.item())
        params.append(whole(model))
    strategy.wait()
    return {"params": params, "losses": losses, "global": strategy.global_state_dict(), "events": strategy.events,
            "inner": strategy.inner, "between": strategy.comm_stats.bytes_sent,
            "within": strategy.inner_comm_stats.bytes_sent}


def resumed(algo: str, options: dict[str, Any], inner: str, mesh: Any, batch_of: Any) -> dict[str, Any]:
    """Train STEPS steps straight, and again from a state saved after step 3 into fresh objects."""
    model, strategy = build(algo, inner, mesh, options)
    for t in range(1, STEPS + 1):
        data = batch_of(t)
        strategy.step(lambda: mlp.loss_of(strategy.model, data))
        if t == 3:
            buffer = io.BytesIO()
            torch.save(strategy.state_dict(), buffer)
    straight = whole(model)
    strategy.wait()
    model, strategy = build(algo, inner, mesh, options)
    buffer.seek(0)
    strategy.load_state_dict(torch.load(buffer, weights_only=False))
    for t in range(4, STEPS + 1):
        data = batch_of(t)
        strategy.step(lambda: mlp.loss_of(strategy.model, data))
    strategy.wait()
    return {"straight": straight, "resumed": whole(model)}


RESUMED = {
    "diloco": {"sync_interval": 2, "overlap_steps": 1, "compress": "int4", "compress_block_size": 8},
    "palsgd": {"sync_interval": 2, "warmup_steps": 1, "pseudo_sync_prob": 0.4},
    "noloco": {"sync_interval": 2},
    "localsgd": {"sync_interval": 2},
    "postlocalsgd": {"sync_interval": 2, "warmup_steps": 1, "compress": "int8", "compress_block_size": 8},
}


def two_by_two() -> dict[str, Any]:
    mesh = lowcomm.worker_groups(num_groups=2, group_size=2)
    rank, group = dist.get_rank(), dist.get_rank() // 2
    own = lambda t: mlp.batch(rank, t)  # noqa: E731
    both = lambda t: tuple(torch.cat(parts) for parts in zip(mlp.batch(2 * group, t), mlp.batch(2 * group + 1, t)))  # noqa: E731
    between = mesh["group"].get_group()  # rank = group index: 2 workers, one per group
    results = {}
    for algo in OPTIONS:
        results[algo] = {inner: run(algo, inner, mesh, own) for inner in ("ddp", "fsdp")}
        results[algo]["workers"] = run(algo, None, between, both)
    results["nonfinite"] = {}
    for algo in ("diloco", "localsgd", "noloco"):
        results["nonfinite"][algo] = {inner: run(algo, inner, mesh, own, poison=rank == 1) for inner in ("ddp", "fsdp")}
        results["nonfinite"][algo]["workers"] = run(algo, None, between, both, poison=group == 0)
    results["micro_batches"] = {inner: run("diloco", inner, mesh, own, micro_batches=2) for inner in ("ddp", "fsdp")}
    results["one_rank_groups"] = one_rank_groups()
    results["errors"] = refusals(mesh)
    results["modelled"] = modelled_between_groups(mesh)
    results["batch_norm"] = {algo: batch_norm_statistics(algo, mesh) for algo in ("localsgd", "diloco")}
    results["resumed"] = {(algo, inner): resumed(algo, options, inner, mesh, own)
                          for algo, options in RESUMED.items() for inner in ("ddp", "fsdp")}
    return results


@pytest.fixture(scope="module")
def grouped() -> list[dict[str, Any]]:
    return run_workers(two_by_two, 4)


def close(a: list[torch.Tensor], b: list[torch.Tensor], tolerance: float, msg: str) -> None:
    for t, (x, y) in enumerate(zip(a, b), start=1):
        torch.testing.assert_close(x, y, rtol=0, atol=tolerance, msg=f"{msg}, step {t}")


@pytest.mark.parametrize("algo", list(OPTIONS))
def test_a_group_with_ddp_inside_is_one_worker_with_the_groups_batch(grouped: list[dict[str, Any]], algo: str) -> None:
    for rank, r in enumerate(grouped):
        ddp, workers = r[algo]["ddp"], r[algo]["workers"]
        assert ddp["inner"] == "ddp"
        close(ddp["params"], workers["params"], 1e-6, f"{algo} rank {rank}")
        assert [loss is None for loss in ddp["losses"]] == [loss is None for loss in workers["losses"]]
        for key, value in workers["global"].items():
            torch.testing.assert_close(ddp["global"][key], value, rtol=0, atol=1e-6)
    assert torch.equal(grouped[0][algo]["ddp"]["params"][-1], grouped[1][algo]["ddp"]["params"][-1])
    if algo != "ddp":  # the groups trained apart between synchronisations
        assert not all(map(torch.equal, grouped[0][algo]["ddp"]["params"], grouped[2][algo]["ddp"]["params"]))
    if algo == "palsgd":  # some steps were pseudo-synchronisations
        assert None in grouped[0][algo]["ddp"]["losses"]


def test_micro_batches_inside_a_group_add_up_to_its_batch(grouped: list[dict[str, Any]]) -> None:
    for rank, r in enumerate(grouped):
        for inner in ("ddp", "fsdp"):
            close(r["micro_batches"][inner]["params"], r["diloco"]["workers"]["params"], 1e-6, f"{inner} rank {rank}")


@pytest.mark.parametrize("algo", list(OPTIONS))
def test_fsdp_inside_equals_ddp_inside(grouped: list[dict[str, Any]], algo: str) -> None:
    for rank, r in enumerate(grouped):
        assert r[algo]["fsdp"]["inner"] == "fsdp"
        close(r[algo]["fsdp"]["params"], r[algo]["ddp"]["params"], 1e-5, f"{algo} rank {rank}")
        for key, value in r[algo]["ddp"]["global"].items():
            assert not isinstance(r[algo]["fsdp"]["global"][key], DTensor)
            torch.testing.assert_close(r[algo]["fsdp"]["global"][key], value, rtol=0, atol=1e-5)


def test_traffic_between_groups_is_one_model_per_group(grouped: list[dict[str, Any]]) -> None:
    # DiLoCo: STEPS = 6, H = 2, one warm-up step: the warm-up averages the gradient shards (one
    # model per group), then outer steps after steps 2, 4 and 6 average z - x with a finite flag.
    # The between-groups ring of K = 2 sends 2(K-1)/K = 1 x the payload; DDP inside splits the
    # model into chunks of 16 + 4 + 4 + 1 values (rank 0) and 16 + 4 + 4 + 0 (rank 1).
    chunk_bytes = {0: 25 * 8, 1: 24 * 8}
    for rank, r in enumerate(grouped):
        inner = rank % 2
        shard = chunk_bytes[inner]
        initial = shard  # the shards broadcast from the first group, charged on its ranks only
        syncs = 1 * ring_all_reduce_bytes(shard, 2) + 3 * ring_all_reduce_bytes(shard + 8, 2)
        assert r["diloco"]["ddp"]["between"] == syncs + (initial if rank < 2 else 0)
        # Within the group: DDP's gradient all-reduce every step (ring of 2: 1 x the model), the
        # all-gather of padded chunks (25 values) after the warm-up and each outer step, and the
        # finite flag agreed at each outer step; DDP's initial broadcast and one all-gather at start.
        within = STEPS * MODEL_BYTES + 4 * 25 * 8 + 3 * 8 + 25 * 8 + (MODEL_BYTES if inner == 0 else 0)
        assert r["diloco"]["ddp"]["within"] == within
    # The baseline, DDP inside: DistributedDataParallel's ring over the 4 ranks, of whose 4 links 2
    # leave a group: every rank sends 2(4-1)/4 x the model each step, 2/4 of it charged between
    # groups and the rest within; rank 0's initial broadcast reaches the other group, between.
    # FSDP inside: HSDP, each rank's FSDP shard (rank 0: 4 rows of 4, 4 biases, the one row of 8 and
    # the one bias, 29 values; rank 1: 16 + 4 = 20) averaged across the groups each step, after the
    # first group's shards were broadcast.
    ring_of_4 = 2 * 3 * MODEL_BYTES // 4
    fsdp_bytes = {0: 29 * 8, 1: 20 * 8}
    for rank, r in enumerate(grouped):
        inner, first_group = rank % 2, rank < 2
        assert r["ddp"]["ddp"]["between"] == STEPS * ring_of_4 // 2 + (MODEL_BYTES if rank == 0 else 0)
        assert r["ddp"]["ddp"]["within"] == STEPS * ring_of_4 // 2
        shard = fsdp_bytes[inner]
        assert r["ddp"]["fsdp"]["between"] == STEPS * ring_all_reduce_bytes(shard, 2) + (shard if first_group else 0)
        # Within the group, FSDP's collectives on its two units (the Linear layers), padded shards of
        # 4 x 4 + 4 = 20 and 1 x 8 + 1 = 9 values sent to the one other rank: each step all-gathers
        # them for the forward pass and again for the backward pass, and reduce-scatters their
        # gradients once (with two micro-batches: four all-gathers, still one reduce-scatter).
        units = (20 + 9) * 8
        assert r["ddp"]["fsdp"]["within"] == STEPS * 3 * units
        assert r["diloco"]["fsdp"]["within"] == STEPS * 3 * units + 3 * 8  # and DiLoCo's finite flags
        assert r["micro_batches"]["fsdp"]["within"] == STEPS * 5 * units + 3 * 8
    per_sync = sum(ring_all_reduce_bytes(chunk_bytes[i], 2) for i in (0, 1))
    assert per_sync == ring_all_reduce_bytes(MODEL_BYTES, 2)  # one model's worth per group
    # Without groups a worker sends its whole model (and the flag) itself.
    worker = ring_all_reduce_bytes(MODEL_BYTES, 2) + 3 * ring_all_reduce_bytes(MODEL_BYTES + 8, 2)
    assert grouped[0]["diloco"]["workers"]["between"] == worker + MODEL_BYTES  # with the initial broadcast
    assert grouped[2]["diloco"]["workers"]["between"] == worker


def test_a_group_with_one_nonfinite_rank_is_left_out(grouped: list[dict[str, Any]]) -> None:
    # Only rank 1 (group 0) holds the NaN, yet all of group 0 is left out, as the worker it stands for.
    # Without groups, worker 0 (group 0's batch) is the one left out: the same events and models.
    for rank, r in enumerate(grouped):
        for algo, runs in r["nonfinite"].items():
            assert runs["workers"]["events"][0]["finite_workers"] == 1
            for inner in ("ddp", "fsdp"):
                assert runs[inner]["events"] == runs["workers"]["events"], (algo, rank, inner)
                close(runs[inner]["params"], runs["workers"]["params"], 1e-5, f"{algo} rank {rank} {inner}")
                assert all(torch.isfinite(p).all() for p in runs[inner]["params"][1:])


def batch_norm_statistics(algo: str, mesh: Any) -> torch.Tensor:
    """A batch-norm layer's running mean after two steps on this rank's batches and a synchronisation."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 1)).double()
    model = lowcomm.shard_within_groups(model, mesh)
    strategy = ALGORITHMS[algo](model, torch.optim.SGD(model.parameters(), lr=0.05), mesh=mesh, sync_interval=2)
    for t in (1, 2):
        data = mlp.batch(dist.get_rank(), t)
        strategy.step(lambda: mlp.loss_of(strategy.model, data))
    return model[1].running_mean.clone()


def refusals(mesh: Any) -> list[str]:
    """The one-line errors of a mesh given with a communicator that does not connect the groups, and of
    an FSDP model without its mesh."""
    errors = []
    for model, where in ((mlp.mlp(), {"mesh": mesh, "communicator": ProcessGroupCommunicator()}),
                         (lowcomm.shard_within_groups(mlp.mlp(), mesh), {})):
        try:
            lowcomm.DiLoCo(model, torch.optim.SGD(model.parameters(), lr=0.1), **where)
        except ValueError as error:
            errors.append(str(error))
    return errors


def modelled_between_groups(mesh: Any) -> dict[str, Any]:
    """A DiLoCo warm-up step whose communicator between groups is modelled with 50 ms per message."""
    model = mlp.mlp()
    between = ModelledCommunicator(ProcessGroupCommunicator(mesh["group"].get_group()), NetworkModel(math.inf, 0.05))
    strategy = lowcomm.DiLoCo(model, torch.optim.SGD(model.parameters(), lr=0.1), mesh=mesh, communicator=between,
                              sync_interval=2, warmup_steps=1)
    data = mlp.batch(dist.get_rank(), 1)
    wait_before = strategy.comm_stats.wait_s
    strategy.step(lambda: mlp.loss_of(strategy.model, data))
    return {"same": strategy.comm is between, "wait_s": strategy.comm_stats.wait_s - wait_before}


def one_rank_groups() -> dict[str, Any]:
    mesh = lowcomm.worker_groups(num_groups=4, group_size=1)
    rank = dist.get_rank()
    own = lambda t: mlp.batch(rank, t)  # noqa: E731
    results = {algo: {"mesh": run(algo, "ddp", mesh, own), "none": run(algo, None, None, own)} for algo in OPTIONS}
    try:
        lowcomm.worker_groups(num_groups=3, group_size=1)
    except ValueError as error:
        results["error"] = str(error)
    return results


def test_groups_of_one_rank_change_nothing(grouped: list[dict[str, Any]]) -> None:
    for r in (r["one_rank_groups"] for r in grouped):
        for algo in OPTIONS:
            mesh, none = r[algo]["mesh"], r[algo]["none"]
            assert mesh["inner"] is None
            assert all(torch.equal(a, b) for a, b in zip(mesh["params"], none["params"])), algo
            assert (mesh["between"], mesh["within"]) == (none["between"], 0), algo
        assert r["error"] == "world size 4 is not num_groups x group_size = 3 x 1"


def test_a_state_saved_with_groups_resumes_bit_identically(grouped: list[dict[str, Any]]) -> None:
    for r in grouped:
        for (algo, inner), result in r["resumed"].items():
            assert torch.equal(result["straight"], result["resumed"]), (algo, inner)


def test_a_communicator_between_groups_carries_their_traffic(grouped: list[dict[str, Any]]) -> None:
    """The warm-up step's all-reduce of gradient shards between 2 groups: 2(K-1) = 2 messages of 50 ms."""
    for r in grouped:
        assert r["modelled"]["same"]
        assert 0.1 <= r["modelled"]["wait_s"] < 0.1 + 1.0


def test_a_wrong_communicator_or_fsdp_without_its_mesh_is_refused(grouped: list[dict[str, Any]]) -> None:
    assert grouped[0]["errors"] == ["communicator: with a mesh it must connect the groups (world size K, this "
                                    "rank's group as its rank)",
                                    "mesh: a model sharded with FSDP needs the mesh it was sharded over"]


def test_fsdp_inside_batch_norm_statistics_are_averaged_over_every_rank(grouped: list[dict[str, Any]]) -> None:
    for algo in ("localsgd", "diloco"):
        statistics = [r["batch_norm"][algo] for r in grouped]
        assert all(torch.allclose(s, statistics[0], rtol=0, atol=1e-12) for s in statistics), algo
        assert statistics[0].abs().sum() > 0, algo
