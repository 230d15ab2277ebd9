"""Metrics: counters fed from cumulative tallies, per-SLO gauges from a real engine, exposition."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import numpy as np
import pytest
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from engine.batch import EventBatch, EventKey, Rejections
from engine.config import parse_config
from engine.engine import Engine
from engine.evaluator import BudgetPolicy
from engine.io.metrics import Metrics

NS = 1_000_000_000
T0_S = 1_700_000_000  # a multiple of 10 s: window edges fall on bucket edges
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(m: Metrics) -> Samples:
    """Every sample of the exposition, parsed back by prometheus_client's own parser."""
    out: Samples = {}
    for fam in text_string_to_metric_families(m.exposition().decode()):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(smp: Samples, name: str, **labels: str) -> float | None:
    return smp.get((name, frozenset(labels.items())))


def series(smp: Samples, name: str, **labels: str) -> list[dict[str, str]]:
    """Label sets of ``name`` that contain ``labels``."""
    want = set(labels.items())
    return [dict(lab) for (n, lab) in smp if n == name and want <= lab]


def make_engine(objectives: dict[str, float]) -> Engine:
    cfg = parse_config({"slos": [
        {"name": name, "service": name, "objective": obj, "sli": {"availability": {}},
         "alerting": {"require_full_windows": False, "min_events": 0, "keep_firing_for": 0}}
        for name, obj in objectives.items()
    ]})
    return Engine(cfg)


def feed(engine: Engine, service: str, total: int, bad: int, *, start_s: int = T0_S + 1) -> None:
    """``total`` events of ``service`` over 100 s, the first ``bad`` of them 500s."""
    key = engine.keys.intern(EventKey(service))
    ts = start_s * NS + np.arange(total, dtype=np.int64) * (100 * NS // total)
    status = np.where(np.arange(total) < bad, 500, 200)
    engine.ingest(EventBatch.from_arrays(ts, np.full(total, key), status))


# ------------------------------------------------------------------------------------ counters


@pytest.mark.parametrize("seed", [1, 7, 2024])
def test_rejection_counter_adds_deltas_and_never_goes_back(seed: int) -> None:
    print(f"seed={seed}")
    rng = random.Random(seed)
    m = Metrics()
    tally: Counter[str] = Counter()
    expected: Counter[str] = Counter()
    previous: dict[str, float] = {}
    for step in range(60):
        if step == 20:
            tally.clear()  # the same tally restarts: values below the last seen count in full
        if step == 40:
            tally = Counter()  # a new tally object: recognised as new, counted from 0
        for reason in rng.sample(["malformed_json", "missing_ts", "too_far_future"], k=2):
            n = rng.randint(0, 5)
            tally[reason] += n
            expected[reason] += n
        m.count_rejections(tally, source="decode")
        smp = samples(m)
        for reason in expected:
            got = value(smp, "sloburn_events_rejected_total", reason=reason) or 0.0
            assert got >= previous.get(reason, 0.0), f"counter went backwards at step {step}"
            previous[reason] = got
    for reason, n in expected.items():
        assert previous[reason] == n


def test_same_tally_passed_twice_counts_once_and_sources_stay_apart() -> None:
    m = Metrics()
    engine_tally = Rejections()
    engine_tally.add("too_late", 4)
    m.count_rejections(engine_tally)
    m.count_rejections(engine_tally)
    engine_tally.add("too_late", 3)
    m.count_rejections(engine_tally)
    # Plain dicts have no identity that lasts: told apart by source.
    m.count_rejections({"too_late": 10}, source="decode")
    m.count_rejections({"too_late": 12}, source="decode")
    m.count_rejections({"too_late": 1}, source="other")
    assert value(samples(m), "sloburn_events_rejected_total", reason="too_late") == 4 + 3 + 12 + 1


def test_engine_rejections_via_refresh_and_direct_call_are_not_double_counted() -> None:
    engine = make_engine({"api": 99.0})
    feed(engine, "api", total=100, bad=0)
    engine.ingest(EventBatch.from_arrays([(T0_S + 5) * NS] * 3, [engine.key_id("unknown")] * 3, [200] * 3))
    engine.advance((T0_S + 110) * NS)
    m = Metrics()
    m.refresh_from_engine(engine)
    m.count_rejections(engine.rejections)  # what a daemon may do as well
    m.refresh_from_engine(engine)
    smp = samples(m)
    assert value(smp, "sloburn_events_rejected_total", reason="unmatched") == 3
    assert value(smp, "sloburn_events_ingested_total") == 100

    # A new engine (config reload) starts new baselines: its counts add, nothing is lost.
    other = make_engine({"api": 99.0})
    feed(other, "api", total=150, bad=0)
    other.ingest(EventBatch.from_arrays([(T0_S + 5) * NS] * 5, [other.key_id("unknown")] * 5, [200] * 5))
    m.refresh_from_engine(other)
    smp = samples(m)
    assert value(smp, "sloburn_events_ingested_total") == 100 + 150
    assert value(smp, "sloburn_events_rejected_total", reason="unmatched") == 3 + 5


def test_bad_counts_are_refused_with_a_clear_error() -> None:
    m = Metrics()
    with pytest.raises(ValueError, match=r"rejections\['x'\]: expected a count >= 0, got -1"):
        m.count_rejections({"x": -1})
    with pytest.raises(ValueError, match=r"expected a delivery result in .*got 'lost'"):
        m.count_delivery("pagerduty", "lost")
    with pytest.raises(ValueError, match="n: expected a count >= 0, got -2"):
        m.count_messages(-2)


def test_daemon_instruments() -> None:
    m = Metrics()
    m.count_messages(5)
    m.count_messages(2)
    m.count_malformed("truncated", 3)
    m.count_delivery("pagerduty", "delivered")
    m.count_delivery("pagerduty", "retried", 2)
    m.count_delivery("webhook", "dead")
    m.add_rejections({"malformed_json": 2})
    m.add_rejections({"malformed_json": 1})
    m.set_lag("requests", 0, 120)
    m.set_lag("requests", 1, 7)
    m.set_lag("requests", 1, None)  # partition revoked: its series goes away
    m.set_outbox_depth({"pending": 3, "dead": 1})
    m.set_outbox_depth({"pending": 1})  # nothing dead any more
    m.set_backpressure(ticks_behind=4, paused=True)
    for s in (0.002, 0.004, 0.3):
        m.observe_tick(s)
    m.observe_checkpoint(0.07, 1_700_000_123.5)
    smp = samples(m)
    assert value(smp, "sloburn_kafka_messages_consumed_total") == 7
    assert value(smp, "sloburn_kafka_messages_malformed_total", reason="truncated") == 3
    assert value(smp, "sloburn_deliveries_total", sink="pagerduty", result="delivered") == 1
    assert value(smp, "sloburn_deliveries_total", sink="pagerduty", result="retried") == 2
    assert value(smp, "sloburn_deliveries_total", sink="webhook", result="dead") == 1
    assert value(smp, "sloburn_events_rejected_total", reason="malformed_json") == 3
    assert value(smp, "sloburn_kafka_consumer_lag_messages", topic="requests", partition="0") == 120
    assert series(smp, "sloburn_kafka_consumer_lag_messages", partition="1") == []
    assert value(smp, "sloburn_outbox_events", status="pending") == 1
    assert value(smp, "sloburn_outbox_events", status="dead") == 0
    assert value(smp, "sloburn_ticks_behind") == 4
    assert value(smp, "sloburn_backpressure_paused") == 1
    assert value(smp, "sloburn_tick_duration_seconds_count") == 3
    assert value(smp, "sloburn_tick_duration_seconds_sum") == pytest.approx(0.306)
    assert value(smp, "sloburn_tick_duration_seconds_bucket", le="0.005") == 2
    assert value(smp, "sloburn_checkpoint_duration_seconds_count") == 1
    assert value(smp, "sloburn_last_checkpoint_timestamp_seconds") == 1_700_000_123.5
    build = series(smp, "sloburn_build_info")
    assert len(build) == 1 and build[0]["version"]


# ------------------------------------------------------------------------------------ SLO gauges


def test_slo_gauges_from_engine_and_absent_without_data() -> None:
    # 99 % objective: B = 0.01. 1000 events with 5 bad: burn rate 0.5 in every window that holds
    # them all. Budget remaining over the 30-day period: 109 s of history (events from T0 + 1 s,
    # evaluated at T0 + 110 s) extrapolate to 1000 * 30 d / 109 s events, of which 5 are bad.
    engine = make_engine({"api": 99.0, "idle": 99.9})
    feed(engine, "api", total=1000, bad=5)
    engine.advance((T0_S + 110) * NS)
    wall_s = T0_S + 150.0
    m = Metrics(clock=lambda: wall_s)
    m.refresh_from_engine(engine, BudgetPolicy())
    smp = samples(m)

    burns = series(smp, "sloburn_slo_burn_rate", slo="api")
    windows = {b["window"] for b in burns}
    assert windows == {"5m", "30m", "1h", "2h", "6h", "1d", "3d"}
    for w in windows:
        assert value(smp, "sloburn_slo_burn_rate", slo="api", window=w) == pytest.approx(0.5)
    coverage = 109 / (30 * 86400)
    remaining = 1 - 5 / (0.01 * 1000 / coverage)
    assert value(smp, "sloburn_slo_error_budget_remaining_ratio", slo="api") == pytest.approx(remaining)
    assert value(smp, "sloburn_slo_objective_ratio", slo="api") == pytest.approx(0.99)

    # No data: no sample at all (not NaN, not 0), and the policy says so.
    assert series(smp, "sloburn_slo_burn_rate", slo="idle") == []
    assert series(smp, "sloburn_slo_error_budget_remaining_ratio", slo="idle") == []
    assert value(smp, "sloburn_slo_budget_policy_state", slo="idle", state="no_data") == 1
    assert not any(v != v for v in smp.values()), "no NaN anywhere"

    # Exactly one policy state is 1 per SLO: 50 % remaining is healthy (>= 50).
    states = {lab["state"]: value(smp, "sloburn_slo_budget_policy_state", **lab)
              for lab in series(smp, "sloburn_slo_budget_policy_state", slo="api")}
    assert states == {"healthy": 1, "warning": 0, "freeze": 0, "no_data": 0}
    assert value(smp, "sloburn_budget_policy_threshold_ratio", state="warning") == 0.5
    assert value(smp, "sloburn_budget_policy_threshold_ratio", state="freeze") == 0.1

    # Thresholds: SRE Workbook, 30-day period: 2 % of the budget in 1 h -> 0.02 * 720 h / 1 h.
    assert value(smp, "sloburn_slo_burn_rate_factor", slo="api", tier="page_quick", severity="page",
                 long_window="1h", short_window="5m") == pytest.approx(0.02 * 720)
    assert len(series(smp, "sloburn_slo_burn_rate_factor", slo="idle")) == 4

    for slo in ("api", "idle"):
        for sev in ("page", "ticket"):
            assert value(smp, "sloburn_slo_alert_firing", slo=slo, severity=sev) == 0
    assert value(smp, "sloburn_slos") == 2
    assert value(smp, "sloburn_watermark_timestamp_seconds") == T0_S + 110
    assert value(smp, "sloburn_event_time_lag_seconds") == pytest.approx(wall_s - (T0_S + 110))
    assert value(smp, "sloburn_events_ingested_total") == 1000

    # A stricter policy moves the same SLO to another state on the next refresh.
    assert remaining * 100 < 99.99999
    m.refresh_from_engine(engine, BudgetPolicy(warning_below_percent=100, freeze_below_percent=99.99999))
    assert value(samples(m), "sloburn_slo_budget_policy_state", slo="api", state="freeze") == 1


def test_firing_alert_and_before_first_evaluation() -> None:
    engine = make_engine({"pay": 99.9})
    m = Metrics()
    m.refresh_from_engine(engine)
    smp = samples(m)
    assert series(smp, "sloburn_watermark_timestamp_seconds") == []
    assert series(smp, "sloburn_event_time_lag_seconds") == []
    assert value(smp, "sloburn_slo_budget_policy_state", slo="pay", state="no_data") == 1

    # 10 % errors against a 0.1 % budget: burn rate 100 > 14.4 in both page_quick windows.
    feed(engine, "pay", total=200, bad=20)
    alerts = engine.advance((T0_S + 110) * NS)
    m.refresh_from_engine(engine)
    smp = samples(m)
    assert [(a.slo, a.severity, a.action) for a in alerts] == [("pay", "page", "trigger")]
    assert value(smp, "sloburn_slo_alert_firing", slo="pay", severity="page") == 1
    assert value(smp, "sloburn_slo_burn_rate", slo="pay", window="5m") == pytest.approx(0.1 / 0.001)
    # 20 bad of 200 in 109 s of history, extrapolated over the 30-day period: 99.58 % left.
    remaining = 1 - 20 / (0.001 * 200 / (109 / (30 * 86400)))
    assert value(smp, "sloburn_slo_error_budget_remaining_ratio", slo="pay") == pytest.approx(remaining)
    assert value(smp, "sloburn_slo_budget_policy_state", slo="pay", state="healthy") == 1


# ------------------------------------------------------------------------------------ exposition


def test_exposition_parses_and_registries_are_private() -> None:
    engine = make_engine({"api": 99.0})
    feed(engine, "api", total=50, bad=1)
    engine.advance((T0_S + 110) * NS)
    m1, m2 = Metrics(), Metrics()  # two instances, no clash: each has its own registry
    m1.refresh_from_engine(engine)
    m2.count_messages(1)
    fams: dict[str, Any] = {f.name: f for f in text_string_to_metric_families(m1.exposition().decode())}
    assert all(name.startswith("sloburn_") for name in fams)
    assert fams["sloburn_slo_burn_rate"].type == "gauge"
    assert fams["sloburn_events_rejected"].type == "counter"
    assert fams["sloburn_tick_duration_seconds"].type == "histogram"
    assert all(f.documentation for f in fams.values())
    assert not any(name.startswith("sloburn_") for name in REGISTRY._names_to_collectors)

    # The SLO collector describes its names: a second Metrics on the same registry is refused.
    shared = CollectorRegistry()
    Metrics(shared)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        Metrics(shared)
