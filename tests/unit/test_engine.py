"""Engine behaviour that does not need the reference: batching invariance, lateness, counting."""

from __future__ import annotations

import numpy as np
import pytest

from engine.batch import EventBatch
from engine.config import Config, parse_config
from engine.engine import Engine
from engine.store import recompute_window_sums, restore, snapshot

NS = 1_000_000_000
T0 = 1_700_000_000


def _cfg(**engine: object) -> Config:
    return parse_config({
        "slos": [
            {"name": "avail", "service": "api", "objective": 99.0, "period": "1d",
             "sli": {"availability": {"bad_status": ["5xx", 429], "exclude_status": ["4xx"]}},
             "alerting": {"windows": [
                 {"name": "fast", "severity": "page", "long_window": "10m", "short_window": "1m",
                  "factor": 10},
                 {"name": "slow", "severity": "ticket", "long_window": "1h", "short_window": "5m",
                  "factor": 2}]}},
            {"name": "lat", "service": "api", "route": "/pay", "objective": 95.0, "period": "1d",
             "sli": {"latency": {"threshold_ms": 200}},
             "alerting": {"windows": [
                 {"name": "fast", "severity": "page", "long_window": "10m", "short_window": "1m",
                  "factor": 5}]}},
        ],
        "engine": engine,
    })


def _stream(eng: Engine, seed: int, hours: float = 2.0) -> EventBatch:
    rng = np.random.default_rng(seed)
    n = int(hours * 3600 * 5)
    ts = T0 * NS + np.sort(rng.integers(0, int(hours * 3600 * NS), n))
    rel = (ts - T0 * NS) / NS
    incident = (rel > 1800) & (rel < 2700)
    status = np.where(rng.random(n) < np.where(incident, 0.3, 0.002), 503, 200)
    status = np.where(rng.random(n) < 0.05, 404, status)
    lat = rng.lognormal(np.log(np.where(incident, 250.0, 60.0)), 0.4) * 1000
    keys = np.array([eng.key_id("api", "/pay"), eng.key_id("api", "/cart")], np.int32)
    return EventBatch.from_arrays(ts, keys[rng.integers(0, 2, n)], status, lat)


def _timeline(events: list) -> list[tuple]:
    return [(a.slo, a.severity, a.action, a.ts, a.tier, tuple(a.burn_rates.items())) for a in events]


@pytest.mark.parametrize("seed", [1, 2])
def test_batching_does_not_change_alerts(seed: int) -> None:
    one = Engine(_cfg())
    batch = _stream(one, seed)
    whole = one.advance(0)
    one.ingest(batch)
    whole += one.advance(int(batch.ts_ns[-1]) + NS)
    assert any(a.action == "trigger" for a in whole), "the stream must page to test anything"

    other = Engine(_cfg())
    assert _stream(other, seed).ts_ns.tolist() == batch.ts_ns.tolist()
    rng = np.random.default_rng(seed + 100)
    cuts = np.sort(rng.integers(0, len(batch), 40))
    pieces = np.split(np.arange(len(batch)), cuts)
    got = []
    for idx in pieces:
        part = batch.take(idx)
        if len(part) == 0:
            continue
        # Shuffle within each piece: order inside a batch must not matter.
        part = part.take(rng.permutation(len(part)))
        other.ingest(part)
        got += other.advance(int(part.ts_ns.min()) - 1)
    got += other.advance(int(batch.ts_ns[-1]) + NS)
    assert _timeline(got) == _timeline(whole)
    assert other.window_counts("avail") == one.window_counts("avail")


def test_excluded_and_unmatched_are_counted() -> None:
    eng = Engine(_cfg())
    k = eng.key_id("api", "/pay")
    other = eng.key_id("billing")
    ts = (T0 + np.arange(10)) * NS
    b = EventBatch.from_arrays(ts, [k] * 5 + [other] * 5, [200, 404, 503, 429, 200] + [200] * 5,
                               [10_000.0, np.nan, 300_000.0, 10_000.0, 10_000.0] + [1.0] * 5)
    eng.ingest(b)
    eng.advance((T0 + 20) * NS)
    assert eng.rejections["unmatched"] == 5
    assert eng.window_counts("avail")[600] == (2, 4)  # 404 excluded; 503 and 429 (narrower than 4xx) bad
    assert eng.window_counts("lat")[600] == (1, 4)    # NaN latency not counted; 300 ms bad
    assert eng.uncounted_by_slo()["avail"]["excluded_status"] == 1
    assert eng.uncounted_by_slo()["lat"]["no_latency"] == 1


def test_late_events_counted_or_rejected() -> None:
    eng = Engine(_cfg(max_late_s=60))
    k = eng.key_id("api", "/pay")
    eng.ingest(EventBatch.from_arrays([T0 * NS], [k], [200], [1.0]))
    eng.advance((T0 + 300) * NS)
    assert eng.window_counts("avail")[600] == (0, 1)
    late_ok = (T0 + 250) * NS
    too_late = (T0 + 100) * NS
    eng.ingest(EventBatch.from_arrays([late_ok, too_late], [k, k], [503, 503], [1.0, 1.0]))
    eng.advance((T0 + 301) * NS)
    assert eng.window_counts("avail")[600] == (1, 2)
    assert eng.rejections["too_late"] == 1
    assert eng.late_events_accepted == 1


def test_watermark_holds_back_future_events() -> None:
    eng = Engine(_cfg())
    k = eng.key_id("api", "/pay")
    eng.ingest(EventBatch.from_arrays([T0 * NS, (T0 + 5) * NS], [k, k], [200, 503], [1.0, 1.0]))
    eng.advance((T0 + 5) * NS)
    # The instant T0+5 counts events before it: the 503 at exactly T0+5 waits for T0+6.
    assert eng.window_counts("avail")[600] == (0, 1)
    assert eng.pending_events == 1
    eng.advance((T0 + 6) * NS)
    assert eng.window_counts("avail")[600] == (1, 2)


@pytest.mark.parametrize("seed", [3, 4])
def test_snapshot_restore_continues_identically(seed: int) -> None:
    ref = Engine(_cfg())
    batch = _stream(ref, seed)
    cut = len(batch) // 2
    mid = int(batch.ts_ns[cut])
    ref.ingest(batch)
    ref_events = ref.advance(mid) + ref.advance(int(batch.ts_ns[-1]) + NS)

    a = Engine(_cfg())
    _stream(a, seed)
    a.ingest(batch.take(slice(0, cut + 100)))  # some events stay pending across the snapshot
    first = a.advance(mid)
    header, arrays = snapshot(a)
    b = Engine(_cfg())
    report = restore(b, header, arrays)
    assert report.kept == ["avail", "lat"] and report.fresh == []
    b.ingest(batch.take(slice(cut + 100, None)))
    rest = b.advance(int(batch.ts_ns[-1]) + NS)
    assert _timeline(first + rest) == _timeline(ref_events)
    for slo in ("avail", "lat"):
        assert b.window_counts(slo) == ref.window_counts(slo)
    assert b.latency_percentiles_ms("lat") == ref.latency_percentiles_ms("lat")


def test_restore_with_changed_slo_starts_it_fresh() -> None:
    a = Engine(_cfg())
    batch = _stream(a, 5, hours=0.5)
    a.ingest(batch)
    a.advance(int(batch.ts_ns[-1]))
    header, arrays = snapshot(a)
    changed = parse_config({"slos": [
        {"name": "avail", "service": "api", "objective": 99.0, "period": "1d",
         "sli": {"availability": {"bad_status": ["5xx", 429], "exclude_status": ["4xx"]}},
         "alerting": {"windows": [
             {"name": "fast", "severity": "page", "long_window": "10m", "short_window": "1m", "factor": 10},
             {"name": "slow", "severity": "ticket", "long_window": "1h", "short_window": "5m",
              "factor": 2}]}},
        {"name": "lat", "service": "api", "route": "/pay", "objective": 99.0, "period": "1d",
         "sli": {"latency": {"threshold_ms": 200}},
         "alerting": {"windows": [
             {"name": "fast", "severity": "page", "long_window": "10m", "short_window": "1m",
              "factor": 5}]}},
    ]})
    b = Engine(changed)
    report = restore(b, header, arrays)
    assert report.kept == ["avail"] and report.fresh == ["lat"]
    assert b.window_counts("avail")[3600] == a.window_counts("avail")[3600]
    assert all(total == 0 for _, total in b.window_counts("lat").values())


def test_window_sums_match_rings() -> None:
    eng = Engine(_cfg())
    batch = _stream(eng, 6, hours=1.5)
    eng.ingest(batch)
    eng.advance(int(batch.ts_ns[-1]))
    before = eng._wsum.copy()
    recompute_window_sums(eng)
    assert np.array_equal(before, eng._wsum)


def test_latency_percentiles_cover_the_histogram_window() -> None:
    from hdrh.histogram import HdrHistogram

    cfg = parse_config({"slos": [{"name": "lat", "service": "api", "objective": 99, "period": "1d",
                                  "sli": {"latency": {"threshold_ms": 200}},
                                  "alerting": {"windows": [{"name": "p", "severity": "page",
                                                            "long_window": "10m", "short_window": "1m",
                                                            "factor": 5}]}}],
                        "engine": {"histogram_slot_s": 60, "histogram_window_s": 180}})
    eng = Engine(cfg)
    k = eng.key_id("api")
    rng = np.random.default_rng(11)
    n = 20_000
    ts = T0 * NS + np.sort(rng.integers(0, 1200 * NS, n))
    lat_us = np.round(rng.lognormal(np.log(50_000), 0.8, n) * (1 + (ts - T0 * NS) / (600 * NS)))
    batch = EventBatch.from_arrays(ts, np.full(n, k), np.full(n, 200), lat_us)
    checked = 0
    prev = 0
    for cut in range(1, 20):
        e = (T0 + 60 * cut + 7) * NS
        # Events beyond the instant are ingested too: they must wait, not show in the window.
        eng.ingest(batch.take((ts >= prev) & (ts < e + 30 * NS)))
        eng.advance(e)
        prev = e + 30 * NS
        # Slots are whole minutes; the window is the 3 slots ending with the one holding E - 1 s.
        first_slot_start = ((e - NS) // (60 * NS) - 2) * 60 * NS
        sel = lat_us[(ts >= first_slot_start) & (ts < e)]
        h = HdrHistogram(1, 3_600_000_000, 2)
        for v in sel:
            h.record_value(int(v))
        got = eng.latency_percentiles_ms("lat")
        assert got is not None
        want = {f"p{q}": h.get_value_at_percentile(q) / 1000.0 for q in (50, 95, 99)}
        assert got == want, f"at minute {cut}"
        checked += 1
    assert checked == 19


def test_warm_up_guard_waits_for_a_full_long_window() -> None:
    def cfg(require_full: bool) -> Config:
        return parse_config({"slos": [{
            "name": "a", "service": "api", "objective": 99.0, "period": "1d",
            "sli": {"availability": {}},
            "alerting": {"require_full_windows": require_full, "min_events": 0, "windows": [
                {"name": "fast", "severity": "page", "long_window": "10m", "short_window": "1m",
                 "factor": 10}]}}]})

    first_pages = {}
    for require_full in (True, False):
        eng = Engine(cfg(require_full))
        k = eng.key_id("api")
        # 100 % errors from the very first second: only the guard stands between them and a page.
        ts = (T0 + np.arange(1200)) * NS
        eng.ingest(EventBatch.from_arrays(ts, np.full(1200, k), np.full(1200, 500)))
        events = eng.advance((T0 + 1200) * NS)
        first_pages[require_full] = events[0].ts - T0
    # History starts at T0 (first instant T0 + 1 s): the 10-minute window is full at T0 + 600 s.
    assert first_pages == {True: 600.0, False: 1.0}
