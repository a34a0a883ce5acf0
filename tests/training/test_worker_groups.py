"""``lowcomm train --groups 2 --group-size 2`` end to end: 4 real worker processes on gpt-tiny, DiLoCo
between the groups, DDP or FSDP2 inside them; byte counters, sharded checkpoints resumed in the
same and in other layouts, and a worker killed mid-run."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.train_runs import (
    GROUPED,
    OUTER_SYNCS,
    STEPS,
    attempts,
    diloco_bytes_between_groups,
    lowcomm_train,
    manifest,
    progress,
    records,
    wait_for,
    without_timing,
    worker_pids,
)

K, G = 2, 2
BLOCK_PARAMETERS = 2 * (4 * (64 * 64 + 64) + 2 * 2 * 64 + (64 * 256 + 256) + (256 * 64 + 64))
"""gpt-tiny's two blocks: 4 attention projections, 2 LayerNorms and the MLP's two layers (width 64)."""


def within_groups_bytes(inner, parameters):
    """What the ranks of the GROUPED run send inside their groups (G = 2: every collective sends the
    one other rank half the payload it covers), all ranks summed; M = 4 x parameters, all even-sized.

    - Both: the finite flag (float64) agreed at each of the 7 outer steps, 2(G-1)/G x 8 = 8 bytes.
    - DDP: DistributedDataParallel's broadcast from the group's first rank (M, and the embedding
      that lm_head shares again: the state dict's every entry is counted) and its gradient all-reduce
      each step (2(G-1)/G x M = M); lowcomm's all-gather of each rank's M/2 chunk after
      the initial broadcast, the 4 warm-up steps and the 7 outer steps.
    - FSDP2: each step all-gathers (G-1) x one shard (M/2 for the whole model) of each block in the
      forward and again in the backward pass, the root's (embeddings, last LayerNorm) once (it stays
      unsharded until the backward pass), and reduce-scatters every gradient once (M/2)."""
    model_bytes, syncs = 4 * parameters, len(OUTER_SYNCS)
    flags = K * G * syncs * 8
    if inner == "ddp":
        embedding = parameters - BLOCK_PARAMETERS - 128 * 64 - 2 * 64  # less wpe and ln_f
        return flags + K * (model_bytes + 4 * embedding) + K * G * (STEPS * model_bytes + (1 + 4 + syncs) * model_bytes // 2)
    blocks, root = 4 * BLOCK_PARAMETERS // 2, 4 * (parameters - BLOCK_PARAMETERS) // 2
    return flags + K * G * STEPS * (2 * blocks + root + (blocks + root))


@pytest.fixture(scope="module")
def grouped(tmp_path_factory, cache_dir):
    """``grouped(inner)``: the output directory of the 2 x 2 run with ``inner`` inside (run once)."""
    finished = {}

    def run(inner):
        if inner not in finished:
            out = tmp_path_factory.mktemp(inner) / "out"
            lowcomm_train(*GROUPED, "--inner", inner, "--cache-dir", cache_dir, "--out", str(out))
            finished[inner] = out
        return finished[inner]

    return run


def summary(out):
    return json.loads((out / "summary.json").read_text())


@pytest.mark.parametrize("inner", ["ddp", "fsdp"])
def test_groups_count_the_slow_link_apart(inner, grouped):
    """Between groups: the ring formula (see ``diloco_bytes_between_groups``); within groups apart."""
    out = grouped(inner)
    result = summary(out)
    assert (result["workers"], result["groups"], result["group_size"], result["inner"]) == (K * G, K, G, inner)
    model_bytes = 4 * result["parameters"]
    # 2 groups: each sends 2(K-1)/K = 1 model's bytes per all-reduce; a broadcast, 4 warm-up steps, 7 syncs
    assert result["comm_bytes_between_groups"] == model_bytes + 4 * 2 * model_bytes + 7 * (2 * model_bytes + 4 * 4)
    assert result["comm_bytes_between_groups"] == diloco_bytes_between_groups(result["parameters"])
    assert result["comm_bytes_total"] == result["comm_bytes_between_groups"] + result["comm_bytes_within_groups"]
    assert result["comm_bytes_within_groups"] == within_groups_bytes(inner, result["parameters"])
    outer = [r for r in records(out, "sync") if r["sync"] == "outer"]
    assert [r["step"] for r in outer] == OUTER_SYNCS
    train = records(out, "train")
    assert all(r["comm_bytes_within_groups"] >= 0 for r in train)
    assert train[-1]["tokens"] == K * G * STEPS * 8 * 32
    assert records(out, "eval")[-1]["eval_loss"] < train[0]["loss"] - 1


def test_fsdp_inside_trains_like_ddp_inside(grouped):
    ddp, fsdp = records(grouped("ddp"), "eval"), records(grouped("fsdp"), "eval")
    assert [r["step"] for r in fsdp] == [r["step"] for r in ddp] == [8, 16, 24, 32]
    for mine, theirs in zip(fsdp, ddp):
        assert mine["eval_loss"] == pytest.approx(theirs["eval_loss"], rel=1e-5)


def resume(out, cache_dir, *layout):
    """Drop ``out``'s checkpoints after step 16 and its summary, then resume it with ``layout``."""
    for step in (24, 32):
        shutil.rmtree(out / "checkpoints" / f"step_{step:08d}")
    (out / "summary.json").unlink()
    return lowcomm_train(*GROUPED, *layout, "--cache-dir", cache_dir, "--out", str(out), "--resume")


def test_a_sharded_checkpoint_resumes_bit_identically(grouped, cache_dir, tmp_path):
    """FSDP inside (DDP inside: the killed run below resumes in its own layout too)."""
    inner = "fsdp"
    straight, resumed = grouped(inner), tmp_path / "resumed"
    shutil.copytree(straight, resumed)
    files = manifest(straight, 16)["files"]
    assert {name for name in files if not name.startswith("sharded/")} == {
        "model.safetensors", *(f"rank_{rank:05d}.pt" for rank in range(K * G))}
    assert "sharded/.metadata" in files and manifest(straight, 16)["layout"] == {
        "groups": K, "group_size": G, "inner": inner}
    resume(resumed, cache_dir, "--inner", inner)
    assert {"step": 16, "event": "resume", "checkpoint": "step_00000016"} in records(resumed, "event")
    assert without_timing(resumed) == without_timing(straight)
    final = f"checkpoints/step_{STEPS:08d}/model.safetensors"
    assert (resumed / final).read_bytes() == (straight / final).read_bytes()
    assert summary(resumed)["comm_bytes_between_groups"] == summary(straight)["comm_bytes_between_groups"]


@pytest.mark.parametrize("groups, group_size", [(1, 4), (4, 1)])
def test_a_2x2_run_resumes_in_another_layout_and_trains_on(groups, group_size, grouped, cache_dir, tmp_path):
    """1 x 4: group 0's state resharded over 4 ranks. 4 x 1: groups 0 and 1 keep theirs on one rank
    each, and the new groups 2 and 3 start from the global model."""
    straight, resumed = grouped("ddp"), tmp_path / "resumed"
    shutil.copytree(straight, resumed)
    resume(resumed, cache_dir, "--groups", str(groups), "--group-size", str(group_size))
    before = [r for r in without_timing(straight) if r["step"] <= 16]
    assert [r for r in without_timing(resumed) if r["step"] <= 16] == before
    result = summary(resumed)
    assert (result["groups"], result["group_size"], result["steps"]) == (groups, group_size, STEPS)
    evals = records(resumed, "eval")
    assert [r["step"] for r in evals] == [8, 16, 24, 32]
    assert evals[-1]["eval_loss"] < evals[1]["eval_loss"]  # it trained on from step 16
    assert evals[-1]["eval_loss"] == pytest.approx(summary(straight)["final_eval_loss"], abs=0.2)
    outer = [r["step"] for r in records(resumed, "sync") if r["sync"] == "outer" and r["bytes"] > 0]
    assert outer == [8, 12, 16] + ([] if groups == 1 else [20, 24, 28, 32])  # one group sends nothing
    # its outer steps still happen: their diagnostics are recorded, the cosine from the previous
    # pseudo-gradient, resharded with the rest of the state
    diagnosed = [r for r in records(resumed, "sync") if "pseudo_grad_norm" in r and r["step"] > 16]
    assert [r["step"] for r in diagnosed] == [20, 24, 28, 32] and diagnosed[0]["pseudo_grad_cosine"] is not None


def test_a_killed_rank_of_one_group_changes_nothing(grouped, cache_dir, tmp_path):
    """SIGKILL a random rank (of one of the groups) after the first checkpoint: the launcher restarts
    all 4 ranks from it, and the run ends bit-identical to the uninterrupted one."""
    straight, crashed = grouped("ddp"), tmp_path / "crashed"
    rng = random.Random(11)
    with (tmp_path / "stderr.txt").open("w") as stderr:
        launcher = subprocess.Popen(
            [sys.executable, "-m", "lowcomm", "train", *GROUPED, "--inner", "ddp", "--cache-dir", cache_dir,
             "--out", str(crashed), "--max-restarts", "1"],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        wait_for(lambda: progress(crashed)[1] >= rng.choice(range(10, 14)), launcher)
        time.sleep(rng.uniform(0, 0.1))
        workers = worker_pids(launcher.pid)
        assert len(workers) == K * G
        os.kill(rng.choice(sorted(workers)), signal.SIGKILL)
        wait_for(lambda: progress(crashed)[0] == 1, launcher)
        assert launcher.wait(timeout=180) == 0, (tmp_path / "stderr.txt").read_text()[-3000:]
    assert attempts(crashed) == [("start", 0), ("resume", 1)]
    assert without_timing(crashed) == without_timing(straight)
    final = f"checkpoints/step_{STEPS:08d}/model.safetensors"
    assert (crashed / final).read_bytes() == (straight / final).read_bytes()


def test_a_modelled_link_between_groups_makes_them_wait_for_their_bytes(cache_dir, tmp_path):
    """``--network model --bandwidth 20mbit`` with 2 groups: each group's link is modelled (its G ranks
    share it), so the mean rank waits at least what one link carries between groups at 20 Mbit/s,
    less the initial broadcast (M, waited for while the ranks start up, which is not counted)."""
    out = tmp_path / "modelled"
    lowcomm_train(*GROUPED, "--steps", "8", "--network", "model", "--bandwidth", "20mbit",
                  "--cache-dir", cache_dir, "--out", str(out))
    result = summary(out)
    per_link = (result["comm_bytes_between_groups"] - 4 * result["parameters"]) / K
    modelled_s = per_link * 8 / 20e6
    assert modelled_s > 0.5
    assert modelled_s <= result["comm_wait_s"] < modelled_s + 1.0
    rank_0 = records(out, "eval")[-1]
    assert rank_0["comm_wait_s"] >= modelled_s  # rank 0's chunks are the larger half, at half the rate
