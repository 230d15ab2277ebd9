"""The engine against the reference model, instant by instant, on seeded random configs and streams.

Window counts must be equal as integers at every checked instant; alert timelines must match in
SLO, severity, action, time and tier exactly, burn rates and budget within 1e-12 relative. Every
failure message starts with the seed; rerun one with ``-k "seed-<n>"``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from engine.alerts import AlertEvent
from engine.batch import EventBatch
from engine.config import Config, parse_config
from engine.engine import Engine
from tests.reference import NS_PER_S, ReferenceEngine
from tests.streams import (
    CHECKOUT,
    NO_JIT,
    ONSET_NS,
    ONSET_S,
    STEP_60S,
    Stream,
    chunk_bounds,
    random_config,
    random_stream,
    run_in_order,
    seconds_stream,
    tier,
    tiny_config,
)

REL_TOL = 1e-12


def _same_float(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=0.0) or a == b


def _ident(a: AlertEvent) -> tuple[Any, ...]:
    return (a.slo, a.severity, a.action, a.ts, a.tier, a.dedup_key)


def assert_same_timeline(got: list[AlertEvent], want: list[AlertEvent], where: str) -> None:
    """Same transitions in the same order; burn rates and budget within REL_TOL."""
    for i, (g, w) in enumerate(zip(got, want, strict=False)):
        assert _ident(g) == _ident(w), (
            f"{where}: alert #{i} differs: engine {_ident(g)[:5]} vs reference {_ident(w)[:5]}; "
            f"engine {[_ident(a)[:5] for a in got[i:i + 3]]}, "
            f"reference {[_ident(a)[:5] for a in want[i:i + 3]]}")
        assert g.burn_rates.keys() == w.burn_rates.keys(), (
            f"{where}: alert #{i} {_ident(w)[:5]}: burn-rate windows {sorted(g.burn_rates)} "
            f"vs {sorted(w.burn_rates)}")
        for label, rate in w.burn_rates.items():
            assert _same_float(g.burn_rates[label], rate), (
                f"{where}: alert #{i} {_ident(w)[:5]}: burn rate {label} {g.burn_rates[label]!r} vs {rate!r}")
        assert _same_float(g.budget_remaining, w.budget_remaining), (
            f"{where}: alert #{i} {_ident(w)[:5]}: budget {g.budget_remaining!r} vs {w.budget_remaining!r}")
    assert len(got) == len(want), (
        f"{where}: engine has {len(got)} alerts, reference {len(want)}; first extra: "
        f"{[_ident(a)[:5] for a in (got[len(want):] or want[len(got):])[:3]]}")


class Pair:
    """An engine and a reference fed the same batches, compared at chosen instants."""

    def __init__(self, cfg: Config, where: str) -> None:
        self.cfg = cfg
        self.where = where
        self.eng = Engine(cfg)
        self.ref = ReferenceEngine(cfg, record_counts=True)
        self.step_ns = cfg.engine.step_s * NS_PER_S
        self.eng_alerts: list[AlertEvent] = []
        self.ref_alerts: list[AlertEvent] = []
        self.names = [s.name for s in cfg.slos]
        self.checked = 0
        self.count_problems: list[str] = []
        for name in self.names:
            assert self.eng.serving_resolution_s(name) == self.ref.serving_resolution_s(name), (
                f"{where}: {name}: serving resolutions")

    def ingest(self, stream: Stream, index: slice | np.ndarray) -> None:
        self.eng.ingest(stream.batch(self.eng.keys, index))
        self.ref.ingest(stream.batch(self.ref.keys, index))

    def ingest_batch(self, make: Any) -> None:
        """``make(key_table) -> EventBatch`` for each side."""
        self.eng.ingest(make(self.eng.keys))
        self.ref.ingest(make(self.ref.keys))

    def advance(self, watermark_ns: int, check: Any = lambda e_ns: True) -> None:
        """Advance both to ``watermark_ns``, stopping the engine at each instant ``check`` picks."""
        start = self.ref.last_eval_ns
        self.ref_alerts.extend(self.ref.advance(watermark_ns))
        if self.ref.last_eval_ns is None or self.ref.last_eval_ns == start:
            self.eng_alerts.extend(self.eng.advance(watermark_ns))
            if self.eng.last_eval_ns != self.ref.last_eval_ns:
                self.count_problems.append(f"after advance({watermark_ns}) engine last_eval_ns "
                                           f"{self.eng.last_eval_ns}, reference {self.ref.last_eval_ns}")
            return
        first = self.ref.first_instant_ns if start is None else start + self.step_ns
        assert first is not None
        for e_ns in range(first, self.ref.last_eval_ns + 1, self.step_ns):
            if check(e_ns):
                self.eng_alerts.extend(self.eng.advance(e_ns))
                self.compare_counts(e_ns)
        self.eng_alerts.extend(self.eng.advance(watermark_ns))
        self.compare_counts(self.ref.last_eval_ns)

    def compare_counts(self, e_ns: int) -> None:
        """Record (not raise) the differences, so that ``finish`` can report them with the timelines."""
        self.checked += 1
        if self.eng.last_eval_ns != e_ns:
            self.count_problems.append(f"advance({e_ns}) left last_eval_ns at {self.eng.last_eval_ns}")
            return
        rel_s = (e_ns - ONSET_NS) / NS_PER_S
        problems = []
        for name in self.names:
            got = self.eng.window_counts(name)
            want = self.ref.counts_history[name][e_ns]
            if got != want:
                diff = {w: (got.get(w), c) for w, c in want.items() if got.get(w) != c}
                extra = sorted(set(got) - set(want))
                problems.append(
                    f"{name} at ONSET + {rel_s} s: window s -> (engine, reference) (bad, total) {diff}"
                    f"{f', extra windows {extra}' if extra else ''} "
                    f"(resolutions {self.ref.serving_resolution_s(name)})")
        self.count_problems.extend(problems[:1])

    def finish(self) -> None:
        problems = []
        try:
            assert_same_timeline(self.eng_alerts, self.ref_alerts, "alerts")
        except AssertionError as e:
            problems.append(str(e).split("\nassert")[0])
        if self.count_problems:
            problems.append(f"window counts differ at {len(self.count_problems)} of {self.checked} "
                            f"checked instants; first: {self.count_problems[0]}")
        if self.eng.rejections["too_late"] != self.ref.rejections["too_late"]:
            problems.append(f"too_late: engine {self.eng.rejections['too_late']}, "
                            f"reference {self.ref.rejections['too_late']}")
        assert not problems, f"{self.where}:\n  " + "\n  ".join(problems)


def _checker(cfg: Config, ref: ReferenceEngine, every: int) -> Any:
    """Every ``every``-th instant, plus each edge of a bucket coarser than that and the step after it."""
    step_ns = cfg.engine.step_s * NS_PER_S
    coarse = sorted({r * NS_PER_S for m in ref.models for r in m.resolution_s.values()
                     if r * NS_PER_S > every * step_ns})

    def check(e_ns: int) -> bool:
        if (e_ns // step_ns) % every == 0:
            return True
        return any(e_ns % r in (0, step_ns) for r in coarse)

    return check


def build_random(seed: int, *, max_duration_s: int) -> tuple[Config, Stream, np.random.Generator, str]:
    rng = np.random.default_rng(seed)
    duration_s = int(rng.integers(3600, max_duration_s + 1))
    cfg = parse_config(random_config(rng, duration_s=duration_s))
    where = f"seed {seed} (step {cfg.engine.step_s} s, {len(cfg.slos)} SLOs, {duration_s} s)"
    stream = random_stream(rng, start_s=ONSET_S - int(rng.integers(0, 3600)), duration_s=duration_s,
                           slos=cfg.slos, lateness_s=cfg.engine.allowed_lateness_s)
    return cfg, stream, rng, where


def run_random(seed: int, *, max_duration_s: int) -> Pair:
    cfg, stream, rng, where = build_random(seed, max_duration_s=max_duration_s)
    lateness_ns = round(cfg.engine.allowed_lateness_s * NS_PER_S)
    pair = Pair(cfg, where)
    every = int(rng.choice([2, 5, 10]))
    check = _checker(cfg, pair.ref, every)
    max_ts: int | None = None
    for lo, hi in chunk_bounds(rng, len(stream), int(rng.choice([200, 1000, 5000]))):
        pair.ingest(stream, slice(lo, hi))
        top = int(stream.ts_ns[lo:hi].max())
        max_ts = top if max_ts is None else max(max_ts, top)
        pair.advance(max_ts - lateness_ns, check)
    assert max_ts is not None
    pair.advance(max_ts + pair.step_ns, check)
    assert pair.ref.rejections["too_late"] == 0, f"{where}: the stream should stay within lateness"
    pair.finish()
    return pair


SEEDS = range(6) if NO_JIT else range(24)


MAX_DURATION_S = 2 * 3600 if NO_JIT else 6 * 3600


@pytest.mark.parametrize("seed", SEEDS, ids=lambda s: f"seed-{s}")
def test_random_config_and_stream(seed: int) -> None:
    pair = run_random(seed, max_duration_s=MAX_DURATION_S)
    assert pair.checked > 100, f"seed {seed}: only {pair.checked} instants compared"


def test_random_runs_raise_alerts() -> None:
    # The comparison is only worth something if the random runs fire and resolve alerts: the
    # reference alone on the first seeds.
    actions = []
    for seed in SEEDS[:8]:
        cfg, stream, _, _ = build_random(seed, max_duration_s=MAX_DURATION_S)
        ref = ReferenceEngine(cfg)
        ref.ingest(stream.batch(ref.keys))
        actions += [a.action for a in ref.advance(int(stream.ts_ns.max()) + NS_PER_S)]
    # keep_firing_for (10 min unless drawn) holds many pages to the end of the shorter runs.
    assert actions.count("trigger") >= 4 and actions.count("resolve") >= 1, actions


# ---------------------------------------------------------------------------------------------
# Hand-made scenarios (worked out in test_reference.py): the engine must agree at every instant.


@pytest.mark.parametrize(
    ("tiers", "alerting"),
    [
        ([tier("p", "page", 5, for_s=3)], {"keep_firing_for": "4s"}),
        ([tier("p", "page", 5, for_s=5)], {}),
        ([{"name": "p", "severity": "page", "factor": 5, "long_window": 20, "short_window": 10}], {}),
        ([tier("p", "page", 5), tier("t", "ticket", 2, for_s=5)], {}),
        ([tier("p", "page", 5), tier("t", "ticket", 2, for_s=5)], {"suppress_ticket_while_paging": False}),
        ([tier("a", "page", 2, for_s=3), tier("b", "page", 5)], {}),
        ([tier("p", "page", 5)], {"min_events": 11}),
        ([tier("p", "page", 5)], {"min_events": 10}),
        ([tier("p", "page", 5), tier("t", "ticket", 2)], {"disable": ["page"]}),
    ],
    ids=["for-keep", "for-from-start", "strict-factor", "suppress", "no-suppress", "tier-order",
         "min-events-11", "min-events-10", "disable"],
)
def test_hand_made_scenarios(tiers: list[dict[str, Any]], alerting: dict[str, Any]) -> None:
    pair = Pair(parse_config(tiny_config(tiers, **alerting)), f"tiers {tiers}, {alerting}")
    run_in_order(_Both(pair), seconds_stream(STEP_60S), ONSET_NS + 70 * NS_PER_S)
    assert pair.checked >= 70
    pair.finish()
    assert pair.ref_alerts or "min_events" in alerting


class _Both:
    """Lets ``run_in_order`` drive a :class:`Pair` (it ingests through ``keys`` of one side)."""

    def __init__(self, pair: Pair) -> None:
        self.pair = pair
        self.keys = pair.ref.keys

    @property
    def last_eval_ns(self) -> int | None:
        return self.pair.ref.last_eval_ns

    def ingest(self, batch: EventBatch) -> None:
        # Key ids agree: both sides intern the stream's keys in the same order.
        keys = [self.pair.ref.keys.keys[int(k)] for k in np.unique(batch.key)]
        for k in keys:
            self.pair.eng.keys.intern(k)
        assert self.pair.eng.keys.keys[: len(self.pair.ref.keys)] == self.pair.ref.keys.keys
        self.pair.eng.ingest(batch)
        self.pair.ref.ingest(batch)

    def advance(self, watermark_ns: int) -> list[AlertEvent]:
        self.pair.advance(watermark_ns)
        return []


def test_events_before_the_first_instant_still_count() -> None:
    # Before the first evaluation no event is late: history ingested after the first batch counts.
    cfg = parse_config(tiny_config([{"name": "p", "severity": "page", "factor": 2, "long_window": "1h",
                                     "short_window": "5m"}]))
    pair = Pair(cfg, "history after the first batch")
    now = seconds_stream([200] * 5, start_s=ONSET_S + 3600)
    history = seconds_stream([200, 500] * 1800, start_s=ONSET_S)
    pair.ingest(now, slice(None))
    pair.ingest(history, slice(None))
    pair.advance(ONSET_NS + 3610 * NS_PER_S)
    # 1h window (60 x 1 min) at ONSET + 3610 s: [ONSET + 60 s, E) holds 3540 history events (odd
    # seconds bad) and the 5 new ones; the 1-day period window holds them all.
    pair.finish()
    assert pair.eng.window_counts("tiny")[3600] == (1770, 3545)
    assert pair.eng.window_counts("tiny")[86400] == (1800, 3605)


# ---------------------------------------------------------------------------------------------
# Lateness


def test_late_events_boundaries() -> None:
    raw = tiny_config([tier("p", "page", 5, window_s=600)])
    raw["engine"]["max_late_s"] = 300
    pair = Pair(parse_config(raw), "late boundaries")
    t = ONSET_NS + 1000 * NS_PER_S

    def batch(ts: list[int], status: int) -> Any:
        n = len(ts)
        return lambda table: EventBatch.from_arrays(ts, [table.intern(CHECKOUT)] * n, [status] * n)

    pair.ingest_batch(batch([ONSET_NS], 200))
    pair.advance(t)
    late = [t - 300 * NS_PER_S, t - 300 * NS_PER_S - 1, t - 1, t, t - 400 * NS_PER_S]
    pair.ingest_batch(batch(late, 500))
    pair.advance(t + NS_PER_S)
    pair.finish()
    assert pair.eng.rejections["too_late"] == 2
    # Hand count (see test_reference): accepted late events at t - 300 s and t - 1 ns, and the one at t.
    assert pair.eng.window_counts("tiny")[600] == (3, 3)
    assert pair.eng.window_counts("tiny")[86400] == (3, 4)


@pytest.mark.parametrize("seed", range(2 if NO_JIT else 4), ids=lambda s: f"seed-{s}")
def test_random_late_events(seed: int) -> None:
    # Some events arrive up to twice max_late_s after the watermark passed them: those within
    # max_late_s count into their time, the others are rejected as too_late.
    rng = np.random.default_rng(10_000 + seed)
    duration_s = 3600
    cfg = parse_config(random_config(rng, duration_s=duration_s))
    where = f"seed {10_000 + seed} (late events)"
    stream = random_stream(rng, start_s=ONSET_S, duration_s=duration_s,
                           slos=cfg.slos, lateness_s=0.0)
    # Delay about 5 % of the events by up to 600 s, keeping the rest in order.
    n = len(stream)
    arrival = stream.ts_ns.copy()
    delayed = rng.random(n) < 0.05
    arrival[delayed] += rng.integers(0, 600 * NS_PER_S, size=int(delayed.sum()))
    order = np.argsort(arrival, kind="stable")
    pair = Pair(cfg, where)
    check = _checker(cfg, pair.ref, 7)
    for lo, hi in chunk_bounds(rng, n, 300):
        idx = order[lo:hi]
        pair.ingest(stream, idx)
        pair.advance(int(arrival[order[hi - 1]]), check)
    pair.advance(int(stream.ts_ns.max()) + pair.step_ns, check)
    too_late = pair.ref.rejections["too_late"]
    assert too_late > 0, f"{where}: expected some events beyond max_late_s"
    pair.finish()
