"""The network cost model against numbers worked out by hand."""

from __future__ import annotations

import math

import pytest

from lowcomm.communication.network_model import NetworkModel, parse_rate

GBIT = NetworkModel(bandwidth_bps=1e9)


def test_ring_all_reduce_by_hand() -> None:
    # 100 MB among 4 workers: 2*3 steps of a 25 MB chunk at 125 MB/s = 6 * 0.2 s
    assert GBIT.all_reduce_s(100_000_000, 4) == pytest.approx(1.2)
    # with 1 ms per step: + 6 ms
    assert NetworkModel(1e9, latency_s=1e-3).all_reduce_s(100_000_000, 4) == pytest.approx(1.206)
    # two workers each send half the payload twice: 8 MB * 8 / 100 Mbit/s
    assert NetworkModel(100e6).all_reduce_s(8_000_000, 2) == pytest.approx(0.64)
    assert GBIT.all_reduce_s(100_000_000, 1) == 0.0


def test_exchange_shares_the_egress() -> None:
    # 10 MB to 3 peers over 1 Gbit/s: 30 MB * 8 / 1e9 = 0.24 s, plus one latency
    assert GBIT.exchange_s(10_000_000, 3) == pytest.approx(0.24)
    assert NetworkModel(1e9, latency_s=0.01).exchange_s(10_000_000, 3) == pytest.approx(0.25)
    assert NetworkModel(1e9, latency_s=0.01).exchange_s(10_000_000, 0) == 0.0


def test_all_to_all_by_hand() -> None:
    # 4 workers each send a 10 MB chunk to each of 3 others at once: 30 MB over 1 Gbit/s, one latency
    assert NetworkModel(1e9, latency_s=1e-3).all_to_all_s(10_000_000, 4) == pytest.approx(0.241)
    assert GBIT.all_to_all_s(10_000_000, 1) == 0.0


def test_ring_all_gather_by_hand() -> None:
    # 4 workers each gather 3 others' 10 MB over 1 Gbit/s: 30 MB * 8 / 1e9 = 0.24 s, 3 steps of 1 ms
    assert NetworkModel(1e9, latency_s=1e-3).all_gather_s(10_000_000, 4) == pytest.approx(0.243)
    assert GBIT.all_gather_s(10_000_000, 1) == 0.0


def test_broadcast_pipelines_along_a_chain() -> None:
    # the source sends 50 MB once (0.4 s); 7 hops of 2 ms each
    assert NetworkModel(1e9, latency_s=2e-3).broadcast_s(50_000_000, 8) == pytest.approx(0.414)
    assert NetworkModel(1e9, latency_s=2e-3).broadcast_s(50_000_000, 1) == 0.0


def test_unlimited_bandwidth_leaves_only_latency() -> None:
    model = NetworkModel(math.inf, latency_s=0.5)
    assert model.all_reduce_s(10**12, 3) == pytest.approx(2.0)
    assert model.exchange_s(10**12, 2) == pytest.approx(0.5)
    assert model.broadcast_s(10**12, 3) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("rate", "bits_per_s"),
    [
        ("100mbit", 100e6),
        ("1gbit", 1e9),
        ("1Gbit", 1e9),
        ("2.5kbit", 2500.0),
        ("300", 300.0),
        ("300bit", 300.0),
        ("1tbit", 1e12),
        ("1bps", 8.0),
        ("10mbps", 80e6),
        ("1mibit", 1048576.0),
        ("1kibps", 8192.0),
        (" 20 mbit ", 20e6),
        ("unlimited", math.inf),
    ],
)
def test_parse_rate(rate: str, bits_per_s: float) -> None:
    assert parse_rate(rate) == bits_per_s


@pytest.mark.parametrize("rate", ["", "fast", "mbit", "10 megabit", "-5mbit", "0mbit", "1e3mbit", "10mb"])
def test_parse_rate_rejects(rate: str) -> None:
    with pytest.raises(ValueError, match="rate"):
        parse_rate(rate)


@pytest.mark.parametrize(
    ("call", "argument"),
    [
        (lambda: NetworkModel(0.0), "bandwidth_bps"),
        (lambda: NetworkModel(1e9, latency_s=-1.0), "latency_s"),
        (lambda: GBIT.all_reduce_s(100, 0), "world_size"),
        (lambda: GBIT.exchange_s(100, -1), "peers"),
        (lambda: GBIT.all_to_all_s(100, 0), "world_size"),
        (lambda: GBIT.broadcast_s(-100, 2), "payload_bytes"),
    ],
)
def test_bad_arguments_are_named(call, argument: str) -> None:
    with pytest.raises(ValueError, match=argument):
        call()
