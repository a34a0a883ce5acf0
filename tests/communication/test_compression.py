"""Codecs, error feedback and the compressed mean, checked against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from lowcomm.communication.communicator import Communicator
from lowcomm.communication.compression import (
    Codec,
    CompressedMean,
    ErrorFeedback,
    Quantizer,
    TopK,
    pack_int4,
    parse_compression,
    unpack_int4,
)
from lowcomm.communication.simulated import run_simulated


def random_tensor(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def round_trip(codec: Codec, x: torch.Tensor) -> torch.Tensor:
    rows = x.reshape(1, -1)
    wire = codec.encode(rows)
    assert wire.dtype == torch.uint8 and wire.shape == (1, codec.encoded_bytes(rows.shape[1]))
    return codec.decode(wire, rows.shape[1]).view_as(x)


def test_int8_blocks_by_hand() -> None:
    x = torch.tensor([[1.0, -2.0, 0.5, 127.0, 3.0, 0.0]])
    codec = Quantizer("int8", block_size=4)
    codes, scales = codec.quantize(x)
    # block [1, -2, 0.5, 127]: scale 1; block [3, 0] (padded with zeros): scale 3/127
    assert scales[0].tolist() == pytest.approx([1.0, 3 / 127])
    assert codes.tolist() == [[1, -2, 0, 127, 127, 0]]  # round(0.5) = 0 (half to even)
    wire = codec.encode(x)
    assert wire.shape == (1, 6 + 2 * 4)  # six codes, then two float32 scales
    assert wire[0, 6:].clone().view(torch.float32).tolist() == pytest.approx([1.0, 3 / 127])
    assert codec.decode(wire, 6)[0].tolist() == pytest.approx([1.0, -2.0, 0.0, 127.0, 3.0, 0.0])


def test_int4_packing_by_hand() -> None:
    codes = torch.tensor([7, -7, 0, 1, -1], dtype=torch.int8)
    # nibbles 15, 1, 8, 9, 7 (+ a zero to fill the last byte): 15 | 1<<4, 8 | 9<<4, 7 | 0<<4
    packed = pack_int4(codes)
    assert packed.dtype == torch.uint8
    assert packed.tolist() == [31, 152, 7]
    assert unpack_int4(packed, 5).tolist() == [7, -7, 0, 1, -1]
    every_code = torch.arange(-7, 8, dtype=torch.int8)
    assert torch.equal(unpack_int4(pack_int4(every_code), 15), every_code)
    assert pack_int4(codes.view(1, 5).repeat(2, 1)).tolist() == [[31, 152, 7]] * 2  # row by row


def test_int4_quantize_by_hand() -> None:
    x = torch.tensor([[14.0, -7.0, 1.0], [2.9, 0.0, -14.0]])
    codec = Quantizer("int4", block_size=3)
    codes, scales = codec.quantize(x.view(1, 6))
    # blocks [14, -7, 1] and [2.9, 0, -14]: both scale 2; codes 7, -4 (round half to even), 0 | 1, 0, -7
    assert scales.tolist() == [[2.0, 2.0]]
    assert codes.tolist() == [[7, -4, 0, 1, 0, -7]]
    assert round_trip(codec, x).tolist() == [[14.0, -8.0, 0.0], [2.0, 0.0, -14.0]]


@pytest.mark.parametrize(("scheme", "qmax"), [("int8", 127), ("int4", 7)])
def test_int_round_trip_within_half_a_scale(scheme: str, qmax: int) -> None:
    x = random_tensor(10, 100) * torch.logspace(-3, 3, 100)  # blocks of very different magnitudes
    codec = Quantizer(scheme, block_size=64)
    _, scales = codec.quantize(x.view(1, -1))
    error = (round_trip(codec, x) - x).abs().view(-1)
    assert torch.all(error <= scales.repeat_interleave(64)[: x.numel()] / 2 * (1 + 1e-6))
    blocks = torch.nn.functional.pad(x.view(-1), (0, 24)).view(-1, 64)
    assert torch.allclose(scales[0], blocks.abs().amax(dim=1) / qmax)


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_int_round_trip_exact_on_the_grid(scheme: str) -> None:
    qmax = 127 if scheme == "int8" else 7
    codes = torch.randint(-qmax, qmax + 1, (4, 32), generator=torch.Generator().manual_seed(1))
    codes[:, 0] = qmax  # every block reaches qmax, so its scale is exactly 0.25
    x = codes.float() * 0.25
    assert torch.equal(round_trip(Quantizer(scheme, block_size=32), x), x)


def test_bf16_round_trip() -> None:
    codec = Quantizer("bf16")
    representable = torch.tensor([1.0, -0.5, 3.0, 2.0**-20, 1.5 * 2.0**40, 0.0])
    assert torch.equal(round_trip(codec, representable), representable)
    x = random_tensor(1000, seed=2)
    # bfloat16 keeps 8 significant bits: rounding to nearest is off by at most 2^-8 relative
    assert torch.all((round_trip(codec, x) - x).abs() <= x.abs() * 2.0**-8)


def test_top_k_by_hand() -> None:
    x = torch.tensor([[0.1, -5.0, 0.3, 2.0, 0.0, -0.2, 7.0, 0.05]])
    codec = TopK(0.25, block_size=4)  # blocks of 4 keep ceil(0.25 * 4) = 1 value each
    wire = codec.encode(x)
    assert wire.shape == (1, 2 * (4 + 1))  # two float32 values, then two uint8 positions
    assert wire[0, :8].clone().view(torch.float32).tolist() == [-5.0, 7.0]
    assert wire[0, 8:].tolist() == [1, 2]
    assert codec.decode(wire, 8).tolist() == [[0.0, -5.0, 0.0, 0.0, 0.0, 0.0, 7.0, 0.0]]
    assert torch.equal(round_trip(TopK(1.0, block_size=3), x), x)  # everything kept, last block short


@pytest.mark.parametrize(
    ("codec", "numel", "expected"),
    [
        (Quantizer("int8", 256), 1024, 1024 + 4 * 4),
        (Quantizer("int4", 256), 1024, 512 + 4 * 4),
        (Quantizer("int8", 256), 1000, 1000 + 4 * 4),  # the last block holds 232 values but has a whole scale
        (Quantizer("int4", 100), 1001, 501 + 11 * 4),  # 1001 nibbles fill 501 bytes
        (Quantizer("bf16"), 1024, 2048),
        (Quantizer("int8", 256), 0, 0),
        (TopK(0.01, 4096), 10_000, 3 * 41 * (4 + 2)),  # 3 blocks of 41 kept, int16 positions
        (TopK(0.01, 256), 1000, 4 * 3 * (4 + 1)),  # 4 blocks of 3 kept, uint8 positions
        (TopK(0.5, 4096), 100, 1 * 50 * (4 + 1)),  # a row shorter than a block is one block
        (TopK(0.001, 65536), 70_000, 2 * 66 * (4 + 4)),  # blocks over 32768 values: int32 positions
    ],
)
def test_encoded_bytes_by_hand(codec: Codec, numel: int, expected: int) -> None:
    assert codec.encoded_bytes(numel) == expected
    assert codec.encode(random_tensor(3, numel)).shape == (3, expected)


def test_parse_compression() -> None:
    assert parse_compression("none") is None
    int4 = parse_compression("int4", block_size=32)
    assert isinstance(int4, Quantizer) and (int4.scheme, int4.block_size) == ("int4", 32)
    topk = parse_compression("topk:0.01")
    assert isinstance(topk, TopK) and (topk.fraction, topk.block_size) == (0.01, 4096)
    assert parse_compression("topk:1").fraction == 1.0
    for bad in ("int2", "topk", "topk:", "topk:0", "topk:-0.1", "topk:1.01", "topk:nan", "topk:inf", "TOPK:0.1"):
        with pytest.raises(ValueError, match=r"^compress: must be none, bf16, int8, int4 or topk:FRACTION .*got"):
            parse_compression(bad)


def test_error_feedback_transmits_the_sum_less_the_final_residual() -> None:
    codec = Quantizer("int4", block_size=16)
    feedback = ErrorFeedback(codec)
    inputs = [random_tensor(1, 40, seed=t) for t in range(20)]
    sent = [codec.decode(feedback.compress("w", x), 40) for x in inputs]
    assert torch.allclose(sum(sent), sum(inputs) - feedback.residuals["w"], atol=1e-5)
    assert not torch.allclose(sum(sent), sum(inputs), atol=1e-2)  # the residual is not negligible


def test_error_feedback_mean_converges_to_a_constant_input() -> None:
    x = torch.tensor([[1.0, 0.3, -0.55, 0.12, 0.9, -0.01, 0.44, 0.7]])
    codec = Quantizer("int4", block_size=8)
    feedback = ErrorFeedback(codec)
    steps = 200
    mean_sent = sum(codec.decode(feedback.compress(0, x), 8) for _ in range(steps)) / steps
    without_feedback = round_trip(codec, x)
    # the grid is k/7: alone, 0.9 goes to 6/7 every round
    assert (without_feedback - x).abs().max().item() == pytest.approx(0.9 - 6 / 7, abs=1e-6)
    # the error of the mean is the final residual / steps, and the residual stays below a scale
    assert (mean_sent - x).abs().max() <= (1 / 7) / steps
    assert torch.allclose(mean_sent, x - feedback.residuals[0] / steps, atol=1e-6)


def test_error_feedback_keeps_one_residual_per_key() -> None:
    feedback = ErrorFeedback(Quantizer("int8", block_size=4))
    a, b = torch.tensor([[1.0, 0.004, 0.0, 0.0]]), torch.tensor([[2.0, 0.0, 0.0, 0.0]])
    feedback.compress("a", a)
    feedback.compress("b", b)
    # a: scale 1/127, 0.004 * 127 = 0.508 rounds to 1 code, sent 1/127; b is exact
    assert feedback.residuals["a"][0].tolist() == pytest.approx([0.0, 0.004 - 1 / 127, 0.0, 0.0])
    assert feedback.residuals["b"].tolist() == [[0.0, 0.0, 0.0, 0.0]]
    with pytest.raises(ValueError, match="shape"):
        feedback.compress("a", torch.zeros(1, 5))


# The compressed mean among K simulated workers.

SPECS = ("bf16", "int8", "int4", "topk:0.01")
SIZES = (3000, 1003)  # two tensors, n = 4003 values


def encoded_by_hand(spec: str, c: int) -> int:
    """E(c), the module docstring's formulas written out again (default block sizes)."""
    if spec == "bf16":
        return 2 * c
    if spec == "int8":
        return c + 4 * math.ceil(c / 256)
    if spec == "int4":
        return math.ceil(c / 2) + 4 * math.ceil(c / 256)
    block = min(4096, c)
    return math.ceil(c / block) * math.ceil(0.01 * block) * (4 + (1 if block <= 256 else 2))


def inputs(rank: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(rank)
    return [torch.randn(size, generator=g) for size in SIZES]


def one_mean_each(comm: Communicator) -> dict:
    out = {}
    for spec in SPECS:
        tensors = inputs(comm.rank)
        before = comm.stats.bytes_sent
        CompressedMean(parse_compression(spec))(comm, "x", tensors)
        out[spec] = {"mean": torch.cat(tensors), "bytes": comm.stats.bytes_sent - before}
    return out


@pytest.mark.parametrize("world_size", [2, 4, 8, 16, 64])
def test_bytes_per_worker_follow_the_formula(world_size: int) -> None:
    results = run_simulated(world_size, one_mean_each)
    n = sum(SIZES)
    c = math.ceil(n / world_size)
    true_mean = torch.stack([torch.cat(inputs(r)) for r in range(world_size)]).mean(0)
    for spec in SPECS:
        expected = 2 * (world_size - 1) * encoded_by_hand(spec, c)  # all-to-all, then all-gather
        for r in results:
            assert r[spec]["bytes"] == expected, spec
            assert torch.equal(r[spec]["mean"], results[0][spec]["mean"])  # every worker, the same mean
        # about 2(K-1)/K of one encoded payload, against (K-1) payloads for an all-gather
        assert expected <= 2 * (world_size - 1) / world_size * encoded_by_hand(spec, n) * 1.1 + 2 * world_size * 8
        if spec != "topk:0.01":
            error = (results[0][spec]["mean"] - true_mean).abs().max().item()
            assert error < {"bf16": 0.02, "int8": 0.05, "int4": 0.8}[spec], (spec, error)
    if world_size == 4:
        # c = 1001: int8 1001 + 4 * 4 = 1017 bytes a chunk, 2 * 3 chunks; top-k 1 block of 11, int16 positions
        assert [results[0][s]["bytes"] for s in SPECS] == [6 * 2002, 6 * 1017, 6 * 517, 6 * 11 * 6]


ROUNDS = 40


def repeated_means(comm: Communicator, spec: str, feedback: bool) -> dict:
    """Average the same per-worker vector ROUNDS times; return the sum of the applied means and the
    residuals left at the end (feedback=False clears them before every round)."""
    mean = CompressedMean(parse_compression(spec, block_size=64))
    applied = torch.zeros(sum(SIZES))
    for _ in range(ROUNDS):
        if not feedback:
            mean.load_state_dict({"sent": {}, "reduced": {}})
        tensors = inputs(comm.rank)
        mean(comm, "x", tensors)
        applied += torch.cat(tensors)
    return {"applied": applied, **mean.state_dict()}


@pytest.mark.parametrize(("spec", "bound"), [("int4", 0.5), ("topk:0.25", 5.0)])
def test_error_feedback_keeps_the_running_sum_on_track(spec: str, bound: float) -> None:
    world_size = 4
    true_sum = ROUNDS * torch.stack([torch.cat(inputs(r)) for r in range(world_size)]).mean(0)
    results = run_simulated(world_size, lambda comm: repeated_means(comm, spec, feedback=True))
    n = sum(SIZES)
    # sum of applied means = ROUNDS * true mean - (mean of the workers' residuals + owners' residuals)
    worker_residuals = torch.stack([r["sent"]["x"].view(-1)[:n] for r in results]).mean(0)
    owner_residuals = torch.cat([r["reduced"]["x"].view(-1) for r in results])[:n]
    assert torch.allclose(results[0]["applied"], true_sum - worker_residuals - owner_residuals, atol=1e-3)
    assert (results[0]["applied"] - true_sum).abs().max().item() < bound
    # Without the residuals the same check fails: the rounding bias adds up round after round.
    unfed = run_simulated(world_size, lambda comm: repeated_means(comm, spec, feedback=False))
    assert (unfed[0]["applied"] - true_sum).abs().max().item() > 5 * bound


@pytest.mark.parametrize(
    ("call", "argument"),
    [
        (lambda: Quantizer("fp8"), "scheme"),
        (lambda: Quantizer("int8", block_size=0), "block_size"),
        (lambda: TopK(0.0), "fraction"),
        (lambda: TopK(0.5, block_size=0), "block_size"),
        (lambda: Quantizer("int8").encoded_bytes(-1), "numel"),
        (lambda: TopK(0.5).encoded_bytes(-1), "numel"),
    ],
)
def test_bad_arguments_are_named(call, argument: str) -> None:
    with pytest.raises(ValueError, match=argument):
        call()
