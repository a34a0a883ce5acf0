"""Small recorded runs written by hand, in the format ``lowcomm train`` writes, with round numbers.

Four workers; one all-reduce moves a payload of 1 MB, of which each worker sends 2 * 3/4 = 1.5 MB.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MB = 1_000_000


def write_run(directory: Path, summary: dict[str, Any], records: list[dict[str, Any]]) -> Path:
    directory.mkdir(parents=True)
    summary = {"workers": 4, "steps": 4, "comm_overlap_s": 0.0, "comm_overlap_bytes": 0, **summary}
    (directory / "summary.json").write_text(json.dumps(summary))
    (directory / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return directory


def train(step: int, comm_bytes: float) -> dict[str, Any]:
    return {"step": step, "loss": 9.0, "lr": 0.1, "elapsed_s": step * 1.0, "comm_bytes": int(comm_bytes),
            "tokens": 100 * step}


def evaluation(step: int, loss: float, elapsed_s: float, comm_bytes: float, comm_wait_s: float) -> dict[str, Any]:
    return {"step": step, "eval_loss": loss, "elapsed_s": elapsed_s, "tokens": 100 * step,
            "comm_bytes": int(comm_bytes), "comm_wait_s": comm_wait_s}


def ddp(root: Path) -> Path:
    """An all-reduce every step of the gradients of 250,000 parameters (1 MB); per step 0.2 s of waiting,
    and 0.5 s of backward pass in which the 0.6 MB of the buckets ready before the last could be sent;
    eval loss 3.0 after step 2, 2.0 after 4."""
    return write_run(root / "ddp", {
        "algo": "ddp", "parameters": 250_000, "final_eval_loss": 2.0, "wall_time_s": 4.5, "comm_bytes_total": 4 * 6 * MB,
        "comm_wait_s": 0.8, "tokens": 400, "comm_overlap_s": 4 * 0.5, "comm_overlap_bytes": 4 * 0.6 * MB,
    }, [
        {"step": 0, "event": "start"},
        train(1, 1.5 * MB), train(2, 3 * MB), evaluation(2, 3.0, 2.0, 3 * MB, 0.4),
        train(3, 4.5 * MB), train(4, 6 * MB), evaluation(4, 2.0, 4.0, 6 * MB, 0.8),
    ])


def localsgd(root: Path) -> Path:
    """The 1 MB initial broadcast in step 1, an all-reduce after steps 2 and 4 (H = 2)."""
    return write_run(root / "localsgd", {
        "algo": "localsgd", "final_eval_loss": 1.9, "wall_time_s": 3.3, "comm_bytes_total": 13 * MB,
        "comm_wait_s": 0.33, "tokens": 400,
    }, [
        train(1, 1 * MB), train(2, 2.5 * MB), evaluation(2, 3.5, 1.5, 2.5 * MB, 0.1),
        train(3, 2.5 * MB), train(4, 4 * MB), evaluation(4, 1.9, 3.0, 4 * MB, 0.2),
    ])


def palsgd(root: Path) -> Path:
    """Step 3 is a pseudo-synchronisation (no train record) that also synchronises (its first outer step:
    no cosine yet); never reaches 2.0."""
    return write_run(root / "palsgd", {
        "algo": "palsgd", "final_eval_loss": 2.5, "wall_time_s": 3.0, "comm_bytes_total": 10 * MB,
        "comm_wait_s": 0.3, "tokens": 300,
    }, [
        train(1, 1 * MB), train(2, 1 * MB), evaluation(2, 3.2, 1.5, 1 * MB, 0.1),
        {"step": 3, "sync": "pseudo", "bytes": 3 * MB // 2},
        {"step": 3, "sync": "outer", "bytes": 3 * MB // 2, "pseudo_grad_norm": 0.5, "worker_spread": 0.25,
         "pseudo_grad_cosine": None},
        train(4, 2.5 * MB), evaluation(4, 2.5, 2.8, 2.5 * MB, 0.3),
    ])


def noloco(root: Path) -> Path:
    """x - z and z (1 MB each) to one partner after steps 2 and 4."""
    return write_run(root / "noloco", {
        "algo": "noloco", "final_eval_loss": 2.0, "wall_time_s": 3.0, "comm_bytes_total": 16 * MB,
        "comm_wait_s": 0.2, "tokens": 400,
    }, [
        train(1, 0), train(2, 2 * MB), evaluation(2, 3.0, 1.4, 2 * MB, 0.1),
        train(3, 2 * MB), train(4, 4 * MB), evaluation(4, 2.0, 2.9, 4 * MB, 0.2),
    ])


def grouped_diloco(root: Path) -> Path:
    """2 groups x 2 ranks, a 2 MB model: after steps 2 and 4 each rank all-reduces its 1 MB shard
    with its peer in the other group (sending 1 MB), so each group's link carries 2 MB."""
    return write_run(root / "grouped_diloco", {
        "algo": "diloco", "groups": 2, "group_size": 2, "final_eval_loss": 2.1, "wall_time_s": 3.0,
        "comm_bytes_total": 20 * MB, "comm_bytes_between_groups": 8 * MB, "comm_bytes_within_groups": 12 * MB,
        "comm_wait_s": 0.2, "tokens": 400,
    }, [
        train(1, 0), train(2, 1 * MB), evaluation(2, 3.0, 1.4, 1 * MB, 0.1),
        train(3, 1 * MB), train(4, 2 * MB), evaluation(4, 2.1, 2.9, 2 * MB, 0.2),
    ])


def grouped_ddp(root: Path) -> Path:
    """2 groups x 2 ranks, a 2 MB model, DDP's ring over all 4 ranks every step: every rank sends
    2 x 3/4 x 2 MB = 3 MB, and 2 of the ring's 4 links leave a group, so each rank counts 1.5 MB
    between groups (each group's link carries 3 MB); rank 0 waits 0.1 s a step on the slow link."""
    return write_run(root / "grouped_ddp", {
        "algo": "ddp", "groups": 2, "group_size": 2, "final_eval_loss": 2.0, "wall_time_s": 4.0,
        "comm_bytes_total": 48 * MB, "comm_bytes_between_groups": 24 * MB, "comm_bytes_within_groups": 24 * MB,
        "comm_wait_s": 0.4, "tokens": 400,
    }, [
        train(1, 1.5 * MB), train(2, 3 * MB), evaluation(2, 3.0, 2.0, 3 * MB, 0.2),
        train(3, 4.5 * MB), train(4, 6 * MB), evaluation(4, 2.0, 3.9, 6 * MB, 0.4),
    ])


def localsgd_to_target(root: Path) -> Path:
    """A ``--budget target`` run against ``ddp`` (cap 2: at most 8 steps): eval loss 3.5 after step 2
    (1.5 s), 2.4 after 4 (3.0 s), 1.9 after 6 (3.6 s), where it stopped at DDP's final 2.0: it crossed
    2.0 between steps 4 and 6."""
    return write_run(root / "localsgd", {
        "algo": "localsgd", "steps": 6, "stopped": "stop_at_loss", "final_eval_loss": 1.9, "wall_time_s": 3.8,
        "comm_bytes_total": 16 * MB, "comm_wait_s": 0.3, "tokens": 600,
    }, [
        train(1, 1 * MB), train(2, 2.5 * MB), evaluation(2, 3.5, 1.5, 2.5 * MB, 0.1),
        train(3, 2.5 * MB), train(4, 4 * MB), evaluation(4, 2.4, 3.0, 4 * MB, 0.2),
        train(5, 4 * MB), train(6, 5.5 * MB), evaluation(6, 1.9, 3.6, 5.5 * MB, 0.3),
    ])


def palsgd_capped(root: Path) -> Path:
    """A ``--budget target`` run against ``ddp`` that never reaches 2.0 within its cap of 8 steps:
    eval loss 3.2, 2.5, 2.3, 2.2 after steps 2, 4, 6, 8 (1.5, 2.8, 4.1, 5.4 s)."""
    return write_run(root / "palsgd", {
        "algo": "palsgd", "steps": 8, "final_eval_loss": 2.2, "wall_time_s": 5.6, "comm_bytes_total": 12 * MB,
        "comm_wait_s": 0.4, "tokens": 600,
    }, [
        train(1, 1 * MB), train(2, 1 * MB), evaluation(2, 3.2, 1.5, 1 * MB, 0.1),
        train(4, 2.5 * MB), evaluation(4, 2.5, 2.8, 2.5 * MB, 0.2),
        train(6, 2.5 * MB), evaluation(6, 2.3, 4.1, 2.5 * MB, 0.3),
        train(8, 4 * MB), evaluation(8, 2.2, 5.4, 4 * MB, 0.4),
    ])


def noloco_at_ddps_time(root: Path) -> Path:
    """A ``--budget time`` run against ``ddp`` (its final evaluation at 4.0 s): its clock passed 4.0 s
    after step 5, where it was evaluated: 2.1 at 4.3 s."""
    return write_run(root / "noloco", {
        "algo": "noloco", "steps": 5, "stopped": "stop_after_s", "final_eval_loss": 2.1, "wall_time_s": 4.4,
        "comm_bytes_total": 16 * MB, "comm_wait_s": 0.2, "tokens": 500,
    }, [
        train(1, 0), train(2, 2 * MB), evaluation(2, 3.0, 1.4, 2 * MB, 0.1),
        train(3, 2 * MB), train(4, 4 * MB), evaluation(4, 2.4, 2.9, 4 * MB, 0.2),
        train(5, 4 * MB), evaluation(5, 2.1, 4.3, 4 * MB, 0.2),
    ])


def ddp_slowed(root: Path) -> Path:
    """``ddp`` with worker 3 at half speed (``--worker-speeds 1,1,1,0.5``): the same 400 tokens in 7.0 s,
    57.14 tokens/s against ``ddp``'s 400 / 4.5 = 88.89 at full speed: goodput 4.5 / 7.0 = 0.642857.
    Every worker spends 6.0 s in steps; workers 0 to 2 are blocked 2.4 s of them at synchronisations
    (idle share 0.4), worker 3, which waits 2.0 s for its speed, 0.3 s (0.05)."""
    def worker(rank: int, speed: float, slowdown_s: float, sync_wait_s: float) -> dict[str, Any]:
        return {"rank": rank, "speed": speed, "mean_step_s": 1.5, "step_s": 6.0,
                "compute_s": 6.0 - slowdown_s - sync_wait_s, "slowdown_s": slowdown_s, "sync_wait_s": sync_wait_s,
                "idle_share": sync_wait_s / 6.0}

    return write_run(root / "ddp_slowed", {
        "algo": "ddp", "parameters": 250_000, "final_eval_loss": 2.0, "wall_time_s": 7.0,
        "comm_bytes_total": 4 * 6 * MB, "comm_wait_s": 1.875, "tokens": 400, "worker_speeds": [1.0, 1.0, 1.0, 0.5],
        "worker_times": [worker(0, 1.0, 0.0, 2.4), worker(1, 1.0, 0.0, 2.4), worker(2, 1.0, 0.0, 2.4),
                         worker(3, 0.5, 2.0, 0.3)],
    }, [
        train(1, 1.5 * MB), train(2, 3 * MB), evaluation(2, 3.0, 3.2, 3 * MB, 1.2),
        train(3, 4.5 * MB), train(4, 6 * MB), evaluation(4, 2.0, 6.5, 6 * MB, 2.4),
    ])
