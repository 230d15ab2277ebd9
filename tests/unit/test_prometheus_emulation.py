"""The Prometheus emulation: PromQL arithmetic worked by hand, the strategy against the scalar
``rate()``, rule semantics (``for``, ``keep_firing_for``, staleness), and the step incident of
../shared/reference/slo-math.md ("How Prometheus differs") against an event-exact evaluator.

Expected numbers come from the definitions (window edges, sample spacing, the 1.1 x threshold), not
from the code: each case says how it was worked out. promtool itself is compared in
tests/integration/test_promtool_oracle.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench.strategies.base import NS
from bench.strategies.prometheus import (
    STRATEGIES,
    BurnTier,
    PrometheusWindows,
    RuleEngine,
    expand_template,
    go_float,
    load_rule_groups,
    sloth_rules,
)
from bench.strategies.promql import (
    Evaluator,
    PromQLError,
    SeriesStore,
    UnsupportedError,
    expand_series_values,
    extrapolated_rate,
    labels_of,
    parse,
    parse_series,
)

HOUR_NS = 3600 * NS
ORIGIN_NS = 480_000 * HOUR_NS
B = 0.001  # 99.9 %


def rate(ts_s: list[float], vals: list[float], start_s: float, end_s: float, *, counter: bool = True,
         per_second: bool = False) -> float | None:
    return extrapolated_rate([int(t * 1000) for t in ts_s], vals, int(start_s * 1000), int(end_s * 1000),
                             end_s - start_s, is_counter=counter, is_rate=per_second)


# ---------------------------------------------------------------------------------- extrapolatedRate

def test_rate_samples_on_both_edges_is_the_plain_difference() -> None:
    # 6 samples 0..300 s, +10 each minute: nothing to extrapolate, 50 in 300 s
    ts = [0, 60, 120, 180, 240, 300]
    vals = [100.0, 110, 120, 130, 140, 150]
    assert rate(ts, vals, 0, 300) == 50.0
    assert rate(ts, vals, 0, 300, per_second=True) == pytest.approx(50 / 300, rel=1e-15)


def test_rate_extrapolates_to_edges_within_1_1_intervals() -> None:
    # samples 30 s inside each edge, spacing 60 s (threshold 66 s): 40 over 240 s becomes 50 over 300 s
    got = rate([30, 90, 150, 210, 270], [100.0, 110, 120, 130, 140], 0, 300)
    assert got == pytest.approx(50.0, rel=1e-15)


def test_rate_extrapolates_half_an_interval_past_a_gap() -> None:
    # last sample 180 s before the end (> 66 s): only half an interval (30 s) is added there
    assert rate([0, 60, 120], [100.0, 110, 120], 0, 300) == pytest.approx(20 * 150 / 120, rel=1e-15)


def test_rate_threshold_is_strict_at_1_1_intervals() -> None:
    # spacing 60 s -> threshold 60 * 1.1 = 66 s (the float product rounds to exactly 66.0): a 65 s
    # gap is extrapolated in full, a gap of exactly 66 s only by half an interval (30 s)
    full = rate([65, 125, 185], [100.0, 110, 120], 0, 185)
    half = rate([66, 126, 186], [100.0, 110, 120], 0, 186)
    assert full == pytest.approx(20 * (120 + 65) / 120, rel=1e-15)
    assert half == pytest.approx(20 * (120 + 30) / 120, rel=1e-15)


def test_counter_is_not_extrapolated_below_zero() -> None:
    # first sample 5 at 60 s, +10 a minute: the counter was 0 at 30 s, so the start extends 30 s
    # (not the 60 s to the window start): increase 25 = the 5 seen at 60 s plus 20
    assert rate([60, 120, 180], [5.0, 15, 25], 0, 180) == pytest.approx(25.0, rel=1e-15)
    # a gauge (delta) has no zero point: it extends the full 60 s
    assert rate([60, 120, 180], [5.0, 15, 25], 0, 180, counter=False) == pytest.approx(30.0, rel=1e-15)


def test_counter_reset_adds_the_value_before_the_drop() -> None:
    # 10 -> 20, reset, 5 -> 15: increase 10 + 5 + 10 = 25 (15 - 10 + 20)
    assert rate([0, 60, 120, 180], [10.0, 20, 5, 15], 0, 180) == 25.0


def test_rate_needs_two_samples() -> None:
    assert rate([100], [7.0], 0, 300) is None
    assert rate([], [], 0, 300) is None


def test_factor_is_applied_as_one_product_as_in_v2_42() -> None:
    # v2.42 multiplies the raw increase by ((sampled + to_start + to_end) / sampled / range); v2.39 and
    # older multiplied by (extrapolated / sampled) and divided by the range afterwards. Here samples
    # sit 30 s inside both edges of a 300 s window (extrapolated 240 s -> 300 s) and the two orders
    # differ in the last bit.
    vals = [3.0]
    for _ in range(4):
        vals.append(vals[-1] + 3.3)
    got = rate([15, 75, 135, 195, 255], vals, -15, 285, per_second=True)
    increase = vals[-1] - vals[0]
    assert got == increase * (300 / 240 / 300)
    assert got != increase * (300 / 240) / 300


# --------------------------------------------------------------------------------- PromQL semantics

def store_of(series: dict[str, list[tuple[int, float]]]) -> SeriesStore:
    s = SeriesStore()
    for text, samples in series.items():
        lbls = parse_series(text)
        for t, v in samples:
            s.append(lbls, t, v)
    return s


def test_selectors_matching_and_aggregation() -> None:
    st = store_of({'req{code="200",pod="a"}': [(0, 1.0)], 'req{code="500",pod="a"}': [(0, 2.0)],
                   'req{code="503",pod="b"}': [(0, 4.0)], 'req{code="404",pod="b"}': [(0, 8.0)]})
    ev = Evaluator(st)
    assert ev.vector(parse('sum(req{code=~"5.."})'), 0) == [((), 6.0)]
    assert ev.vector(parse('sum by (pod) (req{code!~"^4..$"})'), 0) == [((("pod", "a"),), 3.0),
                                                                         ((("pod", "b"),), 4.0)]
    assert ev.vector(parse('max(req) without (code)'), 0) == [((("pod", "a"),), 2.0), ((("pod", "b"),), 8.0)]
    # comparisons filter and keep the metric name; arithmetic drops it
    assert [dict(lb)["__name__"] for lb, _ in ev.vector(parse("req > 3"), 0)] == ["req", "req"]
    assert all("__name__" not in dict(lb) for lb, _ in ev.vector(parse("req * 2"), 0))
    assert ev.vector(parse("req > bool 3"), 0)[0][1] in (0.0, 1.0)
    # instant lookback: a sample 5 min old is still seen, one 5 min + 1 ms old is not
    assert len(ev.vector(parse("req"), 300_000)) == 4
    assert ev.vector(parse("req"), 300_001) == []


def test_vector_matching_and_set_operators() -> None:
    st = store_of({'err{slo="a",w="5m"}': [(0, 0.5)], 'budget{slo="a"}': [(0, 0.25)],
                   'x{k="1"}': [(0, 1.0)], 'y{k="2"}': [(0, 2.0)]})
    ev = Evaluator(st)
    assert ev.vector(parse("err / on(slo) group_left budget"), 0) == [((("slo", "a"), ("w", "5m")), 2.0)]
    assert ev.vector(parse("err / ignoring(w) budget"), 0) == [((("slo", "a"),), 2.0)]
    assert sorted(v for _, v in ev.vector(parse("x or y"), 0)) == [1.0, 2.0]
    assert ev.vector(parse("x and y"), 0) == []
    assert ev.vector(parse("x and on() y"), 0) == [((("__name__", "x"), ("k", "1")), 1.0)]
    assert ev.vector(parse("x unless on() y"), 0) == []
    assert ev.vector(parse("absent(nothing{job=\"j\",a=~\"b\"})"), 0) == [((("job", "j"),), 1.0)]
    assert ev.instant(parse("2 * (1 - 0.95)"), 0) == 2 * (1 - 0.95)
    assert ev.vector(parse("vector(1) / 0"), 0) == [((), math.inf)]
    assert math.isnan(ev.vector(parse("vector(0) / 0"), 0)[0][1])


@pytest.mark.parametrize(("expr", "match"), [
    ("label_replace(up, 'a', 'b', 'c', 'd')", r"label_replace\(\) is not emulated"),
    ("rate(up[5m:1m])", "subqueries are not emulated"),
    ("topk(3, up)", r"aggregation topk\(\) is not emulated"),
    ("histogram_quantile(0.9, x)", r"histogram_quantile\(\) is not emulated"),
])
def test_unsupported_constructs_are_named(expr: str, match: str) -> None:
    with pytest.raises(UnsupportedError, match=match):
        parse(expr)


@pytest.mark.parametrize(("expr", "match"), [
    ("sum(rate(x[5m])", r"expected '\)'"),
    ('x{a="1"', r"expected ',' or '\}'"),
    ("rate(x)", "expects a range vector"),
    ("1 > 2", "must use BOOL"),
    ('{a=~".*"}', "at least one non-empty matcher"),
    ("x[5q]", "unexpected character|expected a duration"),
])
def test_malformed_promql_is_rejected(expr: str, match: str) -> None:
    with pytest.raises(PromQLError, match=match):
        parse(expr)


def test_series_notation_is_a_running_sum() -> None:
    # promtool adds the step to the previous value: after six steps of 2.3 from 2 that is 15.8,
    # where 2 + 6 * 2.3 would be 15.799999999999999 (the rhobs suite's inputs are such series)
    vals = expand_series_values("2+2.3x6 _ 7 stale 1x1 _x2")
    assert vals[6] == 15.8 != 2 + 6 * 2.3
    running = 2.0
    expected: list[float | str | None] = []
    for _ in range(7):
        expected.append(running)
        running += 2.3
    assert vals == [*expected, None, 7.0, "stale", 1.0, 1.0, None, None]
    with pytest.raises(PromQLError, match="cannot read series value"):
        expand_series_values("1+x")


@pytest.mark.parametrize(("v", "text"), [(3.0, "3"), (0.8696983386036239, "0.8696983386036239"),
                                          (1e6, "1e+06"), (123456.0, "123456"), (1.5e-5, "1.5e-05"),
                                          (0.0001, "0.0001"), (-2.5, "-2.5"), (math.inf, "+Inf")])
def test_value_prints_like_go(v: float, text: str) -> None:
    assert go_float(v) == text
    assert expand_template("v={{ $value }} i={{ $labels.instance }} n={{$labels.none}}",
                           {"instance": "x"}, v) == f"v={text} i=x n="


# --------------------------------------------------------------------------------------- rules

def run_rules(doc: dict, series: dict[str, list[float | None]], minutes: int) -> dict[int, list[str]]:
    """Input series one sample a minute from 0; firing alert names at every minute."""
    engine = RuleEngine(load_rule_groups(doc))
    for text, vals in series.items():
        for i, v in enumerate(vals):
            if v is not None:
                engine.store.append(parse_series(text), i * 60_000, v)
    out = {}
    for m in range(minutes + 1):
        engine.evaluate(m * 60_000)
        out[m] = [dict(a.labels)["alertname"] for a in engine.firing()]
    return out


def test_for_and_keep_firing_for() -> None:
    # x > 1 from minute 1 to 4: pending at 1, firing at 3 (3 - 1 >= 2m), condition gone at 5,
    # kept firing while 5 + 3m has not passed (5, 6, 7), resolved at 8
    doc = {"groups": [{"name": "g", "rules": [
        {"alert": "A", "expr": "x > 1", "for": "2m", "keep_firing_for": "3m"},
        {"alert": "B", "expr": "x > 1", "for": "5m"}]}]}
    firing = run_rules(doc, {'x{a="1"}': [0, 5, 5, 5, 5, 0, 0, 0, 0, 0]}, 9)
    assert [m for m, names in firing.items() if "A" in names] == [3, 4, 5, 6, 7]
    assert not any("B" in names for names in firing.values())  # pending 4 min only


def test_recording_outputs_go_stale_when_the_rule_stops_returning_them() -> None:
    # r records x while x > 1; the alert reads r. Without a stale marker the 5 min lookback would
    # keep the last r visible until minute 7; with it the alert stops at minute 3.
    doc = {"groups": [{"name": "g", "rules": [
        {"record": "r", "expr": "x > 1"}, {"alert": "A", "expr": "r"}]}]}
    firing = run_rules(doc, {'x{a="1"}': [5, 5, 5, 0, 0, 0, 0, 0, 0]}, 8)
    assert [m for m, names in firing.items() if names] == [0, 1, 2]


def test_an_alert_before_its_recording_rule_sees_the_previous_evaluation() -> None:
    # same group, alert first: at minute m it reads the value recorded at m - 1
    doc = {"groups": [{"name": "g", "rules": [{"alert": "A", "expr": "r > 1"},
                                              {"record": "r", "expr": "x"}]}]}
    firing = run_rules(doc, {'x{a="1"}': [0, 0, 5, 5, 0, 0]}, 5)
    assert [m for m, names in firing.items() if names] == [3, 4]


# ------------------------------------------------------------------------------------ strategy

def random_rows(rng: np.random.Generator, duration_s: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ts = ORIGIN_NS + np.sort(rng.integers(0, duration_s * NS, 4000))
    total = rng.integers(0, 30, ts.size)
    bad = rng.binomial(total, rng.uniform(0, 0.3))
    return ts, bad, total


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize(("scrape_s", "offset_s"), [(15, 0), (60, 0), (60, 37)])
def test_strategy_is_the_scalar_rate_bit_for_bit(seed: int, scrape_s: int, offset_s: int) -> None:
    rng = np.random.default_rng(seed)
    duration_s = 3 * 3600
    ts, bad, total = random_rows(rng, duration_s)
    windows = (60, 300, 1800, 3600, 7200)
    s = PrometheusWindows(windows, ORIGIN_NS, scrape_interval_s=scrape_s, eval_interval_s=60,
                          scrape_offset_s=offset_s)
    s.ingest(ts, bad, total)
    instants = ORIGIN_NS + np.arange(1, duration_s // 60) * 60 * NS
    got = s.evaluate(instants)
    # scalar side: counter samples at every scrape time, from the raw rows
    scrapes_ns = ORIGIN_NS + offset_s * NS + np.arange(0, duration_s // scrape_s + 1) * scrape_s * NS
    cum_bad = np.array([bad[ts < t].sum() for t in scrapes_ns], dtype=float)
    cum_total = np.array([total[ts < t].sum() for t in scrapes_ns], dtype=float)
    scrape_ms = [int((t - ORIGIN_NS) // 1_000_000) for t in scrapes_ns]
    for i, t in enumerate(instants):
        t_ms = int((t - ORIGIN_NS) // 1_000_000)
        for j, w in enumerate(windows):
            sel = [k for k, sm in enumerate(scrape_ms) if t_ms - w * 1000 <= sm <= t_ms]
            args = ([scrape_ms[k] for k in sel], t_ms - w * 1000, t_ms, float(w))
            eb, et = (extrapolated_rate(args[0], [cum[k] for k in sel], *args[1:], is_counter=True,
                                        is_rate=False) for cum in (cum_bad, cum_total))
            where = f"seed {seed}, scrape {scrape_s}s+{offset_s}, t={t_ms} ms, w={w}"
            if eb is None:
                assert math.isnan(got.bad[i, j]) and math.isnan(got.total[i, j]), where
            else:
                assert (got.bad[i, j], got.total[i, j]) == (eb, et), where


def test_strategy_counts_late_rows_at_the_next_scrape() -> None:
    t = ORIGIN_NS + np.arange(0, 1200) * NS
    runs = []
    for late in (False, True):
        s = PrometheusWindows((600,), ORIGIN_NS, scrape_interval_s=60, eval_interval_s=60)
        s.ingest(t, np.zeros(t.size, np.int64), np.ones(t.size, np.int64))
        first = s.evaluate([ORIGIN_NS + 600 * NS]).total[0, 0]
        if late:
            s.ingest([ORIGIN_NS + 100 * NS], [7], [7])  # 500 s late: the scrape at 60 s is long read
        runs.append((first, s.evaluate(ORIGIN_NS + np.array([660, 1200, 1260]) * NS).total[:, 0]))
        assert not s.rejections
    (first_a, plain), (first_b, with_late) = runs
    assert first_a == first_b == 600.0
    # the 7 requests reach the counter before the scrape at 660 s: windows holding that scrape's
    # increase ([60, 660] and [600, 1200]) count them, [660, 1260] no longer does
    assert list(with_late - plain) == [7.0, 7.0, 0.0]


def test_strategy_contract() -> None:
    assert set(STRATEGIES) == {"prometheus-15s", "prometheus-60s"}
    s = STRATEGIES["prometheus-60s"]((300, 3600), ORIGIN_NS, 10)
    assert s.eval_step_s == 60  # instants follow the rule evaluation interval, not the harness step
    assert s.memory_bytes() == 2 * 61 * 16
    with pytest.raises(ValueError, match="bad <= total"):
        s.ingest([ORIGIN_NS], [3], [2])
    with pytest.raises(ValueError, match="scrape_offset_s"):
        PrometheusWindows((60,), ORIGIN_NS, scrape_interval_s=60, scrape_offset_s=60)
    s.ingest([ORIGIN_NS - NS], [0], [5])
    assert s.rejections["before_origin"] == 5
    assert s.evaluate([ORIGIN_NS + 60 * NS]).total[0, 0] == 0.0  # scrapes at 0 and 60 s: an empty window
    late_phase = PrometheusWindows((300, 3600), ORIGIN_NS, scrape_interval_s=60, scrape_offset_s=30)
    first = late_phase.evaluate([ORIGIN_NS + 60 * NS])  # only the scrape at 30 s so far: no data
    assert np.isnan(first.bad).all() and np.isnan(first.total).all()


# ------------------------------------------------------------------ step incident vs exact evaluator

def exact_first_instant_s(bad: np.ndarray, total: np.ndarray, tiers: list[tuple[int, int, float]],
                          after_s: int, firing: bool = True) -> int:
    """First second t > after_s at which the per-second windows [t - w, t) (do not) page."""
    cb = np.concatenate([[0], np.cumsum(bad)])
    ct = np.concatenate([[0], np.cumsum(total)])
    t = np.arange(1, bad.size + 1)
    page = np.zeros(t.size, bool)
    for long_s, short_s, factor in tiers:
        ok = np.ones(t.size, bool)
        for w in (long_s, short_s):
            lo = np.maximum(t - w, 0)
            ok &= (cb[t] - cb[lo]) / (ct[t] - ct[lo]) > factor * B
        page |= ok
    return int(t[np.nonzero((page == firing) & (t > after_s))[0][0]])


PAGE_TIERS = [(3600, 300, 14.4), (21600, 1800, 6.0)]


def page_of(ratio: np.ndarray) -> np.ndarray:
    """Page tiers over answers of windows (5m, 30m, 1h, 6h): 1h/5m above 14.4 B or 6h/30m above 6 B."""
    quick = (ratio[:, 0] > 14.4 * B) & (ratio[:, 2] > 14.4 * B)
    slow = (ratio[:, 1] > 6 * B) & (ratio[:, 3] > 6 * B)
    return quick | slow


def step_incident(error_ratio: float, onset_s: int, end_s: int, duration_s: int,
                  rps: int = 1000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ts = ORIGIN_NS + np.arange(duration_s) * NS
    total = np.full(duration_s, rps, np.int64)
    bad = np.zeros(duration_s, np.int64)
    bad[onset_s:end_s] = round(rps * error_ratio)
    return ts, bad, total


def test_two_percent_pages_at_44_min_and_clears_2_min_after() -> None:
    """slo-math.md: "promtool 2.42 on 1-minute counters pages the 2 % case at 44 min and clears it
    2 min after the errors stop" (Sloth-like 30 d page rules, 1-minute scrapes and evaluation)."""
    onset, end, duration = 6 * 3600, 6 * 3600 + 90 * 60, 8 * 3600
    ts, bad, total = step_incident(0.02, onset, end, duration)
    exact_on = exact_first_instant_s(bad, total, PAGE_TIERS, onset) - onset
    exact_off = exact_first_instant_s(bad, total, PAGE_TIERS, end, firing=False) - end
    assert exact_on == 2593  # 43.2 min: 0.02 * t / 3600 s > 0.0144 first holds at t = 2593 s
    assert exact_off == 84  # 5 min * (1 - 14.4 / 20) = 84 s: there 216 / 300 * 0.02 is not > 14.4 * B

    # the strategy, answered at every evaluation
    s = PrometheusWindows((300, 1800, 3600, 21600), ORIGIN_NS, scrape_interval_s=60, eval_interval_s=60)
    s.ingest(ts, bad, total)
    instants = ORIGIN_NS + np.arange(1, duration // 60) * 60 * NS
    ans = s.evaluate(instants)
    ratio = ans.bad / ans.total
    page = page_of(ratio)
    minute = (instants - ORIGIN_NS) // NS
    paging = minute[page]
    assert paging[0] - onset == 44 * 60
    assert minute[~page & (minute > end)][0] - end == 2 * 60
    assert paging[-1] < minute[~page & (minute > end)][0]

    # the same counters scraped into a store and run through Sloth-shaped rules
    rules = sloth_rules('http_requests_total{code=~"5.."}', "http_requests_total", 99.9,
                        [BurnTier("1h", "5m", 14.4, "page"), BurnTier("6h", "30m", 6.0, "page")])
    engine = RuleEngine(load_rule_groups(rules))
    ok_l = labels_of({"__name__": "http_requests_total", "code": "200"})
    err_l = labels_of({"__name__": "http_requests_total", "code": "500"})
    fired: list[int] = []
    for m in range(duration // 60):
        t_s = m * 60
        engine.store.append(ok_l, t_s * 1000, float((total[:t_s] - bad[:t_s]).sum()))
        engine.store.append(err_l, t_s * 1000, float(bad[:t_s].sum()))
        engine.evaluate(t_s * 1000)
        if engine.firing():
            fired.append(t_s)
        if m >= 1:  # the recorded SLI equals the strategy's increase ratio (rate's 1/w cancels)
            got = engine.evaluator.vector(parse("slo:sli_error:ratio_rate1h"), t_s * 1000)[0][1]
            assert got == pytest.approx(ratio[m - 1, 2], rel=1e-12, nan_ok=True)
    assert fired == [int(x) for x in paging]


@pytest.mark.parametrize("error_ratio", [1.0, 0.1, 0.02])
def test_extra_delay_against_an_event_exact_evaluator(error_ratio: float) -> None:
    """slo-math.md: scrape + evaluation sampling, an alert group one evaluation behind its recording
    group and Alertmanager's 30 s group_wait add "typically 1.5-3.5 min" to the window arithmetic."""
    onset, duration = 6 * 3600, 7 * 3600
    ts, bad, total = step_incident(error_ratio, onset, duration, duration)
    exact = exact_first_instant_s(bad, total, PAGE_TIERS, onset) - onset
    delays_min = []
    for scrape_s, offset_s in [(15, 0), (15, 9), (60, 0), (60, 15), (60, 30), (60, 45)]:
        s = PrometheusWindows((300, 1800, 3600, 21600), ORIGIN_NS, scrape_interval_s=scrape_s,
                              eval_interval_s=60, scrape_offset_s=offset_s, rule_lag_evals=1)
        s.ingest(ts, bad, total)
        instants = ORIGIN_NS + np.arange(onset // 60, duration // 60) * 60 * NS
        answers = s.evaluate(instants)
        page = page_of(answers.bad / answers.total)
        notified_s = (instants[np.argmax(page)] - ORIGIN_NS) // NS - onset + 30  # + group_wait
        delays_min.append((notified_s - exact) / 60)
    assert all(1.5 <= d <= 3.5 for d in delays_min), (error_ratio, exact, delays_min)


def test_strategy_answers_through_quiet_hours_and_rejects_far_future_rows() -> None:
    s = PrometheusWindows((300,), ORIGIN_NS, scrape_interval_s=15, eval_interval_s=15)
    s.ingest([ORIGIN_NS + 5 * NS], [1], [4])
    quiet = s.evaluate(ORIGIN_NS + np.array([15, 6 * 3600]) * NS)  # 1,440 scrapes with no rows at all
    assert list(quiet.total[:, 0]) == [4.0, 0.0]
    s.ingest([ORIGIN_NS + 401 * 86_400 * NS, ORIGIN_NS + 6 * 3600 * NS + NS], [0, 0], [9, 2])
    assert s.rejections["too_far_ahead"] == 9
    assert s.evaluate([ORIGIN_NS + (6 * 3600 + 15) * NS]).total[0, 0] == 2.0


def test_rules_outside_the_subset_are_named_with_what_depends_on_them() -> None:
    doc = {"groups": [{"name": "g", "rules": [
        {"record": "agg", "expr": 'label_replace(x, "name", "all", "name", ".*")'},
        {"alert": "OnAgg", "expr": "agg > 0"},
        {"alert": "OnX", "expr": "x > 0", "annotations": {"v": "{{ $value | humanize }}"}},
        {"alert": "Plain", "expr": "x > 0"}]}]}
    engine = RuleEngine(load_rule_groups(doc))
    assert engine.unsupported == {
        "agg": "function label_replace() is not emulated",
        "OnAgg": "depends on agg (function label_replace() is not emulated)",
        "OnX": "template action {{ $value | humanize }} is not emulated",
    }
    engine.store.append(parse_series('x{a="1"}'), 0, 1.0)
    engine.evaluate(0)
    assert [dict(a.labels)["alertname"] for a in engine.firing()] == ["Plain"]
    with pytest.raises(PromQLError, match=r"groups\[0\]\.rules\[0\]: expected exactly one of"):
        load_rule_groups({"groups": [{"name": "g", "rules": [{"expr": "x"}]}]}, "r.yaml")
