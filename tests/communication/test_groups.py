"""The worker-group mesh and each rank's shards, on 4 real gloo processes (2 groups x 2 ranks)."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor

import lowcomm
from lowcomm.communication.communicator import ProcessGroupCommunicator
from lowcomm.communication import fsdp as fsdp_module
from lowcomm.communication.communicator import CommStats
from lowcomm.communication.fsdp import count_fsdp_traffic
from lowcomm.communication.groups import GroupShards
from tests.distributed import run_workers


def error_of(call: Any) -> str:
    try:
        call()
    except ValueError as error:
        return str(error)
    return "no error"


def small_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 1))


def groups() -> dict[str, Any]:
    rank = dist.get_rank()
    mesh = lowcomm.worker_groups(num_groups=2, group_size=2)
    result: dict[str, Any] = {
        "names": mesh.mesh_dim_names,
        "device": mesh.device_type,
        "between": dist.get_process_group_ranks(mesh["group"].get_group()),
        "within": dist.get_process_group_ranks(mesh["inner"].get_group()),
        "errors": [
            error_of(lambda: lowcomm.worker_groups(num_groups=0, group_size=4)),
            error_of(lambda: lowcomm.worker_groups(num_groups=2, group_size=3)),
            error_of(lambda: lowcomm.shard_within_groups(nn.Sequential(nn.ReLU()), mesh)),
        ],
    }
    # DDP inside: chunks of the flattened parameters, 3 + 2 values of a 5-value one, 1 + 0 of a 1-value one.
    inner = ProcessGroupCommunicator(mesh["inner"].get_group())
    params = [torch.zeros(5), torch.zeros(1)]
    shards = GroupShards(params, "ddp", inner)
    local = shards.local()
    result["sizes"] = [s.numel() for s in local]
    for s in local:
        s.fill_(rank + 1)  # a write into the shard lands in the parameter
    result["written"] = [p.clone() for p in params]
    shards.complete()
    result["completed"] = [p.clone() for p in params]
    result["gather_bytes"] = inner.stats.bytes_sent  # padded chunks of 3 + 1 float32: 16 bytes to 1 peer
    result["full"] = shards.full([torch.full_like(s, 10.0 * (rank + 1)) for s in local])
    result["finite"] = shards.group_finite([torch.tensor([float("nan") if rank == 1 else 1.0])])
    # FSDP inside: the rank's FSDP shard, a view of the parameter's local tensor.
    model = lowcomm.shard_within_groups(small_model(seed=rank), mesh)  # the group takes its first rank's
    params = list(model.parameters())
    result["fsdp_initial"] = [p.full_tensor() for p in params]
    shards = GroupShards(params, "fsdp", inner)
    result["fsdp_sizes"] = [s.shape for s in shards.local()]
    for s in shards.local():
        s.fill_(rank + 1)
    result["fsdp_whole"] = [p.full_tensor() for p in params]
    result["fsdp_types"] = [type(p) for p in params]
    # FSDP's own traffic, counted through its custom collectives where this torch has them
    stats = CommStats()
    result["counted"] = count_fsdp_traffic(model, stats)
    model(torch.ones(2, 3)).sum().backward()
    result["fsdp_bytes"] = stats.bytes_sent
    fsdp_module.CUSTOM_FSDP_COLLECTIVES = False  # as on a torch without them
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result["uncounted"] = count_fsdp_traffic(model, CommStats())
    result["warnings"] = [str(w.message) for w in caught]
    return result


@pytest.fixture(scope="module")
def results() -> list[dict[str, Any]]:
    return run_workers(groups, 4)


def test_the_mesh_puts_rank_g_times_G_plus_i_in_group_g(results: list[dict[str, Any]]) -> None:
    for rank, r in enumerate(results):
        assert r["names"] == ("group", "inner") and r["device"] == "cpu"
        assert r["between"] == [rank % 2, 2 + rank % 2]  # rank i of every group
        assert r["within"] == [rank - rank % 2, rank - rank % 2 + 1]  # the ranks of its own group


def test_bad_layouts_are_refused_with_one_line(results: list[dict[str, Any]]) -> None:
    assert results[0]["errors"] == [
        "num_groups: must be an integer >= 1, got 0",
        "world size 4 is not num_groups x group_size = 2 x 3",
        "model: FSDP cannot shard a model without parameters",
    ]


def test_ddp_inside_each_rank_owns_a_chunk_and_the_group_completes_the_model(results: list[dict[str, Any]]) -> None:
    for rank, r in enumerate(results):
        inner = rank % 2
        assert r["sizes"] == [[3, 2][inner], [1, 0][inner]]
        own = float(rank + 1)
        expected_written = [torch.tensor([own] * 3 + [0.0] * 2), torch.tensor([own])] if inner == 0 else \
            [torch.tensor([0.0] * 3 + [own] * 2), torch.tensor([0.0])]
        assert all(map(torch.equal, r["written"], expected_written))
        first = float(rank - inner + 1)  # the group's rank 0 wrote its rank + 1, rank 1 one more
        assert torch.equal(r["completed"][0], torch.tensor([first] * 3 + [first + 1] * 2))
        assert torch.equal(r["completed"][1], torch.tensor([first]))
        assert r["gather_bytes"] == 16
        assert torch.equal(r["full"][0], 10 * torch.tensor([first] * 3 + [first + 1] * 2))
        assert r["finite"] == (rank >= 2)  # group 0 agrees it is non-finite: its rank 1 is


def test_fsdp_inside_the_shard_is_the_parameters_local_tensor(results: list[dict[str, Any]]) -> None:
    for rank, r in enumerate(results):
        inner = rank % 2
        assert r["fsdp_types"] == [DTensor] * 4
        # dimension 0 split as torch.chunk does: 4 rows -> 2 + 2, 1 row -> 1 + 0
        assert r["fsdp_sizes"] == [torch.Size(s) for s in ([2, 3], [2], [1, 4], [1])] if inner == 0 else \
            [torch.Size(s) for s in ([2, 3], [2], [0, 4], [0])]
        initial = list(small_model(seed=rank - inner).parameters())
        assert all(torch.equal(a, b.detach()) for a, b in zip(r["fsdp_initial"], initial))
        first = float(rank - inner + 1)
        assert torch.equal(r["fsdp_whole"][0], torch.tensor([[first] * 3] * 2 + [[first + 1] * 3] * 2))
        assert torch.equal(r["fsdp_whole"][2], torch.full((1, 4), first))


def test_fsdp_traffic_is_counted_through_its_collectives_or_said_to_be_uncounted(
    results: list[dict[str, Any]],
) -> None:
    """One step of the two Linear units, each sending the other rank its padded shard (Linear(3, 4):
    2 rows of 3 and 2 biases, 8 values; Linear(4, 1): 1 row of 4 (of 2, one padding) and 1 bias, 5)
    in the forward all-gather, the backward all-gather and the gradients' reduce-scatter."""
    for r in results:
        assert r["counted"] is True
        assert r["fsdp_bytes"] == 3 * (8 + 5) * 4
        assert r["uncounted"] is False
        assert r["warnings"] == ["this torch's FSDP2 takes no custom collectives: its traffic within groups is "
                                 "not counted"]
