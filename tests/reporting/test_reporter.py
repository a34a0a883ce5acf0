"""Rank 0's reporter: the records it writes into metrics.jsonl, in the documented form."""

from __future__ import annotations

import json
import math

import torch
from torch import nn

from lowcomm import LocalSGD
from lowcomm.communication.simulated import SimulatedGroup
from lowcomm.reporting.metrics import MetricsLog
from lowcomm.reporting.reporter import Reporter


def reporter(out, grouped=False):
    model = nn.Linear(2, 2)
    strategy = LocalSGD(model, torch.optim.SGD(model.parameters(), lr=0.1), sync_interval=2,
                        communicator=SimulatedGroup(1).communicators()[0])
    reporter = Reporter(MetricsLog(out, 0, 0), strategy, grouped, clock=lambda: 2.0)
    reporter.start(total=4, initial=0, description="localsgd x1")
    return reporter, strategy


def records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_a_step_without_a_batch_is_a_pseudo_sync_and_a_nonfinite_loss_an_event(tmp_path):
    report, _ = reporter(tmp_path)
    report.step(1, None, lr=0.1, sent=0, tokens=0, rank=0)
    report.step(2, math.nan, lr=0.1, sent=0, tokens=64, rank=0)
    report.finish(tmp_path, {"steps": 2})

    pseudo, train, event = records(tmp_path)
    assert pseudo == {"step": 1, "sync": "pseudo", "bytes": 0}
    assert list(train) == ["step", "loss", "lr", "elapsed_s", "comm_bytes", "tokens"]
    assert math.isnan(train["loss"]) and train["tokens"] == 64 and train["elapsed_s"] == 2.0
    assert event == {"step": 2, "event": "nonfinite_loss", "rank": 0}
    assert json.loads((tmp_path / "summary.json").read_text()) == {"steps": 2}


def test_an_outer_step_carries_its_diagnostics_and_groups_count_their_own_bytes(tmp_path):
    report, strategy = reporter(tmp_path, grouped=True)
    strategy.sync_diagnostics.update(pseudo_grad_norm=1.5)
    report.step(4, 2.0, lr=0.1, sent=96, tokens=128, rank=0)
    report.evaluation(4, 1.75, tokens=128)
    report.finish(tmp_path, {})

    train, outer, evaluation = records(tmp_path)
    assert train["comm_bytes_within_groups"] == 0
    assert outer == {"step": 4, "sync": "outer", "bytes": 96, "pseudo_grad_norm": 1.5}
    assert list(evaluation) == ["step", "eval_loss", "elapsed_s", "tokens", "comm_bytes", "comm_bytes_within_groups",
                                "comm_wait_s"]
    assert evaluation["eval_loss"] == 1.75
