"""Seeded event streams and configurations shared by the engine and reference tests.

A :class:`Stream` is a plain set of columns in arrival order plus the :class:`EventKey` each key
column points at, so that the same stream can be fed to the engine and to the reference, each
interning the keys in its own table. Everything random takes a ``numpy.random.Generator``; tests
print the seed they built it from.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from engine.alerts import AlertEvent
from engine.batch import EventBatch, EventKey, KeyTable
from engine.config import SLO, latency_sli, latency_threshold_ms

NS_PER_S = 1_000_000_000
NO_JIT = os.environ.get("NUMBA_DISABLE_JIT") == "1"

# A Monday, 00:00 UTC: a multiple of every resolution (and of a day), so that step onsets start on
# bucket edges of every window.
ONSET_S = 1_699_920_000
ONSET_NS = ONSET_S * NS_PER_S


class EngineLike(Protocol):
    """What the drivers below need; both :class:`engine.engine.Engine` and the reference offer it."""

    keys: KeyTable

    @property
    def last_eval_ns(self) -> int | None: ...

    def ingest(self, batch: EventBatch) -> None: ...

    def advance(self, watermark_ns: int) -> list[AlertEvent]: ...


@dataclass
class Stream:
    """Events in arrival order; ``key`` indexes ``keys``."""

    keys: list[EventKey]
    ts_ns: npt.NDArray[np.int64]
    key: npt.NDArray[np.int32]
    status: npt.NDArray[np.int16]
    latency_us: npt.NDArray[np.float64]
    weight: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return int(self.ts_ns.shape[0])

    def batch(self, table: KeyTable, index: slice | npt.NDArray[np.intp] = slice(None)) -> EventBatch:
        """Rows ``index`` as a batch whose key ids come from ``table``."""
        ids = np.array([table.intern(k) for k in self.keys], dtype=np.int32)
        return EventBatch.from_arrays(
            self.ts_ns[index], ids[self.key[index]], self.status[index], self.latency_us[index],
            self.weight[index],
        )


def concat_streams(keys: list[EventKey], parts: list[tuple[Any, ...]]) -> Stream:
    """Stream from ``(ts_ns, key, status, latency_us, weight)`` column tuples, in the given order."""
    dtypes = (np.int64, np.int32, np.int16, np.float64, np.int64)
    cols = [
        np.concatenate([np.asarray(p[i], dt) for p in parts]) if parts else np.empty(0, dt)
        for i, dt in enumerate(dtypes)
    ]
    return Stream(keys, cols[0], cols[1], cols[2], cols[3], cols[4])


def run_in_order(eng: EngineLike, stream: Stream, end_ns: int, chunk_s: int = 3600) -> list[AlertEvent]:
    """Feed a time-ordered stream in chunks of ``chunk_s`` and evaluate every instant up to ``end_ns``."""
    ts = stream.ts_ns
    assert np.all(ts[1:] >= ts[:-1]), "run_in_order needs a time-ordered stream"
    alerts: list[AlertEvent] = []
    lo = 0
    edge = int(ts[0]) // (chunk_s * NS_PER_S) * (chunk_s * NS_PER_S) + chunk_s * NS_PER_S
    while lo < len(stream) or (eng.last_eval_ns or 0) < end_ns:
        hi = int(np.searchsorted(ts, edge, side="left"))
        if hi > lo:
            eng.ingest(stream.batch(eng.keys, slice(lo, hi)))
            lo = hi
        alerts.extend(eng.advance(min(edge, end_ns)))
        if edge >= end_ns:
            break
        edge += chunk_s * NS_PER_S
    return alerts


# ---------------------------------------------------------------------------------------------
# Step scenarios of slo-math.md: constant traffic, error ratio 0 -> e at ONSET

CHECKOUT = EventKey("checkout", "/pay", "POST")


def workbook_config(*, step_s: int = 1, objective: float = 99.9, windows: Any = "sre-workbook",
                    disable: list[str] | None = None) -> dict[str, Any]:
    """One availability SLO on CHECKOUT, 30-day period, given windows (a catalog or custom tiers)."""
    return {
        "slos": [{
            "name": "checkout-availability",
            "service": CHECKOUT.service,
            "objective": objective,
            "period": "30d",
            "sli": {"availability": {"bad_status": ["5xx"]}},
            # The step scenarios come with full history; the warm-up guard has its own tests.
            "alerting": {"windows": windows, "disable": disable or [], "require_full_windows": False,
                         "min_events": 0, "keep_firing_for": 0},
        }],
        "engine": {"step_s": step_s},
    }


def step_stream(
    *,
    history_s: int,
    phases: list[tuple[int, float]],
    rate_per_s: int = 1000,
    history_spacing_s: int = 10,
) -> Stream:
    """Good traffic for ``history_s`` before ONSET, then ``(duration_s, error_ratio)`` phases.

    The history is one good event per ``history_spacing_s`` carrying that many seconds of traffic
    (weights keep event counts small); from ONSET on there is one good and one bad event per second,
    weighted ``rate_per_s * (1 - e)`` and ``rate_per_s * e``, so the error ratio of any whole number
    of seconds is exactly ``e``.
    """
    parts: list[tuple[Any, ...]] = []
    hist_ts = ONSET_S - np.arange(history_s // history_spacing_s, 0, -1, dtype=np.int64) * history_spacing_s
    n = hist_ts.shape[0]
    parts.append((hist_ts * NS_PER_S, np.zeros(n), np.full(n, 200), np.full(n, np.nan),
                  np.full(n, rate_per_s * history_spacing_s)))
    start_s = ONSET_S
    for duration_s, ratio in phases:
        bad_w = round(rate_per_s * ratio)
        good_w = rate_per_s - bad_w
        secs = (start_s + np.arange(duration_s, dtype=np.int64)) * NS_PER_S
        cols = []
        for w, status in ((good_w, 200), (bad_w, 500)):
            if w > 0:
                cols.append((secs, np.full(duration_s, w), np.full(duration_s, status)))
        # Interleave good and bad events of the same second so the stream stays in time order.
        ts = np.concatenate([c[0] for c in cols])
        order = np.argsort(ts, kind="stable")
        m = ts.shape[0]
        parts.append((ts[order], np.zeros(m), np.concatenate([c[2] for c in cols])[order],
                      np.full(m, np.nan), np.concatenate([c[1] for c in cols])[order]))
        start_s += duration_s
    return concat_streams([CHECKOUT], parts)


# slo-math.md, "Detection table to reproduce" (99.9 %, 30 d, constant traffic, full history): error
# ratio -> detection time (s) per Workbook tier as printed (None: never), and when the page fires.
WORKBOOK_TIERS = (  # name, severity, long_window_s, short_window_s, budget_percent (table 5-8)
    ("page_quick", "page", 3600, 300, 2.0),
    ("page_slow", "page", 21600, 1800, 5.0),
    ("ticket_quick", "ticket", 86400, 7200, 10.0),
    ("ticket_slow", "ticket", 259200, 21600, 10.0),
)
DETECTION_TABLE_S: dict[float, tuple[float | None, ...]] = {
    1.0: (52, 2.2 * 60, 4.3 * 60, 4.3 * 60),
    0.1: (8.6 * 60, 21.6 * 60, 43.2 * 60, 43.2 * 60),
    0.02: (43.2 * 60, 108 * 60, 3.6 * 3600, 3.6 * 3600),
    0.01: (None, 3.6 * 3600, 7.2 * 3600, 7.2 * 3600),
    0.003: (None, None, None, 24 * 3600),
    0.001: (None, None, None, None),
}
# Half a unit of the last printed digit of each cell (52 s; 2.2 m; 108 m; 3.6 h; 24 h).
TABLE_ROUNDING_S: dict[float, tuple[float, ...]] = {
    1.0: (0.5, 3, 3, 3),
    0.1: (3, 3, 3, 3),
    0.02: (3, 30, 180, 180),
    0.01: (0, 180, 180, 180),
    0.003: (0, 0, 0, 1800),
    0.001: (0, 0, 0, 0),
}
PAGE_AT = {  # error ratio -> (seconds after onset, tier) of the first page; None: no page
    1.0: (52, "page_quick"),
    0.1: (8.6 * 60, "page_quick"),
    0.02: (43.2 * 60, "page_quick"),
    0.01: (3.6 * 3600, "page_slow"),
    0.003: None,
    0.001: None,
}
# Reset after the errors of a saturating 100 % outage stop: short * (1 - factor / burn).
RESET_1H_5M_S = 300 * (1 - 14.4 / 1000)  # 4.9 min
RESET_6H_30M_S = 1800 * (1 - 6 / 1000)  # 29.8 min


def per_tier_config(*, step_s: int) -> dict[str, Any]:
    """Four copies of the checkout SLO, each alerting (as a page) on one Workbook tier only.

    The first page of SLO ``tier-<name>`` is then the first instant that tier's condition holds.
    """
    base = workbook_config(step_s=step_s)
    slo = base["slos"][0]
    base["slos"] = [
        {**slo, "name": f"tier-{name}", "alerting": {
            "require_full_windows": False, "min_events": 0, "keep_firing_for": 0, "windows": [{
            "name": name, "severity": "page", "long_window": long_s, "short_window": short_s,
            "budget_percent": pct}]}}
        for name, _, long_s, short_s, pct in WORKBOOK_TIERS
    ]
    return base


def detection_s(error_ratio: float, budget_percent: float, budget: float = 0.001,
                period_s: int = 30 * 86400) -> float:
    """``t = (B / e) * w * k`` with ``k = f * P / w`` (slo-math.md): ``B / e * f * P``."""
    return budget / error_ratio * budget_percent / 100 * period_s


def first(alerts: list[AlertEvent], severity: str, action: str = "trigger") -> AlertEvent | None:
    """The first alert of ``severity`` with ``action``, or None."""
    return next((a for a in alerts if a.severity == severity and a.action == action), None)


# ---------------------------------------------------------------------------------------------
# Tiny hand-made scenarios: one event per second, timelines that can be worked out on paper


def seconds_stream(statuses: list[int], *, key: EventKey = CHECKOUT, start_s: int = ONSET_S) -> Stream:
    """One event per second from ``start_s``, exactly on the second, with the given statuses."""
    n = len(statuses)
    ts = (start_s + np.arange(n, dtype=np.int64)) * NS_PER_S
    return concat_streams([key], [(ts, np.zeros(n), np.asarray(statuses), np.full(n, np.nan), np.ones(n))])


def tiny_config(tiers: list[dict[str, Any]], **alerting: Any) -> dict[str, Any]:
    """One availability SLO on CHECKOUT at 90 % (B = 0.1) over a 1-day period, step 1 s."""
    return {
        "slos": [{
            "name": "tiny",
            "service": CHECKOUT.service,
            "objective": 90,
            "period": "1d",
            "sli": {"availability": {"bad_status": ["5xx"]}},
            "alerting": {"windows": tiers, "require_full_windows": False, "min_events": 0,
                         "keep_firing_for": 0, **alerting},
        }],
        "engine": {"step_s": 1},
    }


def tier(name: str, severity: str, factor: float, window_s: int = 10, for_s: int = 0) -> dict[str, Any]:
    """A custom tier with equal long and short windows."""
    return {"name": name, "severity": severity, "factor": factor, "long_window": window_s,
            "short_window": window_s, "for": for_s}


# 10 good seconds, 20 bad, 30 good: in a 10 s window the bad count b(E) at E = ONSET + i is
# |[max(i - 10, 10), min(i, 30))|, so b >= 6 exactly for i in 16..34 and b >= 3 for i in 13..37.
STEP_60S = [200] * 10 + [500] * 20 + [200] * 30


# ---------------------------------------------------------------------------------------------
# Random configurations

SERVICES = ("checkout", "search", "cart")
ROUTES = ("/", "/pay", "/items")
METHODS = ("GET", "POST")
LABEL_SETS: tuple[tuple[tuple[str, str], ...], ...] = ((), (("region", "eu"),),
                                                       (("region", "us"), ("tier", "gold")))
STEPS_S = (1, 1, 1, 2, 5, 10, 15)
PERIODS = ("1d", "2d", "7d", "28d", "30d")


def random_window_s(rng: np.random.Generator, step_s: int, max_s: int) -> int:
    """A window that exercises a random resolution: short (step buckets), 10 s, 1 min or 5 min."""
    while True:
        kind = int(rng.integers(0, 10))
        if kind < 3:
            w = step_s * int(rng.integers(1, 45))
        elif kind < 6:
            w = 10 * int(rng.integers(30, 200))
        elif kind < 9:
            w = 60 * int(rng.integers(20, 121))
        else:
            w = 300 * int(rng.integers(30, 40))
        if w % step_s == 0 and w <= max_s:
            return w


def random_config(rng: np.random.Generator, *, duration_s: int) -> dict[str, Any]:
    """2-5 SLOs over 1-3 services and routes, availability and latency, custom tiers."""
    step_s = int(rng.choice(STEPS_S))
    services = list(SERVICES[: int(rng.integers(1, 4))])
    routes = list(ROUTES[: int(rng.integers(1, 4))])
    slos = []
    for i in range(int(rng.integers(2, 6))):
        objective = float(rng.choice([90.0, 95.0, 99.0, 99.5, 99.9]))
        budget = 1 - objective / 100
        slo: dict[str, Any] = {
            "name": f"slo-{i}",
            "service": str(rng.choice(services)),
            "period": str(rng.choice(PERIODS)),
        }
        if rng.random() < 0.4:
            slo["route"] = str(rng.choice(routes))
        if rng.random() < 0.25:
            slo["operation"] = str(rng.choice(METHODS))
        if rng.random() < 0.2:
            slo["match_labels"] = {"region": str(rng.choice(["eu", "us"]))}
        if rng.random() < 0.5:
            slo["objective"] = objective
            bad = [["5xx"], ["500-504"], [503, "429"], ["5xx", 429]][int(rng.integers(0, 4))]
            exclude = [[], [], ["4xx"], [404]][int(rng.integers(0, 4))]
            slo["sli"] = {"availability": {"bad_status": bad, "exclude_status": exclude}}
        else:
            thr_ms = float(rng.choice([50.0, 100.0, 250.0, 300.5]))
            form = int(rng.integers(0, 3))
            if form == 0:
                exclude_lat = [["5xx"], [], [429]][int(rng.integers(0, 3))]
                lat: Any = {"threshold_ms": thr_ms, "exclude_status": exclude_lat}
                slo["objective"] = objective
            elif form == 1:
                lat = {"threshold_s": thr_ms / 1000, "percentile": objective}
            else:
                lat = f"p{objective:g} below {thr_ms:g}ms"
            slo["sli"] = {"latency": lat}
        tiers = []
        for k in range(int(rng.integers(1, 5))):
            a = random_window_s(rng, step_s, duration_s)
            b = random_window_s(rng, step_s, duration_s)
            long_s, short_s = max(a, b), min(a, b)
            factor = float(rng.uniform(0.5, 0.9 / budget))
            tier: dict[str, Any] = {
                "name": f"tier{k}",
                "severity": str(rng.choice(["page", "ticket"])),
                "long_window": int(long_s),
                "short_window": int(short_s),
            }
            period_s = int(slo["period"][:-1]) * 86400
            if rng.random() < 0.2 and factor * long_s / period_s <= 1:
                # Same factor, written as the share of the budget spent within the long window.
                tier["budget_percent"] = factor * long_s / period_s * 100
            else:
                tier["factor"] = round(factor, 3)
            if rng.random() < 0.3:
                tier["for"] = step_s * int(rng.integers(0, 60))
            tiers.append(tier)
        alerting: dict[str, Any] = {"windows": tiers}
        if rng.random() < 0.4:
            alerting["min_events"] = int(rng.integers(1, 3000))
        if rng.random() < 0.25:
            alerting["for"] = step_s * int(rng.integers(1, 30))
        if rng.random() < 0.4:
            # Not always a multiple of the step: the contract counts the instants in [E - kff, E].
            alerting["keep_firing_for"] = int(rng.integers(1, 600))
        if rng.random() < 0.3:
            alerting["suppress_ticket_while_paging"] = False
        alerting["require_full_windows"] = bool(rng.random() < 0.5)
        severities = {t["severity"] for t in tiers}
        if len(severities) == 2 and rng.random() < 0.2:
            alerting["disable"] = [str(rng.choice(sorted(severities)))]
        slo["alerting"] = alerting
        slos.append(slo)
    allowed_lateness_s = float(rng.choice([0.0, 2.0, 5.0, 30.0]))
    return {
        "slos": slos,
        "engine": {"step_s": step_s, "allowed_lateness_s": allowed_lateness_s, "max_late_s": 300.0},
    }


def config_thresholds_us(slos: list[SLO]) -> list[float]:
    """Latency thresholds (us) of the SLOs, to put events exactly on them."""
    out = []
    for slo in slos:
        lat = latency_sli(slo.sli)
        if lat is not None:
            out.append(latency_threshold_ms(lat) * 1000.0)
    return out


# ---------------------------------------------------------------------------------------------
# Random streams

ALL_KEYS = [EventKey(s, r, m, lab) for s in SERVICES for r in ROUTES for m in METHODS for lab in LABEL_SETS]


def random_stream(
    rng: np.random.Generator,
    *,
    start_s: int,
    duration_s: int,
    slos: list[SLO],
    lateness_s: float,
) -> Stream:
    """Traffic on a few keys with varying rates, gaps and incidents, in a bounded-disorder arrival order.

    Most of ``slos`` get a key they match; a few random keys (which may match nothing) come on top.
    Some latencies sit exactly on the SLOs' thresholds.

    Each event arrives ``U(0, lateness_s)`` after its timestamp, so that every event is at most
    ``lateness_s`` older than the newest event already seen (a watermark of ``max_ts - lateness_s``
    never passes an event that is still to come).
    """
    keys: list[EventKey] = []
    for slo in slos:
        # Most SLOs get a key they match, so that few of them sit on "no data" all along.
        if rng.random() < 0.85:
            labels = tuple(sorted(slo.match_labels.items())) or LABEL_SETS[int(rng.integers(0, 3))]
            route = slo.route if slo.route is not None else str(rng.choice(ROUTES))
            method = slo.operation if slo.operation is not None else str(rng.choice(METHODS))
            key = EventKey(slo.service, route, method, labels)
            if key not in keys:
                keys.append(key)
    for i in rng.choice(len(ALL_KEYS), size=int(rng.integers(2, 6)), replace=False):
        if ALL_KEYS[int(i)] not in keys:
            keys.append(ALL_KEYS[int(i)])
    n_keys = len(keys)
    # Piecewise-constant traffic multiplier per second, with gaps (0) and bursts.
    mult = np.ones(duration_s)
    for _ in range(int(rng.integers(2, 8))):
        a = int(rng.integers(0, duration_s))
        b = min(duration_s, a + int(rng.integers(30, 1800)))
        mult[a:b] = 0.0 if rng.random() < 0.35 else rng.uniform(0.2, 4.0)
    # Incidents: error ratio and latency inflation on a subset of keys.
    err = np.zeros((n_keys, duration_s))
    slow = np.zeros((n_keys, duration_s))
    for _ in range(int(rng.integers(1, 6))):
        a = int(rng.integers(0, duration_s))
        b = min(duration_s, a + int(rng.integers(60, 3600)))
        hit = rng.random(n_keys) < 0.6
        err[hit, a:b] = np.maximum(err[hit, a:b], 10 ** rng.uniform(-2.5, 0))
        slow[hit, a:b] = np.maximum(slow[hit, a:b], rng.uniform(0, 1))
    thresholds_us = config_thresholds_us(slos)
    parts = []
    for k in range(n_keys):
        rate = rng.uniform(0.2, 2.0)
        counts = rng.poisson(rate * mult)
        secs = np.repeat(np.arange(duration_s, dtype=np.int64), counts)
        n = secs.shape[0]
        if n == 0:
            continue
        offset_ns = rng.integers(0, NS_PER_S, size=n)
        offset_ns[rng.random(n) < 0.1] = 0  # on the second: exactly on instants and bucket edges
        ts = (start_s + secs) * NS_PER_S + offset_ns
        p_err = np.maximum(err[k, secs], 0.002)
        status = rng.choice(np.array([200, 200, 200, 201, 204, 301, 404, 429]), size=n)
        is_err = rng.random(n) < p_err
        status[is_err] = rng.choice(np.array([500, 502, 503, 504]), size=int(is_err.sum()))
        status[rng.random(n) < 0.04] = 0
        lat = rng.lognormal(np.log(60_000.0) + 2.0 * slow[k, secs], 0.8)
        if thresholds_us:
            exact = rng.random(n) < 0.03
            lat[exact] = rng.choice(np.array(thresholds_us), size=int(exact.sum()))
        lat[rng.random(n) < 0.03] = np.nan
        weight = np.where(rng.random(n) < 0.7, 1, rng.integers(1, 100, size=n))
        parts.append((ts, np.full(n, k), status, lat, weight))
    s = concat_streams(keys, parts)
    arrival = s.ts_ns + (rng.random(len(s)) * lateness_s * NS_PER_S).astype(np.int64)
    order = np.argsort(arrival, kind="stable")
    return Stream(keys, s.ts_ns[order], s.key[order], s.status[order], s.latency_us[order], s.weight[order])


def chunk_bounds(rng: np.random.Generator, n: int, max_chunk: int) -> list[tuple[int, int]]:
    """Random consecutive ``[lo, hi)`` slices covering ``range(n)``."""
    out = []
    lo = 0
    while lo < n:
        hi = min(n, lo + int(rng.integers(1, max_chunk + 1)))
        out.append((lo, hi))
        lo = hi
    return out
