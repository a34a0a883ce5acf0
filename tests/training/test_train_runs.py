"""``lowcomm train`` end to end: real worker processes on gpt-tiny and the synthetic stories.

Each run takes ~6 s on 2 cores, mostly interpreter start-up and imports; runs are shared between
tests through the module-scoped ``runs`` fixture.
"""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lowcomm import ALGORITHMS
from lowcomm.algorithms.periodic import PeriodicStrategy
from lowcomm.algorithms import DiLoCo
from lowcomm.cli import main
from lowcomm.launching.rundir import read_run_config
from lowcomm.training.schedule import warmup_cosine
from tests.distributed import free_port
from tests.train_runs import (
    BATCH,
    PERIODIC,
    SEQ_LEN,
    SHORT,
    STEPS,
    WORKERS,
    listening_addresses,
    lowcomm_train,
    manifest,
    records,
    wait_for,
    without_timing,
    worker_pids,
)

CLASSIC_SYNC_STEPS = [8, 12, 16, 20, 24, 28, 32]  # t > S = 4 with t % H == 0, H = 4


@pytest.fixture(scope="module")
def runs(tmp_path_factory, cache_dir):
    """``runs(algo)``: the output directory of a finished short run of ``algo`` (run once per module).

    PALSGD is the embedded default run: no ``--algo`` and no ``--out``, only shorter.
    """
    finished = {}

    def run(algo):
        if algo not in finished:
            root = tmp_path_factory.mktemp(algo)
            if algo == "palsgd":
                result = lowcomm_train(*SHORT, *PERIODIC, "--cache-dir", cache_dir, cwd=root)
                (out,) = (root / "lowcomm-runs").iterdir()
            else:
                out = root / "out"
                extra = PERIODIC if issubclass(ALGORITHMS[algo], PeriodicStrategy) else []
                extra = [*extra, "--diagnostics"] if algo == "streamingdiloco" else extra
                result = lowcomm_train("--algo", algo, *SHORT, *extra, "--cache-dir", cache_dir, "--out", str(out))
            finished[algo] = (out, result.stdout)
        return finished[algo][0]

    run.stdout = lambda algo: finished[algo][1]
    return run


@pytest.mark.parametrize("algo", ALGORITHMS)
def test_every_algorithm_trains_and_reports(algo, runs):
    out = runs(algo)
    train, evals, syncs = records(out, "train"), records(out, "eval"), records(out, "sync")
    pseudo_steps = [r["step"] for r in syncs if r["sync"] == "pseudo"]
    assert sorted([r["step"] for r in train] + pseudo_steps) == list(range(1, STEPS + 1))
    assert [r["step"] for r in evals] == [8, 16, 24, 32]
    tokens_per_step = WORKERS * BATCH * SEQ_LEN
    for done, record in enumerate(train, start=1):
        assert record["tokens"] == done * tokens_per_step
    assert all(math.isfinite(r["loss"]) for r in train)
    assert evals[-1]["eval_loss"] < train[0]["loss"] - 1  # from ~6.6 (uniform over 2048 tokens ~ 7.6)

    summary = json.loads((out / "summary.json").read_text())
    assert {k: summary[k] for k in ("algo", "workers", "steps", "tokens")} == {
        "algo": algo,
        "workers": WORKERS,
        "steps": STEPS,
        "tokens": train[-1]["tokens"],
    }
    assert summary["final_eval_loss"] == evals[-1]["eval_loss"]
    assert summary["comm_bytes_total"] >= train[-1]["comm_bytes"] > 0
    assert summary["wall_time_s"] >= summary["compute_s"] > 0 and summary["comm_wait_s"] >= 0

    outer = [r["step"] for r in syncs if r["sync"] == "outer"]
    if algo == "ddp":
        # Every step all-reduces every gradient once: P bytes per step for 2 workers (ring: 2(K-1)/K);
        # before it, worker 0 broadcast its parameters and buffers.
        payload = 4 * summary["parameters"]
        broadcast = train[0]["comm_bytes"] - payload
        assert broadcast >= payload
        assert [r["comm_bytes"] for r in train] == [broadcast + payload * r["step"] for r in train]
        assert summary["comm_bytes_total"] == broadcast + WORKERS * STEPS * payload
        assert outer == []
    elif algo == "streamingdiloco":
        assert outer and min(outer) > 4
    else:
        assert outer == CLASSIC_SYNC_STEPS
    diagnosed = [r for r in syncs if "pseudo_grad_norm" in r]
    if issubclass(ALGORITHMS[algo], DiLoCo):  # every outer step carries its diagnostics
        assert [r["step"] for r in diagnosed] == outer
        assert all(r["pseudo_grad_norm"] > 0 for r in diagnosed)
        spreads = [r["worker_spread"] for r in diagnosed]  # measured with --diagnostics only
        assert all(s > 0 for s in spreads) if algo == "streamingdiloco" else spreads == [None] * len(diagnosed)
        cosines = [r["pseudo_grad_cosine"] for r in diagnosed]  # None at each fragment's first outer step
        assert cosines[0] is None and all(-1 <= c <= 1 for c in cosines if c is not None) and cosines[-1] is not None
    else:
        assert diagnosed == []
    if algo == "palsgd":
        assert pseudo_steps and min(pseudo_steps) > 4  # coins are drawn only after the warm-up
    else:
        assert pseudo_steps == []


def test_local_sgd_traffic_is_one_model_per_sync(runs):
    train = {r["step"]: r["comm_bytes"] for r in records(runs("localsgd"), "train")}
    payload = 4 * json.loads((runs("localsgd") / "summary.json").read_text())["parameters"]
    sent = {step: train[step] - train[step - 1] for step in range(2, STEPS + 1)}
    # Warm-up steps 2..4 average gradients; afterwards only steps 8, 12, ... average the parameters,
    # with a 4-byte flag saying whether they are finite.
    expected = {step: payload if step <= 4 else payload + 4 if step in CLASSIC_SYNC_STEPS else 0 for step in sent}
    assert sent == expected


def test_the_embedded_default_writes_the_documented_layout(runs):
    out = runs("palsgd")
    assert out.parent.name == "lowcomm-runs"
    assert sorted(p.name for p in out.iterdir()) == [
        ".lowcomm",
        ".lowcomm.lock",
        "checkpoints",
        "config.yaml",
        "loss.png",
        "metrics.jsonl",
        "resolved.yaml",
        "samples.txt",
        "summary.json",
        "tensorboard",
        "tokenizer.json",
    ]
    assert any(p.name.startswith("events.out.tfevents") for p in (out / "tensorboard").iterdir())
    checkpoints = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert checkpoints == ["step_00000008", "step_00000016", "step_00000024", "step_00000032"]
    assert sorted(manifest(out, 32)["files"]) == ["model.safetensors", "rank_00000.pt", "rank_00001.pt"]
    stdout = runs.stdout("palsgd")
    assert f"-> lowcomm-runs/{out.name}" in stdout and f"results in lowcomm-runs/{out.name}/: loss.png" in stdout
    assert (out / "samples.txt").read_text() in stdout  # the story is shown
    config = read_run_config(out)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # the default device is auto
    assert (config["algo"], config["outer_lr"], config["device"]) == ("palsgd", 0.7, device)


def test_the_last_steps_after_the_last_synchronisation_reach_the_final_model(cache_dir, tmp_path):
    """30 steps with H = 4: steps 29 and 30 follow the last regular outer step (28); the run ends with
    one more, so the saved global model is every worker's final model, and the last eval is of it."""
    from safetensors.torch import load_file

    out = tmp_path / "out"
    lowcomm_train("--algo", "diloco", *SHORT, *PERIODIC, "--steps", "30", "--eval-every", "10", "--cache-dir",
                  cache_dir, "--out", str(out))
    outer = [r["step"] for r in records(out, "sync") if r["sync"] == "outer"]
    assert outer == [8, 12, 16, 20, 24, 28, 30]
    assert [r["step"] for r in records(out, "eval")] == [10, 20, 30]
    final = out / "checkpoints" / "step_00000030"
    global_model = load_file(final / "model.safetensors")
    for rank in range(WORKERS):
        local = torch.load(final / f"rank_{rank:05d}.pt", weights_only=True)["strategy"]["model"]
        for name, value in global_model.items():
            assert torch.equal(local[name], value), name


def test_resuming_replays_the_uninterrupted_run_exactly(runs, cache_dir, tmp_path):
    straight = runs("palsgd")
    resumed = tmp_path / "resumed"
    shutil.copytree(straight, resumed)
    for step in (24, 32):
        shutil.rmtree(resumed / "checkpoints" / f"step_{step:08d}")
    (resumed / "checkpoints" / "step_00000024").mkdir()  # an unfinished write: no manifest
    (resumed / "summary.json").unlink()
    (resumed / "samples.txt").unlink()
    result = lowcomm_train(*SHORT, *PERIODIC, "--cache-dir", cache_dir, "--out", str(resumed), "--resume")
    assert "skipping checkpoint step_00000024: no manifest (an unfinished write)" in result.stderr
    assert without_timing(resumed) == without_timing(straight)
    assert {"step": 16, "event": "resume", "checkpoint": "step_00000016"} in records(resumed, "event")
    assert [r["step"] for r in records(resumed, "sync") if r["sync"] == "pseudo" and r["step"] > 16]
    global_model = manifest(resumed, 32)["files"]["model.safetensors"]
    assert global_model == manifest(straight, 32)["files"]["model.safetensors"]
    assert (resumed / "samples.txt").read_text() == (straight / "samples.txt").read_text()  # seeded sampling


def test_a_finished_run_extended_with_more_steps_follows_a_replanned_schedule(runs, cache_dir, tmp_path, capsys):
    """``--resume --steps 40`` on a finished 32-step run: steps 33..40 run with the learning rates of
    a 40-step schedule, one warning line and one event say so, and the first 32 steps stay as they were."""
    finished = runs("ddp")
    extended = tmp_path / "extended"
    shutil.copytree(finished, extended)
    result = lowcomm_train("--algo", "ddp", *SHORT, "--steps", "40", "--cache-dir", cache_dir, "--out", str(extended),
                           "--resume")
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert warnings == ["lowcomm: warning: --steps changed from 32 to 40: the learning-rate schedule is re-planned "
                        "for 40 steps and followed from step 32 (next lr 0.000585)"]
    train = records(extended, "train")
    assert [r["step"] for r in train] == list(range(1, 41))
    assert [r["step"] for r in records(extended, "eval")] == [8, 16, 24, 32, 40]
    assert without_timing(extended)[: len(without_timing(finished))] == without_timing(finished)
    old_plan, new_plan = warmup_cosine(2, STEPS, 0.1), warmup_cosine(2, 40, 0.1)
    assert [r["lr"] for r in train] == [3e-3 * old_plan(t - 1) for t in range(1, 33)] + [
        3e-3 * new_plan(t - 1) for t in range(33, 41)]
    (event,) = [r for r in records(extended, "event") if r["event"] == "lr_schedule_replanned"]
    assert event == {"step": 32, "event": "lr_schedule_replanned", "from_steps": 32, "to_steps": 40,
                     "lr": 3e-3 * new_plan(32)}
    assert json.loads((extended / "summary.json").read_text())["steps"] == 40

    before = sorted(p.name for p in (extended / "checkpoints").iterdir())
    assert main(["train", "--algo", "ddp", *SHORT, "--steps", "39", "--out", str(extended), "--resume"]) == 2
    assert capsys.readouterr().err == (f"lowcomm train: error: --steps: {extended} has already trained 40 steps; "
                                       "resume it with --steps 40 or more\n")
    assert sorted(p.name for p in (extended / "checkpoints").iterdir()) == before


def test_a_stopped_worker_makes_the_group_restart_and_resume(runs, cache_dir, tmp_path):
    """SIGSTOP a worker after the first checkpoint: its peer's collective times out after 5 s, the
    agent stops the group and restarts it. The stopped worker is continued once its peer has exited,
    so that it takes the agent's SIGTERM at once (left stopped, torch's agent waits 30 s before it
    sends SIGKILL: the README's measured row)."""
    out = tmp_path / "out"
    args = [*SHORT, *PERIODIC, "--cache-dir", cache_dir, "--out", str(out), "--max-restarts", "1"]
    launcher = subprocess.Popen(
        [sys.executable, "-m", "lowcomm", "train", *args, "--hang-timeout", "5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    first_checkpoint = out / "checkpoints" / "step_00000008"
    while not first_checkpoint.exists() and launcher.poll() is None:
        time.sleep(0.01)
    *peers, stopped = worker_pids(launcher.pid)
    os.kill(stopped, signal.SIGSTOP)
    stopped_at = time.monotonic()
    assert listening_addresses([launcher.pid, *peers, stopped]) == {"127.0.0.1"}
    wait_for(lambda: not any(running(pid) for pid in peers), launcher)
    assert time.monotonic() - stopped_at >= 5  # the hang timeout
    os.kill(stopped, signal.SIGCONT)
    stdout, stderr = launcher.communicate(timeout=240)
    assert launcher.returncode == 0, stderr[-3000:]
    resumes = [r for r in records(out, "event") if r["event"] == "resume"]
    assert len(resumes) == 1 and resumes[0]["step"] >= 8
    assert without_timing(out) == without_timing(runs("palsgd"))


def running(pid):
    """Whether process ``pid`` exists and has not exited (a zombie has)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_two_torchrun_nodes_train_like_one_local_launch(runs, cache_dir, tmp_path):
    out = tmp_path / "out"
    rendezvous = ["--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d"]
    rendezvous += ["--rdzv-endpoint", f"127.0.0.1:{free_port()}", "--rdzv-id", "lowcomm-test"]
    args = ["--algo", "diloco", *SHORT, *PERIODIC, "--cache-dir", cache_dir, "--out", str(out)]
    command = [sys.executable, "-m", "torch.distributed.run", *rendezvous, "-m", "lowcomm", "train", *args]
    nodes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [node.communicate(timeout=240) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][1][-3000:] + outputs[1][1][-3000:]
    assert sum("results in" in stdout for stdout, _ in outputs) == 1  # rank 0 alone reports
    assert json.loads((out / "summary.json").read_text())["workers"] == 2
    # Each node here runs two threads, a local worker one, and threaded kernels may sum in another order.
    assert_same_records(runs("diloco"), out)


def assert_same_records(expected_out, out):
    """The same records, with the same counts, and floats (losses) equal to float32 rounding."""
    expected, actual = without_timing(expected_out), without_timing(out)
    assert [sorted(r) for r in actual] == [sorted(r) for r in expected]
    for theirs, mine in zip(expected, actual):
        for key, value in theirs.items():
            assert mine[key] == (pytest.approx(value, rel=1e-4) if isinstance(value, float) else value), (key, mine)


@pytest.mark.parametrize("algo, passes", [("diloco", "batched"), ("diloco", "threads"), ("ddp", "auto")])
def test_simulated_workers_train_like_worker_processes(algo, passes, runs, cache_dir, tmp_path):
    """``--backend sim``: the same run as two gloo processes (DDP's rule as gradient averaging)."""
    out = tmp_path / "out"
    extra = PERIODIC if algo == "diloco" else []
    lowcomm_train("--algo", algo, "--backend", "sim", "--sim-passes", passes, *SHORT, *extra, "--cache-dir", cache_dir,
                  "--out", str(out))
    assert_same_records(runs(algo), out)


def test_a_modelled_link_slows_communication_only(runs, cache_dir, tmp_path):
    """``--network model --bandwidth 20mbit``: the DDP run's numbers, and each step's all-reduce
    (2 workers: each sends the payload once) waits its payload * 8 / 20e6 seconds."""
    out = tmp_path / "out"
    lowcomm_train("--algo", "ddp", "--network", "model", "--bandwidth", "20mbit", *SHORT, "--cache-dir", cache_dir,
                  "--out", str(out))
    assert_same_records(runs("ddp"), out)
    summary = json.loads((out / "summary.json").read_text())
    modelled_wait = STEPS * 4 * summary["parameters"] * 8 / 20e6
    assert summary["comm_wait_s"] >= modelled_wait
    assert summary["comm_wait_s"] - modelled_wait < json.loads((runs("ddp") / "summary.json").read_text())["comm_wait_s"] + 1
