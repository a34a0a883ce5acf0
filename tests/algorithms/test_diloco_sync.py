"""DiLoCo's outer step variants: overlapped all-reduce and streamed fragments (compression: test_compressed_sync)."""

from __future__ import annotations

import pytest
import torch

from lowcomm.algorithms.streaming_diloco import split_fragments
from tests.algorithms import mlp
from tests.algorithms.scalar import scalar_trajectory
from tests.distributed import run_workers


def test_overlapped_outer_step_by_hand() -> None:
    options = dict(sync_interval=2, outer_lr=0.7, outer_momentum=0.9, overlap_steps=1, merge_alpha=0.5)
    results = run_workers(scalar_trajectory, 2, "diloco", options, 3, 0.1)
    # t = 2 launches Delta = mean(1 - 1.19, 1 - 0.68) = 0.065; t = 3 steps locally (1.19 -> 1.271,
    # 0.68 -> 0.608), then z = 1 - 0.7 * 1.9 * 0.065 = 0.91355 and x <- 0.5 z + 0.5 x
    assert results[0]["x"] == pytest.approx([1.1, 1.19, 0.5 * 0.91355 + 0.5 * 1.271], abs=1e-12)
    assert results[1]["x"] == pytest.approx([0.8, 0.68, 0.5 * 0.91355 + 0.5 * 0.608], abs=1e-12)
    assert results[0]["global"] == pytest.approx(0.91355, abs=1e-12)


def test_sync_diagnostics_by_hand() -> None:
    options = dict(sync_interval=2, outer_lr=0.7, outer_momentum=0.9, diagnostics=True)
    results = run_workers(scalar_trajectory, 2, "diloco", options, 6, 0.1)
    # t = 2: x = 1.19 and 0.68, Delta = mean(1 - 1.19, 1 - 0.68) = 0.065; each worker is 0.255 from
    # the mean; z = 1 - 0.7 * 1.9 * 0.065 = 0.91355. t = 4: x = 1.1199755 and 0.648878, Delta =
    # mean(-0.2064255, 0.264672) = 0.02912325, spread 0.23554875, the same sign as before. t = 6:
    # z = 0.91355 - 0.7 * (0.02912325 + 0.9 * (0.9 * 0.065 + 0.02912325)) = 0.837961..., and
    # two more local steps give Delta < 0: the cosine of two scalars of opposite signs is -1.
    for r in results:
        steps = {t + 1: d for t, d in enumerate(r["diagnostics"]) if d}
        assert sorted(steps) == [2, 4, 6]
        assert steps[2] == {"pseudo_grad_norm": pytest.approx(0.065, abs=1e-12),
                            "worker_spread": pytest.approx(0.255, abs=1e-12), "pseudo_grad_cosine": None}
        assert steps[4] == {"pseudo_grad_norm": pytest.approx(0.02912325, abs=1e-12),
                            "worker_spread": pytest.approx(0.23554875, abs=1e-12),
                            "pseudo_grad_cosine": pytest.approx(1.0, abs=1e-12)}
        assert steps[6]["pseudo_grad_cosine"] == pytest.approx(-1.0, abs=1e-12)


def test_the_workers_spread_is_measured_only_with_diagnostics() -> None:
    results = run_workers(scalar_trajectory, 2, "diloco", dict(sync_interval=2), 2, 0.1)
    assert [d["worker_spread"] for r in results for d in r["diagnostics"] if d] == [None, None]


def variants() -> dict[str, list[torch.Tensor]]:
    runs = {
        "blocking": ("diloco", {"sync_interval": 3}),
        "tau0": ("diloco", {"sync_interval": 3, "overlap_steps": 0}),
        "palsgd": ("palsgd", {"sync_interval": 3, "warmup_steps": 1, "pseudo_sync_prob": 0.3, "eta": 0.5}),
        "palsgd_tau0": ("palsgd", {"sync_interval": 3, "warmup_steps": 1, "pseudo_sync_prob": 0.3, "eta": 0.5,
                                   "overlap_steps": 0}),
        "streaming_p1": ("streamingdiloco", {"sync_interval": 3, "num_fragments": 1}),
        "streaming_p2": ("streamingdiloco", {"sync_interval": 4, "num_fragments": 2}),
    }
    return {name: mlp.train(algo, options, 9, optimizer="adamw")["params"] for name, (algo, options) in runs.items()}


def test_tau_zero_and_one_fragment_are_blocking_diloco() -> None:
    results = run_workers(variants, 2)
    for r in results:
        for name, same_as in (("tau0", "blocking"), ("palsgd_tau0", "palsgd"), ("streaming_p1", "blocking")):
            assert all(torch.equal(a, b) for a, b in zip(r[name], r[same_as])), name
    # two fragments of the MLP's tensors by size (32 | 8 + 8 + 1): [0] and [1, 2, 3];
    # fragment 0 syncs after steps 4 and 8, fragment 1 after steps 2, 6 (offset 4 // 2 = 2)
    first, second = slice(0, 32), slice(32, 49)
    a, b = results[0]["streaming_p2"], results[1]["streaming_p2"]
    for t in (2, 6):
        assert torch.equal(a[t - 1][second], b[t - 1][second]) and not torch.equal(a[t - 1][first], b[t - 1][first])
    for t in (4, 8):
        assert torch.equal(a[t - 1][first], b[t - 1][first]) and not torch.equal(a[t - 1][second], b[t - 1][second])


def test_fragments_cover_every_tensor_once() -> None:
    assert split_fragments([32, 8, 8, 1], 2, "sequential") == [[0], [1, 2, 3]]
    assert split_fragments([100, 1, 1, 1], 3, "sequential") == [[0], [1], [2, 3]]
    assert split_fragments([1, 1, 1, 100], 3, "sequential") == [[0, 1], [2], [3]]
    assert split_fragments([5] * 7, 3, "strided") == [[0, 3, 6], [1, 4], [2, 5]]
    with pytest.raises(ValueError, match="fragment_pattern"):
        split_fragments([1, 1], 2, "random")  # type: ignore[arg-type]
