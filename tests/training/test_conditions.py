"""Uneven worker speeds: the step clock on measured time, and a real run of slowed gloo workers."""

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from lowcomm.communication.communicator import CommStats
from lowcomm.training.conditions import StepClock, StepTimes, parse_speeds, speed_of
from lowcomm.training.cpu_share import own_cgroup, quota_cgroup, quota_problem
from tests.train_runs import assert_paced, leftover_cgroups, lowcomm_train, records


def busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_a_half_speed_step_waits_its_compute_again_and_not_its_communication() -> None:
    """20 ms of compute, 30 ms blocked in communication, 10 ms more compute: at speed 0.5 the step
    waits 20 ms before the synchronisation and 10 ms at its end, never for the communication."""
    stats, times = CommStats(), StepTimes()
    clock = StepClock(0.5, lambda: (stats,), times)
    clock.start()
    busy(0.02)
    clock.pace()
    before_sync = times.slowdown_s + clock.slept
    start = time.perf_counter()
    time.sleep(0.03)
    stats.wait_s += time.perf_counter() - start
    busy(0.01)
    clock.stop()
    assert before_sync == pytest.approx(0.02, abs=0.005)
    assert times.slowdown_s == pytest.approx(0.03, abs=0.006)
    assert times.sync_wait_s == pytest.approx(0.03, abs=0.005)
    assert times.compute_s == pytest.approx(0.03, abs=0.006)
    assert times.step_s == pytest.approx(0.09, abs=0.012)


def test_speeds_parse_and_apply_per_worker_or_per_group() -> None:
    assert parse_speeds("1, 1,0.25") == [1.0, 1.0, 0.25]
    assert parse_speeds([1, 0.5]) == [1.0, 0.5]
    assert [speed_of([1.0, 0.5], rank, None) for rank in range(2)] == [1.0, 0.5]
    assert [speed_of([1.0, 0.5], rank, 2) for rank in range(4)] == [1.0, 1.0, 0.5, 0.5]  # rank = g * G + i
    assert speed_of(None, 3, None) == 1.0


@pytest.mark.skipif(quota_problem() is not None, reason="no CPU cgroup with quotas here")
def test_a_new_workers_cgroup_removes_those_of_killed_workers_and_only_those() -> None:
    """A SIGKILLed worker leaves ``lowcomm-<pid>``; the next worker's cgroup removes it, but not one
    whose process lives, one that still holds a task, or one lowcomm did not name."""
    ended = subprocess.Popen(["true"])
    ended.wait()
    living, holder = subprocess.Popen(["sleep", "60"]), subprocess.Popen(["sleep", "60"])
    parent, _ = own_cgroup()
    orphan = parent / f"lowcomm-{ended.pid}"
    kept = [parent / f"lowcomm-{living.pid}", parent / f"lowcomm-{ended.pid + 10**7}", parent / f"lowcomm-x{ended.pid}"]
    for cgroup in [orphan, *kept]:
        cgroup.mkdir()
    (kept[1] / "cgroup.procs").write_text(str(holder.pid))
    try:
        own = quota_cgroup(0.5, f"lowcomm-{os.getpid()}")
        own.rmdir()
        assert not orphan.exists()
        assert all(cgroup.exists() for cgroup in kept)
    finally:
        for process in (living, holder):
            process.kill()
            process.wait()
        for cgroup in [orphan, *kept]:
            if cgroup.exists():
                cgroup.rmdir()


def test_a_slow_worker_takes_twice_its_time_and_the_other_waits_for_it(tmp_path: Path, cache_dir: str) -> None:
    """DDP, worker 1 at half speed, each worker on one core's quota (where this machine gives quotas):
    every worker's time in steps outside synchronisations is 1/speed of its measured compute (within
    20%); the fast one waits at the synchronisations for most of the slow one's extra time. Worker 0's
    compute, slowdown and sync wait add up to its wall-clock from the start of its first step to the
    end of its last (less what the loop does between steps: fetching batches, logging)."""
    share = ["--cpu-share", "auto"] if quota_problem() is None else []
    leftovers_before = leftover_cgroups()
    out = tmp_path / "run"
    lowcomm_train("--algo", "ddp", "--workers", "2", "--steps", "30", "--batch-size", "8", "--seq-len", "32",
                  "--eval-every", "30", "--checkpoint-every", "30", "--eval-batches", "1", "--worker-speeds", "1,0.5",
                  *share, "--cache-dir", cache_dir, "--out", str(out))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["worker_speeds"] == [1.0, 0.5]
    fast, slow = summary["worker_times"]
    assert_paced(fast, slow)
    for worker in (fast, slow):
        assert worker["mean_step_s"] * 30 == pytest.approx(worker["step_s"])
        assert worker["step_s"] <= summary["wall_time_s"]
        assert worker["idle_share"] == pytest.approx(worker["sync_wait_s"] / worker["step_s"])
    clock = [record["elapsed_s"] for record in records(out, "train")]  # at the end of each of worker 0's steps
    assert 0.9 * (clock[-1] - clock[0]) < fast["compute_s"] + fast["slowdown_s"] + fast["sync_wait_s"] <= clock[-1]
    assert leftover_cgroups() <= leftovers_before  # each worker removed the cgroup it made


def test_adaptive_local_steps_see_a_slow_worker_through_the_loops_clock_checks(tmp_path: Path, cache_dir: str) -> None:
    """Local SGD, 4 synchronous steps, then H = 2 up to step 28, worker 1 at half speed, with
    ``--stop-after-s`` (worker 0's clock checked by all every H steps, where they synchronise): the
    slow worker runs 1 local step a round after the first, 4 + 2 + 11 x 1 steps in all, and the run
    counts the tokens each trained: in the summary, and at each of worker 0's steps all workers' so
    far (2 batches a step up to step 6; then 3 a round, exact at its end, worker 0's 2 steps in it
    counting 3 / 2 each). H = 2 leaves the timing the widest margin: the slow worker runs 1 step for
    any measured time above 4/3 of the fast one's (with H = 4, its 2 steps needed 1.6x to 2.67x, and
    a loaded machine measured more)."""
    share = ["--cpu-share", "auto"] if quota_problem() is None else []
    out = tmp_path / "run"
    lowcomm_train("--algo", "localsgd", "--local-steps", "adaptive", "--sync-interval", "2", "--warmup-steps", "4",
                  "--workers", "2", "--steps", "28", "--batch-size", "16", "--seq-len", "64", "--eval-every", "28",
                  "--eval-batches", "1", "--worker-speeds", "1,0.5", "--stop-after-s", "600", *share,
                  "--cache-dir", cache_dir, "--out", str(out))
    summary = json.loads((out / "summary.json").read_text())
    local_steps = [round(worker["step_s"] / worker["mean_step_s"]) for worker in summary["worker_times"]]
    assert local_steps == [28, 17]
    assert summary["tokens"] == (28 + 17) * 16 * 64
    per_step = [record["tokens"] for record in records(out, "train")]
    assert per_step == [(2 * min(step, 6) + 1.5 * max(step - 6, 0)) * 16 * 64 for step in range(1, 29)]
