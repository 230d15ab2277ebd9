"""Kafka consume baseline: ``python -m bench.kafka_throughput``.

Fills topics on a local Tansu broker (or ``--bootstrap`` of a running cluster) with request events,
one event per message and ``--events-per-message`` NDJSON events per message, then reads each
topic back:

- ``aiokafka getmany``: a bare consume loop (manual assignment, ``getmany``, values not touched),
  the ceiling that any Kafka-fed daemon runs under on this machine;
- ``KafkaSource.fetch``: the daemon's source (consumer group, value lists, offset and timestamp
  arrays, lag). Once the group has assigned every partition, the source seeks back to offset 0 and
  the clock starts, so that neither the group join nor records prefetched during it are counted.

Both readers count messages only; the byte rate follows from the bytes produced.

Nothing is decoded: the daemon's end-to-end rate is to be compared with these figures.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from rich.console import Console
from rich.table import Table

from engine.io.broker import EmbeddedBroker, create_topics
from engine.io.kafka import KafkaSource
from engine.io.kafka_config import KafkaSourceConfig
from engine.io.kafka_produce import produce_lines

SERVICES = ("checkout", "cart", "search", "payments", "catalog", "auth")
ROUTES = ("/", "/api/v1/items", "/api/v1/cart", "/api/v1/pay", "/login", "/healthz")
T0_MS = 1_700_000_000_000


def event_lines(n: int, seed: int) -> list[bytes]:
    """``n`` distinct NDJSON request events (~110 bytes each), seeded."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        status = 503 if rng.random() < 0.002 else (404 if rng.random() < 0.01 else 200)
        out.append(
            (f'{{"ts":{T0_MS + i},"service":"{rng.choice(SERVICES)}","route":"{rng.choice(ROUTES)}",'
             f'"method":"GET","status":{status},"latency_ms":{rng.lognormvariate(3.5, 0.6):.3f}}}').encode()
        )
    return out


def messages(n_messages: int, per_message: int, pool: list[bytes]) -> list[bytes]:
    """``n_messages`` values of ``per_message`` lines each, cycling through ``pool``."""
    if per_message == 1:
        return [pool[i % len(pool)] for i in range(n_messages)]
    out = []
    k = len(pool)
    for m in range(n_messages):
        start = (m * per_message) % k
        chunk = pool[start:start + per_message]
        if len(chunk) < per_message:
            chunk = chunk + pool[: per_message - len(chunk)]
        out.append(b"\n".join(chunk))
    return out


@dataclass(frozen=True, slots=True)
class Rate:
    """One measured read of a topic."""

    reader: str
    per_message: int
    messages: int
    bytes_: int
    seconds: float

    @property
    def messages_per_s(self) -> float:
        return self.messages / self.seconds

    @property
    def events_per_s(self) -> float:
        return self.messages * self.per_message / self.seconds

    @property
    def mib_per_s(self) -> float:
        return self.bytes_ / self.seconds / 2**20


async def consume_bare(
    bootstrap: str, topic: str, expected: int, *, max_records: int, max_partition_fetch_bytes: int,
    n_partitions: int, check_crcs: bool, decode: Callable[[list[bytes]], object] | None = None,
) -> tuple[int, float]:
    """Read ``expected`` messages from the beginning with a bare aiokafka loop: (messages, seconds).

    With ``decode``, each partition's values of each ``getmany`` are handed to it in the loop (the
    naive consumer that parses what it reads).
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest",
        max_partition_fetch_bytes=max_partition_fetch_bytes, fetch_max_bytes=64 * 2**20,
        check_crcs=check_crcs,
    )
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not partitions:
            partitions = [TopicPartition(topic, p) for p in sorted(await _partitions(consumer, topic))]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        n = 0
        t0 = time.perf_counter()
        while n < expected:
            batch = await consumer.getmany(timeout_ms=1000, max_records=max_records)
            for recs in batch.values():
                n += len(recs)
                if decode is not None:
                    decode([r.value for r in recs])
        return n, time.perf_counter() - t0
    finally:
        await consumer.stop()


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    await consumer.topics()  # refreshes metadata
    found = consumer.partitions_for_topic(topic)
    if not found:
        raise RuntimeError(f"topic {topic!r} has no partitions on the broker")
    return set(found)


async def consume_source(
    bootstrap: str, topic: str, expected: int, *, max_records: int, max_partition_fetch_bytes: int,
    n_partitions: int, check_crcs: bool,
) -> tuple[int, float]:
    """Read ``expected`` messages through :class:`KafkaSource`: (messages, seconds after the join)."""
    cfg = KafkaSourceConfig.from_mapping({
        "bootstrap_servers": bootstrap, "topics": [topic], "group_id": f"bench-{uuid.uuid4().hex[:8]}",
        "start": "earliest", "max_records": max_records, "fetch_max_bytes": 64 * 2**20,
        "max_partition_fetch_bytes": max_partition_fetch_bytes,
        "session_timeout_ms": 2000, "heartbeat_interval_ms": 500, "check_crcs": check_crcs,
    })
    async with KafkaSource(cfg) as source:
        deadline = time.monotonic() + 30
        while len(source.assignment()) < n_partitions:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no assignment of {topic!r} after 30 s: {source.state}")
            await source.fetch(timeout_ms=100)
        await source.seek(dict.fromkeys(source.assignment(), 0))
        n = 0
        t0 = time.perf_counter()
        while n < expected:
            result = await source.fetch(timeout_ms=1000)
            for part in result.partitions:
                n += len(part.values)
        return n, time.perf_counter() - t0


async def fill_topic(
    bootstrap: str, topic: str, values: list[bytes], partitions: int, batch_bytes: int = 1_048_576
) -> float:
    """Create ``topic`` and produce ``values`` in record batches of ``batch_bytes``; returns seconds."""
    await create_topics(bootstrap, {topic: partitions})
    t0 = time.perf_counter()
    sent = await produce_lines(bootstrap, topic, values, linger_ms=5, max_batch_bytes=batch_bytes)
    assert sent == len(values)
    return time.perf_counter() - t0


async def run(args: argparse.Namespace, bootstrap: str, console: Console) -> list[Rate]:
    pool = event_lines(100_000, args.seed)
    rates: list[Rate] = []
    for per_message in (1, args.events_per_message):
        n_messages = args.messages if per_message == 1 else args.batched_messages
        values = messages(n_messages, per_message, pool)
        total_bytes = sum(map(len, values))
        topic = f"bench-{per_message}x-{uuid.uuid4().hex[:8]}"
        longest = max(map(len, values))  # a batch holds at least one message and its framing
        batch_bytes = max(args.produce_batch_kib * 1024, longest + 1024)
        produce_s = await fill_topic(bootstrap, topic, values, args.partitions, batch_bytes)
        console.print(f"[dim]{topic}: {n_messages:,} messages x {per_message} events, "
                      f"{total_bytes / 2**20:,.1f} MiB, produced in {produce_s:.2f} s "
                      f"({n_messages / produce_s:,.0f} msg/s)[/dim]")
        del values
        for reader, consume in (("aiokafka getmany", consume_bare), ("KafkaSource.fetch", consume_source)):
            best_s = float("inf")
            for _ in range(args.repeat):
                got, seconds = await consume(bootstrap, topic, n_messages, max_records=args.max_records,
                                             max_partition_fetch_bytes=args.partition_fetch_kib * 1024,
                                             n_partitions=args.partitions,
                                             check_crcs=not args.no_check_crcs)
                if got != n_messages:
                    raise RuntimeError(f"{reader}: read {got} messages, expected {n_messages}")
                best_s = min(best_s, seconds)
            rates.append(Rate(reader, per_message, n_messages, total_bytes, best_s))
    return rates


def table(rates: list[Rate], title: str) -> Table:
    t = Table(title=title)
    for col in ("reader", "events/msg", "messages", "seconds", "messages/s", "events/s", "MiB/s"):
        t.add_column(col, justify="left" if col == "reader" else "right")
    for r in rates:
        t.add_row(r.reader, str(r.per_message), f"{r.messages:,}", f"{r.seconds:.3f}",
                  f"{r.messages_per_s:,.0f}", f"{r.events_per_s:,.0f}", f"{r.mib_per_s:,.1f}")
    return t


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.kafka_throughput", description=__doc__.split("\n")[0])
    p.add_argument("--messages", type=int, default=200_000, help="messages of the 1-event topic")
    p.add_argument("--batched-messages", type=int, default=200_000, help="messages of the NDJSON topic")
    p.add_argument("--events-per-message", type=int, default=100)
    p.add_argument("--partitions", type=int, default=3)
    p.add_argument("--max-records", type=int, default=10_000, help="getmany max_records")
    p.add_argument("--partition-fetch-kib", type=int, default=1024, help="max_partition_fetch_bytes / 1024")
    p.add_argument("--produce-batch-kib", type=int, default=1024,
                   help="record batch size of the producer (aiokafka's default is 16)")
    p.add_argument("--no-check-crcs", action="store_true", help="skip the CRC-32C check of batches")
    p.add_argument("--repeat", type=int, default=3, help="reads per topic and reader; the best is shown")
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--bootstrap", help="use this broker instead of starting Tansu")
    args = p.parse_args(argv)
    # A table needs more than the 80 columns rich assumes when writing to a pipe.
    console = Console() if sys.stdout.isatty() else Console(width=120)
    console.print(f"seed {args.seed}")
    if args.bootstrap:
        rates = asyncio.run(run(args, args.bootstrap, console))
        where = args.bootstrap
    else:
        with EmbeddedBroker() as broker:
            console.print(f"[dim]tansu started in {(broker.start_duration_s or 0) * 1000:.0f} ms "
                          f"on {broker.bootstrap}[/dim]")
            rates = asyncio.run(run(args, broker.bootstrap, console))
        where = "local Tansu (memory)"
    console.print(table(rates, f"Kafka consume baseline, {where}, {args.partitions} partitions, "
                               f"max_records={args.max_records}, "
                               f"check_crcs={not args.no_check_crcs}, "
                               f"produced in batches of {args.produce_batch_kib} KiB"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
