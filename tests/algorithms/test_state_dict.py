"""A strategy saved mid-run and loaded into fresh objects continues bit-identically."""

from __future__ import annotations

import torch

from tests.algorithms import mlp
from tests.distributed import run_workers

RUNS = {
    "ddp": {},
    "localsgd": {"sync_interval": 3},
    "postlocalsgd": {"sync_interval": 3, "warmup_steps": 2},
    "diloco": {"sync_interval": 3, "warmup_steps": 2},
    "palsgd": {"sync_interval": 3, "warmup_steps": 2, "pseudo_sync_prob": 0.4, "eta": 0.5},
    "noloco": {"sync_interval": 3},
    "diloco_overlap_int4": {"sync_interval": 4, "overlap_steps": 2, "compress": "int4"},
    "localsgd_topk": {"sync_interval": 3, "compress": "topk:0.3"},
    "postlocalsgd_int8": {"sync_interval": 3, "warmup_steps": 2, "compress": "int8"},
    "streamingdiloco": {"sync_interval": 4, "num_fragments": 2, "overlap_steps": 1},
}


def round_trips() -> dict[str, dict]:
    return {name: mlp.resumed(name.split("_")[0], options, steps=10, split=5) for name, options in RUNS.items()}


def test_state_dict_round_trip_is_bit_identical() -> None:
    for result in run_workers(round_trips, 2):
        for algo, r in result.items():
            assert torch.equal(r["straight"], r["resumed"]), algo
