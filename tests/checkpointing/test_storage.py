"""Nodes without a shared filesystem, end to end: two torchrun agents on this machine stand in for
two nodes (c10d rendezvous on 127.0.0.1), each with its own ``--out``, or both with the same one."""

import os
import shutil
import signal
import subprocess
import sys

import pytest

from tests.distributed import free_port
from tests.train_runs import PERIODIC, SHORT, STEPS, child_pids, live_records, manifest, records, wait_for

FLAGS = ["--algo", "diloco", *SHORT, *PERIODIC, "--hang-timeout", "30"]
FINAL = f"checkpoints/step_{STEPS:08d}/model.safetensors"


def start_nodes(outs, cache_dir, *flags, nproc=1, logs=None):
    """One torchrun agent per node, the i-th training into ``outs[i]``; their stderr goes to ``logs``."""
    port = free_port()
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    agents = []
    for node, out in enumerate(outs):
        command = [
            sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", str(nproc),
            "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "nodes",
            "--local-addr", "127.0.0.1", "--max-restarts", "0",
            "-m", "lowcomm", "train", *FLAGS, *flags, "--cache-dir", cache_dir, "--out", str(out),
        ]
        stderr = (logs / f"node{node}.txt").open("a") if logs else subprocess.PIPE
        agents.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, env=env, text=True))
    return agents


def run_nodes(outs, cache_dir, *flags, nproc=1, tmp_path):
    agents = start_nodes(outs, cache_dir, *flags, nproc=nproc, logs=tmp_path)
    codes = [agent.wait(timeout=300) for agent in agents]
    logs = "".join((tmp_path / f"node{node}.txt").read_text()[-2000:] for node in range(2))
    assert codes == [0, 0], logs


def rank_0_first(outs):
    """``outs`` with the directory of global rank 0's node first (torchrun orders the nodes)."""
    return sorted(outs, key=lambda out: not (out / "metrics.jsonl").exists())


def files(out, step):
    return sorted(p.relative_to(out / "checkpoints" / f"step_{step:08d}").as_posix()
                  for p in (out / "checkpoints" / f"step_{step:08d}").rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def shared(tmp_path_factory, cache_dir):
    """Both nodes training into the same ``--out``."""
    root = tmp_path_factory.mktemp("shared")
    run_nodes([root / "out", root / "out"], cache_dir, tmp_path=root)
    return root / "out"


@pytest.fixture(scope="module")
def separate(tmp_path_factory, cache_dir):
    """Each node training into its own ``--out``: (rank 0's node's, the other's)."""
    root = tmp_path_factory.mktemp("separate")
    outs = [root / "a", root / "b"]
    run_nodes(outs, cache_dir, tmp_path=root)
    return rank_0_first(outs)


def test_a_shared_out_holds_every_rank_as_before(shared):
    assert files(shared, STEPS) == ["manifest.json", "model.safetensors", "rank_00000.pt", "rank_00001.pt"]
    assert "other_nodes" not in manifest(shared, STEPS)
    assert [r["step"] for r in records(shared, "eval")] == [8, 16, 24, 32]


def test_each_node_holds_its_own_ranks_and_rank_0_lists_them_all(separate, shared):
    first, second = separate
    assert files(first, STEPS) == ["manifest.json", "model.safetensors", "rank_00000.pt"]
    assert files(second, STEPS) == ["manifest.json", "rank_00001.pt"]
    assert not any((second / name).exists() for name in ("metrics.jsonl", "summary.json", "tensorboard"))
    assert (second / "config.yaml").read_text() == (first / "config.yaml").read_text().replace(str(first), str(second))
    (listing,) = manifest(first, STEPS)["other_nodes"].values()
    assert listing == {"ranks": [1], "files": manifest(second, STEPS)["files"]}
    assert manifest(second, STEPS)["ranks"] == [1]
    assert (first / FINAL).read_bytes() == (shared / FINAL).read_bytes()
    assert [r["step"] for r in records(first, "eval")] == [8, 16, 24, 32]


def test_a_node_killed_mid_run_resumes_with_the_other_to_the_same_model(shared, cache_dir, tmp_path):
    outs = [tmp_path / "a", tmp_path / "b"]
    agents = start_nodes(outs, cache_dir, logs=tmp_path)

    def metrics():
        return [out for out in outs if (out / "metrics.jsonl").exists()]

    wait_for(lambda: metrics() and any(r.get("step", 0) >= 13 for r in live_records(metrics()[0])), agents[0])
    other = next(out for out in outs if out not in metrics())
    node = outs.index(other)
    (worker,) = child_pids(agents[node].pid)
    os.kill(worker, signal.SIGKILL)
    assert all(agent.wait(timeout=120) != 0 for agent in agents)
    run_nodes(outs, cache_dir, "--resume", tmp_path=tmp_path)
    first = rank_0_first(outs)[0]
    resumed = [r for r in records(first, "event") if r["event"] == "resume"]
    assert resumed and resumed[-1]["checkpoint"] in ("step_00000008", "step_00000016")
    assert (first / FINAL).read_bytes() == (shared / FINAL).read_bytes()


def test_a_truncated_checkpoint_on_one_node_makes_both_fall_back(separate, shared, cache_dir, tmp_path):
    outs = [tmp_path / "a", tmp_path / "b"]
    for source, copy in zip(separate, outs):
        shutil.copytree(source, copy)
    (outs[0] / "summary.json").unlink()
    damaged = outs[1] / "checkpoints" / f"step_{STEPS:08d}" / "rank_00001.pt"
    damaged.write_bytes(damaged.read_bytes()[:-10])
    run_nodes(outs, cache_dir, "--resume", tmp_path=tmp_path)
    first = rank_0_first(outs)[0]
    events = records(first, "event")
    skipped = [r for r in events if r["event"] == "skipped_checkpoint"]
    assert len(skipped) == 1 and skipped[0]["checkpoint"] == f"step_{STEPS:08d}"
    assert "rank_00001.pt has" in skipped[0]["problem"] and "node" in skipped[0]["problem"]
    assert {"step": 24, "event": "resume", "checkpoint": "step_00000024"} in events
    assert (first / FINAL).read_bytes() == (shared / FINAL).read_bytes()


def test_worker_groups_on_nodes_without_a_shared_out(cache_dir, tmp_path):
    """2 nodes x 2 ranks, DDP inside each node's group: each node holds its ranks' files and a DCP
    checkpoint of its own (metadata included); resumed from step 16 it ends bit-identical; resuming
    in another layout is refused with one line."""
    outs = [tmp_path / "a", tmp_path / "b"]
    run_nodes(outs, cache_dir, "--inner", "ddp", nproc=2, tmp_path=tmp_path)
    first, second = rank_0_first(outs)
    assert files(first, 16) == ["manifest.json", "model.safetensors", "rank_00000.pt", "rank_00001.pt",
                                "sharded/.metadata", "sharded/__0_0.distcp", "sharded/__1_0.distcp"]
    # DCP names a node's files by the rank inside the node
    assert files(second, 16) == ["manifest.json", "rank_00002.pt", "rank_00003.pt",
                                 "sharded/.metadata", "sharded/__0_0.distcp", "sharded/__1_0.distcp"]
    assert manifest(second, 16)["layout"] == {"groups": 2, "group_size": 2, "inner": "ddp"}
    straight = (first / FINAL).read_bytes()
    for out in outs:
        for step in (24, 32):
            shutil.rmtree(out / "checkpoints" / f"step_{step:08d}")
    (first / "summary.json").unlink()
    run_nodes(outs, cache_dir, "--inner", "ddp", "--resume", nproc=2, tmp_path=tmp_path)
    assert {"step": 16, "event": "resume", "checkpoint": "step_00000016"} in records(first, "event")
    assert (first / FINAL).read_bytes() == straight

    agents = start_nodes(outs, cache_dir, "--inner", "ddp", "--resume", "--groups", "4", nproc=2)
    errors = [agent.communicate(timeout=300)[1] for agent in agents]
    assert all(agent.returncode != 0 for agent in agents)
    for error in errors:
        ours = [line for line in error.splitlines() if line.startswith("lowcomm train: error:")]
        assert ours and set(ours) == {
            f"lowcomm train: error: resume: step_{STEPS:08d} was saved as 2 x 2 on nodes without a shared --out, "
            "and resumes only in that layout: resharding to 4 x 1 would read other nodes' checkpoint files"}


def test_an_out_holding_another_run_on_one_node_is_refused_on_both(separate, cache_dir, tmp_path):
    outs = [tmp_path / "a", tmp_path / "b"]
    shutil.copytree(separate[1], outs[1])
    agents = start_nodes(outs, cache_dir)
    errors = [agent.communicate(timeout=300)[1] for agent in agents]
    assert [agent.returncode for agent in agents] != [0, 0]
    for error in errors:
        ours = [line for line in error.splitlines() if "lowcomm train: error:" in line]
        assert len(ours) == 1 and ours[0].startswith(
            f"lowcomm train: error: --out: {outs[1]} already holds a run; pass --resume to continue it or "
            "--overwrite to replace it (on node")
    assert not outs[0].exists()
