"""Draining the outbox into alert sinks: pacing, retries with backoff, dead letters, order.

:class:`DeliveryLoop` takes the deliverable rows of the :class:`~engine.io.outbox.Outbox` (the
oldest pending row of each (sink, dedup_key) lane), groups them by pacing target (a PagerDuty
routing key, a webhook) and sends each group in order, concurrently across groups:

- pacing: a token bucket per target, ``rate_per_min`` with ``burst`` tokens (PagerDuty allows about
  120 events per sliding minute per routing key; 100/min with a burst of 10 stays below it);
- retriable errors (429, 5xx, timeouts, connection errors) back the whole target off with
  exponential backoff and full jitter, ``uniform(0, min(cap, base * 2**n))`` after the n-th failure
  in a row; the row stays pending and keeps its place, so per-key order holds;
- permanent errors (400) are never retried: the row becomes a dead letter with the sink's errors,
  counted and logged in one line;
- anything else (a bug, a closed session, a broken database) propagates out of :meth:`run` so that
  the daemon's supervisor stops: nothing is swallowed.

The senders share the :class:`Sender` protocol and :class:`DeliveryResult`, and classify HTTP
answers with :func:`http_outcome`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Protocol

import msgspec
from prometheus_client import Counter, Gauge

from engine.alerts import AlertEvent
from engine.errors import DeliveryError, PermanentDeliveryError, RetriableDeliveryError
from engine.io.outbox import Outbox, OutboxRow

log = logging.getLogger("sloburn.delivery")


class SinkRejectedError(PermanentDeliveryError):
    """The sink refused an event for good; ``errors`` holds its reasons (PagerDuty's ``errors`` list).

    ``status`` is the HTTP status, or None when the event was refused before sending.
    """

    def __init__(self, message: str, *, status: int | None = None, errors: Sequence[str] = ()) -> None:
        self.status = status
        self.errors = list(errors)
        super().__init__(message)


class SinkUnavailableError(RetriableDeliveryError):
    """The sink could not take the event now (429, 5xx, 408, timeout, connection); ``status`` or None."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        self.status = status
        super().__init__(message)


class DeliveryResult(msgspec.Struct, frozen=True, kw_only=True):
    """A delivered event: sink name, pacing target, HTTP status, when (epoch s) and how long (s)."""

    sink: str
    target: str
    status: int
    at: float
    elapsed_s: float
    dedup_key: str | None = None


class Sender(Protocol):
    """An alert sink the loop can drain into."""

    @property
    def name(self) -> str:
        """Sink name, as stored in outbox rows."""
        ...

    def target(self, event: AlertEvent) -> str:
        """Pacing target of ``event`` (never a secret): events with one target share a token bucket."""
        ...

    async def send(self, event: AlertEvent) -> DeliveryResult:
        """Deliver ``event``; raise RetriableDeliveryError or PermanentDeliveryError on failure."""
        ...


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every non-empty secret replaced by ``<redacted>``."""
    for s in secrets:
        if s:
            text = text.replace(s, "<redacted>")
    return text


def http_outcome(sink: str, status: int, body: bytes, *, secrets: Iterable[str] = ()) -> DeliveryError | None:
    """Classify an HTTP answer: None for 2xx, retriable for 408/429/5xx, permanent for the rest.

    The error list comes from a JSON ``errors`` array (PagerDuty's 400 body), else ``message``,
    else the start of the body; any ``secrets`` echoed in it are redacted.
    """
    if 200 <= status < 300:
        return None
    secrets = list(secrets)
    errors: list[str] = []
    message = ""
    try:
        doc: Any = msgspec.json.decode(body)
    except msgspec.DecodeError:
        doc = None
    if isinstance(doc, dict):
        if isinstance(doc.get("errors"), list):
            errors = [scrub(str(e), secrets) for e in doc["errors"]]
        if isinstance(doc.get("message"), str):
            message = scrub(doc["message"], secrets)
    elif body:
        message = scrub(body[:300].decode("utf-8", "replace"), secrets)
    detail = "; ".join(errors) or message or "no detail"
    if status in (408, 429) or status >= 500:
        return SinkUnavailableError(f"{sink}: HTTP {status}: {detail}", status=status)
    return SinkRejectedError(f"{sink}: HTTP {status}: {detail}", status=status, errors=errors or [message])


# ---------------------------------------------------------------------------------------------
# Pacing and backoff (pure: the clock and the RNG are passed in)


class TokenBucket:
    """``rate_per_s`` tokens per second up to ``burst``; starts full.

    Any span of ``t`` seconds admits at most ``burst + rate_per_s * t`` takes.
    """

    def __init__(self, rate_per_s: float, burst: float, now_s: float) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError(f"expected rate > 0 and burst >= 1, got rate {rate_per_s}, burst {burst}")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.tokens = burst
        self._t = now_s

    def wait_s(self, now_s: float) -> float:
        """Seconds until one token is available (0 when one is)."""
        self.tokens = min(self.burst, self.tokens + (now_s - self._t) * self.rate_per_s)
        self._t = now_s
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) / self.rate_per_s

    def take(self, now_s: float) -> bool:
        """Take a token if one is available."""
        if self.wait_s(now_s) > 0:
            return False
        self.tokens -= 1
        return True


def backoff_s(failures: int, base_s: float, cap_s: float, rng: random.Random) -> float:
    """Full-jitter backoff after ``failures`` (>= 1) failures in a row, seconds.

    ``uniform(0, min(cap_s, base_s * 2**(failures - 1)))``, after

    "Exponential Backoff And Jitter" (AWS Architecture Blog, Brooker 2015).
    """
    return rng.uniform(0.0, min(cap_s, base_s * 2.0 ** min(failures - 1, 60)))


# ---------------------------------------------------------------------------------------------
# The loop


class _Target:
    def __init__(self, bucket: TokenBucket) -> None:
        self.bucket = bucket
        self.failures = 0
        self.blocked_until = 0.0


class DeliveryLoop:
    """Drains an :class:`Outbox` into senders; run :meth:`run` as a supervised task.

    Parameters
    ----------
    outbox
        The outbox to drain; its rows name their sink.
    senders
        One :class:`Sender` per sink name. Rows of a sink with no sender stay pending (logged once).
    rate_per_min, burst
        Token bucket per pacing target; default 100 per minute, burst 10.
    backoff_base_s, backoff_cap_s
        Full-jitter exponential backoff of a target after retriable errors; default 2 s, 300 s.
    batch_size
        Rows taken from the outbox per pass; default 500.
    idle_s
        Longest wait between passes when nothing is deliverable and :meth:`wake` is not called;
        default 1 s.
    clock, sleep, rng
        Monotonic seconds, the sleep coroutine and the jitter source (inject for tests); defaults
        ``time.monotonic``, ``asyncio.sleep``, an unseeded ``random.Random``.
    registry
        A prometheus_client registry for ``sloburn_alert_deliveries_total{sink,result}`` and
        ``sloburn_outbox_pending``; default none (the plain counters below always count).

    Attributes
    ----------
    delivered, retried, dead
        Rows delivered, failed attempts that will be retried, rows turned into dead letters.
    """

    def __init__(self, outbox: Outbox, senders: Sequence[Sender], *, rate_per_min: float = 100.0,
                 burst: float = 10.0, backoff_base_s: float = 2.0, backoff_cap_s: float = 300.0,
                 batch_size: int = 500, idle_s: float = 1.0, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep, rng: random.Random | None = None,
                 registry: Any = None) -> None:
        self.outbox = outbox
        self.senders = {s.name: s for s in senders}
        if len(self.senders) != len(senders):
            names = [s.name for s in senders]
            raise ValueError(f"expected one sender per sink name, got {names}")
        self.rate_per_s = rate_per_min / 60.0
        self.burst = burst
        TokenBucket(self.rate_per_s, burst, 0.0)  # validate the parameters now
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.batch_size = batch_size
        self.idle_s = idle_s
        self._clock = clock
        self._sleep = sleep
        self._rng = rng if rng is not None else random.Random()
        self._targets: dict[str, _Target] = {}
        self._unknown_sinks: set[str] = set()
        self._wake = asyncio.Event()
        self._pass_lock = asyncio.Lock()
        self.delivered = 0
        self.retried = 0
        self.dead = 0
        self._metric: Any = None
        self._depth_gauge: Any = None
        if registry is not None:
            self._metric = Counter("sloburn_alert_deliveries", "Alert delivery attempts by result",
                                   ["sink", "result"], registry=registry)
            self._depth_gauge = Gauge("sloburn_outbox_pending", "Alert events waiting in the outbox",
                                      registry=registry)

    def __repr__(self) -> str:
        return (f"DeliveryLoop(sinks={sorted(self.senders)}, delivered={self.delivered}, "
                f"retried={self.retried}, dead={self.dead})")

    def wake(self) -> None:
        """Start a pass now (call after appending to the outbox)."""
        self._wake.set()

    def _count(self, sink: str, result: str) -> None:
        setattr(self, result, getattr(self, result) + 1)
        if self._metric is not None:
            self._metric.labels(sink=sink, result=result).inc()

    def _target(self, key: str) -> _Target:
        t = self._targets.get(key)
        if t is None:
            t = self._targets[key] = _Target(TokenBucket(self.rate_per_s, self.burst, self._clock()))
        return t

    async def _deliver(self, row: OutboxRow, sender: Sender, tkey: str, target: _Target) -> bool:
        """Send one row; True when the row is settled (delivered or dead), False on a retriable error."""
        if row.event is None:
            self.outbox.mark_dead(row.id, row.decode_error or "stored event does not decode")
            self._count(row.sink, "dead")
            log.error("alert dead-lettered: sink=%s outbox_id=%d dedup_key=%s reason=%s",
                      row.sink, row.id, row.dedup_key, row.decode_error)
            return True
        self.outbox.begin_attempt(row.id)
        try:
            result = await sender.send(row.event)
        except DeliveryError as e:
            if e.retriable:
                target.failures += 1
                delay = backoff_s(target.failures, self.backoff_base_s, self.backoff_cap_s, self._rng)
                target.blocked_until = self._clock() + delay
                self.outbox.mark_failed(row.id, str(e))
                self._count(row.sink, "retried")
                log.warning("alert delivery failed, retrying %s in %.1fs: outbox_id=%d slo=%s action=%s "
                            "attempt=%d: %s", tkey, delay, row.id, row.slo, row.action, row.attempts + 1, e)
                return False
            errors = getattr(e, "errors", [])
            self.outbox.mark_dead(row.id, str(e), errors)
            self._count(row.sink, "dead")
            log.error("alert refused for good, dead-lettered: sink=%s outbox_id=%d slo=%s action=%s "
                      "dedup_key=%s errors=%s", row.sink, row.id, row.slo, row.action, row.dedup_key,
                      errors or [str(e)])
            return True
        target.failures = 0
        self.outbox.mark_delivered(row.id, target=result.target)
        self._count(row.sink, "delivered")
        return True

    async def _drain_target(self, tkey: str, rows: list[tuple[OutboxRow, Sender]]) -> int:
        target = self._target(tkey)
        settled = 0
        for row, sender in rows:
            if self._clock() < target.blocked_until:
                break
            while (wait := target.bucket.wait_s(self._clock())) > 0:
                await self._sleep(wait)
            target.bucket.take(self._clock())
            if not await self._deliver(row, sender, tkey, target):
                break
            settled += 1
        return settled

    async def drain_once(self) -> int:
        """One pass over the deliverable rows; return how many were settled (delivered or dead)."""
        async with self._pass_lock:
            groups = self._collect()
            settled = 0
            if groups:
                try:
                    async with asyncio.TaskGroup() as tg:
                        tasks = [tg.create_task(self._drain_target(k, v)) for k, v in groups.items()]
                except BaseExceptionGroup as eg:
                    # Surface the first unexpected error itself, not the group, to the supervisor.
                    raise eg.exceptions[0] from eg
                settled = sum(t.result() for t in tasks)
            if self._depth_gauge is not None:
                self._depth_gauge.set(self.outbox.depth())
            return settled

    def _collect(self) -> dict[str, list[tuple[OutboxRow, Sender]]]:
        # Pages past the rows of backed-off targets, so that one rate-limited routing key with a
        # long backlog does not hold back the others.
        groups: dict[str, list[tuple[OutboxRow, Sender]]] = {}
        n, after, now = 0, 0, self._clock()
        while n < self.batch_size:
            page = self.outbox.next_batch(self.batch_size, after_id=after)
            if not page:
                break
            after = page[-1].id
            for row in page:
                sender = self.senders.get(row.sink)
                if sender is None:
                    if row.sink not in self._unknown_sinks:
                        self._unknown_sinks.add(row.sink)
                        log.warning("outbox rows for sink %r wait: no such sink is configured", row.sink)
                    continue
                tkey = sender.target(row.event) if row.event is not None else f"{row.sink}:undecodable"
                t = self._targets.get(tkey)
                if t is not None and t.blocked_until > now:
                    continue
                groups.setdefault(tkey, []).append((row, sender))
                n += 1
        return groups

    def _idle_wait_s(self) -> float:
        now = self._clock()
        blocked = [t.blocked_until - now for t in self._targets.values() if t.blocked_until > now]
        return min([self.idle_s, *blocked])

    async def _wait(self, delay_s: float) -> None:
        waiter = asyncio.ensure_future(self._wake.wait())
        sleeper = asyncio.ensure_future(self._sleep(delay_s))
        try:
            await asyncio.wait({waiter, sleeper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for f in (waiter, sleeper):
                f.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await f
        self._wake.clear()

    async def run(self) -> None:
        """Deliver forever; cancel the task to stop (then :meth:`flush` what is left)."""
        while True:
            self._wake.clear()
            if await self.drain_once() == 0:
                await self._wait(self._idle_wait_s())

    async def flush(self, deadline_s: float) -> int:
        """Deliver what can be delivered within ``deadline_s``; return the rows left pending.

        ``deadline_s`` is measured by the event loop (real seconds), whatever clock was injected.

        For shutdown, after the :meth:`run` task is cancelled. A send in flight at the deadline is
        abandoned; its row stays pending (attempted) and goes out after the restart.
        """
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(deadline_s):
                while self.outbox.depth(self.senders) > 0:
                    if await self.drain_once() == 0:
                        await self._wait(self._idle_wait_s())
        return self.outbox.depth(self.senders)
