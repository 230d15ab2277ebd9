"""The engine against the numbers of ../shared/reference/slo-math.md.

Detection times of constant error ratios (99.9 %, 30 d, full history), reset times after a full
outage, the Workbook factors and the low-traffic threshold. Times are compared with the exact
formula ``t = (B / e) * w * k`` within one bucket of the window's serving resolution plus one step
(a window is exact on its bucket edges and up to one bucket shorter in between); the printed table
is checked against the same formula within its rounding.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from engine.alerts import AlertEvent
from engine.config import error_budget, parse_config
from engine.engine import Engine
from engine.windows import resolve_tiers
from tests.reference import NS_PER_S, ReferenceEngine, serving_resolution_s
from tests.streams import (
    CHECKOUT,
    DETECTION_TABLE_S,
    NO_JIT,
    ONSET_NS,
    ONSET_S,
    PAGE_AT,
    RESET_1H_5M_S,
    RESET_6H_30M_S,
    TABLE_ROUNDING_S,
    WORKBOOK_TIERS,
    concat_streams,
    detection_s,
    first,
    per_tier_config,
    run_in_order,
    step_stream,
    workbook_config,
)

SLOW_STEP_S = 60 if NO_JIT else 10  # evaluation step of the runs with three days of history


def timeline(alerts: list[AlertEvent]) -> list[tuple[str, str, str, float, str]]:
    return [(a.slo, a.severity, a.action, a.ts - ONSET_S, a.tier) for a in alerts]


# ---------------------------------------------------------------------------------------------
# The document's own arithmetic


def test_workbook_factors() -> None:
    slo = parse_config(workbook_config()).slos[0]
    tiers = resolve_tiers(slo.alerting, 30 * 86400)
    assert [t.name for t in tiers] == [t[0] for t in WORKBOOK_TIERS]
    assert [t.burn_rate_factor for t in tiers] == pytest.approx([14.4, 6, 3, 1], rel=1e-12)
    assert error_budget(slo) == 0.001


@pytest.mark.parametrize("ratio", sorted(DETECTION_TABLE_S, reverse=True))
def test_printed_table_matches_the_formula(ratio: float) -> None:
    for (name, _, long_s, _, pct), cell, rounding in zip(
            WORKBOOK_TIERS, DETECTION_TABLE_S[ratio], TABLE_ROUNDING_S[ratio], strict=True):
        exact = detection_s(ratio, pct)
        if cell is None:
            assert exact >= long_s, f"{name}, e={ratio}: printed never, formula {exact} s < {long_s} s"
        else:
            assert exact < long_s and abs(exact - cell) <= rounding, (
                f"{name}, e={ratio}: printed {cell} s, formula {exact} s (rounding {rounding} s)")


# ---------------------------------------------------------------------------------------------
# Detection


def _after_s(ratio: float) -> int:
    cells = DETECTION_TABLE_S[ratio]
    ends = [c + 4200 for c in cells if c is not None]
    ends += [long_s + short_s for (_, _, long_s, short_s, _), c in zip(WORKBOOK_TIERS, cells, strict=True)
             if c is None]
    return int(max(ends))


@pytest.mark.parametrize("ratio", sorted(DETECTION_TABLE_S, reverse=True))
def test_detection_table_per_tier(ratio: float) -> None:
    # One SLO per Workbook tier (each pages on that tier alone), three days of history, 10 s steps
    # (60 s without the JIT: the 5m and 30m windows then fall back to 1-minute buckets).
    step_s = SLOW_STEP_S
    eng = Engine(parse_config(per_tier_config(step_s=step_s)))
    after_s = _after_s(ratio)
    stream = step_stream(history_s=3 * 86400, phases=[(after_s, ratio)])
    alerts = run_in_order(eng, stream, ONSET_NS + after_s * NS_PER_S, chunk_s=6 * 3600)
    for (name, _, long_s, _, pct), cell in zip(WORKBOOK_TIERS, DETECTION_TABLE_S[ratio], strict=True):
        page = first([a for a in alerts if a.slo == f"tier-{name}"], "page")
        if cell is None:
            assert page is None, f"{name} at e={ratio}: expected never, paged at {timeline([page])}"
            continue
        exact = detection_s(ratio, pct)
        r_s = serving_resolution_s(long_s, step_s)
        got_s = None if page is None else page.ts - ONSET_S
        assert got_s is not None and abs(got_s - exact) <= r_s + step_s, (
            f"{name} at e={ratio}: paged {got_s} s after onset, expected {exact:.1f} s "
            f"(slo-math.md: {cell:.0f} s) within one {r_s} s bucket + one {step_s} s step")
        assert page is not None and page.tier == name


@pytest.mark.parametrize("ratio", sorted(PAGE_AT, reverse=True))
def test_detection_table_page_at(ratio: float) -> None:
    expected = PAGE_AT[ratio]
    step_s, history_s = (1, 6 * 3600) if expected else (SLOW_STEP_S, 3 * 86400)
    after_s = int(expected[0] + 1800) if expected else _after_s(ratio)
    eng = Engine(parse_config(workbook_config(step_s=step_s)))
    stream = step_stream(history_s=history_s, phases=[(after_s, ratio)])
    alerts = run_in_order(eng, stream, ONSET_NS + after_s * NS_PER_S, chunk_s=6 * 3600)
    page = first(alerts, "page")
    if expected is None:
        assert page is None, f"e={ratio}: expected no page, got {timeline([page])}"
        if ratio == 0.003:
            ticket = first(alerts, "ticket")
            assert ticket is not None and ticket.tier == "ticket_slow", timeline(alerts)
            tol_s = serving_resolution_s(259200, step_s) + step_s
            assert abs(ticket.ts - ONSET_S - 86400) <= tol_s, (
                f"ticket {ticket.ts - ONSET_S} s after onset, expected 24 h within {tol_s} s "
                f"(one 1 h bucket + one step)")
        else:
            assert alerts == [], f"e={ratio}: expected nothing, got {timeline(alerts)}"
        return
    at_s, tier_name = expected
    assert page is not None, f"e={ratio}: expected a page at about {at_s} s, got none"
    _, _, long_s, _, pct = next(t for t in WORKBOOK_TIERS if t[0] == tier_name)
    exact = detection_s(ratio, pct)
    r_s = serving_resolution_s(long_s, step_s)
    assert page.tier == tier_name, timeline(alerts)
    assert abs(page.ts - ONSET_S - exact) <= r_s + step_s, (
        f"e={ratio}: page at {page.ts - ONSET_S} s, expected {exact:.1f} s (slo-math.md: {at_s:.0f} s) "
        f"within one {r_s} s bucket + one {step_s} s step")
    assert page.burn_rates["1h"] is not None and page.budget_remaining is not None


# ---------------------------------------------------------------------------------------------
# Reset


@pytest.mark.parametrize(
    ("windows", "expected_s", "short_s"),
    [
        ([{"name": "page_quick", "severity": "page", "budget_percent": 2, "long_window": "1h",
           "short_window": "5m"}], RESET_1H_5M_S, 300),
        ("sre-workbook", RESET_6H_30M_S, 1800),
    ],
    ids=["1h/5m", "6h/30m"],
)
def test_reset_after_a_full_outage(windows: Any, expected_s: float, short_s: int) -> None:
    step_s = 1
    eng = Engine(parse_config(workbook_config(step_s=step_s, windows=windows)))
    outage_s, after_s = 3600, 3600
    stream = step_stream(history_s=6 * 3600, phases=[(outage_s, 1.0), (after_s, 0.0)])
    alerts = run_in_order(eng, stream, ONSET_NS + (outage_s + after_s) * NS_PER_S)
    pages = [a for a in alerts if a.severity == "page"]
    assert [a.action for a in pages] == ["trigger", "resolve"], timeline(alerts)
    reset_s = pages[1].ts - ONSET_S - outage_s
    r_s = serving_resolution_s(short_s, step_s)
    assert abs(reset_s - expected_s) <= r_s + step_s, (
        f"reset {reset_s} s after the outage, expected {expected_s:.1f} s within one {r_s} s bucket "
        f"+ one {step_s} s step")
    assert pages[1].tier == pages[0].tier


# ---------------------------------------------------------------------------------------------
# Low traffic: one failure trips the 1h/5m tier when the hour holds fewer than 1 / (14.4 B) requests


@pytest.mark.parametrize("impl", [Engine, ReferenceEngine], ids=["engine", "reference"])
@pytest.mark.parametrize(
    ("objective", "requests", "min_events", "fires"),
    [(99.9, 69, 0, True), (99.9, 70, 0, False), (99.99, 694, 0, True), (99.99, 695, 0, False),
     (99.9, 69, 100, False)],
)
def test_one_failure_in_low_traffic(impl: Any, objective: float, requests: int, min_events: int,
                                    fires: bool) -> None:
    raw = workbook_config(objective=objective, windows=[{
        "name": "page_quick", "severity": "page", "budget_percent": 2, "long_window": "1h",
        "short_window": "5m"}])
    raw["slos"][0]["alerting"]["min_events"] = min_events
    eng = impl(parse_config(raw))
    # All requests inside the last five minutes of an hour, the failure last: both windows hold all
    # of them (and the short one fewer once it slides on), so the long window decides.
    ts = ONSET_NS + np.linspace(3300 * NS_PER_S, 3599 * NS_PER_S, requests).astype(np.int64)
    status = np.full(requests, 200)
    status[-1] = 503
    stream = concat_streams([CHECKOUT], [(ts, np.zeros(requests), status, np.full(requests, np.nan),
                                          np.ones(requests))])
    alerts = run_in_order(eng, stream, ONSET_NS + 3700 * NS_PER_S)
    limit = 1 / (14.4 * (1 - objective / 100))
    assert (first(alerts, "page") is not None) is fires, (
        f"{requests} requests at {objective} % (limit {limit:.1f}, min_events {min_events}): "
        f"{timeline(alerts)}")
