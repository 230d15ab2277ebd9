"""Producing request events to Kafka: tests, benchmarks and the demo fill topics with this."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner


async def produce_lines(
    bootstrap: str,
    topic: str,
    lines: Iterable[bytes | str],
    *,
    per_message: int = 1,
    key: bytes | str | None = None,
    linger_ms: int = 5,
    max_batch_bytes: int = 1_048_576,
    max_in_flight: int = 64,
    connection: Mapping[str, Any] | None = None,
) -> int:
    """Produce text lines to ``topic``, ``per_message`` lines per message (NDJSON when > 1).

    Messages are packed into record batches directly (no per-message future). Without ``key``,
    each batch goes to the next partition in turn; with ``key``, every message carries it and goes to
    the partition Kafka's default partitioner picks (murmur2, as the Java client).

    Parameters
    ----------
    bootstrap
        ``host:port`` of a broker.
    topic
        Existing topic.
    lines
        Lines without their newline (one is added between lines of a message).
    per_message
        Lines per message, >= 1.
    key
        Message key, or None.
    linger_ms, max_batch_bytes
        Producer linger time and the size of one record batch in bytes.
    max_in_flight
        Batches sent but not yet acknowledged before waiting.
    connection
        Extra aiokafka keyword arguments (security), e.g. from :func:`connection_kwargs`.

    Returns
    -------
    int
        Messages produced and acknowledged.
    """
    if per_message < 1:
        raise ValueError(f"per_message: expected an integer >= 1, got {per_message}")
    key_bytes = key.encode() if isinstance(key, str) else key
    kwargs = {"bootstrap_servers": bootstrap, **(connection or {})}
    producer = AIOKafkaProducer(linger_ms=linger_ms, max_batch_size=max_batch_bytes,
                                max_request_size=max(max_batch_bytes, 1_048_576) + 65_536, **kwargs)
    await producer.start()
    try:
        partitions = sorted(await producer.partitions_for(topic))
        fixed = None if key_bytes is None else DefaultPartitioner()(key_bytes, partitions, partitions)
        turn = 0
        in_flight: list[asyncio.Future[Any]] = []
        n_messages = 0

        async def send(batch: Any) -> None:
            nonlocal turn
            partition = fixed if fixed is not None else partitions[turn % len(partitions)]
            turn += 1
            in_flight.append(await producer.send_batch(batch, topic, partition=partition))
            if len(in_flight) >= max_in_flight:
                await asyncio.gather(*in_flight)
                in_flight.clear()

        batch = producer.create_batch()
        chunk: list[bytes] = []
        for line in _chain_lines(lines):
            chunk.append(line)
            if len(chunk) < per_message:
                continue
            value, chunk = b"\n".join(chunk), []
            if batch.append(key=key_bytes, value=value, timestamp=None) is None:
                if batch.record_count() == 0:
                    raise ValueError(f"a message of {len(value)} bytes does not fit a batch of "
                                     f"{max_batch_bytes} bytes")
                await send(batch)
                batch = producer.create_batch()
                batch.append(key=key_bytes, value=value, timestamp=None)
            n_messages += 1
        if chunk:
            if batch.append(key=key_bytes, value=b"\n".join(chunk), timestamp=None) is None:
                await send(batch)
                batch = producer.create_batch()
                batch.append(key=key_bytes, value=b"\n".join(chunk), timestamp=None)
            n_messages += 1
        if batch.record_count():
            await send(batch)
        await asyncio.gather(*in_flight)
        return n_messages
    finally:
        await producer.stop()


def _chain_lines(lines: Iterable[bytes | str]) -> Iterable[bytes]:
    for line in lines:
        yield line.encode() if isinstance(line, str) else line
