"""Kafka consume baseline under pytest-benchmark (the figures the daemon's end-to-end rate is held to).

Run: ``.venv/bin/python -m pytest -m perf --benchmark-enable tests/perf/test_kafka_perf.py -s``.
A bare aiokafka ``getmany`` loop and :class:`~engine.io.kafka.KafkaSource` read a local Tansu topic of
200k one-event messages, and one of 20k messages carrying 100 NDJSON events each (2M events, ~200 MiB;
``python -m bench.kafka_throughput`` runs the 200k x 100 case). Each round reads the topic from offset 0
and must return every message.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from bench.kafka_throughput import consume_bare, consume_source, event_lines, fill_topic, messages
from engine.io.broker import EmbeddedBroker, run_sync

pytestmark = pytest.mark.perf

SEED = 11
PARTITIONS = 3
SIZES = {1: 200_000, 100: 20_000}  # events per message -> messages in the topic


@pytest.fixture(scope="module")
def broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker() as b:
        yield b


@pytest.fixture(scope="module")
def filled(broker: EmbeddedBroker) -> dict[int, tuple[str, int, int]]:
    """events per message -> (topic, messages, bytes)."""
    print(f"\nseed {SEED}, tansu started in {broker.start_duration_s or 0.0:.3f} s")
    pool = event_lines(100_000, SEED)
    out = {}
    for per_message, n in SIZES.items():
        values = messages(n, per_message, pool)
        topic = f"perf-{per_message}x"
        run_sync(lambda t=topic, v=values: fill_topic(broker.bootstrap, t, v, PARTITIONS))
        out[per_message] = (topic, n, sum(map(len, values)))
    return out


@pytest.mark.parametrize("per_message", sorted(SIZES))
@pytest.mark.parametrize("reader", ["aiokafka-getmany", "KafkaSource"])
def test_consume_rate(
    benchmark: Any, broker: EmbeddedBroker, filled: dict[int, tuple[str, int, int]], per_message: int,
    reader: str
) -> None:
    topic, n, n_bytes = filled[per_message]
    consume = consume_bare if reader == "aiokafka-getmany" else consume_source
    loop_seconds: list[float] = []

    def read_all() -> int:
        got, seconds = asyncio.run(consume(broker.bootstrap, topic, n, max_records=10_000,
                                           max_partition_fetch_bytes=1_048_576, n_partitions=PARTITIONS,
                                           check_crcs=True))
        loop_seconds.append(seconds)
        return got

    got = benchmark.pedantic(read_all, rounds=3, iterations=1)
    assert got == n
    best_s = min(loop_seconds)
    benchmark.extra_info.update(messages_per_s=n / best_s, events_per_s=n * per_message / best_s,
                                mib_per_s=n_bytes / best_s / 2**20)
    print(f"\n{reader} {per_message} event(s)/message: {n / best_s:,.0f} messages/s, "
          f"{n * per_message / best_s:,.0f} events/s, {n_bytes / best_s / 2**20:,.1f} MiB/s")
