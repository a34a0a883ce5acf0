"""Blockwise quantisation and error feedback, checked against values worked out by hand."""

from __future__ import annotations

import pytest
import torch

from lowcomm.communication.compression import (
    ErrorFeedback,
    compressed_bytes,
    dequantize,
    pack_int4,
    quantize,
    unpack_int4,
)


def random_tensor(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_int8_blocks_by_hand() -> None:
    x = torch.tensor([1.0, -2.0, 0.5, 127.0, 3.0, 0.0])
    compressed = quantize(x, "int8", block_size=4)
    # block [1, -2, 0.5, 127]: scale 1; block [3, 0] (padded with zeros): scale 3/127
    assert compressed.scales.tolist() == pytest.approx([1.0, 3 / 127])
    assert compressed.payload.tolist() == [1, -2, 0, 127, 127, 0]  # round(0.5) = 0 (half to even)
    assert dequantize(compressed).tolist() == pytest.approx([1.0, -2.0, 0.0, 127.0, 3.0, 0.0])


def test_int4_packing_by_hand() -> None:
    codes = torch.tensor([7, -7, 0, 1, -1], dtype=torch.int8)
    # nibbles 15, 1, 8, 9, 7 (+ a zero to fill the last byte): 15 | 1<<4, 8 | 9<<4, 7 | 0<<4
    packed = pack_int4(codes)
    assert packed.dtype == torch.uint8
    assert packed.tolist() == [31, 152, 7]
    assert unpack_int4(packed, 5).tolist() == [7, -7, 0, 1, -1]
    every_code = torch.arange(-7, 8, dtype=torch.int8)
    assert torch.equal(unpack_int4(pack_int4(every_code), 15), every_code)


def test_int4_quantize_by_hand() -> None:
    x = torch.tensor([[14.0, -7.0, 1.0], [2.9, 0.0, -14.0]])
    compressed = quantize(x, "int4", block_size=3)
    # blocks [14, -7, 1] and [2.9, 0, -14]: both scale 2; codes 7, -4 (round half to even), 0 | 1, 0, -7
    assert compressed.scales.tolist() == [2.0, 2.0]
    assert unpack_int4(compressed.payload, 6).tolist() == [7, -4, 0, 1, 0, -7]
    assert dequantize(compressed).tolist() == [[14.0, -8.0, 0.0], [2.0, 0.0, -14.0]]


@pytest.mark.parametrize(("scheme", "qmax"), [("int8", 127), ("int4", 7)])
def test_int_round_trip_within_half_a_scale(scheme: str, qmax: int) -> None:
    x = random_tensor(10, 100) * torch.logspace(-3, 3, 100)  # blocks of very different magnitudes
    compressed = quantize(x, scheme, block_size=64)
    error = (dequantize(compressed) - x).abs().view(-1)
    scales = compressed.scales.repeat_interleave(64)[: x.numel()]
    assert torch.all(error <= scales / 2 * (1 + 1e-6))
    blocks = torch.nn.functional.pad(x.view(-1), (0, 24)).view(-1, 64)
    assert torch.allclose(compressed.scales, blocks.abs().amax(dim=1) / qmax)


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_int_round_trip_exact_on_the_grid(scheme: str) -> None:
    qmax = 127 if scheme == "int8" else 7
    codes = torch.randint(-qmax, qmax + 1, (4, 32), generator=torch.Generator().manual_seed(1))
    codes[:, 0] = qmax  # every block reaches qmax, so its scale is exactly 0.25
    x = codes.float() * 0.25
    assert torch.equal(dequantize(quantize(x, scheme, block_size=32)), x)


def test_bf16_round_trip() -> None:
    representable = torch.tensor([1.0, -0.5, 3.0, 2.0**-20, 1.5 * 2.0**40, 0.0])
    assert torch.equal(dequantize(quantize(representable, "bf16")), representable)
    x = random_tensor(1000, seed=2)
    # bfloat16 keeps 8 significant bits: rounding to nearest is off by at most 2^-8 relative
    assert torch.all((dequantize(quantize(x, "bf16")) - x).abs() <= x.abs() * 2.0**-8)


def test_shape_and_dtype_survive() -> None:
    x = random_tensor(3, 5, 7).double()
    for scheme in ("bf16", "int8", "int4"):
        y = dequantize(quantize(x, scheme, block_size=16))
        assert y.shape == x.shape and y.dtype == torch.float64
    assert dequantize(quantize(torch.zeros(0), "int4")).shape == (0,)
    assert torch.equal(dequantize(quantize(torch.zeros(300), "int8")), torch.zeros(300))


@pytest.mark.parametrize(
    ("numel", "scheme", "block_size", "expected"),
    [
        (1024, "int8", 256, 1024 + 4 * 4),
        (1024, "int4", 256, 512 + 4 * 4),
        (1000, "int8", 256, 1000 + 4 * 4),  # the last block holds 232 values but has a whole scale
        (1001, "int4", 100, 501 + 11 * 4),  # 1001 nibbles fill 501 bytes
        (1024, "bf16", 256, 2048),
        (0, "int8", 256, 0),
    ],
)
def test_compressed_bytes_by_hand(numel: int, scheme: str, block_size: int, expected: int) -> None:
    assert compressed_bytes(numel, scheme, block_size) == expected
    assert quantize(random_tensor(numel), scheme, block_size).nbytes == expected


def test_error_feedback_transmits_the_sum_less_the_final_residual() -> None:
    feedback = ErrorFeedback("int4", block_size=16)
    inputs = [random_tensor(40, seed=t) for t in range(20)]
    sent = [dequantize(feedback.compress("w", x)) for x in inputs]
    assert torch.allclose(sum(sent), sum(inputs) - feedback.residuals["w"], atol=1e-5)
    assert not torch.allclose(sum(sent), sum(inputs), atol=1e-2)  # the residual is not negligible


def test_error_feedback_mean_converges_to_a_constant_input() -> None:
    x = torch.tensor([1.0, 0.3, -0.55, 0.12, 0.9, -0.01, 0.44, 0.7])
    feedback = ErrorFeedback("int4", block_size=8)
    steps = 200
    mean_sent = sum(dequantize(feedback.compress(0, x)) for _ in range(steps)) / steps
    without_feedback = dequantize(quantize(x, "int4", block_size=8))
    # the grid is k/7: alone, 0.9 goes to 6/7 every round
    assert (without_feedback - x).abs().max().item() == pytest.approx(0.9 - 6 / 7, abs=1e-6)
    # the error of the mean is the final residual / steps, and the residual stays below a scale
    assert (mean_sent - x).abs().max() <= (1 / 7) / steps
    assert torch.allclose(mean_sent, x - feedback.residuals[0] / steps, atol=1e-6)


def test_error_feedback_keeps_one_residual_per_key() -> None:
    feedback = ErrorFeedback("int8", block_size=4)
    a, b = torch.tensor([1.0, 0.004, 0.0, 0.0]), torch.tensor([2.0, 0.0, 0.0, 0.0])
    feedback.compress("a", a)
    feedback.compress("b", b)
    # a: scale 1/127, 0.004 * 127 = 0.508 rounds to 1 code, sent 1/127; b is exact
    assert feedback.residuals["a"].tolist() == pytest.approx([0.0, 0.004 - 1 / 127, 0.0, 0.0])
    assert feedback.residuals["b"].tolist() == [0.0, 0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="shape"):
        feedback.compress("a", torch.zeros(5))


@pytest.mark.parametrize(
    ("call", "argument"),
    [
        (lambda: quantize(torch.zeros(4), "fp8"), "scheme"),
        (lambda: quantize(torch.zeros(4), "int8", block_size=0), "block_size"),
        (lambda: quantize(torch.zeros(4, dtype=torch.int64), "int8"), "tensor"),
        (lambda: compressed_bytes(-1, "int8"), "numel"),
        (lambda: ErrorFeedback("int2"), "scheme"),
    ],
)
def test_bad_arguments_are_named(call, argument: str) -> None:
    with pytest.raises(ValueError, match=argument):
        call()
