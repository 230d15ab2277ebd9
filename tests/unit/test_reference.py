"""The reference model against numbers worked out by hand and against slo-math.md.

The reference (tests/reference.py) is the oracle the engine is compared with, so it is checked here
on its own: window bounds and resolutions, classification, instants, ``for``, ``keep_firing_for``,
ticket suppression, the low-traffic guard, lateness, and the Workbook detection and reset times.
"""

from __future__ import annotations

import numpy as np
import pytest

from engine.alerts import AlertEvent, dedup_key
from engine.batch import EventBatch, EventKey
from engine.config import parse_config
from tests.reference import (
    NS_PER_S,
    ReferenceEngine,
    serving_resolution_s,
    window_start_ns,
)
from tests.streams import (
    CHECKOUT,
    DETECTION_TABLE_S,
    ONSET_NS,
    ONSET_S,
    PAGE_AT,
    RESET_1H_5M_S,
    RESET_6H_30M_S,
    STEP_60S,
    WORKBOOK_TIERS,
    chunk_bounds,
    detection_s,
    first,
    random_config,
    random_stream,
    run_in_order,
    seconds_stream,
    step_stream,
    tier,
    tiny_config,
    workbook_config,
)


def timeline(alerts: list[AlertEvent]) -> list[tuple[str, str, float, str]]:
    """(severity, action, seconds after ONSET, tier) of each alert."""
    return [(a.severity, a.action, a.ts - ONSET_S, a.tier) for a in alerts]


# ---------------------------------------------------------------------------------------------
# Windows


@pytest.mark.parametrize(
    ("window_s", "step_s", "expected_s"),
    [
        (300, 1, 10),  # 5m: 30 buckets of 10 s
        (3600, 1, 60),  # 1h: 60 x 1 min (3600 / 300 = 12 < 30)
        (1800, 1, 60),  # 30m: exactly 30 x 1 min
        (7200, 1, 60),  # 2h: 120 x 1 min (24 x 5 min is too few)
        (21600, 1, 300),  # 6h: 72 x 5 min
        (86400, 1, 300),  # 1d: 288 x 5 min (24 x 1 h is too few)
        (259200, 1, 3600),  # 3d: 72 x 1 h
        (2592000, 1, 3600),  # 30d
        (29, 1, 1),  # no resolution with 30 buckets: the step
        (10, 1, 1),
        (90, 2, 2),  # 10 s gives 9 buckets; the step gives 45
        (45, 5, 5),  # fewer than 30 buckets of anything: the step
        (7200, 15, 60),  # 10 s and 1 s are not multiples of a 15 s step
        (450, 15, 15),
        (300, 10, 10),
        (280, 10, 10),  # 28 buckets of 10 s: fallback to the step, which is also 10
        (600, 7, 7),  # 600 is no multiple of 7, but the fallback is the step all the same
    ],
)
def test_serving_resolution_rule(window_s: int, step_s: int, expected_s: int) -> None:
    assert serving_resolution_s(window_s, step_s) == expected_s


def test_window_start_is_exact_on_bucket_edges_and_drops_whole_buckets_between() -> None:
    w, r, step = 300, 10, 1
    base = ONSET_NS
    assert window_start_ns(base + 1000 * NS_PER_S, w, r, step) == base + 700 * NS_PER_S
    # One step past the edge, the bucket holding the last step is a new one: the oldest leaves.
    assert window_start_ns(base + 1001 * NS_PER_S, w, r, step) == base + 710 * NS_PER_S
    assert window_start_ns(base + 1009 * NS_PER_S, w, r, step) == base + 710 * NS_PER_S
    assert window_start_ns(base + 1010 * NS_PER_S, w, r, step) == base + 710 * NS_PER_S
    assert window_start_ns(base + 1011 * NS_PER_S, w, r, step) == base + 720 * NS_PER_S
    # With a 10 s step every instant is an edge of the 10 s buckets.
    assert window_start_ns(base + 1010 * NS_PER_S, w, r, 10) == base + 710 * NS_PER_S
    assert window_start_ns(base + 1020 * NS_PER_S, w, r, 10) == base + 720 * NS_PER_S


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_prefix_sums_equal_the_literal_sum_over_events(seed: int) -> None:
    rng = np.random.default_rng(seed)
    duration_s = 900
    raw = random_config(rng, duration_s=duration_s)
    cfg = parse_config(raw)
    lateness_s = cfg.engine.allowed_lateness_s
    stream = random_stream(rng, start_s=ONSET_S, duration_s=duration_s,
                           slos=cfg.slos, lateness_s=lateness_s)
    ref = ReferenceEngine(cfg, record_counts=True)
    max_ts = None
    for lo, hi in chunk_bounds(rng, len(stream), 400):
        ref.ingest(stream.batch(ref.keys, slice(lo, hi)))
        top = int(stream.ts_ns[lo:hi].max())
        max_ts = top if max_ts is None else max(max_ts, top)
        ref.advance(max_ts - round(lateness_s * NS_PER_S))
    assert ref.rejections["too_late"] == 0, f"seed {seed}"
    instants = sorted(next(iter(ref.counts_history.values())))
    for e_ns in rng.choice(instants, size=25, replace=False).tolist():
        for m in ref.models:
            name = m.slo.name
            assert ref.counts_history[name][e_ns] == ref.window_counts_bruteforce(name, e_ns), (
                f"seed {seed}, {name} at {e_ns}")


# ---------------------------------------------------------------------------------------------
# Classification and matching

PAY_EU = EventKey("checkout", "/pay", "POST", (("region", "eu"), ("zone", "b")))


def test_classification_and_matching() -> None:
    cfg = parse_config({
        "slos": [
            {"name": "avail", "service": "checkout", "objective": 99,
             "sli": {"availability": {"bad_status": ["5xx", 429], "exclude_status": [404, "500-501"]}}},
            {"name": "lat", "service": "checkout", "objective": 99,
             "sli": {"latency": {"threshold_ms": 100, "exclude_status": ["5xx"]}}},
            {"name": "narrow", "service": "checkout", "route": "/pay", "operation": "POST",
             "match_labels": {"region": "eu"}, "objective": 99,
             "sli": {"availability": {}}},
        ],
    })
    ref = ReferenceEngine(cfg)
    other = [EventKey("checkout", "/pay", "GET", (("region", "eu"),)),
             EventKey("checkout", "/", "POST", (("region", "eu"),)),
             EventKey("checkout", "/pay", "POST", (("region", "us"),)),
             EventKey("checkout", "/pay", "POST"),
             EventKey("search", "/pay", "POST", (("region", "eu"),))]
    rows = [  # key, status, latency_us, weight
        (PAY_EU, 200, 100_000.0, 1),  # avail good; lat good (equal is good); narrow good
        (PAY_EU, 503, 100_000.5, 7),  # avail bad; lat excluded (5xx); narrow bad
        (PAY_EU, 404, 250_000.0, 1),  # avail excluded; lat bad; narrow good
        (PAY_EU, 500, 250_000.0, 1),  # avail excluded ("500-501" beats 5xx); lat excluded; narrow bad
        (PAY_EU, 429, float("nan"), 2),  # avail bad; lat: no latency, not counted; narrow good
        (PAY_EU, 0, 100_000.5, 3),  # avail: no status, not counted; lat bad; narrow: not counted
        *((k, 503, 1.0, 1) for k in other[:4]),  # avail bad x4, lat excluded x4, narrow: no match
        (other[4], 503, 1.0, 1),  # another service: nothing
    ]
    ids = [ref.keys.intern(k) for k, *_ in rows]
    ts = ONSET_NS + np.arange(len(rows), dtype=np.int64)
    ref.ingest(EventBatch.from_arrays(ts, ids, [r[1] for r in rows], [r[2] for r in rows],
                                      [r[3] for r in rows]))
    ref.advance(ONSET_NS + NS_PER_S)
    period = 30 * 86400
    assert ref.window_counts("avail")[period] == (7 + 2 + 4, 1 + 7 + 2 + 4)
    assert ref.window_counts("lat")[period] == (1 + 3, 1 + 1 + 3)
    assert ref.window_counts("narrow")[period] == (7 + 1, 1 + 7 + 1 + 1 + 2)


@pytest.mark.parametrize(
    ("bad", "exclude", "expected"),
    [
        # Statuses 200, 404, 429, 500, 501, 503.
        # A code listed as bad beats an excluded class: 429 bad, 404 excluded, the rest good but 503.
        ([503, "429"], ["4xx"], (2, 5)),
        # A range beats a class: 500 and 501 leave the 5xx bad class.
        (["5xx"], ["500-501"], (1, 4)),
        # An exact tie excludes.
        ([503, 429], [503, 429], (0, 4)),
        (["5xx"], ["5xx"], (0, 3)),
    ],
)
def test_overlapping_status_lists_narrowest_matcher_wins(
        bad: list[str | int], exclude: list[str | int], expected: tuple[int, int]) -> None:
    cfg = parse_config({"slos": [{"name": "a", "service": "checkout", "objective": 99,
                                  "sli": {"availability": {"bad_status": bad, "exclude_status": exclude}}}]})
    ref = ReferenceEngine(cfg)
    statuses = [200, 404, 429, 500, 501, 503]
    key = ref.keys.intern(CHECKOUT)
    ref.ingest(EventBatch.from_arrays([ONSET_NS] * len(statuses), [key] * len(statuses), statuses))
    ref.advance(ONSET_NS + NS_PER_S)
    assert ref.window_counts("a")[30 * 86400] == expected


# ---------------------------------------------------------------------------------------------
# Instants


def test_first_instant_and_events_on_an_instant_wait_for_the_next() -> None:
    ref = ReferenceEngine(parse_config(tiny_config([tier("p", "page", 5)])))
    assert ref.advance(ONSET_NS + 100 * NS_PER_S) == []
    assert ref.last_eval_ns is None
    key = ref.keys.intern(CHECKOUT)
    # t0 = ONSET + 2.5 s: the first instant is ONSET + 3 s.
    ts = [ONSET_NS + 2_500_000_000, ONSET_NS + 3 * NS_PER_S, ONSET_NS + 3 * NS_PER_S - 1]
    ref.ingest(EventBatch.from_arrays(ts, [key] * 3, [200] * 3))
    ref.advance(ONSET_NS + 3 * NS_PER_S - 1)
    assert ref.last_eval_ns is None
    ref.advance(ONSET_NS + 3 * NS_PER_S)
    assert ref.last_eval_ns == ONSET_NS + 3 * NS_PER_S
    assert ref.window_counts("tiny")[10] == (0, 2)  # the event at exactly E waits
    ref.advance(ONSET_NS + 4 * NS_PER_S + 999)
    assert ref.last_eval_ns == ONSET_NS + 4 * NS_PER_S
    assert ref.window_counts("tiny")[10] == (0, 3)


def test_window_counts_follow_the_sliding_window() -> None:
    ref = ReferenceEngine(parse_config(tiny_config([tier("p", "page", 5)])), record_counts=True)
    stream = seconds_stream(STEP_60S)
    run_in_order(ref, stream, ONSET_NS + 70 * NS_PER_S)
    for i in range(1, 71):
        bad = max(0, min(i, 30) - max(i - 10, 10))
        total = min(i, 60) - max(i - 10, 0)
        counts = ref.counts_history["tiny"][ONSET_NS + i * NS_PER_S]
        assert counts[10] == (bad, total), f"E = ONSET + {i} s"
        assert counts[86400] == (max(0, min(i, 30) - 10), min(i, 60)), f"E = ONSET + {i} s"


# ---------------------------------------------------------------------------------------------
# Alert state machine


def test_for_and_keep_firing_for() -> None:
    # Condition b >= 6 holds at ONSET + 16 .. 34; `for` 3 s -> active 19 .. 34; inactive from 35,
    # keep_firing_for 4 s -> resolve when inactive at E - 4 .. E, i.e. at 39.
    cfg = parse_config(tiny_config([tier("p", "page", 5, for_s=3)], keep_firing_for="4s"))
    ref = ReferenceEngine(cfg)
    alerts = run_in_order(ref, seconds_stream(STEP_60S), ONSET_NS + 70 * NS_PER_S)
    assert timeline(alerts) == [("page", "trigger", 19, "p"), ("page", "resolve", 39, "p")]
    trig, res = alerts
    assert trig.burn_rates == {"10s": (9 / 10) / 0.1}
    # 1-day period, history from ONSET: 19 s and 39 s of it, extrapolated to the whole day.
    assert trig.budget_remaining == 1 - 9 / (0.1 * (19 / (19 / 86400)))
    assert res.burn_rates == {"10s": (1 / 10) / 0.1}
    assert res.budget_remaining == 1 - 20 / (0.1 * (39 / (39 / 86400)))
    assert trig.dedup_key == res.dedup_key == dedup_key("tiny", "page")


def test_for_counts_only_instants_that_were_evaluated() -> None:
    # The condition holds from the first instant on; `for` 5 s needs 6 instants of it.
    cfg = parse_config(tiny_config([tier("p", "page", 5, for_s=5)]))
    ref = ReferenceEngine(cfg)
    alerts = run_in_order(ref, seconds_stream([500] * 20), ONSET_NS + 30 * NS_PER_S)
    assert timeline(alerts)[0] == ("page", "trigger", 6, "p")


def test_burn_rates_must_exceed_the_factor_in_both_windows() -> None:
    # Long 20 s, short 10 s, factor 5 (error ratio > 0.5). At ONSET + 20 the long window holds 10
    # bad of 20 (burn exactly 5: no), at 21 11 of 20; at 35 the short window holds 5 of 10 (exactly
    # 5: no) while the long one still holds 15 of 20. So the tier holds at 21 .. 34.
    cfg = parse_config(tiny_config([{"name": "p", "severity": "page", "factor": 5, "long_window": 20,
                                     "short_window": 10}]))
    alerts = run_in_order(ReferenceEngine(cfg), seconds_stream(STEP_60S), ONSET_NS + 70 * NS_PER_S)
    assert timeline(alerts) == [("page", "trigger", 21, "p"), ("page", "resolve", 35, "p")]
    assert alerts[0].burn_rates == {"20s": (11 / 20) / 0.1, "10s": (10 / 10) / 0.1}


@pytest.mark.parametrize("suppress", [True, False])
def test_ticket_suppressed_while_the_page_fires(suppress: bool) -> None:
    # Page: b >= 6 at 16 .. 34 -> trigger 16, resolve 35. Ticket: b >= 3 at 13 .. 37, `for` 5 s
    # -> active 18 .. 37, resolve 38; suppressed, it may only trigger once the page has resolved.
    cfg = parse_config(tiny_config([tier("p", "page", 5), tier("t", "ticket", 2, for_s=5)],
                                   suppress_ticket_while_paging=suppress))
    ref = ReferenceEngine(cfg)
    alerts = run_in_order(ref, seconds_stream(STEP_60S), ONSET_NS + 70 * NS_PER_S)
    ticket_at = 35 if suppress else 18
    expected = [("page", "trigger", 16, "p"), ("ticket", "trigger", ticket_at, "t"),
                ("page", "resolve", 35, "p"), ("ticket", "resolve", 38, "t")]
    assert timeline(alerts) == sorted(expected, key=lambda a: (a[2], a[0] != "page"))


def test_first_active_tier_names_the_trigger_and_the_resolve() -> None:
    # "a" (b >= 3 at 13 .. 37, `for` 3 s) and "b" (b >= 6 at 16 .. 34) both become active at 16:
    # the catalog order names "a"; "a" stays active until 37, so the page resolves at 38.
    cfg = parse_config(tiny_config([tier("a", "page", 2, for_s=3), tier("b", "page", 5)]))
    alerts = run_in_order(ReferenceEngine(cfg), seconds_stream(STEP_60S), ONSET_NS + 70 * NS_PER_S)
    assert timeline(alerts) == [("page", "trigger", 16, "a"), ("page", "resolve", 38, "a")]
    # Listed the other way round, "b" is first.
    cfg = parse_config(tiny_config([tier("b", "page", 5), tier("a", "page", 2, for_s=3)]))
    alerts = run_in_order(ReferenceEngine(cfg), seconds_stream(STEP_60S), ONSET_NS + 70 * NS_PER_S)
    assert timeline(alerts) == [("page", "trigger", 16, "b"), ("page", "resolve", 38, "b")]


@pytest.mark.parametrize(("min_events", "fires"), [(10, True), (11, False), (0, True)])
def test_min_events_guard(min_events: int, fires: bool) -> None:
    cfg = parse_config(tiny_config([tier("p", "page", 5)], min_events=min_events))
    alerts = run_in_order(ReferenceEngine(cfg), seconds_stream(STEP_60S), ONSET_NS + 70 * NS_PER_S)
    assert (timeline(alerts)[:1] == [("page", "trigger", 16, "p")]) is fires
    assert bool(alerts) is fires


def test_disabled_severity_never_fires() -> None:
    cfg = parse_config(tiny_config([tier("p", "page", 5), tier("t", "ticket", 2)], disable=["page"]))
    alerts = run_in_order(ReferenceEngine(cfg), seconds_stream(STEP_60S), ONSET_NS + 70 * NS_PER_S)
    assert timeline(alerts) == [("ticket", "trigger", 13, "t"), ("ticket", "resolve", 38, "t")]


# ---------------------------------------------------------------------------------------------
# Lateness


def test_late_events_within_max_late_count_and_older_ones_are_rejected() -> None:
    raw = tiny_config([tier("p", "page", 5, window_s=600)])
    raw["engine"]["max_late_s"] = 300
    ref = ReferenceEngine(parse_config(raw))
    key = ref.keys.intern(CHECKOUT)
    t = ONSET_NS + 1000 * NS_PER_S
    ref.ingest(EventBatch.from_arrays([ONSET_NS], [key], [200]))
    ref.advance(t)
    assert ref.window_counts("tiny")[600] == (0, 0)
    late = [t - 300 * NS_PER_S, t - 300 * NS_PER_S - 1, t - 1, t, t - 400 * NS_PER_S]
    ref.ingest(EventBatch.from_arrays(late, [key] * 5, [500] * 5, weight=[1, 2, 4, 8, 16]))
    assert ref.rejections == {"too_late": 2}
    ref.advance(t + NS_PER_S)
    # Window 600 s (60 buckets of 10 s) at t + 1 s: [t - 590 s, t + 1 s) holds the accepted late
    # events (weights 1 and 4) and the one at t (8); the period window also holds the first event.
    assert ref.window_counts("tiny")[600] == (13, 13)
    assert ref.window_counts("tiny")[86400] == (13, 14)


# ---------------------------------------------------------------------------------------------
# slo-math.md: detection table and reset times


def _after_s(ratio: float) -> int:
    """How long to run after the onset: past the latest detection, and past saturation of every
    window whose tier must never fire."""
    cells = DETECTION_TABLE_S[ratio]
    ends = [c + 4200 for c in cells if c is not None]
    ends += [long_s + short_s for (_, _, long_s, short_s, _), c in zip(WORKBOOK_TIERS, cells, strict=True)
             if c is None]
    return int(max(ends))


@pytest.mark.parametrize("ratio", sorted(DETECTION_TABLE_S, reverse=True))
def test_detection_table_per_tier(ratio: float) -> None:
    step_s = 10
    cfg = parse_config(workbook_config(step_s=step_s))
    ref = ReferenceEngine(cfg, record_conditions=True)
    after_s = _after_s(ratio)
    stream = step_stream(history_s=3 * 86400, phases=[(after_s, ratio)])
    run_in_order(ref, stream, ONSET_NS + after_s * NS_PER_S, chunk_s=6 * 3600)
    for (name, _, long_s, _, pct), cell in zip(WORKBOOK_TIERS, DETECTION_TABLE_S[ratio], strict=True):
        held = [e for e, h in ref.condition_edges[("checkout-availability", name)] if h]
        exact = detection_s(ratio, pct)
        if cell is None:
            assert exact >= long_s, f"slo-math.md says never, the formula gives {exact} s"
            assert held == [], f"{name} at e={ratio}: expected never, held at {held[:1]}"
            continue
        r_s = serving_resolution_s(long_s, step_s)
        tol_s = r_s + step_s
        got_s = (held[0] - ONSET_NS) / NS_PER_S if held else None
        assert got_s is not None and abs(got_s - exact) <= tol_s, (
            f"{name} at e={ratio}: condition first held {got_s} s after onset, expected {exact:.1f} s "
            f"(slo-math.md: {cell:.0f} s) within one {r_s} s bucket + one {step_s} s step")


@pytest.mark.parametrize("ratio", sorted(PAGE_AT, reverse=True))
def test_detection_table_page_at(ratio: float) -> None:
    expected = PAGE_AT[ratio]
    # Paging rows need six hours of history (page_slow); the ticket-only rows three days (ticket_slow),
    # evaluated every 10 s to keep the run short.
    step_s, history_s = (1, 6 * 3600) if expected else (10, 3 * 86400)
    after_s = int(expected[0] + 1800) if expected else _after_s(ratio)
    ref = ReferenceEngine(parse_config(workbook_config(step_s=step_s)))
    stream = step_stream(history_s=history_s, phases=[(after_s, ratio)])
    alerts = run_in_order(ref, stream, ONSET_NS + after_s * NS_PER_S, chunk_s=6 * 3600)
    page = first(alerts, "page")
    if expected is None:
        assert page is None, f"e={ratio}: expected no page, got {timeline([page])}"
        ticket = first(alerts, "ticket")
        if ratio == 0.003:
            tol_s = 3600 + step_s
            assert ticket is not None and ticket.tier == "ticket_slow", timeline(alerts)
            assert abs(ticket.ts - ONSET_S - 24 * 3600) <= tol_s, (
                f"ticket at {ticket.ts - ONSET_S} s, expected 24 h within one 1 h bucket + one step")
        else:
            assert alerts == [], f"e={ratio}: expected nothing, got {timeline(alerts)}"
        return
    at_s, tier_name = expected
    assert page is not None, f"e={ratio}: expected a page at about {at_s} s, got none"
    long_s = next(t[2] for t in WORKBOOK_TIERS if t[0] == tier_name)
    r_s = serving_resolution_s(long_s, step_s)
    exact = detection_s(ratio, next(t[4] for t in WORKBOOK_TIERS if t[0] == tier_name))
    assert page.tier == tier_name
    assert abs(page.ts - ONSET_S - exact) <= r_s + step_s, (
        f"e={ratio}: page at {page.ts - ONSET_S} s, expected {exact:.1f} s (slo-math.md: {at_s:.0f} s) "
        f"within one {r_s} s bucket + one {step_s} s step")


@pytest.mark.parametrize(
    ("windows", "expected_s", "short_s"),
    [
        ([{"name": "page_quick", "severity": "page", "budget_percent": 2, "long_window": "1h",
           "short_window": "5m"}], RESET_1H_5M_S, 300),
        ("sre-workbook", RESET_6H_30M_S, 1800),
    ],
    ids=["1h/5m", "6h/30m"],
)
def test_reset_after_a_full_outage(windows: object, expected_s: float, short_s: int) -> None:
    step_s = 1
    ref = ReferenceEngine(parse_config(workbook_config(step_s=step_s, windows=windows)))
    outage_s, after_s = 3600, 3600
    stream = step_stream(history_s=6 * 3600, phases=[(outage_s, 1.0), (after_s, 0.0)])
    alerts = run_in_order(ref, stream, ONSET_NS + (outage_s + after_s) * NS_PER_S)
    pages = [a for a in alerts if a.severity == "page"]
    assert [a.action for a in pages] == ["trigger", "resolve"], timeline(alerts)
    reset_s = pages[1].ts - ONSET_S - outage_s
    r_s = serving_resolution_s(short_s, step_s)
    assert abs(reset_s - expected_s) <= r_s + step_s, (
        f"reset {reset_s} s after the outage, expected {expected_s:.1f} s within one {r_s} s bucket "
        f"+ one {step_s} s step")

