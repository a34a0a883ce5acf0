"""The step-speed benchmark: its FLOP count by hand, and both loops training on one worker."""

from __future__ import annotations

from lowcomm.benchmarks.step_speed import StepSpeed, flops_per_token, measure
from lowcomm.models import build_model
from tests.distributed import run_workers


def test_flops_per_token_by_hand() -> None:
    model = build_model("gpt-tiny", vocab_size=32)  # 110,336 parameters, 2 layers of width 64
    assert flops_per_token(model, seq_len=16) == 6 * 110_336 + 6 * 2 * 16 * 64


def both_loops() -> list[StepSpeed]:
    return [measure(loop, "gpt-tiny", vocab_size=32, batch=2, seq_len=8, steps=2, warmup=1, peak_tflops=1.0)
            for loop in ("plain", "palsgd")]


def test_plain_and_lowcomm_loops_are_timed() -> None:
    for speed in run_workers(both_loops, 1)[0]:
        assert speed.tokens_per_s > 0 and speed.step_s > 0
        assert speed.mfu == speed.tokens_per_s * (6 * 110_336 + 6 * 2 * 8 * 64) / 1e12
