"""DDP's counting hook: bytes per bucket, the wait the backward pass did not hide, and the overlap."""

from __future__ import annotations

import time

import torch
from torch import nn

from lowcomm.algorithms import DDP
from lowcomm.communication.communicator import ProcessGroupCommunicator
from lowcomm.communication.ddp_hooks import CountingState
from lowcomm.communication.groups import worker_groups
from tests.distributed import run_workers


def charged(first_ready: float, last_ready: float, averaged: float) -> tuple[float, float]:
    comm = ProcessGroupCommunicator()
    CountingState(comm, first_ready, last_ready, averaged, step_bytes=30, last_bytes=20).end_step()
    return comm.stats.wait_s, comm.stats.overlap_s, comm.stats.overlap_bytes


class SlowBackward(torch.autograd.Function):
    """The identity, whose backward pass takes 50 ms: a stand-in for a layer's gradient computation."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        time.sleep(0.05)
        return grad


class TwoBuckets(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first, self.second = nn.Linear(64, 1024), nn.Linear(1024, 512)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(SlowBackward.apply(self.first(x)))


def ddp_steps() -> dict:
    arithmetic = [charged(1.0, 3.0, 3.5), charged(1.0, 3.0, 2.5)]
    torch.manual_seed(0)
    model = TwoBuckets()
    # DDP's first bucket closes at 1 MB, after the second layer's 2 MB; the first layer's 0.25 MB
    # are ready 50 ms later
    strategy = DDP(model, torch.optim.SGD(model.parameters(), lr=0.1), bucket_cap_mb=0.1)
    x = torch.randn(4, 64)
    strategy.step(lambda: strategy.model(x).square().mean())  # DDP rebuilds its buckets after step 1
    stats = strategy.comm_stats
    before = (stats.operations, stats.overlap_s, stats.wait_s, stats.bytes_sent, stats.overlap_bytes)
    for _ in range(2):
        strategy.step(lambda: strategy.model(x).square().mean())
    return {"arithmetic": arithmetic, "operations": stats.operations - before[0],
            "overlap_s": stats.overlap_s - before[1], "wait_s": stats.wait_s - before[2],
            "bytes": stats.bytes_sent - before[3], "overlap_bytes": stats.overlap_bytes - before[4]}


def test_ddp_charges_unhidden_wait_and_overlap() -> None:
    for result in run_workers(ddp_steps, 2):
        # wait: from the last bucket ready (3.0) to averaged (3.5); overlap: first to last ready,
        # and the bytes of the buckets before the last
        assert result["arithmetic"] == [(0.5, 2.0, 10), (0.0, 2.0, 10)]
        assert result["operations"] == 2 * 2  # two buckets a step
        assert 2 * 0.05 <= result["overlap_s"] < 2 * 0.05 + 1.0
        assert 0 <= result["wait_s"] < 1.0
        # two workers: each sends a bucket's payload once; the second layer's bucket is ready first
        second_layer_bytes = (1024 * 512 + 512) * 4
        assert result["bytes"] == 2 * (second_layer_bytes + (64 * 1024 + 1024) * 4)
        assert result["overlap_bytes"] == 2 * second_layer_bytes


def grouped_ddp_steps() -> dict:
    """Two steps of DDP over 2 groups x 2 ranks (after the step that rebuilds the buckets)."""
    mesh = worker_groups(2, 2)
    torch.manual_seed(0)
    model = TwoBuckets()
    strategy = DDP(model, torch.optim.SGD(model.parameters(), lr=0.1), mesh=mesh, bucket_cap_mb=0.1)
    x = torch.randn(4, 64)
    strategy.step(lambda: strategy.model(x).square().mean())
    between, within = strategy.comm_stats, strategy.inner_comm_stats
    before = [(s.bytes_sent, s.wait_s, s.overlap_s, s.overlap_bytes) for s in (between, within)]
    for _ in range(2):
        strategy.step(lambda: strategy.model(x).square().mean())
    return {name: [now - then for now, then in zip((s.bytes_sent, s.wait_s, s.overlap_s, s.overlap_bytes), old)]
            for name, s, old in (("between", between, before[0]), ("within", within, before[1]))}


def test_grouped_ddp_charges_every_rank_its_share_of_the_slow_link() -> None:
    """DDP's ring over 4 ranks in 2 groups: 2 of its 4 links leave a group, so each rank's 2(4-1)/4 of
    every bucket is half between groups, half within; its waits and overlap are the slow link's."""
    second_layer_bytes, first_layer_bytes = (1024 * 512 + 512) * 4, (64 * 1024 + 1024) * 4
    ring = 2 * (2 * 3 * second_layer_bytes // 4 + 2 * 3 * first_layer_bytes // 4)  # two steps
    results = run_workers(grouped_ddp_steps, 4)
    for result in results:
        sent, waited, overlap_s, overlap_bytes = result["between"]
        assert sent == ring // 2 and result["within"][0] == ring // 2
        assert overlap_bytes == 2 * (2 * 3 * second_layer_bytes // 4 // 2)  # the slow link's share
        assert 2 * 0.05 <= overlap_s < 2 * 0.05 + 1.0 and 0 <= waited < 1.0
        assert result["within"][1:] == [0.0, 0.0, 0]
    assert sum(r["between"][0] for r in results) == 2 * ring  # K = 2 links, each carrying one rank's bytes
