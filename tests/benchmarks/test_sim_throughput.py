"""The simulation's throughput benchmark runs both sides on the same tokens."""

from __future__ import annotations

import pytest

from lowcomm.benchmarks.sim_throughput import compare


@pytest.mark.parametrize("passes", ["batched", "threads"])
def test_both_sides_train_the_same_tokens(passes: str) -> None:
    result = compare("gpt-tiny", workers=3, batch_size=2, seq_len=8, steps=2, passes=passes)
    tokens = 3 * 2 * 8 * 2  # workers * batch * sequence * steps, counted by each side from its batches
    assert result["single_tokens"] == result["simulated_tokens"] == tokens
    # The ratio of times is that of rates only because both sides trained the same tokens.
    assert result["ratio"] == pytest.approx(result["simulated_tokens_per_s"] / result["single_tokens_per_s"])
    assert tokens / result["simulated_tokens_per_s"] > 0 and tokens / result["single_tokens_per_s"] > 0
