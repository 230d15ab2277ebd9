"""The Kafka source against a real Kafka-protocol broker (Tansu, started by the fixtures).

Tansu keeps everything in memory: a restarted broker has lost its records and committed offsets, so
the restart test checks reconnection and consumption of what is produced afterwards.
"""

from __future__ import annotations

import asyncio
import random
import socket
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner

from engine.batch import KeyTable, Rejections
from engine.config import EventsConfig
from engine.errors import ConfigError
from engine.events import EventDecoder
from engine.io.broker import (
    TANSU_ENV_VAR,
    BrokerError,
    EmbeddedBroker,
    create_topics,
    find_tansu,
    free_port,
    wait_for_kafka,
)
from engine.io.decoding import decode_messages
from engine.io.kafka import DEAD_LETTER_HEADERS, FetchResult, KafkaSource, SourceError, join_ndjson
from engine.io.kafka_config import KafkaSourceConfig, connection_kwargs
from engine.io.kafka_produce import produce_lines

pytestmark = pytest.mark.integration

SEED = 20_251_127


def source_config(bootstrap: str, topic: str, **overrides: Any) -> KafkaSourceConfig:
    """Timeouts scaled for tests: Tansu's group join waits session_timeout_ms / 2."""
    base: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "topics": [topic],
        "group_id": f"g-{uuid.uuid4().hex[:8]}",
        "client_id": "sloburn-test",
        "session_timeout_ms": 2000,
        "heartbeat_interval_ms": 500,
        "request_timeout_ms": 5000,
        "fetch_max_wait_ms": 100,
        "backoff_initial_ms": 50,
        "backoff_max_ms": 400,
        "health_interval_ms": 200,
        "health_timeout_ms": 1000,
    }
    return KafkaSourceConfig.from_mapping({**base, **overrides})


async def fetch_until(
    source: KafkaSource, done: Callable[[list[FetchResult]], bool], deadline_s: float = 15.0
) -> list[FetchResult]:
    results: list[FetchResult] = []
    end = time.monotonic() + deadline_s
    while not done(results):
        assert time.monotonic() < end, f"gave up after {deadline_s} s; state {source.state}"
        results.append(await source.fetch(timeout_ms=200))
    return results


def n_messages(results: list[FetchResult]) -> int:
    return sum(r.n_messages for r in results)


def records(results: list[FetchResult]) -> list[tuple[int, int, bytes]]:
    """(partition, offset, value) of every message, in fetch order."""
    return [(p.partition, int(o), v) for r in results for p in r.partitions
            for o, v in zip(p.offsets, p.values, strict=True)]


def lines(n: int, seed: int = SEED) -> list[bytes]:
    rng = random.Random(seed)
    return [msgspec.json.encode({"i": i, "status": rng.choice([200, 200, 200, 503]),
                                 "ts": 1_700_000_000_000 + i}) for i in range(n)]


# ------------------------------------------------------------------------------------------ broker


def test_broker_starts_answers_and_stops(tmp_path: Path) -> None:
    log_path = tmp_path / "tansu.log"
    broker = EmbeddedBroker(log_path=log_path)
    with broker:
        assert broker.running
        assert broker.start_duration_s is not None and broker.start_duration_s < 5.0
        print(f"tansu start: {broker.start_duration_s * 1000:.1f} ms")
        waited_s = asyncio.run(wait_for_kafka(broker.bootstrap, timeout_s=2.0))
        assert waited_s < 2.0
        assert broker.create_topic("t-one", partitions=2) == "t-one"
        with pytest.raises(BrokerError, match="'t-one': error code 36"):
            broker.create_topic("t-one", partitions=2, exist_ok=False)
        pid, port = broker.pid, broker.port
    assert not broker.running
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1.0)
    assert pid is not None
    assert log_path.read_text().count("listening on: tcp://127.0.0.1:") == 1
    # A restart keeps the port and creates the remembered topics again (memory storage lost them).
    broker.start()
    try:
        assert broker.port == port and broker.pid != pid
        assert broker.topics == {"t-one": 2}
        with pytest.raises(BrokerError, match="already exists"):
            broker.create_topic("t-one", partitions=2, exist_ok=False)
    finally:
        broker.stop()
    with pytest.raises(BrokerError, match="expected at least 1 partition, got 0"):
        asyncio.run(create_topics(f"127.0.0.1:{port}", {"x": 0}))


def test_missing_tansu_binary_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(TANSU_ENV_VAR, str(tmp_path / "no-such-tansu"))
    with pytest.raises(BrokerError, match=r"SLOBURN_TANSU_BIN: expected an executable file, got '.*no-such"):
        find_tansu()


def test_broker_that_exits_at_start_reports_its_log(tmp_path: Path) -> None:
    fake = tmp_path / "tansu"
    fake.write_text("#!/bin/sh\necho 'bad flag' >&2\nexit 3\n")
    fake.chmod(0o755)
    broker = EmbeddedBroker(free_port(), binary=fake, log_path=tmp_path / "b.log", start_timeout_s=2.0)
    with pytest.raises(BrokerError, match=r"(?s)exited with code 3 .*bad flag"):
        broker.start()
    assert not broker.running


# ------------------------------------------------------------------------------------------ source


async def test_every_message_exactly_once_with_offsets(kafka_broker: str, kafka_topic: str) -> None:
    n = 3_000
    sent = lines(n)
    t0_ms = int(time.time() * 1000)
    assert await produce_lines(kafka_broker, kafka_topic, sent, max_batch_bytes=16_384) == n
    t1_ms = int(time.time() * 1000)
    async with KafkaSource(source_config(kafka_broker, kafka_topic, max_records=256)) as source:
        results = await fetch_until(source, lambda rs: n_messages(rs) >= n)
        assert all(r.n_messages <= 256 for r in results)
        assert len([r for r in results if r.n_messages]) >= n // 256
        got = records(results)
        assert sorted(v for _, _, v in got) == sorted(sent)  # each message once
        per_partition: dict[int, list[int]] = {}
        for partition, offset, _ in got:
            per_partition.setdefault(partition, []).append(offset)
        assert set(per_partition) == {0, 1, 2}
        for partition, offsets in per_partition.items():
            assert offsets == list(range(len(offsets))), f"partition {partition}: gaps or disorder"
        assert source.positions() == {(kafka_topic, p): len(o) for p, o in per_partition.items()}
        stamps = np.concatenate([p.timestamps_ms for r in results for p in r.partitions])
        assert stamps.min() >= t0_ms - 1_000 and stamps.max() <= t1_ms + 1_000
        # Caught up: the next fetch brings nothing and lag is 0 everywhere.
        tail = await source.fetch(timeout_ms=300)
        assert tail.n_messages == 0
        assert tail.lag == {(kafka_topic, p): 0 for p in per_partition}
        assert source.state.status == "connected"


async def test_batched_ndjson_messages_and_keyed_partition(
    kafka_broker: str, kafka_topic: str
) -> None:
    n, per_message = 1_000, 100
    sent = lines(n, seed=SEED + 1)
    produced = await produce_lines(kafka_broker, kafka_topic, sent, per_message=per_message, key="checkout")
    assert produced == n // per_message
    expected_partition = DefaultPartitioner()(b"checkout", [0, 1, 2], [0, 1, 2])
    async with KafkaSource(source_config(kafka_broker, kafka_topic)) as source:
        results = await fetch_until(source, lambda rs: n_messages(rs) >= produced)
    assert {p for p, _, _ in records(results)} == {expected_partition}
    joined = join_ndjson([v for _, _, v in records(results)])
    decoded = msgspec.json.Decoder().decode_lines(joined)
    assert [d["i"] for d in decoded] == list(range(n))


async def test_null_and_empty_messages_are_counted_not_lost(
    kafka_broker: str, kafka_topic_factory: Callable[..., str]
) -> None:
    topic = kafka_topic_factory(1)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_broker)
    await producer.start()
    try:
        for value in (b'{"i": 0}', None, b"", b'{"i": 1}', None):
            await producer.send_and_wait(topic, value, key=b"k", partition=0)
    finally:
        await producer.stop()
    async with KafkaSource(source_config(kafka_broker, topic)) as source:
        results = await fetch_until(source, lambda rs: sum(sum(r.rejections.values()) for r in rs)
                                    + n_messages(rs) >= 5)
    got = records(results)
    assert got == [(0, 0, b'{"i": 0}'), (0, 3, b'{"i": 1}')]
    total = Rejections()
    for r in results:
        total.update(r.rejections)
    assert total == {"null_message": 2, "empty_message": 1}
    assert [p.next_offset for r in results for p in r.partitions][-1] == 5


async def test_fetched_values_decode_in_one_call(
    kafka_broker: str, kafka_topic_factory: Callable[..., str]
) -> None:
    """What the daemon's decode workers get: the values of a fetch, decoded in one call."""
    topic = kafka_topic_factory(1)
    t1, t2 = 1_700_000_000_000_000_001, 1_700_000_000_000_000_002  # nanoseconds
    await produce_lines(kafka_broker, topic, [b'{"ts": %d, "service": "a", "status": 200}' % t1,
                                              b"not json",
                                              b'{"ts": %d, "service": "b", "status": 503}' % t2])
    keys = KeyTable()
    async with KafkaSource(source_config(kafka_broker, topic)) as source:
        results = await fetch_until(source, lambda rs: n_messages(rs) >= 3)
    values = FetchResult([p for r in results for p in r.partitions]).values()
    decoded = decode_messages(EventDecoder(EventsConfig(), keys), b"\n".join(values),
                              np.array([len(v) for v in values], np.int64), fmt="ndjson",
                              max_message_bytes=1 << 20, dead_letters=False)
    batch = decoded.batch
    assert batch.ts_ns.tolist() == [t1, t2] and batch.status.tolist() == [200, 503]
    assert [keys.keys[k].service for k in batch.key] == ["a", "b"]
    assert decoded.rejections == {"malformed_json": 1}


async def test_commit_then_same_group_resumes_from_committed(kafka_broker: str, kafka_topic: str) -> None:
    n = 900
    await produce_lines(kafka_broker, kafka_topic, lines(n, seed=SEED + 2), max_batch_bytes=4_096)
    cfg = source_config(kafka_broker, kafka_topic)
    async with KafkaSource(cfg) as first:
        got = records(await fetch_until(first, lambda rs: n_messages(rs) >= n))
        counts = Counter(p for p, _, _ in got)
        commit = {(kafka_topic, p): c // 3 for p, c in counts.items()}
        assert await first.commit(commit) == commit
        with pytest.raises(ValueError, match=r"expected an offset >= 0, got -1"):
            await first.commit({(kafka_topic, 0): -1})
    async with KafkaSource(cfg) as second:
        expected = n - sum(commit.values())
        again = records(await fetch_until(second, lambda rs: n_messages(rs) >= expected))
    assert len(again) == expected
    first_offsets: dict[int, int] = {}
    for partition, offset, _ in again:
        first_offsets.setdefault(partition, offset)
    assert first_offsets == {p: off for (_, p), off in commit.items()}
    assert {v for _, _, v in again} == {v for p, o, v in got if o >= commit[(kafka_topic, p)]}


async def test_seek_to_explicit_offsets(kafka_broker: str, kafka_topic: str) -> None:
    await produce_lines(kafka_broker, kafka_topic, lines(300, seed=SEED + 3), max_batch_bytes=2_048)
    source = KafkaSource(source_config(kafka_broker, kafka_topic))
    # Before the group assigns partitions: applied at assignment (a checkpoint restore).
    await source.seek({(kafka_topic, 0): 5, (kafka_topic, 1): 7})
    await source.start()
    try:
        results = await fetch_until(source, lambda rs: {p for p, _, _ in records(rs)} == {0, 1, 2})
        firsts: dict[int, int] = {}
        for partition, offset, _ in records(results):
            firsts.setdefault(partition, offset)
        assert firsts == {0: 5, 1: 7, 2: 0}
        await fetch_until(source, lambda rs: bool(rs) and rs[-1].n_messages == 0)
        # After assignment: takes effect at once and re-reads.
        await source.seek({(kafka_topic, 2): 3})
        assert source.positions()[(kafka_topic, 2)] == 3
        again = records(await fetch_until(source, lambda rs: n_messages(rs) > 0))
        assert {p for p, _, _ in again} == {2} and again[0][1] == 3
    finally:
        await source.stop()


async def test_lag_is_end_offset_minus_position(
    kafka_broker: str, kafka_topic_factory: Callable[..., str]
) -> None:
    topic = kafka_topic_factory(1)
    n = 500
    await produce_lines(kafka_broker, topic, lines(n, seed=SEED + 4))
    async with KafkaSource(source_config(kafka_broker, topic, max_records=120)) as source:
        results = await fetch_until(source, lambda rs: n_messages(rs) > 0)
        consumed = n_messages(results)
        assert results[-1].lag == {(topic, 0): n - consumed}
        assert source.lag() == {(topic, 0): n - consumed}
        results = await fetch_until(source, lambda rs: n_messages(rs) >= n - consumed)
        assert source.lag() == {(topic, 0): 0}
        await produce_lines(kafka_broker, topic, lines(40, seed=SEED + 5))
        await fetch_until(source, lambda rs: n_messages(rs) >= 40)
        assert source.positions() == {(topic, 0): n + 40}


async def test_dead_letter_carries_reason_and_source(
    kafka_broker: str, kafka_topic_factory: Callable[..., str]
) -> None:
    topic, dlq = kafka_topic_factory(1), kafka_topic_factory(1, "-dlq")
    async with KafkaSource(source_config(kafka_broker, topic)) as plain:
        assert await plain.dead_letter(b"x", "malformed_json", (topic, 0, 1)) is False
    async with KafkaSource(source_config(kafka_broker, topic, dead_letter_topic=dlq)) as source:
        assert await source.dead_letter(b"{not json", "malformed_json", (topic, 2, 41)) is True
        assert await source.dead_letter(b"\x00\x01", "bad_msgpack", (topic, 0, 7)) is True
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_broker, auto_offset_reset="earliest")
    await consumer.start()
    try:
        consumer.assign([TopicPartition(dlq, 0)])
        letters: list[Any] = []
        end = time.monotonic() + 10
        while len(letters) < 2 and time.monotonic() < end:
            for recs in (await consumer.getmany(timeout_ms=200)).values():
                letters.extend(recs)
    finally:
        await consumer.stop()
    assert [m.value for m in letters] == [b"{not json", b"\x00\x01"]
    assert [dict(m.headers) for m in letters] == [
        dict(zip(DEAD_LETTER_HEADERS, [b"malformed_json", topic.encode(), b"2", b"41"], strict=True)),
        dict(zip(DEAD_LETTER_HEADERS, [b"bad_msgpack", topic.encode(), b"0", b"7"], strict=True)),
    ]


async def test_pause_stops_delivery_and_resume_continues(
    kafka_broker: str, kafka_topic_factory: Callable[..., str]
) -> None:
    topic = kafka_topic_factory(1)
    n = 500
    await produce_lines(kafka_broker, topic, lines(n, seed=SEED + 6))
    async with KafkaSource(source_config(kafka_broker, topic, max_records=100)) as source:
        before = await fetch_until(source, lambda rs: n_messages(rs) > 0)
        source.pause()
        assert source.paused
        for _ in range(3):
            assert (await source.fetch(timeout_ms=150)).n_messages == 0
        source.resume()
        after = await fetch_until(source, lambda rs: n_messages(rs) + n_messages(before) >= n)
    offsets = [o for _, o, _ in records(before) + records(after)]
    assert offsets == list(range(n))


# ------------------------------------------------------------------------------------------ outages


async def test_broker_restart_mid_consumption_recovers_without_restarting_source(tmp_path: Path) -> None:
    broker = EmbeddedBroker(log_path=tmp_path / "tansu.log")
    await broker.astart()
    try:
        topic = await broker.acreate_topic("restart-events", 1)
        await produce_lines(broker.bootstrap, topic, [b"before-%d" % i for i in range(20)])
        async with KafkaSource(source_config(broker.bootstrap, topic)) as source:
            got = await fetch_until(source, lambda rs: n_messages(rs) >= 20)
            assert [v for _, _, v in records(got)] == [b"before-%d" % i for i in range(20)]
            assert source.state.status == "connected"
            await broker.astop()
            await fetch_until(source, lambda rs: source.state.status == "connecting", deadline_s=10)
            down = source.state
            assert down.error and down.failures >= 1
            await broker.astart()  # same port; memory storage: topic re-created empty
            await produce_lines(broker.bootstrap, topic, [b"after-%d" % i for i in range(3)])
            after = await fetch_until(source, lambda rs: n_messages(rs) >= 3, deadline_s=20)
            assert [v for _, _, v in records(after)] == [b"after-0", b"after-1", b"after-2"]
            assert source.state.status == "connected" and source.state.error is None
    finally:
        await broker.astop()


async def test_source_started_before_the_broker_connects_later(tmp_path: Path) -> None:
    broker = EmbeddedBroker(free_port(), log_path=tmp_path / "tansu.log")
    cfg = source_config(broker.bootstrap, "late-events")
    async with KafkaSource(cfg) as source:
        assert source.state.status == "connecting"
        assert source.state.error is not None and "KafkaConnectionError" in source.state.error
        results = [await source.fetch(timeout_ms=150) for _ in range(4)]
        assert all(r.n_messages == 0 for r in results)
        assert source.state.failures >= 2
        await broker.astart()
        try:
            await broker.acreate_topic("late-events", 1)
            await produce_lines(broker.bootstrap, "late-events", [b"a", b"b"])
            got = await fetch_until(source, lambda rs: n_messages(rs) >= 2, deadline_s=20)
            assert [v for _, _, v in records(got)] == [b"a", b"b"]
            assert source.state.status == "connected"
        finally:
            await broker.astop()


async def test_fetch_before_start_is_an_error() -> None:
    source = KafkaSource(source_config("127.0.0.1:9", "t"))
    with pytest.raises(SourceError, match=r"fetch\(\) called before start\(\)"):
        await source.fetch()


# ------------------------------------------------------------------------------------------ config


def test_config_problems_name_the_field() -> None:
    with pytest.raises(ConfigError, match=r"\$\.source\.kafka\.topics: expected at least one"):
        KafkaSourceConfig.from_mapping({"bootstrap_servers": "h:1", "topics": []})
    with pytest.raises(ConfigError, match=r"\$\.source\.kafka: object contains unknown field `topic`"):
        KafkaSourceConfig.from_mapping({"bootstrap_servers": "h:1", "topic": "x"})
    with pytest.raises(ConfigError, match=r"\$\.source\.kafka\.max_records: expected `int`, got `str`"):
        KafkaSourceConfig.from_mapping({"bootstrap_servers": "h:1", "topics": ["x"], "max_records": "many"})
    with pytest.raises(ConfigError, match=r"heartbeat_interval_ms: expected less than session_timeout_ms"):
        KafkaSourceConfig.from_mapping({"bootstrap_servers": "h:1", "topics": ["x"],
                                        "session_timeout_ms": 1000, "heartbeat_interval_ms": 1000})
    with pytest.raises(ConfigError, match=r"security: expected username_env and password_env"):
        KafkaSourceConfig.from_mapping({"bootstrap_servers": "h:1", "topics": ["x"],
                                        "security": {"protocol": "SASL_SSL"}})


def test_credentials_come_from_env_and_stay_out_of_messages() -> None:
    cfg = KafkaSourceConfig.from_mapping({
        "bootstrap_servers": ["h1:9093", "h2:9093"], "topics": ["x"],
        "security": {"protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-512",
                     "username_env": "KAFKA_USER", "password_env": "KAFKA_PASSWORD"},
    })
    secret = "pa55-" + uuid.uuid4().hex
    kwargs = connection_kwargs(cfg, {"KAFKA_USER": "svc", "KAFKA_PASSWORD": secret})
    assert kwargs["sasl_plain_username"] == "svc" and kwargs["sasl_plain_password"] == secret
    assert kwargs["sasl_mechanism"] == "SCRAM-SHA-512" and kwargs["security_protocol"] == "SASL_PLAINTEXT"
    assert secret not in repr(cfg)
    with pytest.raises(ConfigError, match=r"password_env: expected environment variable 'KAFKA_PASSWORD'"):
        connection_kwargs(cfg, {"KAFKA_USER": "svc"})
