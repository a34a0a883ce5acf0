import pytest

from lowcomm.training.schedule import lr_schedule, warmup_cosine


def test_linear_warmup_then_half_cosine_down_to_the_floor():
    factor = warmup_cosine(warmup_steps=4, total_steps=12, min_ratio=0.1)
    # warm-up: (step + 1) / 4; then 0.1 + 0.9 * (1 + cos(pi * (step - 4) / 8)) / 2
    expected = {0: 0.25, 1: 0.5, 3: 1.0, 4: 1.0, 8: 0.55, 12: 0.1, 20: 0.1}
    assert {step: factor(step) for step in expected} == pytest.approx(expected, abs=1e-15)


def test_no_warmup_starts_at_the_peak():
    assert warmup_cosine(0, 10, 0.0)(0) == 1.0
    assert warmup_cosine(0, 10, 0.0)(10) == 0.0


def test_constant_after_the_warmup():
    factor = lr_schedule("constant", warmup_steps=4, total_steps=12, min_ratio=0.1)
    assert [factor(step) for step in (0, 1, 3, 4, 12, 100)] == [0.25, 0.5, 1.0, 1.0, 1.0, 1.0]
    assert lr_schedule("constant", 0, 10, 0.1)(0) == 1.0
    assert lr_schedule("cosine", 4, 12, 0.1)(12) == pytest.approx(0.1)
