import hashlib
import json
import os
import pickle
import shutil

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file

from lowcomm.checkpointing.checkpoint import (
    Checkpointer,
    agreed_checkpoint,
    checkpoint_directories,
    load_worker_state,
    problem_with,
)
from lowcomm.checkpointing.storage import Storage, shared_storage
from lowcomm.cli import main
from lowcomm.communication.peers import communicator_peers, process_group_peers
from lowcomm.communication.simulated import run_simulated

STATE = {"strategy": {"step": 3, "weights": torch.arange(6.0)}, "rng": [torch.tensor([1, 2], dtype=torch.uint8)]}
MODEL = {"weight": torch.ones(2, 3), "bias": torch.zeros(2)}


@pytest.fixture(autouse=True)
def process_group():
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def save(root, step, state=STATE, keep=None):
    return Checkpointer(root, keep=keep).save(step, state, MODEL)


def newest(root):
    """The checkpoint one rank resumes under ``root``, and the newer ones it skips."""
    return agreed_checkpoint(root, process_group_peers(), shared_storage(0, 1))


def test_a_checkpoint_holds_its_files_and_a_manifest_of_their_sizes_and_checksums(tmp_path):
    directory = save(tmp_path, 7)
    assert directory == tmp_path / "step_00000007"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000007"]  # no staging left behind
    manifest = json.loads((directory / "manifest.json").read_text())
    assert (manifest["step"], manifest["world_size"]) == (7, 1)
    assert sorted(manifest["files"]) == ["model.safetensors", "rank_00000.pt"]
    for name, entry in manifest["files"].items():
        content = (directory / name).read_bytes()
        assert entry == {"bytes": len(content), "sha256": hashlib.sha256(content).hexdigest()}
    assert problem_with(directory) is None
    loaded = load_worker_state(directory, rank=0, world_size=1, device=torch.device("cpu"))
    assert loaded["strategy"]["step"] == 3 and torch.equal(loaded["strategy"]["weights"], torch.arange(6.0))
    assert {k: v.tolist() for k, v in load_file(directory / "model.safetensors").items()} == {
        "weight": [[1.0] * 3] * 2,
        "bias": [0.0, 0.0],
    }


def corrupt(directory, how, name="rank_00000.pt"):
    rank_file = directory / name
    if how == "flipped byte":
        content = bytearray(rank_file.read_bytes())
        content[100] ^= 1
        rank_file.write_bytes(bytes(content))
    elif how == "truncated":
        rank_file.write_bytes(rank_file.read_bytes()[:-10])
    elif how == "missing file":
        rank_file.unlink()
    elif how == "no manifest":
        (directory / "manifest.json").unlink()
    elif how == "garbage manifest":
        (directory / "manifest.json").write_text("{not json")


@pytest.mark.parametrize(
    "how, problem",
    [
        ("flipped byte", "rank_00000.pt fails its SHA-256 check"),
        ("truncated", "rank_00000.pt has {size} bytes, the manifest says {expected}"),
        ("missing file", "rank_00000.pt is missing"),
        ("no manifest", "no manifest (an unfinished write)"),
        ("garbage manifest", "unreadable manifest (JSONDecodeError)"),
    ],
)
def test_damage_is_detected(tmp_path, how, problem):
    directory = save(tmp_path, 1)
    expected = (directory / "rank_00000.pt").stat().st_size
    corrupt(directory, how)
    assert problem_with(directory) == problem.format(size=expected - 10, expected=expected)


def test_resuming_takes_the_newest_intact_checkpoint_and_names_those_it_skips(tmp_path):
    for step in (1, 2, 3):
        save(tmp_path, step)
    corrupt(tmp_path / "step_00000003", "flipped byte")
    corrupt(tmp_path / "step_00000002", "no manifest")
    found, skipped = newest(tmp_path)
    assert found == tmp_path / "step_00000001"
    assert skipped == [
        ("step_00000003", "rank_00000.pt fails its SHA-256 check"),
        ("step_00000002", "no manifest (an unfinished write)"),
    ]
    assert newest(tmp_path / "absent") == (None, [])


def test_a_write_that_fails_midway_leaves_no_checkpoint(tmp_path):
    save(tmp_path, 1)
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        save(tmp_path, 2, state={"unpicklable": lambda: None})
    assert [d.name for d in checkpoint_directories(tmp_path)] == ["step_00000001"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".staging_step_00000002", "step_00000001"]
    assert newest(tmp_path)[0] == tmp_path / "step_00000001"  # and the unfinished write is discarded
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000001"]


def test_keep_bounds_the_number_of_checkpoints(tmp_path):
    for step in range(1, 5):
        save(tmp_path, step, keep=2)
    assert [d.name for d in checkpoint_directories(tmp_path)] == ["step_00000003", "step_00000004"]


class Payload:
    """Not a tensor, container or primitive: ``weights_only`` loading must refuse it."""


def test_loading_refuses_anything_but_tensors_and_plain_containers(tmp_path):
    directory = save(tmp_path, 1, state={"payload": Payload()})
    assert problem_with(directory) is None
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_worker_state(directory, rank=0, world_size=1, device=torch.device("cpu"))


class MetadataPayload:
    """A pickle that makes a directory when it is unpickled."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return os.mkdir, (self.path,)


def test_sharded_metadata_that_would_run_code_is_skipped_like_a_corrupt_checkpoint(tmp_path):
    """An attacker who can write the run directory replaces a DCP ``.metadata`` with a pickled
    payload and rewrites the manifest to match: resuming skips that checkpoint and runs nothing."""
    for step in (1, 2):
        Checkpointer(tmp_path).save(step, STATE, MODEL, sharded={"group_0/rank_0/w": torch.arange(4.0)})
    directory, ran = tmp_path / "step_00000002", tmp_path / "payload_ran"
    metadata = directory / "sharded" / ".metadata"
    metadata.write_bytes(pickle.dumps(MetadataPayload(ran)))
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["files"]["sharded/.metadata"] = {"bytes": metadata.stat().st_size,
                                               "sha256": hashlib.sha256(metadata.read_bytes()).hexdigest()}
    (directory / "manifest.json").write_text(json.dumps(manifest))
    assert newest(tmp_path) == (tmp_path / "step_00000001", [
        ("step_00000002", "its sharded metadata is refused (posix.mkdir is not checkpoint metadata)")])
    assert not ran.exists()


def test_a_checkpoint_from_another_world_size_is_refused(tmp_path):
    directory = save(tmp_path, 1)
    with pytest.raises(ValueError, match="was written by 1 workers, this run has 2"):
        load_worker_state(directory, rank=0, world_size=2, device=torch.device("cpu"))


def on_two_nodes(tmp_path, then, steps=(1, 2), ranks=((0,), (1,)), keep=None):
    """Two simulated ranks on two nodes without a shared directory (``tmp_path/node0``, ``/node1``):
    save ``steps``, call ``then(rank, root)``, and return ``agreed_checkpoint`` on every rank."""

    def worker(communicator):
        peers = communicator_peers(communicator)
        storage = Storage(peers.rank, ranks, ("node 0 (a)", "node 1 (b)"))
        root = tmp_path / f"node{peers.rank}"
        for step in steps:
            Checkpointer(root, peers, storage, keep).save(step, STATE, MODEL if peers.rank == 0 else None)
        peers.barrier()
        then(peers.rank, root)
        peers.barrier()
        found, skipped = agreed_checkpoint(root, peers, storage)
        return None if found is None else found.name, skipped

    return run_simulated(2, worker)


def test_nodes_without_a_shared_directory_resume_the_newest_checkpoint_both_hold(tmp_path):
    results = on_two_nodes(tmp_path, lambda rank, root: None)
    assert results == [("step_00000002", [])] * 2
    node1_files = sorted(p.name for p in (tmp_path / "node1" / "step_00000002").iterdir())
    assert node1_files == ["manifest.json", "rank_00001.pt"]
    listing = json.loads((tmp_path / "node0" / "step_00000002" / "manifest.json").read_text())["other_nodes"]
    node1 = json.loads((tmp_path / "node1" / "step_00000002" / "manifest.json").read_text())
    assert listing == {"node 1 (b)": {"ranks": [1], "files": node1["files"]}} and node1["ranks"] == [1]


def test_every_node_keeps_its_newest_checkpoints(tmp_path):
    assert on_two_nodes(tmp_path, lambda rank, root: None, steps=(1, 2, 3, 4), keep=2) == [("step_00000004", [])] * 2
    for node in ("node0", "node1"):
        assert [d.name for d in checkpoint_directories(tmp_path / node)] == ["step_00000003", "step_00000004"]


@pytest.mark.parametrize("how", ["truncated", "no manifest"])
def test_a_checkpoint_damaged_on_one_node_makes_both_fall_back(tmp_path, how):
    def damage(rank, root):
        if rank == 1:
            corrupt(root / "step_00000002", how, "rank_00001.pt")

    problem = {"truncated": "rank_00001.pt has", "no manifest": "no manifest"}[how]
    for found, skipped in on_two_nodes(tmp_path, damage):
        assert found == "step_00000001"
        assert [name for name, _ in skipped] == ["step_00000002"]
        assert skipped[0][1].startswith(f"node 1 (b): {problem}")


def test_a_step_directory_from_another_write_does_not_count(tmp_path):
    def rewrite(rank, root):
        if rank == 1:  # as if node 1 kept an intact step 2 of an earlier attempt
            directory = root / "step_00000002"
            content = b"an earlier attempt"
            (directory / "rank_00001.pt").write_bytes(content)
            manifest = json.loads((directory / "manifest.json").read_text())
            manifest["files"]["rank_00001.pt"] = {"bytes": len(content), "sha256": hashlib.sha256(content).hexdigest()}
            (directory / "manifest.json").write_text(json.dumps(manifest))

    for found, skipped in on_two_nodes(tmp_path, rewrite):
        assert found == "step_00000001"
        problem = "node 1 (b): its files are not those rank 0's manifest lists (an older write)"
        assert skipped == [("step_00000002", problem)]


def test_no_checkpoint_on_one_node_stops_with_one_line_naming_it(tmp_path):
    def lose(rank, root):
        if rank == 1:
            shutil.rmtree(root)

    with pytest.raises(ValueError, match=r"^resume: no checkpoint is intact on every node; step_00000002 is intact "
                                         r"on some, not on node 1 \(b\): no such checkpoint$"):
        on_two_nodes(tmp_path, lose)


def test_a_node_running_other_ranks_than_it_saved_is_refused(tmp_path):
    def swap(rank, root):
        if rank == 1:
            for directory in checkpoint_directories(root):
                manifest = json.loads((directory / "manifest.json").read_text())
                manifest["ranks"] = [0]
                (directory / "manifest.json").write_text(json.dumps(manifest))

    refusal = (r"node 1 \(b\) holds the checkpoint files of ranks \[0\] \(step_00000002\) but runs ranks \[1\]; "
               r"without a shared --out every node must keep its ranks")
    with pytest.raises(ValueError, match=refusal):
        on_two_nodes(tmp_path, swap)


SIM_RUN = ["--backend", "sim", "--workers", "1", "--algo", "ddp", "--checkpoint-every", "2", "--eval-every", "2",
           "--batch-size", "2", "--seq-len", "16", "--eval-batches", "1", "--lr-warmup", "1", "--vocab-size", "300"]


@pytest.fixture(scope="module")
def four_steps(tmp_path_factory):
    """A finished 4-step run, checkpointed at steps 2 and 4 (trained without this module's process group)."""
    root = tmp_path_factory.mktemp("four_steps")
    assert main(["train", *SIM_RUN, "--steps", "4", "--cache-dir", str(root / "cache"), "--out", str(root / "run")]) == 0
    return root


def damage(out, case):
    checkpoints = out / "checkpoints"
    if case == "torn metrics line":  # cut short inside a record before the checkpoint's offset
        metrics = out / "metrics.jsonl"
        metrics.write_bytes(metrics.read_bytes()[:-20])
    elif case == "rank file of {}":
        rank = checkpoints / "step_00000004" / "rank_00000.pt"
        torch.save({}, rank)
        listed = json.loads((rank.parent / "manifest.json").read_text())
        listed["files"][rank.name] = {"bytes": rank.stat().st_size, "sha256": hashlib.sha256(rank.read_bytes()).hexdigest()}
        (rank.parent / "manifest.json").write_text(json.dumps(listed))
    elif case == "format 1":  # written before the state was keyed by parameter name
        manifest = checkpoints / "step_00000004" / "manifest.json"
        listed = json.loads(manifest.read_text())
        del listed["format"]
        manifest.write_text(json.dumps(listed))
    else:  # staging names that are not lowcomm's directories
        (checkpoints / ".staging_file").write_text("mine")
        (checkpoints / ".staging_link").symlink_to(out / "checkpoints" / "step_00000002")


RESUME_CASES = {
    "torn metrics line": (0, None),
    "rank file of {}": (2, "lowcomm train: error: resume: step_00000004 on node 0 holds a damaged rank file "
                           "(KeyError: 'strategy'); move that checkpoint away to resume from an older one\n"),
    "staging file and symlink": (0, None),
    "format 1": (2, "lowcomm train: error: resume: step_00000004 has checkpoint format 1, this lowcomm reads "
                    "format 2; resume it with the lowcomm that wrote it, or start afresh\n"),
}


@pytest.mark.parametrize("case", RESUME_CASES)
def test_a_damaged_run_resumes_or_is_refused_with_one_line(case, four_steps, tmp_path, run_cli):
    out = tmp_path / "run"
    shutil.copytree(four_steps / "run", out, symlinks=True)
    damage(out, case)
    code, _, err = run_cli(["train", *SIM_RUN, "--steps", "6", "--cache-dir", str(four_steps / "cache"),
                            "--out", str(out), "--resume"])
    expected_code, message = RESUME_CASES[case]
    assert code == expected_code and (message is None or err.endswith(message)), err
    assert "Traceback" not in err
    if code == 0:
        steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert max(steps) == 6
    if case == "staging file and symlink":
        assert (out / "checkpoints" / ".staging_file").read_text() == "mine"
        assert (out / "checkpoints" / ".staging_link").is_symlink()
        assert (out / "checkpoints" / "step_00000002" / "manifest.json").is_file()
