"""Live fault tolerance with torchft (``--fault-tolerance live``), on real processes: a group killed
with SIGKILL, in its local phase or inside an all-reduce (NoLoCo: exchange), is left out while the
others train on, rejoins healed, and every group ends with the same global model; without faults a
live run ends as the restart mode's; a group of two processes, one of them killed, is restarted
whole and rejoins healed; a group that alone failed a step is healed in place; too few live groups
stop the run with one line and a checkpoint; a lighthouse that restarts does not stop training; a
group whose link goes down for 30 s is left out and rejoins healed; groups run at their
--worker-speeds; without torchft the option is refused."""

import contextlib
import importlib.util
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lowcomm.checkpointing.checkpoint import load_worker_state, newest_complete_checkpoint
from lowcomm.launching.live import COLLECTIVE_TIMEOUT_S
from lowcomm.launching.netns import HUB, set_link
from lowcomm.training.cpu_share import quota_problem

from tests.train_runs import assert_paced, leftover_cgroups, listening_addresses, live_records, wait_for, worker_pids

pytestmark = pytest.mark.timeout(1800)  # a kill test trains twice (killed, uninterrupted): many minutes under load

needs_torchft = pytest.mark.skipif(
    importlib.util.find_spec("torchft") is None or os.environ.get("LOWCOMM_LIVE_TESTS") != "1",
    reason="opt-in (LOWCOMM_LIVE_TESTS=1; over 30 minutes on 2 cores) and needs the ft extra "
    "(pip install 'lowcomm[ft]')",
)

GROUPS = 3
LIVE = ["--fault-tolerance", "live", "--batch-size", "8", "--seq-len", "32", "--eval-batches", "16",
        "--lr-warmup", "2", "--sync-interval", "8", "--warmup-steps", "8"]
KILLED = 1
MAX_STALL_S = 15


def train_command(out, *args, cache_dir):
    return [sys.executable, "-m", "lowcomm", "train", *LIVE, "--cache-dir", cache_dir, "--out", str(out), *args]


def group_pid(out, group):
    """The process that has ``out/group_G/metrics.jsonl`` open: group G's."""
    target = str(Path(out) / f"group_{group}" / "metrics.jsonl")
    for fd_directory in Path("/proc").glob("[0-9]*/fd"):
        try:
            if any(os.readlink(fd) == target for fd in fd_directory.iterdir()):
                return int(fd_directory.parent.name)
        except OSError:
            continue
    return None


def group_records(out, group, kind=None):
    lines = live_records(Path(out) / f"group_{group}")
    keys = {"train": "loss", "eval": "eval_loss", "event": "event"}
    return [r for r in lines if kind is None or keys[kind] in r]


def final_models(out, groups, steps):
    return [load_file(Path(out) / f"group_{g}" / "checkpoints" / f"step_{steps:08d}" / "model.safetensors")
            for g in range(groups)]


def assert_same_models(models, algo):
    """Every group ends with the same global model (z): bit for bit; NoLoCo's to rounding (healed before
    its peer's pairwise step, the rejoined group's z missed that step, and the pull of the three towards
    their mean z shrinks the difference: measured 1.5e-8 at most at the end)."""
    tolerance = 1e-6 if algo == "noloco" else 0
    assert all(torch.allclose(m[k], models[0][k], rtol=0, atol=tolerance) for m in models[1:] for k in m)


def stop(launcher):
    """Kill a launcher that is still running and its groups' processes (which would outlive it)."""
    if launcher.poll() is None:
        for pid in worker_pids(launcher.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        launcher.kill()
    launcher.wait()


def longest_pause(records):
    """The longest wall-clock gap between consecutive train records."""
    times = [r["elapsed_s"] for r in records]
    return max(b - a for a, b in zip(times, times[1:]))


STOPPED_SYNC = 40
"""The synchronisation inside whose all-reduce the killed group stops itself (the injected fault's torchft step
12: the first quorum, 8 warm-up steps, then the syncs at steps 16, 24, 32 are steps 0 to 11)."""
FAULT_INJECTION = Path(__file__).parent / "fault_injection"


def with_fault(fault):
    """The environment of a live run whose processes load the fault injection, asked for ``fault``
    (``GROUP:STEP:KIND``, see fault_injection/sitecustomize.py); None: no fault."""
    if fault is None:
        return dict(os.environ)
    path = os.pathsep.join(filter(None, [str(FAULT_INJECTION), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "LOWCOMM_LIVE_TEST_FAULT": fault}


def phase_fault(phase):
    """The fault of a kill in ``phase``: none in the local phase, else group KILLED stops itself in its
    torchft step 12 (the synchronisation at STOPPED_SYNC), in its exchange (NoLoCo) or all-reduce."""
    return {"local": None, "exchange": f"{KILLED}:12:stop_exchange"}.get(phase, f"{KILLED}:12:stop")


@pytest.fixture(scope="module")
def uninterrupted_eval_loss(cache_dir, tmp_path_factory):
    """The final eval loss of a run of these arguments without a kill (computed once per arguments)."""
    losses = {}

    def run(args):
        key = tuple(args)
        if key not in losses:
            out = tmp_path_factory.mktemp("straight")
            subprocess.run(train_command(out, *args, cache_dir=cache_dir), check=True, capture_output=True,
                           timeout=800)
            losses[key] = group_records(out, 0, "eval")[-1]["eval_loss"]
        return losses[key]

    return run


def process_state(pid):
    """The one-letter state of a process (``T`` when stopped), from /proc."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def group_to_kill(out, launcher, phase):
    """Group KILLED's process, once it is mid local phase (after its step 40 record), or stopped inside
    the all-reduce (NoLoCo: the exchange) of its synchronisation at STOPPED_SYNC (the injected stop) while
    the others wait in it, or ("hung") once they have given up waiting (the collective timeout)."""
    if phase == "local":
        wait_for(lambda: any(r["step"] >= 40 for r in group_records(out, KILLED, "train")), launcher, 240)
    else:
        wait_for(lambda: (pid := group_pid(out, KILLED)) is not None and process_state(pid) == "T", launcher, 240)
    if phase == "hung":
        wait_for(lambda: any(r["event"] == "step_failed" for r in group_records(out, 0, "event")), launcher, 60)
    return group_pid(out, KILLED)


@needs_torchft
@pytest.mark.parametrize(("algo", "phase"), [("diloco", "local"), ("palsgd", "local"), ("diloco", "all_reduce"),
                                             ("palsgd", "all_reduce"), ("diloco", "hung"), ("localsgd", "all_reduce"),
                                             ("noloco", "local"), ("noloco", "exchange"),
                                             ("streamingdiloco", "local")])
def test_a_killed_group_is_left_out_and_rejoins_healed(algo, phase, cache_dir, tmp_path, uninterrupted_eval_loss):
    """3 groups; Local SGD and NoLoCo keep their models after a failed synchronisation, and NoLoCo's three
    groups draw one triple (or, while one is gone, one pair), so every group ends with the same model."""
    steps = "800"
    args = ["--algo", algo, "--groups", str(GROUPS), "--steps", steps, "--eval-every", steps,
            "--checkpoint-every", steps]
    killed = tmp_path / "killed"
    inside_sync = phase != "local"
    environment = with_fault(phase_fault(phase))
    with (tmp_path / "stderr.txt").open("w") as stderr:
        launcher = subprocess.Popen(train_command(killed, *args, "--max-restarts", "1", cache_dir=cache_dir),
                                    stdout=subprocess.DEVNULL, stderr=stderr, env=environment)
        try:
            victim = group_to_kill(killed, launcher, phase)
            workers = worker_pids(launcher.pid)
            assert listening_addresses([launcher.pid]) == {"127.0.0.1"}  # the lighthouse
            assert listening_addresses(workers) <= {"127.0.0.1", "::"}  # stores and gloo; torchft's manager: "::"
            os.kill(victim, signal.SIGKILL)
            assert launcher.wait(timeout=800) == 0, (tmp_path / "stderr.txt").read_text()[-3000:]
        finally:
            stop(launcher)

    for group in range(GROUPS):
        train = group_records(killed, group, "train")
        assert train[-1]["step"] == int(steps)
        if group != KILLED:
            assert longest_pause(train) < MAX_STALL_S
            events = group_records(killed, group, "event")
            left = [r for r in events if r["event"] == "group_left"]
            joined = [r for r in events if r["event"] == "group_joined"]
            assert [(r["group"], r["live_groups"]) for r in left] == [(KILLED, GROUPS - 1)]
            assert [(r["group"], r["live_groups"]) for r in joined] == [(KILLED, GROUPS)]
            assert left[0]["step"] < joined[0]["step"] < int(steps)
            failed = [r["step"] for r in events if r["event"] == "step_failed"]
            assert not [r for r in events if r["event"] == "nonfinite_worker_excluded"]
            if inside_sync:  # the synchronisation the killed group was in failed, then the others go on
                assert failed == [STOPPED_SYNC] and left[0]["step"] > STOPPED_SYNC
                waited = next(r["stalled_s"] for r in events if r["event"] == "step_failed")
                limits = (COLLECTIVE_TIMEOUT_S, MAX_STALL_S) if phase == "hung" else (0, COLLECTIVE_TIMEOUT_S / 2)
                assert limits[0] <= waited < limits[1]
            elif algo == "streamingdiloco":  # a fragment synchronises every 2 steps: the kill may land in one
                assert len(failed) <= 1
            else:
                assert failed == []
    if inside_sync:  # its last step record before the stop: the step before the synchronisation
        steps_done = [r["step"] for r in group_records(killed, KILLED) if ("loss" in r or "sync" in r)]
        assert max(step for step in steps_done if step <= STOPPED_SYNC) == STOPPED_SYNC - 1
    rejoined = [r for r in group_records(killed, KILLED, "event") if r["event"] == "group_joined"]
    assert len(rejoined) == 1 and rejoined[0]["group"] == KILLED
    assert_same_models(final_models(killed, GROUPS, int(steps)), algo)
    loss, uninterrupted = group_records(killed, 0, "eval")[-1]["eval_loss"], uninterrupted_eval_loss(args)
    assert abs(loss - uninterrupted) <= 0.02 * uninterrupted, (loss, uninterrupted)


@needs_torchft
@pytest.mark.parametrize("algo", ["diloco", "palsgd", "localsgd", "postlocalsgd", "noloco", "streamingdiloco"])
def test_without_faults_a_live_run_trains_as_the_restart_mode(algo, cache_dir, tmp_path):
    """3 groups, no fault: each group's final model equals the restart-mode run's (one process per group)
    bit for bit; NoLoCo's to rounding (live, a group's global model is its own z, the restart mode
    averages the three equal ones)."""
    args = ["--algo", algo, "--groups", str(GROUPS), "--group-size", "1", "--steps", "96", "--eval-every", "96",
            "--checkpoint-every", "96"]
    restarted = [arg for arg in train_command(tmp_path / "restart", *args, cache_dir=cache_dir) if arg != "live"]
    restarted.remove("--fault-tolerance")
    subprocess.run(restarted, check=True, capture_output=True, timeout=300)
    subprocess.run(train_command(tmp_path / "live", *args, cache_dir=cache_dir), check=True, capture_output=True,
                   timeout=300)
    expected = load_file(tmp_path / "restart" / "checkpoints" / "step_00000096" / "model.safetensors")
    for model in final_models(tmp_path / "live", GROUPS, 96):
        tolerance = 1e-6 if algo == "noloco" else 0
        assert all(torch.allclose(model[k], expected[k], rtol=0, atol=tolerance) for k in expected)


@needs_torchft
@pytest.mark.parametrize(("algo", "inner", "phase"), [("diloco", "ddp", "local"), ("diloco", "ddp", "all_reduce"),
                                                      ("diloco", "fsdp", "local"), ("palsgd", "ddp", "local"),
                                                      ("noloco", "ddp", "exchange"), ("diloco", "ddp", "hung")])
def test_a_group_of_two_processes_is_the_unit_that_fails_and_rejoins(algo, inner, phase, cache_dir, tmp_path,
                                                                     uninterrupted_eval_loss):
    """3 groups of 2 processes (DDP or FSDP2 inside): one process of group 1 killed, rank 1 in its
    local phase, or rank 0 inside its synchronisation's all-reduce (NoLoCo: exchange; the injected stop;
    rank 1's half of it, with the others' ranks 1, may succeed: the survivors' ranks agree that the
    step failed), killed at once or ("hung") once the survivors have given up waiting. The launcher
    kills the group's other process and starts both again; the survivors train on, the restarted
    group is healed rank by rank (rank i from a survivor's rank i) and takes part again. Each group's
    final global model is its ranks' shards of z put together: equal across groups, bit for bit
    (NoLoCo: to rounding, see above), so every rank's shard of z equals its peers'."""
    steps, size = "800", 2
    args = ["--algo", algo, "--groups", str(GROUPS), "--group-size", str(size), "--inner", inner,
            "--steps", steps, "--eval-every", steps, "--checkpoint-every", steps]
    out = tmp_path / "killed"
    with (tmp_path / "stderr.txt").open("w") as stderr:
        environment = with_fault(phase_fault(phase))
        launcher = subprocess.Popen(train_command(out, *args, "--max-restarts", "1", cache_dir=cache_dir),
                                    stdout=subprocess.DEVNULL, stderr=stderr, env=environment)
        try:
            group_to_kill(out, launcher, phase)
            pids = sorted(worker_pids(launcher.pid))  # started in order: group g's rank i is the (g * G + i)-th
            ranks = pids[KILLED * size : (KILLED + 1) * size]
            assert len(pids) == GROUPS * size and ranks[0] == group_pid(out, KILLED)
            victim, other = ranks if phase != "local" else ranks[::-1]
            os.kill(victim, signal.SIGKILL)
            wait_for(lambda: not Path(f"/proc/{other}").exists(), launcher, 30)  # the launcher kills it
            assert launcher.wait(timeout=800) == 0, (tmp_path / "stderr.txt").read_text()[-3000:]
        finally:
            stop(launcher)
    restarts = [line for line in (tmp_path / "stderr.txt").read_text().splitlines() if "restarting it" in line]
    assert len(restarts) == 1 and f"group {KILLED} failed (exit code " in restarts[0], restarts
    for group in set(range(GROUPS)) - {KILLED}:
        train = group_records(out, group, "train")
        assert train[-1]["step"] == int(steps) and longest_pause(train) < MAX_STALL_S
        events = group_records(out, group, "event")
        left = [(r["group"], r["live_groups"]) for r in events if r["event"] == "group_left"]
        joined = [(r["group"], r["live_groups"]) for r in events if r["event"] == "group_joined"]
        assert left == [(KILLED, GROUPS - 1)] and joined == [(KILLED, GROUPS)]
        failed = [r["step"] for r in events if r["event"] == "step_failed"]
        assert failed == ([STOPPED_SYNC] if phase != "local" else [])
        assert not [r for r in events if r["event"] == "nonfinite_worker_excluded"]
    restarted = group_records(out, KILLED, "event")
    assert [r.get("restart", 0) for r in restarted if r["event"] == "start"] == [0, 1]
    assert [r["group"] for r in restarted if r["event"] == "group_joined"] == [KILLED]
    assert_same_models(final_models(out, GROUPS, int(steps)), algo)
    loss, uninterrupted = group_records(out, 0, "eval")[-1]["eval_loss"], uninterrupted_eval_loss(args)
    assert abs(loss - uninterrupted) <= 0.02 * uninterrupted, (loss, uninterrupted)


@needs_torchft
def test_a_group_that_alone_failed_a_step_is_healed_in_place(cache_dir, tmp_path):
    """Group 1's all-reduce of the synchronisation at step 40 reports an error (an injected fault) while
    the others' succeed: it skips that outer step, so at the next synchronisation it is behind, takes a
    peer's state inside the step and sits out its all-reduce; nothing restarts and every group ends
    with the same z (PALSGD: the coins too, or the groups would drift apart)."""
    steps = 200
    out = tmp_path / "run"
    args = ["--algo", "palsgd", "--groups", str(GROUPS), "--steps", str(steps), "--eval-every", str(steps),
            "--checkpoint-every", str(steps)]
    environment = with_fault("1:12:error")
    result = subprocess.run(train_command(out, *args, cache_dir=cache_dir), capture_output=True, text=True,
                            timeout=800, env=environment)
    assert result.returncode == 0, result.stderr[-3000:]
    events = {group: [(r["step"], r["event"], r.get("group")) for r in group_records(out, group, "event")]
              for group in range(GROUPS)}  # no nonfinite_worker_excluded: a failed step's zeros are no worker's
    assert events[1] == [(0, "start", None), (STOPPED_SYNC, "step_failed", 1), (STOPPED_SYNC + 8, "group_healed", 1)]
    for group in (0, 2):
        assert events[group] == [(0, "start", None), (STOPPED_SYNC + 8, "group_left", 1),
                                 (STOPPED_SYNC + 16, "group_joined", 1)]
    models = final_models(out, GROUPS, steps)
    assert all(all((m[k] == models[0][k]).all() for k in m) for m in models[1:])
    assert math.isfinite(group_records(out, 0, "eval")[-1]["eval_loss"])


@needs_torchft
@pytest.mark.parametrize("size", [1, 2])
def test_too_few_groups_stop_with_one_line_and_a_checkpoint(size, cache_dir, tmp_path):
    """2 groups of ``size`` processes, ``--min-groups 2``: group 1's last process killed (no restarts)."""
    out = tmp_path / "run"
    run = ["--algo", "diloco", "--groups", "2", "--group-size", str(size), "--min-groups", "2", "--steps", "400",
           "--eval-every", "400", "--checkpoint-every", "400"]
    args = [*run, "--hang-timeout", "5"]
    with (tmp_path / "stderr.txt").open("w") as stderr:
        launcher = subprocess.Popen(train_command(out, *args, cache_dir=cache_dir),
                                    stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            wait_for(lambda: any(r["step"] >= 20 for r in group_records(out, 1, "train")), launcher, 240)
            pids = sorted(worker_pids(launcher.pid))  # started in order: group 1's last rank is the last
            assert len(pids) == 2 * size and pids[size] == group_pid(out, 1)
            os.kill(pids[-1], signal.SIGKILL)
            started = time.monotonic()
            assert launcher.wait(timeout=120) == 1
            waited = time.monotonic() - started
        finally:
            stop(launcher)
    errors = [line for line in (tmp_path / "stderr.txt").read_text().splitlines() if "lowcomm train: error" in line]
    assert len(errors) == 1 and "fewer than 2 groups were live for 5 s" in errors[0], errors
    assert 5 <= waited < 60
    checkpoint, skipped = newest_complete_checkpoint(out / "group_0" / "checkpoints")
    assert checkpoint is not None and not skipped
    stopped_at = int(checkpoint.name.removeprefix("step_"))
    assert load_worker_state(checkpoint, 0, size, "cpu")["strategy"]["step"] == stopped_at >= 20
    # resumed with another number of groups, 3: group 0 from its checkpoint, group 1 (none) and the new
    # group 2 healed from it, all three to the end
    resumed = [*run, "--resume"]
    resumed[resumed.index("--groups") + 1] = "3"
    subprocess.run(train_command(out, *resumed, cache_dir=cache_dir), check=True, capture_output=True, timeout=300)
    assert any(r["event"] == "group_joined" and r["group"] == 2 for r in group_records(out, 2, "event"))  # healed
    models = final_models(out, 3, 400)
    assert all((models[0][k] == models[g][k]).all() for g in (1, 2) for k in models[0])


@needs_torchft
@pytest.mark.parametrize("size", [1, 2])
def test_training_survives_a_restarted_lighthouse(size, cache_dir, tmp_path):
    """Two machines' launchers (``--live-group``, here on one host) against a standalone lighthouse that
    is killed and started again mid-run; groups of ``size`` processes."""
    port = free_port()
    lighthouse_command = ["torchft_lighthouse", "--bind", f"127.0.0.1:{port}", "--min_replicas", "1",
                          "--join_timeout_ms", "60000", "--heartbeat_timeout_ms", "2000"]
    lighthouse = subprocess.Popen(lighthouse_command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    args = ["--algo", "diloco", "--groups", "2", "--group-size", str(size), "--steps", "800", "--eval-every", "800",
            "--checkpoint-every", "800", "--lighthouse", f"127.0.0.1:{port}"]
    launchers = []
    try:
        for group in range(2):
            stderr = (tmp_path / f"stderr{group}.txt").open("w")
            out = tmp_path / f"machine{group}"
            launchers.append(subprocess.Popen(train_command(out, *args, "--live-group", str(group),
                                                            cache_dir=cache_dir),
                                              stdout=subprocess.DEVNULL, stderr=stderr))
        for group in range(2):  # both training together (a group may start alone and be joined later)
            wait_for(lambda: any(r["step"] >= 100 for r in group_records(tmp_path / f"machine{group}", group, "train")),
                     launchers[group], 240)
        lighthouse.kill()
        lighthouse.wait()
        time.sleep(1)
        lighthouse = subprocess.Popen(lighthouse_command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for group, launcher in enumerate(launchers):
            assert launcher.wait(timeout=300) == 0, (tmp_path / f"stderr{group}.txt").read_text()[-3000:]
    finally:
        lighthouse.kill()
        for launcher in launchers:
            stop(launcher)
    models = [load_file(tmp_path / f"machine{g}" / f"group_{g}" / "checkpoints" / "step_00000800" /
                        "model.safetensors") for g in range(2)]
    assert all((models[0][k] == models[1][k]).all() for k in models[0])


CUT_S = 30


@needs_torchft
def test_live_groups_run_at_their_speeds(cache_dir, tmp_path):
    """Two Local SGD groups, group 1 at half speed, each on its CPU share where this machine gives
    quotas: each group's time in steps outside communication is 1/speed of its compute (within 20%);
    the fast group waits for the slow one at the quorums (counted as communication), so its idle
    share is the larger; the groups' cgroups are gone at the end."""
    share = ["--cpu-share", "auto"] if quota_problem() is None else []
    leftovers_before = leftover_cgroups()
    out = tmp_path / "speeds"
    args = ["--algo", "localsgd", "--groups", "2", "--steps", "32", "--eval-every", "32", "--checkpoint-every", "32",
            "--worker-speeds", "1,0.5", *share]
    subprocess.run(train_command(out, *args, cache_dir=cache_dir), check=True, capture_output=True, timeout=600)
    fast, slow = (json.loads((out / f"group_{g}" / "summary.json").read_text())["worker_times"][0] for g in (0, 1))
    assert_paced(fast, slow)
    assert leftover_cgroups() <= leftovers_before


@needs_torchft
@pytest.mark.parametrize("phase", ["local", "all_reduce"])
def test_a_group_cut_off_for_30_s_is_left_out_and_rejoins_healed(phase, cache_dir, tmp_path):
    """3 DiLoCo groups, each in a network namespace of its own behind a 10 Mbit/s link (a
    synchronisation's all-reduce takes 0.4-0.5 s, so that the others, however fast the machine, are
    far from the end when the link is back); group 1's link goes down for 30 s mid-run (its
    processes live on; its collectives and quorums fail), in its local phase, or inside the
    all-reduce of its synchronisation at STOPPED_SYNC (cut 0.15 s into it). The others wait for it
    at most the collective timeout, train on without it, and take it back healed once its link is
    up; every group ends with the same model."""
    steps, out = 1600, tmp_path / "cut"
    args = ["--algo", "diloco", "--groups", str(GROUPS), "--bandwidth", "10mbit", "--steps", str(steps),
            "--eval-every", str(steps), "--checkpoint-every", str(steps)]
    with (tmp_path / "stderr.txt").open("w") as stderr:
        launcher = subprocess.Popen(train_command(out, *args, cache_dir=cache_dir),
                                    stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            last = STOPPED_SYNC - 1 if phase == "all_reduce" else STOPPED_SYNC + 3  # before its sync, or mid-way
            wait_for(lambda: any(r["step"] >= last for r in group_records(out, KILLED, "train")), launcher, 240)
            time.sleep(0.15 if phase == "all_reduce" else 0)
            hub = ["ip", "netns", "exec", f"lc{launcher.pid}br", "ss", "-ltnH"]
            set_link(launcher.pid, KILLED, up=False)
            listening = subprocess.run(hub, capture_output=True, text=True, check=True).stdout.splitlines()
            assert {line.split()[3].rsplit(":", 1)[0] for line in listening} == {HUB}  # lighthouse, stores
            time.sleep(CUT_S)
            set_link(launcher.pid, KILLED, up=True)
            assert group_records(out, 0, "train")[-1]["step"] < 0.75 * steps, "too fast a run to rejoin in"
            assert launcher.wait(timeout=800) == 0, (tmp_path / "stderr.txt").read_text()[-3000:]
        finally:
            stop(launcher)
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert f"lc{launcher.pid}" not in namespaces
    for group in range(GROUPS):
        assert group_records(out, group, "train")[-1]["step"] == steps
    failed = []
    for group in set(range(GROUPS)) - {KILLED}:
        assert longest_pause(group_records(out, group, "train")) < MAX_STALL_S
        events = group_records(out, group, "event")
        failed += [(r["step"], r["stalled_s"]) for r in events if r["event"] == "step_failed"]
        membership = [r["event"] for r in events if r["event"] in ("group_left", "group_joined") and r["group"] == KILLED]
        assert membership == ["group_left", "group_joined"]
    if phase == "all_reduce":  # held up to the collective timeout (a ring's neighbours of the cut group wait it out)
        assert {step for step, _ in failed} == {STOPPED_SYNC}
        assert max(waited for _, waited in failed) >= COLLECTIVE_TIMEOUT_S and all(w < MAX_STALL_S for _, w in failed)
    else:
        assert failed == []
    healed = [r for r in group_records(out, KILLED, "event") if r["event"] == "group_healed"]
    assert len(healed) == 1 and healed[0]["group"] == KILLED
    assert_same_models(final_models(out, GROUPS, steps), "diloco")


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_without_torchft_live_is_refused_with_one_line(tmp_path):
    blocked = "import sys; sys.modules['torchft'] = None; from lowcomm.cli import main; sys.exit(main(sys.argv[1:]))"
    result = subprocess.run(
        [sys.executable, "-c", blocked, "train", "--fault-tolerance", "live", "--groups", "2",
         "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "lowcomm train: error: --fault-tolerance: live needs torchft, which is not installed: "
        "pip install 'lowcomm[ft]'"
    )
    assert not (tmp_path / "run").exists()
