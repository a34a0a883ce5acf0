"""Lossy compression on the wire, and the compressed mean whose traffic scales like a ring all-reduce's.

A :class:`Codec` turns rows of float32 values into rows of bytes of a fixed size and back:

- ``bf16`` rounds each value to bfloat16 (2 bytes a value).
- ``int8`` and ``int4`` cut each row into blocks of ``block_size`` values (the last may be short)
  and send, per block, a float32 scale ``absmax / qmax`` and each value rounded to the nearest
  multiple of it, so a value's error is at most half its block's scale (blockwise absmax
  quantisation, Dettmers et al., 2022, "8-bit Optimizers via Block-wise Quantization"). int4 codes
  travel two to a byte.
- ``topk:F`` keeps, in each block of ``block_size`` values, the ``ceil(F * block_size)`` of largest
  magnitude: float32 values plus their positions in the block (uint8 for blocks of at most 256
  values, int16 up to 32768, else int32), as in DeMo / SparseLoCo's chunked top-k.

:class:`ErrorFeedback` carries what a codec lost into the next round (Seide et al., 2014, "1-Bit
SGD"; Karimireddy et al., 2019, "Error Feedback Fixes SignSGD").

:class:`CompressedMean` averages over K workers in two steps. The flat vector is cut into K chunks
of ``c = ceil(n / K)`` values; worker j owns chunk j. (1) All-to-all: every worker encodes its K
chunks (with its own error feedback) and sends chunk j to worker j. (2) Worker j decodes the K
chunks it got, sums them in float32 in rank order and divides by K, encodes that mean chunk (with
the owner's error feedback) and all-gathers it. Each worker sends ``K - 1`` encoded chunks in each
step, so ``2 (K - 1) E(c)`` bytes in all, about ``2 (K - 1) / K`` of one encoded payload, where

    int8: E(c) = c + 4 ceil(c / B)         int4: E(c) = ceil(c / 2) + 4 ceil(c / B)
    bf16: E(c) = 2 c                       topk:F: E(c) = ceil(c / B) ceil(F min(B, c)) (4 + index bytes)

(B the block size; a chunk shorter than B is one block; top-k positions take 1 byte for blocks of up
to 256 values, 2 up to 32768, else 4). Defaults: B = 256 for int8 and int4, 4096 for top-k.

Top-k is reduced the same way, not all-gathered: an all-gather of the workers' sparse payloads would
give the exact mean of the sparse vectors but cost ``(K - 1) E(n)`` per worker, ``K / 2`` times more.
The price: an owner's sum of K sparse chunks holds up to K times more nonzeros than it sends on (it
keeps the top ``ceil(F B)`` of each block), and what it drops waits in its residual for later rounds.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Hashable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from lowcomm.communication.communicator import Communicator, Handle, flatten, unflatten

SCHEMES: tuple[str, ...] = ("bf16", "int8", "int4")
DEFAULT_BLOCK_SIZE = {"int8": 256, "int4": 256, "topk": 4096}
_QMAX = {"int8": 127, "int4": 7}
_SCALE_BYTES = 4  # one float32 per block
_INT4_OFFSET = 8  # int4 codes -7..7 are stored as the nibbles 1..15
_SPEC_ERROR = "compress: must be none, bf16, int8, int4 or topk:FRACTION with 0 < FRACTION <= 1"


class Codec(ABC):
    """Encodes rows of values, in blocks of ``block_size``, into rows of ``encoded_bytes(numel)`` bytes."""

    def __init__(self, block_size: int) -> None:
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.block_size = block_size

    def encoded_bytes(self, numel: int) -> int:
        """Bytes of one encoded row of ``numel`` values."""
        if numel < 0:
            raise ValueError(f"numel must be >= 0, got {numel}")
        return self.row_bytes(numel)

    @abstractmethod
    def row_bytes(self, numel: int) -> int:
        ...

    @abstractmethod
    def encode(self, rows: torch.Tensor) -> torch.Tensor:
        """``(R, numel)`` float32 values to ``(R, encoded_bytes(numel))`` uint8."""

    @abstractmethod
    def decode(self, wire: torch.Tensor, numel: int) -> torch.Tensor:
        """The ``(R, numel)`` float32 values that :meth:`encode` approximated."""


def _blocks(rows: torch.Tensor, block_size: int) -> torch.Tensor:
    """``(R, numel)`` as ``(R, blocks, block_size)``, the last block padded with zeros."""
    return F.pad(rows.float(), (0, -rows.shape[1] % block_size)).view(rows.shape[0], -1, block_size)


def _as_bytes(tensor: torch.Tensor) -> torch.Tensor:
    """A ``(R, ...)`` tensor's bytes, row by row, as ``(R, bytes)`` uint8."""
    return tensor.reshape(tensor.shape[0], -1).contiguous().view(torch.uint8)


def _from_bytes(wire: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``(R, bytes)`` uint8 (a slice of a row, say) as ``(R, values)`` of ``dtype``."""
    return wire.clone(memory_format=torch.contiguous_format).view(dtype)


class Quantizer(Codec):
    """``bf16``, or blockwise absmax ``int8`` / ``int4`` with one float32 scale per block."""

    def __init__(self, scheme: str, block_size: int = 256) -> None:
        if scheme not in SCHEMES:
            raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
        super().__init__(block_size)
        self.scheme = scheme

    def row_bytes(self, numel: int) -> int:
        if self.scheme == "bf16":
            return 2 * numel
        payload = numel if self.scheme == "int8" else math.ceil(numel / 2)
        return payload + _SCALE_BYTES * math.ceil(numel / self.block_size)

    def encode(self, rows: torch.Tensor) -> torch.Tensor:
        if self.scheme == "bf16":
            return _as_bytes(rows.to(torch.bfloat16))
        codes, scales = self.quantize(rows)
        payload = codes.view(torch.uint8) if self.scheme == "int8" else pack_int4(codes)
        return torch.cat([payload, _as_bytes(scales)], dim=1)

    def quantize(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """int8 codes ``(R, numel)`` and float32 scales ``(R, blocks)``."""
        blocks = _blocks(rows, self.block_size)
        scales = blocks.abs().amax(dim=2) / _QMAX[self.scheme]
        safe_scales = torch.where(scales > 0, scales, torch.ones_like(scales))
        codes = torch.round(blocks / safe_scales[..., None]).to(torch.int8)
        return codes.view(rows.shape[0], -1)[:, : rows.shape[1]], scales

    def decode(self, wire: torch.Tensor, numel: int) -> torch.Tensor:
        if self.scheme == "bf16":
            return _from_bytes(wire, torch.bfloat16).float()
        payload_bytes = numel if self.scheme == "int8" else math.ceil(numel / 2)
        payload, scales = wire[:, :payload_bytes], _from_bytes(wire[:, payload_bytes:], torch.float32)
        codes = payload.view(torch.int8) if self.scheme == "int8" else unpack_int4(payload, numel)
        return codes.float() * scales.repeat_interleave(self.block_size, dim=1)[:, :numel]


class TopK(Codec):
    """In each block of ``block_size`` values (the whole row if shorter), the ``ceil(fraction *
    block)`` values of largest magnitude, as float32 values and their positions in the block."""

    def __init__(self, fraction: float, block_size: int = 4096) -> None:
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
        super().__init__(block_size)
        self.fraction = fraction

    def block(self, numel: int) -> int:
        return max(1, min(self.block_size, numel))

    def kept(self, numel: int) -> int:
        """Values kept per block of a row of ``numel`` values."""
        return math.ceil(self.fraction * self.block(numel))

    def index_dtype(self, numel: int) -> torch.dtype:
        block = self.block(numel)
        return torch.uint8 if block <= 1 << 8 else torch.int16 if block <= 1 << 15 else torch.int32

    def row_bytes(self, numel: int) -> int:
        per_value = 4 + self.index_dtype(numel).itemsize
        return math.ceil(numel / self.block(numel)) * self.kept(numel) * per_value

    def encode(self, rows: torch.Tensor) -> torch.Tensor:
        numel = rows.shape[1]
        blocks = _blocks(rows, self.block(numel))
        indices = blocks.abs().topk(self.kept(numel), dim=2).indices
        values = blocks.gather(2, indices)
        return torch.cat([_as_bytes(values), _as_bytes(indices.to(self.index_dtype(numel)))], dim=1)

    def decode(self, wire: torch.Tensor, numel: int) -> torch.Tensor:
        block, kept = self.block(numel), self.kept(numel)
        count = math.ceil(numel / block)
        values = _from_bytes(wire[:, : 4 * count * kept], torch.float32).view(-1, count, kept)
        indices = _from_bytes(wire[:, 4 * count * kept :], self.index_dtype(numel)).view(-1, count, kept)
        dense = values.new_zeros(values.shape[0], count, block).scatter_(2, indices.long(), values)
        return dense.view(values.shape[0], -1)[:, :numel]


def parse_compression(spec: str, block_size: int | None = None) -> Codec | None:
    """The codec ``spec`` names (``none`` gives None); ``block_size`` defaults to the scheme's own."""
    if not isinstance(spec, str):
        raise ValueError(f"{_SPEC_ERROR}, got {spec!r}")
    name, _, fraction = spec.partition(":")
    if spec == "none":
        return None
    if spec in SCHEMES:
        return Quantizer(spec, block_size or DEFAULT_BLOCK_SIZE.get(spec, 1))
    if name == "topk":
        try:
            value = float(fraction)
        except ValueError:
            value = math.nan
        if 0 < value <= 1:
            return TopK(value, block_size or DEFAULT_BLOCK_SIZE["topk"])
    raise ValueError(f"{_SPEC_ERROR}, got {spec!r}")


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """Two codes in -7..7 per byte along the last dimension: the even-indexed one in the low
    nibble, each stored as ``code + 8``."""
    nibbles = (codes.to(torch.int16) + _INT4_OFFSET).to(torch.uint8)
    nibbles = F.pad(nibbles, (0, nibbles.shape[-1] % 2))
    return nibbles[..., 0::2] | (nibbles[..., 1::2] << 4)


def unpack_int4(packed: torch.Tensor, numel: int) -> torch.Tensor:
    """The first ``numel`` int8 codes along the last dimension of bytes made by :func:`pack_int4`."""
    nibbles = torch.stack([packed & 0x0F, packed >> 4], dim=-1).flatten(-2)[..., :numel]
    return nibbles.to(torch.int8) - _INT4_OFFSET


class ErrorFeedback:
    """A codec that remembers its error, one residual per key, and adds it back next time: over
    many rounds the decoded values sum to the inputs' sum less the last residual."""

    def __init__(self, codec: Codec) -> None:
        self.codec = codec
        self.residuals: dict[Hashable, torch.Tensor] = {}

    def compress(self, key: Hashable, rows: torch.Tensor) -> torch.Tensor:
        """The encoding of ``rows + residual[key]``; what it loses becomes the residual."""
        residual = self.residuals.get(key)
        if residual is not None and residual.shape != rows.shape:
            raise ValueError(f"rows shape {tuple(rows.shape)} differs from key {key!r}'s residual "
                             f"{tuple(residual.shape)}")
        corrected = rows.float() if residual is None else rows + residual
        wire = self.codec.encode(corrected)
        self.residuals[key] = corrected - self.codec.decode(wire, rows.shape[1])
        return wire


def owner_chunk(numel: int, world_size: int) -> int:
    """Values in each worker's chunk of a ``numel``-value vector: ``ceil(numel / K)``, at least 1
    (the vector is padded with zeros to K chunks)."""
    return max(1, -(-numel // world_size))


class CompressedMean:
    """The workers' mean of tensors, encoded with ``codec`` on the wire (see the module docstring).

    Every worker must call it with the same keys and tensor sizes in the same order. Each worker
    keeps, per key, the residual of its K encoded chunks and the residual of the mean chunk it owns.
    """

    def __init__(self, codec: Codec) -> None:
        self.codec = codec
        self.sent = ErrorFeedback(codec)
        self.reduced = ErrorFeedback(codec)

    def __call__(self, comm: Communicator, key: Hashable, tensors: Sequence[torch.Tensor]) -> None:
        """Replace each tensor, in place, by the mean over workers of its compressed value."""
        world_size = comm.world_size
        numel = sum(t.numel() for t in tensors)
        chunk = owner_chunk(numel, world_size)
        flat = flatten(tensors).float()
        rows = F.pad(flat, (0, world_size * chunk - numel)).view(world_size, chunk)
        received = comm.all_to_all(list(self.sent.compress(key, rows).unbind()))
        contributions = self.codec.decode(torch.stack(received), chunk)
        total = contributions[0].clone()
        for contribution in contributions[1:]:
            total += contribution
        mine = self.reduced.compress(key, total.div_(world_size).view(1, chunk))
        gathered = comm.all_gather([mine[0]])
        mean = self.codec.decode(torch.stack([g[0] for g in gathered]), chunk).reshape(-1)[:numel]
        for tensor, part in zip(tensors, unflatten(mean, tensors)):
            tensor.copy_(part)

    def state_dict(self) -> dict[str, Any]:
        return {"sent": dict(self.sent.residuals), "reduced": dict(self.reduced.residuals)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sent.residuals = dict(state["sent"])
        self.reduced.residuals = dict(state["reduced"])


def compressed_mean(spec: str, block_size: int | None = None) -> CompressedMean | None:
    """The compressed mean ``spec`` names, or None for ``none``."""
    codec = parse_compression(spec, block_size)
    return None if codec is None else CompressedMean(codec)


def mean_compressing(
    comm: Communicator,
    compressed: CompressedMean | None,
    key: Hashable,
    values: list[torch.Tensor],
    exact: list[torch.Tensor],
    async_op: bool = False,
) -> Handle:
    """Replace ``values`` and ``exact`` in place by their means over the workers: ``values`` through
    ``compressed`` (blocking; ``key`` keys its error feedback) where there is one, ``exact`` (flags,
    buffers) always uncompressed; the handle is the uncompressed all-reduce's."""
    if compressed is None:
        return comm.all_reduce_mean(values + exact, async_op=async_op)
    compressed(comm, key, values)
    return comm.all_reduce_mean(exact, async_op=async_op)
