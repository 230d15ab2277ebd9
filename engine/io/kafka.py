"""Kafka source of the daemon: an aiokafka consumer with manual commits, health state and dead letters.

The daemon owns offsets. Auto-commit is off: :meth:`KafkaSource.commit` is called only after a
checkpoint covering the offsets is on disk, and :meth:`KafkaSource.seek` restores the offsets of a
checkpoint at start (applied when the group assigns the partition). :meth:`KafkaSource.fetch` hands
back message values as ``bytes`` per partition; decoding is the caller's job
(:func:`engine.io.decoding.decode_messages`, in the daemon's decode workers).

A broker that cannot be reached is not an error: the source keeps trying with capped exponential
backoff and reports ``connecting`` with the last error in :attr:`KafkaSource.state`, for
``/healthz`` and ``/readyz``. Errors that retrying cannot cure raise :class:`SourceError`.
Credentials come from environment variables named in the config; their values are never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, ClassVar, Literal

import msgspec
import numpy as np
import numpy.typing as npt
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError, KafkaTimeoutError

from engine.batch import Rejections
from engine.errors import EngineError
from engine.io.kafka_config import KafkaSourceConfig, connection_kwargs

log = logging.getLogger(__name__)

Partition = tuple[str, int]
"""``(topic, partition)``; aiokafka's ``TopicPartition`` is such a tuple and compares equal to one."""

DEAD_LETTER_HEADERS = ("sloburn-reason", "sloburn-source-topic", "sloburn-source-partition",
                       "sloburn-source-offset")
"""Header keys of a dead letter: why it was rejected and where it was read."""


class SourceError(EngineError):
    """The Kafka source failed in a way that retrying will not cure (bad config, authorization...)."""


class RetriableSourceError(SourceError):
    """A Kafka operation failed for now (broker unreachable, timeout, rebalance in progress)."""

    retriable: ClassVar[bool] = True


def _is_retriable(e: BaseException) -> bool:
    # aiokafka marks connection errors retriable but not its own request timeouts.
    return isinstance(e, KafkaTimeoutError | TimeoutError | OSError) or bool(getattr(e, "retriable", False))


def _describe(e: BaseException) -> str:
    text = str(e)  # aiokafka's messages start with the class name already
    return text if text.startswith(type(e).__name__) else f"{type(e).__name__}: {text}"


def _wrap(e: BaseException, what: str) -> SourceError:
    cls = RetriableSourceError if _is_retriable(e) else SourceError
    return cls(f"{what}: {_describe(e)}")


# ------------------------------------------------------------------------------------------ results


class SourceState(msgspec.Struct, frozen=True, kw_only=True):
    """Connection state for ``/healthz`` and ``/readyz``.

    ``status`` is ``stopped``, ``connecting`` (``error`` holds the last failure, ``failures`` counts
    them since the last success) or ``connected``. ``since_s`` is the clock time of the last change.
    """

    status: Literal["stopped", "connecting", "connected"]
    error: str | None = None
    failures: int = 0
    since_s: float = 0.0


_value = attrgetter("value")
_offset = attrgetter("offset")
_timestamp = attrgetter("timestamp")


class PartitionFetch:
    """Messages fetched from one partition, in offset order.

    ``values`` holds the non-empty message values; ``offsets`` and ``timestamps_ms`` (int64, producer
    or log-append time in ms) are aligned with it, built on first use (only dead letters and
    diagnostics need them). ``next_offset`` is the offset after the last message consumed,
    counting rejected ones: what to commit once these messages are checkpointed.
    """

    __slots__ = ("_offsets", "_records", "_stamps", "next_offset", "partition", "topic", "values")

    def __init__(self, topic: str, partition: int, values: list[bytes], records: Sequence[Any],
                 next_offset: int) -> None:
        self.topic = topic
        self.partition = partition
        self.values = values
        self.next_offset = next_offset
        self._records = records  # aiokafka ConsumerRecords, aligned with values
        self._offsets: npt.NDArray[np.int64] | None = None
        self._stamps: npt.NDArray[np.int64] | None = None

    @property
    def offsets(self) -> npt.NDArray[np.int64]:
        if self._offsets is None:
            self._offsets = np.fromiter(map(_offset, self._records), np.int64, len(self._records))
        return self._offsets

    @property
    def timestamps_ms(self) -> npt.NDArray[np.int64]:
        if self._stamps is None:
            self._stamps = np.fromiter(map(_timestamp, self._records), np.int64, len(self._records))
        return self._stamps

    def __repr__(self) -> str:
        return (f"PartitionFetch({self.topic!r}, {self.partition}, {len(self.values)} messages, "
                f"next_offset={self.next_offset})")


@dataclass(frozen=True, slots=True)
class FetchResult:
    """What one :meth:`KafkaSource.fetch` returned.

    ``rejections`` counts messages that carried no value (``null_message``, ``empty_message``);
    ``positions`` and ``lag`` are per partition after this fetch (lag in messages: end offset minus
    position; negative when the position lies past the end of a truncated log).
    """

    partitions: list[PartitionFetch] = field(default_factory=list)
    positions: dict[Partition, int] = field(default_factory=dict)
    lag: dict[Partition, int] = field(default_factory=dict)
    rejections: Rejections = field(default_factory=Rejections)

    @property
    def n_messages(self) -> int:
        """Messages with a value (rejected ones excluded)."""
        return sum(len(p.values) for p in self.partitions)

    def values(self) -> list[bytes]:
        """All message values, partition after partition."""
        if len(self.partitions) == 1:
            return self.partitions[0].values
        return [v for p in self.partitions for v in p.values]



def join_ndjson(values: list[bytes]) -> bytes:
    """Concatenate message values into one NDJSON buffer ending with a newline.

    Values may hold one or many lines, with or without a trailing newline: the blank lines this can
    leave are skipped by NDJSON decoders (``msgspec.json.Decoder.decode_lines``).
    """
    if not values:
        return b""
    joined = b"\n".join(values)
    return joined if joined.endswith(b"\n") else joined + b"\n"


# ------------------------------------------------------------------------------------------ source


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, source: KafkaSource, consumer: AIOKafkaConsumer) -> None:
        self._source = source
        self._consumer = consumer

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        self._source._on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        await self._source._on_assigned(self._consumer, set(assigned))


class KafkaSource:
    """Consumes raw message values from Kafka for the daemon.

    Parameters
    ----------
    config
        Where and how to consume.
    clock
        Monotonic clock in seconds (default ``time.monotonic``), for backoff and health probes.
    environ
        Where credentials are read (default ``os.environ``).

    Notes
    -----
    One task drives the source (``fetch``, ``commit``, ``seek``, ``pause``); ``state``,
    ``positions()`` and ``lag()`` may be read from anywhere on the loop.
    """

    def __init__(
        self,
        config: KafkaSourceConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config
        self._clock = clock
        self._environ = environ
        self._kwargs: dict[str, Any] | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._state = SourceState(status="stopped", since_s=clock())
        self._delay_ms = config.backoff_initial_ms
        self._next_attempt_s = 0.0
        self._next_probe_s = 0.0
        self._positions: dict[TopicPartition, int] = {}
        self._lag: dict[TopicPartition, int] = {}
        self._pending_seek: dict[TopicPartition, int] = {}
        self._seen: set[TopicPartition] = set()
        self._paused = False

    # ------------------------------------------------------------------------------ state

    @property
    def state(self) -> SourceState:
        return self._state

    @property
    def paused(self) -> bool:
        return self._paused

    def positions(self) -> dict[Partition, int]:
        """Next offset to consume per assigned partition (last message handed out + 1, or seek target)."""
        return {(tp.topic, tp.partition): off for tp, off in self._positions.items()}

    def lag(self) -> dict[Partition, int]:
        """Messages between the position and the end of each partition, as of the last fetch."""
        return {(tp.topic, tp.partition): n for tp, n in self._lag.items()}

    def assignment(self) -> frozenset[Partition]:
        """Partitions the group currently assigns to this source."""
        if self._consumer is None:
            return frozenset()
        return frozenset((tp.topic, tp.partition) for tp in self._consumer.assignment())

    def _set_state(self, status: Literal["stopped", "connecting", "connected"], error: str | None = None,
                   failures: int = 0) -> None:
        old = self._state
        if status != old.status:
            log.info("kafka source %s%s", status, f": {error}" if error else "")
        elif error == old.error and failures == old.failures:
            return
        since_s = self._clock() if status != old.status else old.since_s
        self._state = SourceState(status=status, error=error, failures=failures, since_s=since_s)

    def _failed(self, e: BaseException) -> float:
        """Record a retriable failure; return the backoff delay in seconds."""
        delay_s = self._delay_ms / 1000
        self._delay_ms = min(self._delay_ms * 2, self.config.backoff_max_ms)
        self._set_state("connecting", _describe(e), self._state.failures + 1)
        return delay_s

    def _succeeded(self) -> None:
        self._delay_ms = self.config.backoff_initial_ms
        self._set_state("connected")
        self._next_probe_s = self._clock() + self.config.health_interval_ms / 1000

    # ------------------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Read credentials and try to connect once; a failure leaves the source ``connecting``.

        Raises
        ------
        ConfigError
            When a credential variable is missing.
        SourceError
            When the broker refuses for a reason retrying will not cure.
        """
        if self._state.status != "stopped":
            return
        self._kwargs = connection_kwargs(self.config, self._environ)
        self._set_state("connecting")
        await self._connect()

    async def stop(self) -> None:
        """Leave the group and close the connections. Uncommitted positions are not committed."""
        consumer, self._consumer = self._consumer, None
        producer, self._producer = self._producer, None
        if consumer is not None:
            await _close_consumer(consumer)
        if producer is not None:
            await producer.stop()
        self._positions.clear()
        self._lag.clear()
        self._set_state("stopped")

    async def __aenter__(self) -> KafkaSource:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _connect(self) -> bool:
        assert self._kwargs is not None
        cfg = self.config
        consumer = AIOKafkaConsumer(
            group_id=cfg.group_id,
            enable_auto_commit=False,
            auto_offset_reset=cfg.reset,
            max_poll_records=cfg.max_records,
            fetch_max_bytes=cfg.fetch_max_bytes,
            max_partition_fetch_bytes=cfg.max_partition_fetch_bytes,
            fetch_min_bytes=cfg.fetch_min_bytes,
            fetch_max_wait_ms=cfg.fetch_max_wait_ms,
            session_timeout_ms=cfg.session_timeout_ms,
            heartbeat_interval_ms=cfg.heartbeat_interval_ms,
            isolation_level=cfg.isolation_level,
            check_crcs=cfg.check_crcs,
            **self._kwargs,
        )
        consumer.subscribe(topics=list(cfg.topics), listener=_Rebalance(self, consumer))
        try:
            await consumer.start()
        except Exception as e:  # aiokafka lets non-Kafka errors out of a failed SASL exchange
            with contextlib.suppress(KafkaError, OSError, TimeoutError):
                await _close_consumer(consumer)
            if not _is_retriable(e):
                self._set_state("stopped", _describe(e))
                hint = ""
                if self.config.security.protocol.startswith("SASL"):
                    hint = f" (SASL {self.config.security.sasl_mechanism} authentication refused?)"
                raise _wrap(e, f"kafka source start{hint}") from e
            self._next_attempt_s = self._clock() + self._failed(e)
            return False
        self._consumer = consumer
        if self._paused:
            consumer.pause(*consumer.assignment())
        self._succeeded()
        return True

    # ------------------------------------------------------------------------------ consuming

    async def fetch(self, timeout_ms: int = 1000) -> FetchResult:
        """Wait up to ``timeout_ms`` for messages and return them with positions and lag.

        While the broker cannot be reached this returns an empty result after at most about
        ``timeout_ms`` (a first connection attempt may take up to ``request_timeout_ms``).

        Raises
        ------
        SourceError
            On errors that retrying will not cure (authorization, unknown configuration...).
        """
        if self._state.status == "stopped":
            raise SourceError("kafka source: fetch() called before start() or after stop()")
        if self._consumer is None:
            wait_s = max(0.0, self._next_attempt_s - self._clock())
            if wait_s >= timeout_ms / 1000:
                await asyncio.sleep(timeout_ms / 1000)
                return FetchResult()
            await asyncio.sleep(wait_s)
            if not await self._connect():
                return FetchResult()
        consumer = self._consumer
        assert consumer is not None
        try:
            data = await consumer.getmany(timeout_ms=timeout_ms, max_records=self.config.max_records)
        except KafkaError as e:
            if not _is_retriable(e):
                raise _wrap(e, "kafka fetch") from e
            await asyncio.sleep(min(self._failed(e), timeout_ms / 1000))
            return FetchResult()
        if data:
            # Taking these records woke aiokafka's fetcher: let it send the next fetch request now,
            # so that the broker prepares it while the caller decodes and evaluates these.
            await asyncio.sleep(0)
        result = await self._collect(consumer, data)
        if result.partitions or result.rejections:
            self._succeeded()
        elif self._clock() >= self._next_probe_s:
            await self._probe(consumer)
        return result

    async def _collect(
        self, consumer: AIOKafkaConsumer, data: dict[TopicPartition, list[Any]]
    ) -> FetchResult:
        parts: list[PartitionFetch] = []
        rejections = Rejections()
        for tp, records in data.items():
            if not records:
                continue
            values = list(map(_value, records))
            kept: Sequence[Any] = records
            n_null, n_empty = values.count(None), values.count(b"")
            if n_null or n_empty:
                kept = [r for r, v in zip(records, values, strict=True) if v]
                values = [v for v in values if v]
                rejections.add("null_message", n_null)
                rejections.add("empty_message", n_empty)
            next_offset = records[-1].offset + 1
            self._positions[tp] = next_offset
            parts.append(PartitionFetch(tp.topic, tp.partition, values, kept, next_offset))
        end = consumer.last_stable_offset if self.config.isolation_level == "read_committed" else None
        for tp in consumer.assignment():
            hw = end(tp) if end is not None else consumer.highwater(tp)
            if hw is None or hw < 0:
                continue  # no fetch response for this partition yet
            if tp not in self._positions:
                # A fetch answered for this partition, so its position is valid; never block on it.
                with contextlib.suppress(TimeoutError, KafkaError):
                    self._positions[tp] = await asyncio.wait_for(consumer.position(tp), 0.05)
            if tp in self._positions:
                self._lag[tp] = hw - self._positions[tp]
        return FetchResult(parts, self.positions(), self.lag(), rejections)

    async def _probe(self, consumer: AIOKafkaConsumer) -> None:
        try:
            await asyncio.wait_for(consumer.topics(), self.config.health_timeout_ms / 1000)
        except (KafkaError, OSError, TimeoutError) as e:
            self._next_probe_s = self._clock() + self._failed(e)
        else:
            self._succeeded()

    # ------------------------------------------------------------------------------ offsets

    async def commit(self, offsets: Mapping[Partition, int]) -> dict[Partition, int]:
        """Commit ``offsets`` (next offset to read per partition) for the group.

        Partitions no longer assigned to this source are skipped: their new owner commits them.

        Returns
        -------
        dict
            The offsets actually committed.

        Raises
        ------
        RetriableSourceError
            When the broker cannot be reached or the group is rebalancing.
        SourceError
            When the broker refuses the commit for good.
        """
        _check_offsets(offsets)
        consumer = self._consumer
        if consumer is None:
            raise RetriableSourceError(f"kafka commit: not connected ({self._state.error})")
        assigned = consumer.assignment()
        todo = {TopicPartition(t, p): off for (t, p), off in offsets.items() if (t, p) in assigned}
        if todo:
            try:
                await consumer.commit(todo)
            except KafkaError as e:
                raise _wrap(e, "kafka commit") from e
        return {(tp.topic, tp.partition): off for tp, off in todo.items()}

    async def seek(self, offsets: Mapping[Partition, int]) -> None:
        """Continue each partition at the given offset (a checkpoint's positions).

        Partitions not assigned yet are sought when the group assigns them to this source.
        """
        _check_offsets(offsets)
        consumer = self._consumer
        assigned = consumer.assignment() if consumer is not None else frozenset()
        for (topic, partition), off in offsets.items():
            tp = TopicPartition(topic, partition)
            if consumer is not None and tp in assigned:
                consumer.seek(tp, off)
                self._positions[tp] = off
                self._lag.pop(tp, None)
            else:
                self._pending_seek[tp] = off

    def _on_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        for tp in revoked:
            self._positions.pop(tp, None)
            self._lag.pop(tp, None)

    async def _on_assigned(self, consumer: AIOKafkaConsumer, assigned: set[TopicPartition]) -> None:
        for tp in assigned & self._pending_seek.keys():
            off = self._pending_seek.pop(tp)
            consumer.seek(tp, off)
            self._positions[tp] = off
            self._seen.add(tp)
        fresh = [tp for tp in assigned if tp not in self._seen]
        if fresh and self.config.start != "committed":
            ask = consumer.beginning_offsets if self.config.start == "earliest" else consumer.end_offsets
            try:
                found = await ask(fresh)
            except KafkaError as e:
                # The partitions then start from their committed offsets; say so loudly.
                log.warning("kafka source: cannot look up %s offsets of %s (%s); starting from committed "
                            "offsets", self.config.start, fresh, e)
            else:
                for tp, off in found.items():
                    consumer.seek(tp, off)
                    self._positions[tp] = off
        self._seen |= assigned
        if self._paused:
            consumer.pause(*assigned)

    # ------------------------------------------------------------------------------ backpressure

    def pause(self) -> None:
        """Stop fetching from every assigned partition (kept across rebalances) until :meth:`resume`.

        Keep calling :meth:`fetch` while paused: it returns nothing, and the consumer stays in its
        group (aiokafka leaves it when ``getmany`` is not called for ``max_poll_interval_ms``).
        """
        self._paused = True
        if self._consumer is not None:
            self._consumer.pause(*self._consumer.assignment())

    def resume(self) -> None:
        """Fetch again after :meth:`pause`."""
        self._paused = False
        if self._consumer is not None:
            self._consumer.resume(*self._consumer.assignment())

    # ------------------------------------------------------------------------------ dead letters

    async def dead_letter(self, value: bytes, reason: str, source: tuple[str, int, int]) -> bool:
        """Produce a rejected message to ``dead_letter_topic`` with its reason and origin in headers.

        Parameters
        ----------
        value
            The message value as read.
        reason
            The rejection reason (the counter label, e.g. ``malformed_json``).
        source
            ``(topic, partition, offset)`` the message was read at.

        Returns
        -------
        bool
            False when no dead-letter topic is configured (nothing produced), True once acknowledged.

        Raises
        ------
        RetriableSourceError, SourceError
            When the broker does not acknowledge the message.
        """
        topic = self.config.dead_letter_topic
        if topic is None:
            return False
        if self._kwargs is None:
            raise SourceError("kafka source: dead_letter() called before start()")
        if self._producer is None:
            kwargs = {**self._kwargs, "client_id": f"{self.config.client_id}-dead-letter"}
            producer = AIOKafkaProducer(acks="all", **kwargs)
            try:
                await producer.start()
            except (KafkaError, OSError, TimeoutError) as e:
                with contextlib.suppress(KafkaError, OSError, TimeoutError):
                    await producer.stop()
                raise _wrap(e, f"dead letter to {topic!r}") from e
            self._producer = producer
        src_topic, src_partition, src_offset = source
        headers = list(zip(DEAD_LETTER_HEADERS, (reason.encode(), src_topic.encode(),
                                                 str(src_partition).encode(), str(src_offset).encode()),
                           strict=True))
        try:
            await self._producer.send_and_wait(topic, value, headers=headers)
        except KafkaError as e:
            raise _wrap(e, f"dead letter to {topic!r}") from e
        return True


async def _close_consumer(consumer: AIOKafkaConsumer) -> None:
    try:
        await consumer.stop()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        # aiokafka 0.14 (issue aio-libs/aiokafka#647): Fetcher.close() lets out the cancellation of a
        # fetch task that sleeps after a failed request (broker gone), before the client is closed.
        # Finish the close so that no task or socket is left behind.
        pending = list(consumer._fetcher._pending_tasks)
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await consumer._client.close()


def _check_offsets(offsets: Mapping[Partition, int]) -> None:
    for key, off in offsets.items():
        if (not isinstance(key, tuple) or len(key) != 2 or not isinstance(key[0], str)
                or not isinstance(key[1], int)):
            raise ValueError(f"expected (topic, partition) keys, got {key!r}")
        if not isinstance(off, int | np.integer) or isinstance(off, bool) or off < 0:
            raise ValueError(f"{key[0]}[{key[1]}]: expected an offset >= 0, got {off!r}")
