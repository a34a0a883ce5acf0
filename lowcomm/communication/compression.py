"""Lossy compression of pseudo-gradients before they go on the wire.

``bf16`` rounds each value to bfloat16. ``int8`` and ``int4`` split the flattened tensor into blocks
of ``block_size`` values and send, per block, a float32 scale ``absmax / qmax`` and each value rounded
to the nearest multiple of it, so the error of a value is at most half its block's scale (blockwise
absmax quantisation, Dettmers et al., 2022, "8-bit Optimizers via Block-wise Quantization"). int4
codes travel two to a byte. :class:`ErrorFeedback` carries what rounding lost into the next round
(Seide et al., 2014, "1-Bit SGD"; Karimireddy et al., 2019, "Error Feedback Fixes SignSGD").
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Literal, get_args

import torch
import torch.nn.functional as F

Scheme = Literal["bf16", "int8", "int4"]
SCHEMES: tuple[str, ...] = get_args(Scheme)
_QMAX = {"int8": 127, "int4": 7}
_SCALE_BYTES = 4  # one float32 per block
_INT4_OFFSET = 8  # int4 codes -7..7 are stored as the nibbles 1..15


@dataclass(frozen=True)
class Compressed:
    """What goes on the wire: ``payload`` (bf16 values, int8 codes, or uint8 bytes holding two int4
    codes each) and ``scales`` (float32, one per block; empty for bf16), plus what it takes to undo it."""

    scheme: Scheme
    payload: torch.Tensor
    scales: torch.Tensor
    shape: torch.Size
    dtype: torch.dtype
    block_size: int

    @property
    def nbytes(self) -> int:
        return sum(part.numel() * part.element_size() for part in (self.payload, self.scales))


def compressed_bytes(numel: int, scheme: Scheme, block_size: int = 256) -> int:
    """Exact wire size of a ``numel``-value tensor under ``scheme``: payload plus per-block scales."""
    _check(scheme, block_size)
    if numel < 0:
        raise ValueError(f"numel must be >= 0, got {numel}")
    if scheme == "bf16":
        return 2 * numel
    payload = numel if scheme == "int8" else math.ceil(numel / 2)
    return payload + _SCALE_BYTES * math.ceil(numel / block_size)


def quantize(tensor: torch.Tensor, scheme: Scheme, block_size: int = 256) -> Compressed:
    """Compress a floating-point tensor; :func:`dequantize` gives back an approximation of it."""
    _check(scheme, block_size)
    if not tensor.is_floating_point():
        raise ValueError(f"tensor must be floating point, got {tensor.dtype}")
    flat = tensor.detach().reshape(-1)
    if scheme == "bf16":
        payload, scales = flat.to(torch.bfloat16), flat.new_empty(0, dtype=torch.float32)
    else:
        blocks = F.pad(flat.float(), (0, -flat.numel() % block_size)).view(-1, block_size)
        scales = blocks.abs().amax(dim=1) / _QMAX[scheme]
        safe_scales = torch.where(scales > 0, scales, torch.ones_like(scales))
        codes = torch.round(blocks / safe_scales[:, None]).to(torch.int8).view(-1)[: flat.numel()]
        payload = codes if scheme == "int8" else pack_int4(codes)
    return Compressed(scheme, payload, scales, tensor.shape, tensor.dtype, block_size)


def dequantize(compressed: Compressed) -> torch.Tensor:
    """The tensor :func:`quantize` approximated, in its original shape and dtype."""
    numel = math.prod(compressed.shape)
    if compressed.scheme == "bf16":
        flat = compressed.payload.float()
    else:
        codes = compressed.payload if compressed.scheme == "int8" else unpack_int4(compressed.payload, numel)
        scales = compressed.scales.repeat_interleave(compressed.block_size)[:numel]
        flat = codes.float() * scales
    return flat.to(compressed.dtype).view(compressed.shape)


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """Two codes in -7..7 per byte: the even-indexed one in the low nibble, stored as ``code + 8``."""
    nibbles = (codes.to(torch.int16) + _INT4_OFFSET).to(torch.uint8)
    nibbles = F.pad(nibbles, (0, nibbles.numel() % 2))
    return nibbles[0::2] | (nibbles[1::2] << 4)


def unpack_int4(packed: torch.Tensor, numel: int) -> torch.Tensor:
    """The first ``numel`` int8 codes of bytes made by :func:`pack_int4`."""
    nibbles = torch.stack([packed & 0x0F, packed >> 4], dim=1).view(-1)[:numel]
    return nibbles.to(torch.int8) - _INT4_OFFSET


class ErrorFeedback:
    """Compression that remembers its rounding error, one residual per tensor, and adds it back next
    time: over many rounds the transmitted values sum to the inputs' sum less one residual."""

    def __init__(self, scheme: Scheme, block_size: int = 256) -> None:
        _check(scheme, block_size)
        self.scheme = scheme
        self.block_size = block_size
        self.residuals: dict[Hashable, torch.Tensor] = {}

    def compress(self, key: Hashable, tensor: torch.Tensor) -> Compressed:
        """What to transmit for ``tensor + residual[key]``; the rounding error becomes the residual."""
        residual = self.residuals.get(key)
        if residual is not None and residual.shape != tensor.shape:
            raise ValueError(f"tensor shape {tuple(tensor.shape)} differs from key {key!r}'s residual "
                             f"{tuple(residual.shape)}")
        corrected = tensor if residual is None else tensor + residual
        sent = quantize(corrected, self.scheme, self.block_size)
        self.residuals[key] = corrected - dequantize(sent)
        return sent


def _check(scheme: str, block_size: int) -> None:
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
