"""Prometheus metrics of the daemon, kept in an injected registry.

Two layers, as in prometheus/client_python:

- plain instruments (counters, gauges, histograms) that the daemon's tasks update as things happen:
  Kafka messages, malformed messages, rejections, ticks, backpressure, outbox, deliveries, checkpoints;
- a collector that turns the last snapshot of the engine, taken by :meth:`Metrics.refresh_from_engine`
  after each tick, into per-SLO samples when the registry is collected. A refresh only keeps
  references (the work is in :meth:`engine.engine.Engine.statuses`); the samples are built at scrape
  time, and a scrape may run in another thread because a snapshot is replaced, never changed.

No data: a burn rate or an error budget remaining with no events behind it has **no sample** (the
series is absent), never NaN and never 0. ``absent(...)`` or ``... or on() vector(...)`` in PromQL
tell "no data" apart from "no errors"; ``sloburn_slo_budget_policy_state{state="no_data"}`` is 1 then.
A removed SLO disappears from the next scrape instead of leaving a stale series.

Metrics (every name starts with ``sloburn_``)::

    events_ingested_total                         counter   events counted by at least one SLO
    events_rejected_total{reason}                 counter   decode and engine rejections
    slo_burn_rate{slo,window}                     gauge     (bad/total)/B; absent without data
    slo_burn_rate_factor{slo,tier,severity,long_window,short_window}   gauge  alert thresholds
    slo_error_budget_remaining_ratio{slo}         gauge     1 untouched, 0 spent, < 0 overspent
    slo_budget_policy_state{slo,state}            gauge     1 for the current state, 0 for the others
    budget_policy_threshold_ratio{state}          gauge     budget ratio below which a state starts
    slo_alert_firing{slo,severity}                gauge     1 firing, 0 not
    slo_objective_ratio{slo}                      gauge     objective as a ratio (0.999)
    slos                                          gauge     SLOs evaluated
    watermark_timestamp_seconds                   gauge     last evaluated instant (event time)
    max_event_timestamp_seconds                   gauge     newest event time seen
    event_time_lag_seconds                        gauge     wall clock at scrape - watermark
    pending_events                                gauge     ingested, not yet evaluated
    kafka_consumer_lag_messages{topic,partition}  gauge
    kafka_messages_consumed_total                 counter
    kafka_messages_malformed_total{reason}        counter
    tick_duration_seconds                         histogram
    ticks_behind, backpressure_paused             gauge
    outbox_events{status}                         gauge     outbox depth by status
    deliveries_total{sink,result}                 counter   result: delivered, retried, dead
    checkpoint_duration_seconds                   histogram
    last_checkpoint_timestamp_seconds             gauge
    build_info{version,python}                    gauge     always 1
"""

from __future__ import annotations

import platform
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from engine import __version__
from engine.durations import format_duration
from engine.engine import Engine, SloStatus
from engine.evaluator import BudgetPolicy, PolicyState, policy_state
from engine.plan import NS, SEVERITIES, Plan

POLICY_STATES: tuple[PolicyState, ...] = ("healthy", "warning", "freeze", "no_data")
DELIVERY_RESULTS = ("delivered", "retried", "dead")

TICK_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Tick duration buckets (s): a tick should take milliseconds; one second is a whole tick budget."""

CHECKPOINT_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Checkpoint duration buckets (s)."""


def _plan_families(plan: Plan | None) -> tuple[Metric, ...]:
    """Families that change only with the configuration: alert thresholds and objectives."""
    factor = GaugeMetricFamily(
        "sloburn_slo_burn_rate_factor",
        "Burn-rate factor of each alert tier: the tier fires when both windows burn faster.",
        labels=["slo", "tier", "severity", "long_window", "short_window"])
    objective = GaugeMetricFamily(
        "sloburn_slo_objective_ratio", "SLO objective as a ratio (99.9 % is 0.999).", labels=["slo"])
    for sp in plan.slos if plan is not None else ():
        name = sp.slo.name
        for t in sp.tiers:
            factor.add_metric([name, t.name, t.severity, format_duration(t.long_window_s),
                               format_duration(t.short_window_s)], t.burn_rate_factor)
        objective.add_metric([name], sp.objective / 100.0)
    return factor, objective


@dataclass(frozen=True, slots=True)
class _Snapshot:
    """What the SLO collector exposes; replaced as a whole by each refresh, never changed."""

    statuses: tuple[SloStatus, ...] = ()
    states: tuple[PolicyState, ...] = ()
    plan_families: tuple[Metric, ...] = field(default_factory=lambda: _plan_families(None))
    policy: BudgetPolicy = field(default_factory=BudgetPolicy)
    watermark_s: float | None = None
    max_event_s: float | None = None
    pending_events: int = 0


class _SloCollector:
    """Builds the per-SLO families from the current snapshot at collection time."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.snapshot = _Snapshot()
        self._clock = clock

    def describe(self) -> list[Metric]:
        # Names only, so that the registry can refuse a clashing collector at registration.
        return list(self._families(_Snapshot(), with_samples=False))

    def collect(self) -> Iterator[Metric]:
        # One read of the reference: the whole scrape sees one refresh, whatever the other threads do.
        return self._families(self.snapshot, with_samples=True)

    def _families(self, snap: _Snapshot, *, with_samples: bool) -> Iterator[Metric]:
        burn = GaugeMetricFamily(
            "sloburn_slo_burn_rate",
            "Burn rate (bad/total)/B over each alert window at the last evaluated instant; "
            "absent when the window holds no events.", labels=["slo", "window"])
        budget = GaugeMetricFamily(
            "sloburn_slo_error_budget_remaining_ratio",
            "Share of the SLO period's error budget left (1 untouched, 0 spent, negative overspent); "
            "absent when the period holds no events.", labels=["slo"])
        policy = GaugeMetricFamily(
            "sloburn_slo_budget_policy_state",
            "Error-budget policy state: 1 for the current state, 0 for the others.", labels=["slo", "state"])
        thresholds = GaugeMetricFamily(
            "sloburn_budget_policy_threshold_ratio",
            "Budget remaining ratio below which the policy state starts.", labels=["state"])
        firing = GaugeMetricFamily(
            "sloburn_slo_alert_firing", "1 while the alert of an SLO and severity fires, else 0.",
            labels=["slo", "severity"])
        n_slos = GaugeMetricFamily("sloburn_slos", "SLOs evaluated.")
        watermark = GaugeMetricFamily(
            "sloburn_watermark_timestamp_seconds",
            "Last evaluated instant, event time (Unix seconds); absent before the first evaluation.")
        max_event = GaugeMetricFamily(
            "sloburn_max_event_timestamp_seconds", "Newest event time seen (Unix seconds).")
        lag = GaugeMetricFamily(
            "sloburn_event_time_lag_seconds",
            "Wall clock at scrape minus the watermark (s): how far evaluation trails real time.")
        pending = GaugeMetricFamily(
            "sloburn_pending_events", "Events ingested and not yet evaluated (at or after the watermark).")
        if with_samples:
            for status, state in zip(snap.statuses, snap.states, strict=True):
                name = status.slo
                for window, value in status.burn_rates.items():
                    if value is not None:
                        burn.add_metric([name, window], value)
                if status.budget_remaining is not None:
                    budget.add_metric([name], status.budget_remaining)
                for s in POLICY_STATES:
                    policy.add_metric([name, s], 1.0 if s == state else 0.0)
                for severity in SEVERITIES:
                    firing.add_metric([name, severity], 1.0 if status.firing.get(severity) else 0.0)
            thresholds.add_metric(["warning"], snap.policy.warning_below_percent / 100.0)
            thresholds.add_metric(["freeze"], snap.policy.freeze_below_percent / 100.0)
            n_slos.add_metric([], float(len(snap.statuses)))
            if snap.watermark_s is not None:
                watermark.add_metric([], snap.watermark_s)
                lag.add_metric([], self._clock() - snap.watermark_s)
            if snap.max_event_s is not None:
                max_event.add_metric([], snap.max_event_s)
            pending.add_metric([], float(snap.pending_events))
        yield from (burn, budget, policy, thresholds, firing, *snap.plan_families, n_slos, watermark,
                    max_event, lag, pending)


class _Baselines:
    """Last values seen of cumulative tallies: by object identity when possible, else by name."""

    def __init__(self) -> None:
        self._by_object: list[tuple[weakref.ref[Any], dict[str, int]]] = []
        self._by_source: dict[str, dict[str, int]] = {}

    def get(self, tally: Mapping[str, int], source: str) -> dict[str, int]:
        try:
            ref = weakref.ref(tally)
        except TypeError:  # plain dict: no identity that outlives the call
            return self._by_source.setdefault(source, {})
        for r, last in self._by_object:
            if r() is tally:
                return last
        # Dead tallies (a replaced engine) are forgotten; an id reused later starts from 0.
        self._by_object = [(r, last) for r, last in self._by_object if r() is not None]
        last = {}
        self._by_object.append((ref, last))
        return last


class Metrics:
    """The daemon's instruments and the SLO gauges, in one registry.

    Parameters
    ----------
    registry
        Where the metrics live. Default: a new private ``CollectorRegistry`` (never the global one,
        so that several daemons or tests in one process do not collide).
    clock
        Wall clock in Unix seconds, read at scrape time for ``sloburn_event_time_lag_seconds``.
        Default ``time.time``.

    Notes
    -----
    Counters fed from cumulative tallies (:meth:`count_rejections`; the engine's events ingested and
    rejections in :meth:`refresh_from_engine`) add the difference to the last value seen from the
    same source; a value smaller than last time means the tally restarted and counts in full, so the
    exposed counters never go backwards. A new engine object starts new baselines.
    """

    def __init__(self, registry: CollectorRegistry | None = None, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self._slos = _SloCollector(clock)
        r.register(self._slos)
        self.events_ingested = Counter(
            "sloburn_events_ingested", "Events counted by at least one SLO.", registry=r)
        self.events_rejected = Counter(
            "sloburn_events_rejected", "Records that did not become counted events, by reason "
            "(decode and engine rejections alike).", ["reason"], registry=r)
        self.kafka_lag = Gauge(
            "sloburn_kafka_consumer_lag_messages", "Messages between the consumer's position and the "
            "partition's high watermark.", ["topic", "partition"], registry=r)
        self.kafka_messages = Counter(
            "sloburn_kafka_messages_consumed", "Kafka messages consumed.", registry=r)
        self.kafka_malformed = Counter(
            "sloburn_kafka_messages_malformed", "Kafka messages that could not be decoded, by reason.",
            ["reason"], registry=r)
        self.tick_duration = Histogram(
            "sloburn_tick_duration_seconds", "Wall time of one tick: advance, evaluate, hand alerts "
            "to the outbox (s).", buckets=TICK_BUCKETS_S, registry=r)
        self.ticks_behind = Gauge(
            "sloburn_ticks_behind", "Ticks due but not yet run (evaluation falling behind).", registry=r)
        self.backpressure_paused = Gauge(
            "sloburn_backpressure_paused", "1 while consumption is paused for backpressure.", registry=r)
        self.outbox_events = Gauge(
            "sloburn_outbox_events", "Alert events in the outbox, by status.", ["status"], registry=r)
        self.deliveries = Counter(
            "sloburn_deliveries", "Delivery attempts of alert events by sink and result "
            "(delivered, retried, dead).", ["sink", "result"], registry=r)
        self.checkpoint_duration = Histogram(
            "sloburn_checkpoint_duration_seconds", "Wall time to write one checkpoint (s).",
            buckets=CHECKPOINT_BUCKETS_S, registry=r)
        self.last_checkpoint = Gauge(
            "sloburn_last_checkpoint_timestamp_seconds", "When the last checkpoint was written "
            "(Unix seconds).", registry=r)
        Info("sloburn_build", "Version of the running sloburn.", registry=r).info(
            {"version": __version__, "python": platform.python_version()})
        self._baselines = _Baselines()
        self._ingested_seen = 0
        self._engine_ref: weakref.ref[Engine] | None = None
        self._plan: Plan | None = None
        self._plan_families = _plan_families(None)
        self._outbox_statuses: set[str] = set()

    # ------------------------------------------------------------------ engine

    def refresh_from_engine(self, engine: Engine, policy: BudgetPolicy | None = None) -> None:
        """Take the SLO gauges, event counters and event-time gauges from the engine.

        Call it on the thread that drives the engine, after each tick. The per-SLO samples of the next
        scrape come from this snapshot. Cost: about 14 ms for 1,000 SLOs on a 2-core machine, nearly
        all of it :meth:`~engine.engine.Engine.statuses`; the samples (about 19 per SLO) are built
        at scrape time instead.

        Parameters
        ----------
        engine
            The running engine. A different engine object than last time (a config reload) starts
            new cumulative baselines for its events and rejections.
        policy
            Error-budget policy thresholds; default :class:`~engine.evaluator.BudgetPolicy`.
        """
        policy = policy if policy is not None else BudgetPolicy()
        known = self._engine_ref() if self._engine_ref is not None else None
        if known is not engine:
            self._engine_ref = weakref.ref(engine)
            self._ingested_seen = 0
        if engine.plan is not self._plan:
            self._plan = engine.plan
            self._plan_families = _plan_families(engine.plan)
        self._add_cumulative_ingested(engine.events_ingested)
        self.count_rejections(engine.rejections)
        statuses = tuple(engine.statuses())
        last = engine.last_eval_ns
        newest = engine.max_ts_ns
        self._slos.snapshot = _Snapshot(
            statuses=statuses,
            states=tuple(policy_state(s.budget_remaining, policy) for s in statuses),
            plan_families=self._plan_families,
            policy=policy,
            watermark_s=None if last is None else last / NS,
            max_event_s=None if newest is None else newest / NS,
            pending_events=engine.pending_events,
        )

    def _add_cumulative_ingested(self, total: int) -> None:
        delta = total - self._ingested_seen if total >= self._ingested_seen else total
        if delta > 0:
            self.events_ingested.inc(delta)
        self._ingested_seen = total

    # ------------------------------------------------------------------ counters

    def count_rejections(self, rejections: Mapping[str, int], *, source: str = "default") -> None:
        """Add what a cumulative rejection tally gained since it was last seen.

        Parameters
        ----------
        rejections
            Cumulative counts by reason, e.g. an engine's or a decoder's ``Rejections``. A tally
            object that can be weakly referenced (``Rejections``, ``Counter``) is recognised by
            identity: passing the engine's ``rejections`` here as well as through
            :meth:`refresh_from_engine` counts nothing twice, and a new tally starts from 0.
        source
            Tells apart tallies passed as plain dicts (which cannot be recognised by identity).
        """
        last = self._baselines.get(rejections, source)
        for reason, total in rejections.items():
            if total < 0:
                raise ValueError(f"rejections[{reason!r}]: expected a count >= 0, got {total}")
            prev = last.get(reason, 0)
            delta = total - prev if total >= prev else total
            if delta > 0:
                self.events_rejected.labels(reason).inc(delta)
            last[reason] = total

    def add_rejections(self, counts: Mapping[str, int]) -> None:
        """Add per-batch rejection counts (not cumulative) by reason."""
        for reason, n in counts.items():
            self.events_rejected.labels(reason).inc(_non_negative(f"counts[{reason!r}]", n))

    def count_messages(self, n: int) -> None:
        """Count ``n`` Kafka messages consumed."""
        self.kafka_messages.inc(_non_negative("n", n))

    def count_malformed(self, reason: str, n: int = 1) -> None:
        """Count ``n`` Kafka messages that could not be decoded, by reason."""
        self.kafka_malformed.labels(reason).inc(_non_negative("n", n))

    def count_delivery(self, sink: str, result: str, n: int = 1) -> None:
        """Count ``n`` delivery attempts of ``sink`` with ``result``: delivered, retried or dead."""
        if result not in DELIVERY_RESULTS:
            raise ValueError(f"expected a delivery result in {DELIVERY_RESULTS}, got {result!r}")
        self.deliveries.labels(sink, result).inc(_non_negative("n", n))

    # ------------------------------------------------------------------ gauges and timings

    def observe_tick(self, seconds: float) -> None:
        """Record the wall time of one tick (s)."""
        self.tick_duration.observe(seconds)

    def set_backpressure(self, ticks_behind: int, paused: bool) -> None:
        """Ticks due but not run yet, and whether consumption is paused."""
        self.ticks_behind.set(ticks_behind)
        self.backpressure_paused.set(1.0 if paused else 0.0)

    def set_lag(self, topic: str, partition: int, lag: int | None) -> None:
        """Consumer lag of one partition (messages); None removes the series (partition revoked)."""
        if lag is None:
            self.kafka_lag.remove(topic, str(partition))
        else:
            self.kafka_lag.labels(topic, str(partition)).set(lag)

    def set_outbox_depth(self, counts_by_status: Mapping[str, int]) -> None:
        """Outbox events by status; a status seen before and missing now is set to 0."""
        for status in self._outbox_statuses - counts_by_status.keys():
            self.outbox_events.labels(status).set(0)
        for status, n in counts_by_status.items():
            self.outbox_events.labels(status).set(n)
        self._outbox_statuses.update(counts_by_status)

    def observe_checkpoint(self, seconds: float, ts: float) -> None:
        """Record a checkpoint that took ``seconds`` and was written at ``ts`` (Unix seconds)."""
        self.checkpoint_duration.observe(seconds)
        self.last_checkpoint.set(ts)

    # ------------------------------------------------------------------ exposition

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format (``generate_latest``)."""
        return generate_latest(self.registry)


def _non_negative(name: str, n: int) -> int:
    if n < 0:
        raise ValueError(f"{name}: expected a count >= 0, got {n}")
    return n
