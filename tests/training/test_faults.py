"""Faults end to end: workers killed at random moments, and a worker whose model turns NaN.

A killed worker makes the elastic launcher restart the group from the newest complete checkpoint,
and the run ends exactly where an uninterrupted run ends. A worker whose loss turns NaN is left out
of the next synchronisation, which ``metrics.jsonl`` records, and the global model stays finite.
"""

import json
import math
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from lowcomm.cli import main
from lowcomm.training.trainer import Trainer
from tests.train_runs import (
    PERIODIC,
    SHORT,
    STEPS,
    attempts,
    listening_addresses,
    lowcomm_train,
    progress,
    records,
    wait_for,
    without_timing,
    worker_pids,
)

# After the 2-step warm-up, every step is a local step and every even one ends in an outer
# synchronisation and a checkpoint write (which deletes the checkpoint before the last).
CRASHY = [*SHORT, "--sync-interval", "2", "--warmup-steps", "2", "--checkpoint-every", "2", "--keep-checkpoints", "2"]
KILL_WINDOWS = [range(3, 7), range(12, 16), range(21, 25)]
"""One kill after a random step of each window: far enough apart that each attempt checkpoints."""
STEP_S = 0.06
"""About one training step on 2 cores: a kill lands anywhere in the step after its target."""

POISONED_STEP = 6
"""Worker 1's model turns NaN at this local step, before the outer step at 8 (PALSGD pseudo-synchronises at 7)."""
NONFINITE_DETAILS = {
    "palsgd": {"what": "pseudo_gradient", "fragment": 0},
    "diloco": {"what": "pseudo_gradient", "fragment": 0},
    "noloco": {"what": "pseudo_gradient_or_outer_model", "group": [0, 1]},
    "localsgd": {"what": "parameters"},
}


def test_workers_killed_at_random_moments_change_nothing(cache_dir, tmp_path):
    """In each of several attempts, SIGKILL a random worker at a random moment: during a local step,
    an outer all-reduce or a checkpoint write. The run ends bitwise where the uninterrupted run ends."""
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    lowcomm_train(*CRASHY, "--cache-dir", cache_dir, "--out", str(straight))
    rng = random.Random(5)
    targets = [rng.choice(window) for window in KILL_WINDOWS]
    kills = len(targets)
    with (tmp_path / "stderr.txt").open("w") as stderr:
        launcher = subprocess.Popen(
            [sys.executable, "-m", "lowcomm", "train", *CRASHY, "--cache-dir", cache_dir, "--out", str(crashed),
             "--max-restarts", str(kills)],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        for restart, target in enumerate(targets):
            wait_for(lambda: progress(crashed)[0] == restart and progress(crashed)[1] >= target, launcher)
            time.sleep(rng.uniform(0, STEP_S))
            workers = worker_pids(launcher.pid)
            assert listening_addresses([launcher.pid, *workers]) == {"127.0.0.1"}
            os.kill(rng.choice(sorted(workers)), signal.SIGKILL)
            wait_for(lambda: progress(crashed)[0] == restart + 1, launcher)
        assert launcher.wait(timeout=120) == 0, (tmp_path / "stderr.txt").read_text()[-3000:]
    assert attempts(crashed) == [("start", 0)] + [("resume", restart) for restart in range(1, kills + 1)]
    assert without_timing(crashed) == without_timing(straight)
    final = f"checkpoints/step_{STEPS:08d}/model.safetensors"
    assert (crashed / final).read_bytes() == (straight / final).read_bytes()
    summaries = [json.loads((out / "summary.json").read_text()) for out in (straight, crashed)]
    assert summaries[0]["final_eval_loss"] == summaries[1]["final_eval_loss"]


@pytest.fixture
def nan_on_worker_1(monkeypatch):
    """Worker 1's loss (hence its gradients and model) turns NaN in step ``POISONED_STEP`` (while a step's
    batches are computed, ``trainer.step`` counts the steps before it)."""
    init = Trainer.__init__

    def init_poisoned(trainer, *args, **kwargs):
        init(trainer, *args, **kwargs)
        if trainer.rank == 1:
            loss = trainer.loss
            trainer.loss = lambda *batch: loss(*batch) * (math.nan if trainer.step + 1 == POISONED_STEP else 1.0)

    monkeypatch.setattr(Trainer, "__init__", init_poisoned)


@pytest.mark.parametrize("algo", NONFINITE_DETAILS)
def test_a_worker_gone_nan_is_left_out_and_training_goes_on(algo, nan_on_worker_1, cache_dir, tmp_path):
    out = tmp_path / "out"
    flags = ["--algo", algo, *SHORT, *PERIODIC, "--backend", "sim", "--cache-dir", cache_dir, "--out", str(out)]
    assert main(["train", *flags]) == 0
    nonfinite = [r for r in records(out, "event") if r["event"] == "nonfinite_worker_excluded"]
    assert nonfinite == [{"step": 8, "event": "nonfinite_worker_excluded", **NONFINITE_DETAILS[algo], "finite_workers": 1}]
    assert json.loads((out / "summary.json").read_text())["steps"] == STEPS
    assert [r["step"] for r in records(out, "eval")] == [8, 16, 24, 32]
    assert all(math.isfinite(r["eval_loss"]) for r in records(out, "eval"))
    for checkpoint in (out / "checkpoints").iterdir():
        assert all(torch.isfinite(t).all() for t in load_file(checkpoint / "model.safetensors").values())
