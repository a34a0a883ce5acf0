"""How long a communication operation takes on a link of given bandwidth and latency.

The alpha-beta model (Hockney, 1994): sending ``n`` bytes in ``h`` dependent steps costs
``h * latency + 8n / bandwidth``. The bytes are those :class:`~lowcomm.communication.CommStats`
charges, so the seconds here and the bytes there describe the same traffic.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from lowcomm.communication.communicator import ring_all_reduce_bytes

_PREFIXES = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12,
             "ki": 2.0**10, "mi": 2.0**20, "gi": 2.0**30, "ti": 2.0**40}
_BITS_PER_UNIT = {"bit": 1.0, "bps": 8.0}  # as in tc(8): "bps" means bytes per second
_RATE_UNITS = {"": 1.0} | {prefix + unit: scale * bits
                           for prefix, scale in _PREFIXES.items() for unit, bits in _BITS_PER_UNIT.items()}
_RATE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)")


def parse_rate(rate: str) -> float:
    """Bits per second of a tc-style rate: ``"100mbit"``, ``"1gbit"``, ``"2.5kbps"``, ``"unlimited"``.

    Units follow tc(8): a bare number or ``bit`` is bits/s, ``kbit``/``mbit``/``gbit``/``tbit`` are
    decimal multiples, ``bps``/``kbps``/... are *bytes*/s, and ``kibit``/``mibps``/... are binary
    multiples. ``"unlimited"`` is ``math.inf``.
    """
    text = rate.strip().lower()
    if text == "unlimited":
        return math.inf
    match = _RATE.fullmatch(text)
    if match is None or match.group(2) not in _RATE_UNITS:
        raise ValueError(f"rate {rate!r} is not a tc-style rate like '100mbit' or 'unlimited'")
    bits_per_s = float(match.group(1)) * _RATE_UNITS[match.group(2)]
    if bits_per_s <= 0:
        raise ValueError(f"rate {rate!r} must be positive")
    return bits_per_s


@dataclass(frozen=True)
class NetworkModel:
    """Every worker has a full-duplex link of ``bandwidth_bps`` bits/s each way; a message takes
    ``latency_s`` to start. ``bandwidth_bps=math.inf`` leaves only the latency."""

    bandwidth_bps: float
    latency_s: float = 0.0

    def __post_init__(self) -> None:
        if not self.bandwidth_bps > 0:
            raise ValueError(f"bandwidth_bps must be positive, got {self.bandwidth_bps}")
        if not 0 <= self.latency_s < math.inf:
            raise ValueError(f"latency_s must be finite and >= 0, got {self.latency_s}")

    def all_reduce_s(self, payload_bytes: int, world_size: int) -> float:
        """Ring all-reduce: ``2(K-1)`` steps, each moving a ``payload/K`` chunk to the next worker."""
        _check_world_size(world_size)
        return self._send_s(ring_all_reduce_bytes(payload_bytes, world_size), steps=2 * (world_size - 1))

    def all_gather_s(self, payload_bytes: int, world_size: int) -> float:
        """Ring all-gather: ``K-1`` steps, each moving one worker's whole payload to the next worker."""
        _check_world_size(world_size)
        return self._send_s(payload_bytes * (world_size - 1), steps=world_size - 1)

    def all_to_all_s(self, chunk_bytes: int, world_size: int) -> float:
        """All-to-all: each worker sends a ``chunk_bytes`` chunk to each of the ``K-1`` others at
        once, an exchange with ``K-1`` peers."""
        _check_world_size(world_size)
        return self.exchange_s(chunk_bytes, world_size - 1)

    def exchange_s(self, payload_bytes: int, peers: int) -> float:
        """Send the payload to ``peers`` workers at once: the sends share this worker's egress,
        so the bytes add up while the latencies overlap."""
        if peers < 0:
            raise ValueError(f"peers must be >= 0, got {peers}")
        return self._send_s(payload_bytes * peers, steps=min(peers, 1))

    def broadcast_s(self, payload_bytes: int, world_size: int) -> float:
        """Pipelined broadcast along a chain: the source sends the payload once, and each of the
        ``K-1`` hops adds a latency."""
        _check_world_size(world_size)
        return self._send_s(payload_bytes if world_size > 1 else 0, steps=world_size - 1)

    def _send_s(self, nbytes: int, steps: int) -> float:
        if nbytes < 0:
            raise ValueError(f"payload_bytes must be >= 0, got {nbytes}")
        return steps * self.latency_s + 8 * nbytes / self.bandwidth_bps


def _check_world_size(world_size: int) -> None:
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
