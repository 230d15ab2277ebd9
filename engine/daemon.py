"""The daemon: Kafka in, engine in event time, alerts out through a durable outbox, checkpoints.

Tasks (each supervised: one that ends with an exception stops the daemon, exit code 1)::

    consume   KafkaSource.fetch -> DecodePool (worker processes) -> Engine.ingest -> Engine.advance
    tick      every tick_s, or at once when transitions wait: outbox + checkpoint -> Kafka commit
    delivery  DeliveryLoop: outbox -> PagerDuty / webhook, paced, retried
    http      /metrics /healthz /readyz /v1/budgets /v1/alerts (served on the loop)

Durability, step by step. The consume loop ingests a fetch, records the positions of its messages
and advances the engine to the watermark, all without an await in between; transitions wait in
memory. The tick then, when transitions wait or the checkpoint interval has passed, takes the
engine snapshot, the positions and the waiting transitions together, appends the transitions to
the outbox (one SQLite transaction, fsynced, idempotent by (sink, dedup_key, action, event time)),
writes the checkpoint (tmp + fsync + rename), and only then commits the offsets to Kafka. A crash
at any point restarts from the last checkpoint and re-reads Kafka from its offsets: the replayed
events reproduce the same transitions, which the outbox ignores as already present. Checkpoint
offsets, not the group's committed ones, decide where consumption resumes.

Watermark: the newest event time seen minus ``engine.allowed_lateness_s``, advanced after each
fetch as the backtest advances after each chunk, so that the daemon and ``sloburn backtest`` over
the same events in the same order give the same alerts. Two wall-clock rules break that equality,
on purpose and only when they apply:

- idle: when no event arrived for ``daemon.idle_after_s`` (wall clock) while the source is
  connected and has read everything (lag 0), the watermark moves to
  ``now - allowed_lateness - idle_grace_s`` (at most ``idle_step_max_s`` per step), so that alerts
  resolve and budgets show no data when traffic stops. A broker outage is not idleness: events
  waiting in Kafka must not arrive late because the clock ran on;
- future: events stamped more than ``daemon.max_future_s`` ahead of the wall clock are rejected as
  ``too_far_in_future`` before they can drag the watermark ahead of real time.

Backpressure: consumption pauses while more than ``daemon.max_pending_events`` wait for the
watermark, or while the ticker runs more than ``daemon.max_tick_lag_s`` late. Pending events over
the limit with no watermark progress force the watermark to the newest event time (logged), so
memory stays bounded whatever the timestamps.

Partitions: one daemon owns every partition of its topics (a consumer group of one). Events of
different partitions interleave in the order they are fetched; a partition lagging more than the
allowed lateness behind another has its events counted late (or rejected as ``too_late``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from engine.alerts import AlertEvent, dedup_key
from engine.batch import EventBatch, Rejections
from engine.config import Config, config_hash
from engine.engine import Engine
from engine.errors import CheckpointError, ConfigError, EngineError
from engine.evaluator import BudgetPolicy
from engine.io.checkpoint import AlertState, CheckpointStore
from engine.io.decode_pool import DecodePool, default_workers
from engine.io.decoding import Decoded
from engine.io.delivery import DeliveryLoop, DeliveryResult, Sender
from engine.io.http import HttpServer
from engine.io.kafka import FetchResult, Partition, SourceError, SourceState
from engine.io.metrics import Metrics
from engine.io.outbox import Outbox
from engine.plan import NS, SEVERITIES
from engine.store import restore, snapshot

log = logging.getLogger("sloburn.daemon")

OUTBOX_FILE = "outbox.sqlite3"
PRUNE_EVERY_S = 3600.0
"""How often (wall-clock seconds) delivered outbox rows are pruned."""
EXIT_OK, EXIT_FAIL = 0, 1


GC_THRESHOLDS = (50_000, 20, 100)
"""Collector thresholds while the daemon runs (CPython's defaults: 700, 10, 10)."""


@contextlib.contextmanager
def tuned_gc(thresholds: tuple[int, int, int] = GC_THRESHOLDS) -> Iterator[None]:
    """Run with the cyclic garbage collector tuned for a consumer, and restore it after.

    Everything alive at entry (modules, compiled kernels, the engine) is frozen out of collections,
    and the young generation is collected every 50,000 allocations instead of 700: aiokafka creates
    an object per Kafka message, and with CPython's defaults full collections over the daemon's heap
    cost as much CPU as consuming the messages themselves (measured with ``bench.daemon_e2e``).
    """
    _GC_USERS.append(gc.get_threshold())
    if len(_GC_USERS) == 1:  # daemons in one process (tests, benchmarks) share one setting
        gc.collect()
        gc.freeze()
        gc.set_threshold(*thresholds)
    try:
        yield
    finally:
        before = _GC_USERS.pop()
        if not _GC_USERS:
            gc.set_threshold(*before)
            gc.unfreeze()


_GC_USERS: list[tuple[int, ...]] = []  # collector thresholds saved by each tuned_gc() still open


class Source(Protocol):
    """What the daemon needs of a Kafka source (:class:`engine.io.kafka.KafkaSource`)."""

    @property
    def state(self) -> SourceState: ...

    @property
    def paused(self) -> bool: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def fetch(self, timeout_ms: int = 1000) -> FetchResult: ...

    async def commit(self, offsets: Mapping[Partition, int]) -> dict[Partition, int]: ...

    async def seek(self, offsets: Mapping[Partition, int]) -> None: ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    async def dead_letter(self, value: bytes, reason: str, source: tuple[str, int, int]) -> bool: ...


class _CountingSender:
    """A sender that counts each attempt's result in the daemon's metrics."""

    def __init__(self, inner: Sender, metrics: Metrics) -> None:
        self._inner = inner
        self._metrics = metrics

    @property
    def name(self) -> str:
        return self._inner.name

    def target(self, event: AlertEvent) -> str:
        return self._inner.target(event)

    async def send(self, event: AlertEvent) -> DeliveryResult:
        try:
            result = await self._inner.send(event)
        except EngineError as e:
            self._metrics.count_delivery(self.name, "retried" if e.retriable else "dead")
            raise
        self._metrics.count_delivery(self.name, "delivered")
        return result


class Daemon:
    """The running daemon; also the :class:`engine.io.http.DaemonView` of its HTTP server.

    Parameters
    ----------
    config
        A validated configuration with ``source.kafka`` (:func:`engine.cli_daemon.run_daemon`
        builds the source and the senders from it and checks ``state_dir`` and the sinks).
    state_dir
        Where the outbox and checkpoints live.
    source
        The Kafka source (a :class:`~engine.io.kafka.KafkaSource` in production).
    senders
        The alert sinks the outbox drains into.
    metrics
        Instruments and registry; default a fresh :class:`~engine.io.metrics.Metrics`.
    clock
        Wall clock, epoch seconds (watermark when idle, future rejection); default ``time.time``.
    monotonic
        Monotonic seconds for tick scheduling and intervals; default ``time.monotonic``.
    http_listen
        ``(host, port)`` to serve HTTP on, or None for no HTTP.
    on_alert
        Called with each alert transition as the engine produces it (before the outbox has it).
    """

    def __init__(self, config: Config, *, state_dir: str | Path, source: Source, senders: Sequence[Sender],
                 metrics: Metrics | None = None, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic,
                 http_listen: tuple[str, int] | None = None,
                 on_alert: Callable[[AlertEvent], None] | None = None) -> None:
        kafka = config.source.kafka
        if kafka is None:
            raise ConfigError(["$.source.kafka: required field is missing (the daemon consumes Kafka)"])
        self.config = config
        self.state_dir = Path(state_dir)
        self.source = source
        self.metrics = metrics if metrics is not None else Metrics(clock=clock)
        self._clock = clock
        self._mono = monotonic
        self._http_listen = http_listen
        self._on_alert = on_alert
        d = config.daemon
        self._d = d
        self._fmt = kafka.format or config.events.format
        self._max_message_bytes = kafka.max_message_bytes
        self._dead_letters = kafka.dead_letter_topic is not None
        self._lateness_ns = int(config.engine.allowed_lateness_s * NS)
        self._config_hash = config_hash(config)
        self._engine = Engine(config)
        self._pool: DecodePool | None = None
        self._inflight: deque[tuple[FetchResult, asyncio.Future[Decoded]]] = deque()
        self._senders = [_CountingSender(s, self.metrics) for s in senders]
        self.outbox = Outbox(self.state_dir / OUTBOX_FILE, sinks=[s.name for s in senders],
                             coalesce=config.sinks.delivery.coalesce)
        dc = config.sinks.delivery
        self.delivery = DeliveryLoop(self.outbox, self._senders, rate_per_min=dc.rate_per_min, burst=dc.burst,
                                     backoff_base_s=dc.backoff_base_s, backoff_cap_s=dc.backoff_cap_s)
        self.checkpoints = CheckpointStore(self.state_dir, keep=d.checkpoints_kept, clock=clock)
        self.rejections = Rejections()
        """Records rejected before the engine: decoding, oversized messages, future timestamps."""
        self.messages_consumed = 0
        self.http_port: int | None = None
        self._positions: dict[Partition, int] = {}
        self._active: dict[tuple[str, str], AlertEvent] = {}
        self._watermark_ns: int | None = None
        self._unflushed: list[AlertEvent] = []
        self._last_event_mono = monotonic()
        self._last_ckpt_mono = monotonic()
        self._last_prune_mono = monotonic()
        self._tick_lag_s = 0.0
        self._lag_total: int | None = None  # messages behind, as of the last fetch with lag data
        self._forced = False
        self._ticks = 0
        self._restored = False
        self._paused_for: str | None = None
        self._checkpoint_error: str | None = None
        self._commit_error: str | None = None
        self._stop = asyncio.Event()
        self._tick_now = asyncio.Event()
        self._failure: BaseException | None = None
        self._failed_task: str | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._http: Any = None
        self._gc = contextlib.ExitStack()
        self.checkpoints_written = 0
        self.outbox_pending = 0
        """Alert events waiting for delivery, as of the last tick."""

    # ------------------------------------------------------------------ DaemonView

    @property
    def engine(self) -> Engine:
        return self._engine

    @property
    def decode_pool(self) -> DecodePool | None:
        """The pool that parses fetched messages (None before the state is restored)."""
        return self._pool

    @property
    def budget_policy(self) -> BudgetPolicy:
        return self.config.budget_policy

    def health(self) -> tuple[bool, dict[str, str]]:
        """Alive while every task runs and checkpoints can be written; reasons say what is off."""
        reasons: dict[str, str] = {}
        for name, task in self._tasks.items():
            if task.done():
                reasons[name] = "task ended"
        if self._failure is not None:
            reasons[self._failed_task or "daemon"] = f"{type(self._failure).__name__}: {self._failure}"
        if self._checkpoint_error:
            reasons["checkpoint"] = self._checkpoint_error
        ok = not reasons
        state = self.source.state
        if state.status != "connected":
            reasons["kafka"] = f"{state.status}" + (f": {state.error}" if state.error else "")
        if self._commit_error:
            reasons["kafka_commit"] = self._commit_error
        if self._paused_for:
            reasons["backpressure"] = self._paused_for
        return ok, reasons

    def readiness(self) -> tuple[bool, dict[str, str]]:
        """Ready: state restored, the first tick done, the broker connected."""
        reasons: dict[str, str] = {}
        if not self._restored:
            reasons["state"] = "not restored yet"
        if self._ticks == 0:
            reasons["tick"] = "no tick yet"
        state = self.source.state
        if state.status != "connected":
            reasons["kafka"] = f"{state.status}" + (f": {state.error}" if state.error else "")
        if self._stop.is_set():
            reasons["daemon"] = "stopping"
        return not reasons, reasons

    def active_alerts(self) -> list[AlertEvent]:
        return list(self._active.values())

    # ------------------------------------------------------------------ lifecycle

    @property
    def watermark_ns(self) -> int | None:
        """The last watermark the engine was advanced to."""
        return self._watermark_ns

    @property
    def positions(self) -> dict[Partition, int]:
        """Next offset per partition after everything ingested."""
        return dict(self._positions)

    def request_stop(self) -> None:
        """Begin a graceful shutdown (signal handlers call this)."""
        if not self._stop.is_set():
            log.info("stop requested")
        self._stop.set()
        self._tick_now.set()

    async def run(self) -> int:
        """Restore, run every task until stopped or failed, shut down; return the exit code.

        Raises
        ------
        ConfigError
            When the source cannot start for a configuration reason (a missing credential); the
            daemon is shut down first.
        """
        source_started = False
        try:
            await self._restore()
            if self._positions:
                await self.source.seek(self._positions)  # applied when the group assigns them
            source_started = True
            await self.source.start()
            if self._http_listen is not None:
                self._http = HttpServer(self)
                self.http_port = await self._http.start(*self._http_listen)
            self._gc.enter_context(tuned_gc())
            self._spawn("consume", self._consume_loop())
            self._spawn("tick", self._tick_loop())
            self._spawn("delivery", self.delivery.run())
            kafka = self.config.source.kafka
            log.info("daemon running: topics=%s state_dir=%s http_port=%s",
                     kafka.topics if kafka else [], self.state_dir, self.http_port)
            await self._stop.wait()
        except ConfigError:
            await self._shutdown(source_started)
            raise
        except (EngineError, OSError) as e:
            self._fail("start", e)
        return await self._shutdown(source_started)

    def _spawn(self, name: str, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        task.set_name(f"sloburn-{name}")
        self._tasks[name] = task
        task.add_done_callback(lambda t, n=name: self._task_done(n, t))  # type: ignore[misc]

    def _task_done(self, name: str, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            if not self._stop.is_set():
                self._fail(name, RuntimeError(f"task {name} was cancelled"))
            return
        exc = task.exception()
        if exc is not None:
            self._fail(name, exc)
        elif not self._stop.is_set():
            self._fail(name, RuntimeError(f"task {name} ended unexpectedly"))

    def _fail(self, name: str, exc: BaseException) -> None:
        if self._failure is None:
            self._failure, self._failed_task = exc, name
            log.error("task %s failed, stopping the daemon: %s: %s", name, type(exc).__name__, exc,
                      exc_info=exc)
        self._stop.set()
        self._tick_now.set()

    async def _shutdown(self, source_started: bool) -> int:
        self._stop.set()
        self._tick_now.set()
        failed = self._failure is not None
        for name in ("consume", "tick"):
            task = self._tasks.get(name)
            if task is not None and not task.done():
                # Both loops end after their current step (a fetch returns within 0.2 s; a tick is
                # never cut between outbox and checkpoint); a consume loop stuck longer is cancelled.
                done, _ = await asyncio.wait({task}, timeout=10.0 if name == "consume" else None)
                if not done:
                    task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        delivery = self._tasks.get("delivery")
        if delivery is not None and not delivery.done():
            delivery.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await delivery
        commit: dict[Partition, int] | None = None
        if not failed and self._restored:
            try:
                commit = await self._tick(final=True)
            except (EngineError, OSError) as e:
                self._fail("shutdown", e)
                failed = True
            left = await self.delivery.flush(self._d.shutdown_flush_s)
            if left:
                log.warning("shutdown: %d alert event(s) left in the outbox; they go out after the restart",
                            left)
        if commit and source_started:
            await self._commit(commit)
        if self._http is not None:
            await self._http.stop()
        if source_started:
            with contextlib.suppress(SourceError, OSError):
                await self.source.stop()
        if self._pool is not None:
            await self._pool.stop()
        self.outbox.close()
        self._gc.close()
        if failed:
            log.error("daemon stopped after a failure in %s: %s", self._failed_task, self._failure)
            return EXIT_FAIL
        log.info("daemon stopped cleanly: watermark=%s checkpoints=%d", self._watermark_ns,
                 self.checkpoints_written)
        return EXIT_OK

    # ------------------------------------------------------------------ restore

    async def _restore(self) -> None:
        result = await asyncio.to_thread(self.checkpoints.load_latest)
        for item in result.set_aside:
            log.error("checkpoint %s set aside to %s: %s", item.original.name, item.moved_to, item.reason)
        ckpt = result.checkpoint
        if ckpt is None:
            log.info("no checkpoint: starting fresh (Kafka start position %r)",
                     self.config.source.kafka.start if self.config.source.kafka else None)
        else:
            h = ckpt.header
            try:
                report = restore(self._engine, h.snapshot, ckpt.arrays)
            except CheckpointError as e:
                # Readable but not restorable into this config (e.g. the evaluation step changed).
                raise CheckpointError(f"{ckpt.path}: {e}; move it aside to start fresh") from e
            self._positions = {(t, p): off for t, ps in h.offsets.items() for p, off in ps.items()}
            self._watermark_ns = h.watermark_ns
            self._active = {(a.slo, a.severity): a.trigger for a in h.alerts
                            if a.firing and a.trigger is not None and a.slo in self._engine.plan.by_name}
            log.info("restored checkpoint %s (seq %d): kept=%s fresh=%s dropped=%s offsets=%s%s",
                     ckpt.path.name, h.seq, report.kept, report.fresh, report.dropped,
                     {f"{t}[{p}]": o for (t, p), o in sorted(self._positions.items())},
                     "" if h.config_hash == self._config_hash else " (config changed)")
        workers = self._d.decode_workers
        self._pool = DecodePool(self.config.events, self._engine.keys, fmt=self._fmt,
                                max_message_bytes=self._max_message_bytes, dead_letters=self._dead_letters,
                                workers=default_workers() if workers == "auto" else workers)
        await self._pool.start()
        self._restored = True
        self.metrics.refresh_from_engine(self._engine, self.budget_policy)

    # ------------------------------------------------------------------ consume

    async def _consume_loop(self) -> None:
        """Fetch, hand each fetch to the decode pool, ingest the decoded fetches in order.

        Fetches are decoded while the next ones are fetched, up to ``DecodePool.busy`` (16 MiB of
        message values in flight); a decoded fetch is ingested as soon as it and every fetch
        before it are done.
        """
        pool = self._pool
        assert pool is not None
        inflight = self._inflight
        while not self._stop.is_set():
            self._backpressure()
            while inflight and inflight[0][1].done():
                await self._ingest_next()
            if self.source.paused or pool.busy:
                if inflight:
                    await self._ingest_next()
                else:
                    await self._sleep_or_stop(0.05)
                continue
            # With decodes in flight, only take what the consumer holds already (or nearly).
            result = await self.source.fetch(timeout_ms=5 if inflight else 200)
            if result.partitions or result.rejections:
                inflight.append((result, pool.submit(result.values())))
            elif not inflight:
                self._ingest(result, Decoded(n_messages=0))  # positions, lag, rejected null messages
            else:
                self._note_lag(result)
            # fetch() returns at once while the consumer holds prefetched records: let the ticker,
            # the delivery loop and HTTP run between two batches.
            await asyncio.sleep(0)
        while inflight:  # what was fetched is ingested (and so checkpointed) before shutting down
            await self._ingest_next()

    async def _ingest_next(self) -> None:
        result, future = self._inflight[0]
        decoded = await future
        self._inflight.popleft()
        # Dead letters first: positions past a rejected message are recorded (and later
        # checkpointed) only once its copy is acknowledged.
        for index, reason in decoded.dead:
            value, where = self._message(result, index)
            await self._dead_letter(value, reason, where)
        self._ingest(result, decoded)

    @staticmethod
    def _message(result: FetchResult, index: int) -> tuple[bytes, tuple[str, int, int]]:
        """The value and (topic, partition, offset) of message ``index`` of ``result.values()``."""
        for part in result.partitions:
            if index < len(part.values):
                return part.values[index], (part.topic, part.partition, int(part.offsets[index]))
            index -= len(part.values)
        raise IndexError("message index past the fetch")

    def _backpressure(self) -> None:
        """Pause the source while over a limit, resume it once under; a pause made by others stays."""
        d = self._d
        why = None
        if self._engine.pending_events > d.max_pending_events:
            why = f"{self._engine.pending_events} events wait for the watermark (max {d.max_pending_events})"
        elif self._tick_lag_s > d.max_tick_lag_s:
            why = f"ticks run {self._tick_lag_s:.1f} s late (max {d.max_tick_lag_s:g} s)"
        if why and self._paused_for is None:
            log.warning("pausing consumption: %s", why)
            if not self.source.paused:
                self.source.pause()
        elif not why and self._paused_for is not None:
            log.info("resuming consumption")
            self.source.resume()
        self._paused_for = why
        self.metrics.set_backpressure(int(self._tick_lag_s / self.config.tick_s), self.source.paused)

    def _ingest(self, result: FetchResult, decoded: Decoded) -> None:
        """Ingest a decoded fetch, record its positions and advance; no await in between.

        Transitions wait in ``_unflushed`` for the tick that puts them in the outbox with a checkpoint.
        """
        rej = Rejections(decoded.rejections)
        rej.update(result.rejections)
        for reason, n in result.rejections.items():
            self.metrics.count_malformed(reason, n)
        if decoded.oversized:
            self.metrics.count_malformed("oversized_message", decoded.oversized)
        batch = self._reject_future(decoded.batch, rej)
        self._engine.ingest(batch)
        if len(batch):
            self._last_event_mono = self._mono()
        for part in result.partitions:
            self._positions[(part.topic, part.partition)] = part.next_offset
        self._note_lag(result)
        self.messages_consumed += decoded.n_messages
        self.metrics.count_messages(decoded.n_messages)
        self.rejections.update(rej)
        # Advancing per fetch, as the backtest does per chunk, keeps the pending events few.
        self._advance()

    def _note_lag(self, result: FetchResult) -> None:
        for (topic, partition), lag in result.lag.items():
            self.metrics.set_lag(topic, partition, lag)
        if result.lag:
            self._lag_total = sum(max(0, n) for n in result.lag.values())

    def _reject_future(self, batch: EventBatch, rej: Rejections) -> EventBatch:
        if not len(batch):
            return batch
        limit_ns = int((self._clock() + self._d.max_future_s) * NS)
        future = batch.ts_ns > limit_ns
        if not future.any():
            return batch
        rej.add("too_far_in_future", int(batch.weight[future].sum()))
        return batch.take(np.flatnonzero(~future))

    async def _dead_letter(self, value: bytes, reason: str, where: tuple[str, int, int]) -> None:
        if not self._dead_letters:
            return
        try:
            await self.source.dead_letter(value, reason, where)
        except SourceError as e:
            # The message is counted already; losing its copy must not stop the evaluation.
            self.metrics.count_malformed("dead_letter_failed")
            log.warning("dead letter of %s[%d]@%d not produced: %s", *where, e)

    async def _sleep_or_stop(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    # ------------------------------------------------------------------ tick

    async def _tick_loop(self) -> None:
        tick_s = self.config.tick_s
        due = self._mono() + tick_s
        while not self._stop.is_set():
            # Woken early when the consume loop has alert transitions waiting: they go to the
            # outbox (with a checkpoint) at once instead of at the next scheduled tick.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._tick_now.wait(), max(0.0, due - self._mono()))
            self._tick_now.clear()
            if self._stop.is_set():
                return
            now = self._mono()
            if now >= due:
                self._tick_lag_s = now - due
                # Missed ticks are skipped, not run back to back: one tick catches up on all of them.
                due = due + tick_s if due + tick_s > now else now + tick_s
            commit = await self._tick()
            if commit:
                await self._commit(commit)

    def _watermark(self) -> int | None:
        eng = self._engine
        if eng.max_ts_ns is None:
            return None
        wm = eng.max_ts_ns - self._lateness_ns
        prev = self._watermark_ns
        d = self._d
        idle = (d.idle_after_s is not None and self._mono() - self._last_event_mono >= d.idle_after_s
                and self._lag_total == 0 and self.source.state.status == "connected")
        if idle:
            wall_ns = int((self._clock() - d.idle_grace_s) * NS) - self._lateness_ns
            cap = max(wm, prev if prev is not None else wm) + int(d.idle_step_max_s * NS)
            wm = max(wm, min(wall_ns, cap))
        if eng.pending_events > d.max_pending_events and prev is not None and prev >= wm:
            if not self._forced:
                log.warning("%d events pending with no watermark progress: forcing the watermark to "
                            "the newest event time", eng.pending_events)
            self._forced = True
            wm = eng.max_ts_ns
        else:
            self._forced = False
        return wm if prev is None else max(wm, prev)

    def _advance(self) -> None:
        """Advance the engine to the watermark; its transitions join ``_unflushed``."""
        wm = self._watermark()
        if wm is None or (self._watermark_ns is not None and wm <= self._watermark_ns):
            return
        events = self._engine.advance(wm)
        self._watermark_ns = wm
        for a in events:
            key = (a.slo, a.severity)
            if a.action == "trigger":
                self._active[key] = a
            else:
                self._active.pop(key, None)
            log.info("alert %s: slo=%s severity=%s tier=%s event_time=%.3f", a.action, a.slo, a.severity,
                     a.tier, a.ts)
            if self._on_alert is not None:
                self._on_alert(a)
        if events:
            self._unflushed.extend(events)
            self._tick_now.set()

    async def _tick(self, *, final: bool = False) -> dict[Partition, int] | None:
        """Advance; on transitions or when a checkpoint is due, outbox + checkpoint.

        Returns the offsets to commit (covered by the checkpoint just written), or None.
        """
        t0 = self._mono()
        eng = self._engine
        self._advance()
        events = self._unflushed
        due = final or bool(events) or t0 - self._last_ckpt_mono >= self._d.checkpoint_interval_s
        commit = None
        if due:
            # Taken together, before any await: the state, the positions, the alerts and the
            # transitions that led to that state match.
            header, arrays = snapshot(eng)
            offsets = dict(self._positions)
            alerts = self._alert_states()
            watermark_ns = self._watermark_ns
            self._unflushed = []
            if events:
                await asyncio.to_thread(self.outbox.append, events)
                self.delivery.wake()
            c0 = self._mono()
            try:
                await asyncio.to_thread(
                    self.checkpoints.write, config_hash=self._config_hash, alerts=alerts, snapshot=header,
                    arrays=arrays, watermark_ns=watermark_ns,
                    offsets={t: {p: o for (tt, p), o in offsets.items() if tt == t}
                             for t in {t for t, _ in offsets}})
            except CheckpointError as e:
                if self._checkpoint_error is None:
                    log.error("checkpoint failed (offsets stay uncommitted; retrying next tick): %s", e)
                self._checkpoint_error = str(e)
                if final:
                    raise
            else:
                if self._checkpoint_error is not None:
                    log.info("checkpoints written again")
                self._checkpoint_error = None
                self._last_ckpt_mono = t0
                self.checkpoints_written += 1
                self.metrics.observe_checkpoint(self._mono() - c0, self._clock())
                commit = offsets
        self._ticks += 1
        self.metrics.refresh_from_engine(eng, self.budget_policy)
        self.metrics.count_rejections(self.rejections, source="daemon")
        if t0 - self._last_prune_mono >= PRUNE_EVERY_S:
            self._last_prune_mono = t0
            pruned = await asyncio.to_thread(self.outbox.prune, self._d.outbox_keep_delivered_s)
            if pruned:
                log.info("outbox: %d delivered row(s) older than %g s pruned", pruned,
                         self._d.outbox_keep_delivered_s)
        counts = await asyncio.to_thread(self.outbox.counts_by_status)
        self.outbox_pending = counts.get("pending", 0)
        self.metrics.set_outbox_depth(counts)
        self.metrics.observe_tick(self._mono() - t0)
        return commit

    def _alert_states(self) -> list[AlertState]:
        out = []
        for st in self._engine.statuses():
            for sev in SEVERITIES:
                out.append(AlertState(slo=st.slo, severity=sev, dedup_key=dedup_key(st.slo, sev),
                                      firing=st.firing[sev], tier=st.firing_tier[sev],
                                      trigger=self._active.get((st.slo, sev))))
        return out

    async def _commit(self, offsets: dict[Partition, int]) -> None:
        if not offsets:
            return
        try:
            await self.source.commit(offsets)
        except SourceError as e:
            # The checkpoint holds the offsets: a failed commit only delays what lag monitors see.
            if self._commit_error is None:
                log.warning("kafka commit failed (will retry at the next checkpoint): %s", e)
            self._commit_error = str(e)
        else:
            self._commit_error = None


