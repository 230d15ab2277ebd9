"""Decoding speed: msgspec's decode_lines alone against the full EventDecoder on 1M NDJSON events.

Run with ``make bench`` or ``pytest -m perf --benchmark-enable tests/perf/test_decode_perf.py``.
The benchmarks share the group ``decode-1M``; ``extra_info`` holds events per second. The plain
``decode_lines`` figure leaves the freeing of its million Structs outside the timing (the benchmark
keeps the result until the round is over); the ``and_free`` variant counts it, as the full decoder
does.
"""

from __future__ import annotations

import random

import msgspec
import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from engine.batch import KeyTable
from engine.config import EventsConfig
from engine.events import EventDecoder

pytestmark = pytest.mark.perf

N_EVENTS = 1_000_000
SEED = 20_231_114
SERVICES = ["checkout", "cart", "frontend", "search"]
ROUTES = ["/pay", "/", "/cart", "/product", "/search"]
METHODS = ["GET", "POST"]


class Event(msgspec.Struct, gc=False):
    """The default event schema as plain msgspec types: the speed the decoder is measured against."""

    ts: int | float | str | None = None
    service: str | None = None
    route: str | None = ""
    method: str | None = ""
    status: int | None = None
    latency_ms: float | None = None
    weight: int | None = 1
    labels: dict[str, str] | None = None


@pytest.fixture(scope="module")
def buffer() -> bytes:
    print(f"seed {SEED}")
    rng = random.Random(SEED)
    encode = msgspec.json.Encoder().encode
    lines = [
        encode({"ts": 1_700_000_000_000 + i, "service": rng.choice(SERVICES), "route": rng.choice(ROUTES),
                "method": rng.choice(METHODS), "status": rng.choice((200, 200, 200, 201, 404, 503)),
                "latency_ms": round(rng.lognormvariate(3, 1), 2)})
        for i in range(N_EVENTS)
    ]
    return b"\n".join(lines) + b"\n"


def _report(benchmark: BenchmarkFixture) -> None:
    stats = benchmark.stats.stats  # type: ignore[union-attr]
    benchmark.extra_info["events_per_s_median"] = round(N_EVENTS / stats.median)
    benchmark.extra_info["events_per_s_best"] = round(N_EVENTS / stats.min)


@pytest.mark.benchmark(group="decode-1M")
def test_msgspec_decode_lines_alone(benchmark: BenchmarkFixture, buffer: bytes) -> None:
    decoder = msgspec.json.Decoder(Event)
    events = benchmark.pedantic(decoder.decode_lines, args=(buffer,), rounds=5, warmup_rounds=1)
    assert len(events) == N_EVENTS
    if benchmark.stats is not None:
        _report(benchmark)


@pytest.mark.benchmark(group="decode-1M")
def test_msgspec_decode_lines_and_free(benchmark: BenchmarkFixture, buffer: bytes) -> None:
    """As above, with the million Structs freed inside the timing, as EventDecoder.decode does."""
    decoder = msgspec.json.Decoder(Event)
    n = benchmark.pedantic(lambda: len(decoder.decode_lines(buffer)), rounds=5, warmup_rounds=1)
    assert n == N_EVENTS
    if benchmark.stats is not None:
        _report(benchmark)


@pytest.mark.benchmark(group="decode-1M")
def test_event_decoder_full(benchmark: BenchmarkFixture, buffer: bytes) -> None:
    decoder = EventDecoder(EventsConfig(), KeyTable())
    batch, rej = benchmark.pedantic(decoder.decode, args=(buffer, "ndjson"), rounds=5, warmup_rounds=1)
    assert rej == {} and len(batch) == N_EVENTS
    assert len(decoder.keys) == len(SERVICES) * len(ROUTES) * len(METHODS)
    if benchmark.stats is not None:
        _report(benchmark)
