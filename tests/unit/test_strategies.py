"""The strategy benchmark: strategies against brute-force sums, policies against the Workbook.

- Each window strategy equals a literal per-row sum over the interval its docstring documents, and
  that interval is within the documented bound of the exact window ``[t - w, t)``; late rows and
  their rejections follow the documented rules.
- The policy state machine gives the engine's own alert transitions on the engine's windows.
- The Workbook's verdicts on small scenarios: approach 3 misses periodic spikes, approach 2 resets
  about 36 h after an outage, MWMB tiers reset within one short window, approach 1 pages on noise
  at the budget; the detection table of slo-math.md within one bucket.
- Scoring, scenario generation, replayed traffic and the CLI on hand-checked cases.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest

from bench.strategies.base import NS, WindowAnswers
from bench.strategies.policies import (
    Episodes,
    Policy,
    Rule,
    Term,
    default_policies,
    evaluate_policy,
    policy_windows,
    workbook_policies,
)
from bench.strategies.scenarios import (
    DAY,
    Delivery,
    Family,
    H,
    Incident,
    Member,
    Traffic,
    draw,
    grid_family,
    member_segment,
    significance,
    traffic_family,
)
from bench.strategies.score import IncidentTruth, score_member
from bench.strategies.windows import STRATEGIES, EngineTiers, ExactWindows
from engine.plan import serving_resolution_s
from tests.streams import DETECTION_TABLE_S, NO_JIT, RESET_1H_5M_S, RESET_6H_30M_S, TABLE_ROUNDING_S

T0 = 1_704_067_200 * NS  # an hour edge
WINDOWS = (60, 300, 3600)
STEP_S = 10
B = 0.001
SEEDS = [11, 12] if NO_JIT else [11, 12, 13, 14]


# ---------------------------------------------------------------------------------------------
# utilities


def random_rows(rng: np.random.Generator, a_s: int, b_s: int, n: int) -> tuple[np.ndarray, ...]:
    ts = T0 + rng.integers(a_s * NS, b_s * NS, n)
    total = rng.integers(0, 20, n)
    bad = rng.binomial(total, 0.2)
    return ts.astype(np.int64), bad.astype(np.int64), total.astype(np.int64)


def brute(rows: tuple[np.ndarray, ...], lo_ns: np.ndarray, hi_ns: np.ndarray) -> tuple[np.ndarray, ...]:
    """Literal sums of bad and total over rows with lo <= ts < hi, per (instant, window)."""
    ts, bad, total = rows
    inside = (ts[None, None, :] >= lo_ns[:, :, None]) & (ts[None, None, :] < hi_ns[:, :, None])
    return (inside * bad).sum(axis=2), (inside * total).sum(axis=2)


def instants(a_s: int, b_s: int, step_s: int = STEP_S) -> np.ndarray:
    return T0 + np.arange(a_s // step_s + 1, b_s // step_s + 1, dtype=np.int64) * step_s * NS


def two_phase(name: str, seed: int, late_s: int) -> tuple[tuple[np.ndarray, ...], ...]:
    """Answers of a strategy fed on-time rows, then late rows (up to ``late_s`` old) and more rows.

    Returns (phase-1 rows, all rows, phase-1 instants, phase-2 instants, answers 1, answers 2).
    """
    print(f"seed={seed}")
    rng = np.random.default_rng(seed)
    n = 300 if NO_JIT else 1500
    mid_s, end_s = 2 * H, 2 * H + 1800
    r1 = random_rows(rng, 0, mid_s, n)
    late = random_rows(rng, mid_s - late_s, mid_s, n // 10)
    r2 = random_rows(rng, mid_s, end_s, n // 4)
    s = STRATEGIES[name](WINDOWS, T0, STEP_S)
    s.ingest(*r1)
    i1 = instants(0, mid_s)
    a1 = s.evaluate(i1)
    s.ingest(*(np.concatenate([a, b]) for a, b in zip(late, r2, strict=True)))
    i2 = instants(mid_s, end_s)
    a2 = s.evaluate(i2)
    both = tuple(np.concatenate([a, b, c]) for a, b, c in zip(r1, late, r2, strict=True))
    return r1, both, (i1,), (i2,), (a1.bad, a1.total), (a2.bad, a2.total)


def bucket_interval(inst: np.ndarray, r_s: int, head_of: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[start of the bucket n - 1 before the head, t) per (instant, window)."""
    w = np.array(WINDOWS)
    lo = T0 + (head_of[:, None] - w[None, :] // r_s + 1) * r_s * NS
    return lo, np.broadcast_to(inst[:, None], lo.shape)


# ---------------------------------------------------------------------------------------------
# strategies against brute force


@pytest.mark.parametrize("seed", SEEDS)
def test_exact_is_the_per_row_sum_of_whole_second_windows(seed: int) -> None:
    r1, both, (i1,), (i2,), a1, a2 = two_phase("exact", seed, late_s=1200)
    for rows, inst, (bad, total) in ((r1, i1, a1), (both, i2, a2)):
        hi = np.broadcast_to(inst[:, None], (inst.size, len(WINDOWS)))
        lo = hi - np.array(WINDOWS)[None, :] * NS
        eb, et = brute(rows, lo, hi)
        np.testing.assert_array_equal(bad, eb)
        np.testing.assert_array_equal(total, et)


@pytest.mark.parametrize("res_s", [1, 10, 60])
@pytest.mark.parametrize("seed", SEEDS[:2])
def test_ring_sums_its_buckets_within_one_bucket_of_exact(res_s: int, seed: int) -> None:
    r1, both, (i1,), (i2,), a1, a2 = two_phase(f"ring-{res_s}s", seed, late_s=1200)
    for rows, inst, (bad, total) in ((r1, i1, a1), (both, i2, a2)):
        lo, hi = bucket_interval(inst, res_s, (inst - T0 - 1) // (res_s * NS))
        eb, et = brute(rows, lo, hi)
        np.testing.assert_array_equal(bad, eb)
        np.testing.assert_array_equal(total, et)
        short_ns = lo - (hi - np.array(WINDOWS)[None, :] * NS)  # how much of [t - w, t) is left out
        assert short_ns.min() >= 0 and short_ns.max() < res_s * NS
        assert np.all(short_ns[(inst - T0) % (res_s * NS) == 0] == 0)


@pytest.mark.parametrize("seed", SEEDS[:2])
def test_engine_tiers_sum_their_serving_buckets(seed: int) -> None:
    # Late rows stay inside the engine's max_late_s (300 s) so that all count.
    r1, both, (i1,), (i2,), a1, a2 = two_phase("engine", seed, late_s=250)
    res = np.array([serving_resolution_s(w, STEP_S) for w in WINDOWS])
    for rows, inst, (bad, total) in ((r1, i1, a1), (both, i2, a2)):
        head = (inst[:, None] - T0 - STEP_S * NS) // (res[None, :] * NS)
        lo = T0 + (head - np.array(WINDOWS)[None, :] // res[None, :] + 1) * res[None, :] * NS
        hi = np.broadcast_to(inst[:, None], lo.shape)
        eb, et = brute(rows, lo, hi)
        np.testing.assert_array_equal(bad, eb)
        np.testing.assert_array_equal(total, et)
        short_ns = lo - (hi - np.array(WINDOWS)[None, :] * NS)
        assert short_ns.min() >= 0 and np.all(short_ns < res[None, :] * NS)


def test_engine_rejects_rows_beyond_max_late_in_requests() -> None:
    s = EngineTiers(WINDOWS, T0, STEP_S)
    s.ingest(np.array([T0 + 5 * NS]), np.array([0]), np.array([3]))
    s.evaluate(instants(0, 1200))
    s.ingest(np.array([T0 + 600 * NS, T0 + 1100 * NS]), np.array([2, 1]), np.array([7, 4]))
    ans = s.evaluate(instants(1200, 1210))
    assert s.rejections["too_late"] == 7            # 600 s late > 300 s: its 7 requests
    assert s.engine.rejections["too_late"] == 2      # the engine counts its two events (good, bad)
    assert ans.total[-1, WINDOWS.index(3600)] == 3 + 4


@pytest.mark.parametrize("seed", SEEDS[:2])
def test_decay_is_the_exponentially_weighted_sum(seed: int) -> None:
    r1, both, (i1,), (i2,), a1, a2 = two_phase("decay", seed, late_s=1200)
    for rows, inst, (bad, total) in ((r1, i1, a1), (both, i2, a2)):
        ts, rb, rt = rows
        age = (inst[:, None] - ts[None, :]).astype(np.float64) / NS
        for j, w in enumerate(WINDOWS):
            wt = np.where(age > 0, np.exp(-np.maximum(age, 0) / w), 0.0)
            np.testing.assert_allclose(total[:, j], wt @ rt, rtol=1e-9, atol=1e-9)
            np.testing.assert_allclose(bad[:, j], wt @ rb, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("seed", SEEDS[:2])
def test_tumbling_answers_the_last_complete_window(seed: int) -> None:
    # Late rows at most 30 s old still belong to the open or the last complete window of each size.
    r1, both, (i1,), (i2,), a1, a2 = two_phase("tumbling", seed, late_s=30)
    w = np.array(WINDOWS)
    for rows, inst, (bad, total) in ((r1, i1, a1), (both, i2, a2)):
        k = ((inst - T0) // NS)[:, None] // w[None, :]
        lo, hi = T0 + (k - 1) * w * NS, T0 + k * w * NS
        eb, et = brute(rows, lo, hi)
        np.testing.assert_array_equal(bad, eb)
        np.testing.assert_array_equal(total, et)
        assert np.all(inst[:, None] - hi < w * NS)  # at most one window old


def test_ring_rejects_rows_older_than_every_window() -> None:
    s = STRATEGIES["ring-60s"]((60, 300), T0, STEP_S)
    s.ingest(np.array([T0 + 10 * NS]), np.array([1]), np.array([2]))
    s.evaluate(instants(0, 1800))
    s.ingest(np.array([T0 + 100 * NS, T0 + 1700 * NS]), np.array([1, 0]), np.array([5, 6]))
    ans = s.evaluate(instants(1800, 1810))
    assert s.rejections["too_late"] == 5
    assert ans.total[-1].tolist() == [0, 6]


def test_interface_rejects_bad_input_loudly() -> None:
    s = ExactWindows(WINDOWS, T0, STEP_S)
    with pytest.raises(ValueError, match="expected bad <= total, got bad=3 total=2 at row 1"):
        s.ingest([T0, T0], [0, 3], [1, 2])
    with pytest.raises(ValueError, match="of one length"):
        s.ingest([T0], [0, 1], [1, 2])
    with pytest.raises(ValueError, match="expected bad >= 0"):
        s.ingest([T0], [-1], [1])
    s.ingest([T0 - NS, T0 + NS], [1, 1], [4, 2])
    assert s.rejections == {"before_origin": 4}
    with pytest.raises(ValueError, match="strictly ascending"):
        s.evaluate([T0 + 20 * NS, T0 + 10 * NS])
    with pytest.raises(ValueError, match=r"origin \+ k \* 10 s"):
        s.evaluate([T0 + 15 * NS])
    s.evaluate([T0 + 20 * NS])
    with pytest.raises(ValueError, match="after the last evaluated one"):
        s.evaluate([T0 + 20 * NS])
    with pytest.raises(ValueError, match="multiple of one hour"):
        ExactWindows(WINDOWS, T0 + NS, STEP_S)
    with pytest.raises(ValueError, match="distinct ascending"):
        ExactWindows((300, 60), T0, STEP_S)


# ---------------------------------------------------------------------------------------------
# policies


def test_policy_factors_follow_the_workbook_and_pyrra() -> None:
    pol = {p.name: p for p in default_policies(30 * DAY)}
    assert pol["4-burn-rate"].rules[0].terms[0].factor == pytest.approx(36)
    assert [r.terms[0].factor for r in pol["5-multi-burn"].rules] == pytest.approx([14.4, 6, 1])
    assert pol["1-threshold"].rules[0].terms[0].inclusive
    assert pol["3-duration"].rules[0].for_s == H
    pyrra = pol["pyrra"].rules
    # Pyrra's 28-day windows and `for` scaled by 30/28 and rounded to the minute.
    scaled = [round(m * 30 / 28) * 60 for m in (60, 5, 360, 30, 1440, 120, 5760, 360)]
    assert [t.window_s for r in pyrra for t in r.terms] == scaled
    assert [r.for_s for r in pyrra] == [round(m * 30 / 28) * 60 for m in (2, 15, 60, 180)]
    assert [r.terms[0].factor for r in pyrra] == [14, 7, 2, 1]
    assert pol["sloburn"].suppress_ticket and pol["sloburn"].keep_firing_for_s > 0


def test_state_machine_gives_the_engines_own_alerts() -> None:
    from engine.batch import EventBatch
    from engine.config import parse_config
    from engine.engine import Engine

    seed = 5
    print(f"seed={seed}")
    rng = np.random.default_rng(seed)
    n_s = 4 * H if NO_JIT else 8 * H
    total = rng.poisson(20, n_s)
    p = np.full(n_s, 0.0005)
    p[H: H + 900] = 0.3                        # pages, resolves, pages again inside keep_firing_for
    p[H + 1500: H + 1800] = 0.3
    p[2 * H + 600: 3 * H] = 0.02
    bad = rng.binomial(total, p)
    ts = T0 + np.arange(n_s, dtype=np.int64) * NS
    alerting = {"windows": "sre-workbook", "min_events": 500, "keep_firing_for": "10m",
                "suppress_ticket_while_paging": True, "require_full_windows": False}
    cfg = parse_config({"slos": [{"name": "s", "service": "svc", "objective": 99.9, "histogram": False,
                                  "sli": {"availability": {}}, "alerting": alerting}],
                        "engine": {"step_s": STEP_S}})
    eng = Engine(cfg)
    k = eng.key_id("svc")
    st = np.concatenate([np.full(n_s, 200, np.int16), np.full(n_s, 500, np.int16)])
    w = np.concatenate([total - bad, bad])
    keep = w > 0
    eng.ingest(EventBatch.from_arrays(np.concatenate([ts, ts])[keep], np.full(int(keep.sum()), k), st[keep],
                                      weight=w[keep]))
    want = [(a.severity, a.action, (round(a.ts) - T0 // NS) * NS) for a in eng.advance(T0 + n_s * NS)]
    policy = next(p for p in default_policies() if p.name == "sloburn")
    policy = Policy("check", policy.rules, min_events=500, keep_firing_for_s=600, suppress_ticket=True)
    windows = policy_windows([policy])
    s = EngineTiers(windows, T0, STEP_S)
    s.ingest(ts, bad, total)
    inst = instants(0, n_s)
    eps = evaluate_policy(policy, windows, inst, s.evaluate(inst), B)
    got = []
    for sev, ep in eps.items():
        got += [(sev, "trigger", int(t) - T0) for t in ep.trigger_ns]
        got += [(sev, "resolve", int(t) - T0) for t in ep.resolve_ns if t >= 0]
    assert sorted(got, key=lambda x: (x[2], x[0])) == sorted(want, key=lambda x: (x[2], x[0]))
    assert sum(1 for a in want if a[1] == "trigger") >= 2


def _run(policies: list[Policy], fam: Family, inc: tuple[Incident, ...], n_s: int, step_s: int,
         seed: int = 3) -> tuple[dict[str, dict[str, Episodes]], np.ndarray]:
    """Exact windows over a drawn member starting at the origin; episodes per policy."""
    seg = draw(fam, 0, n_s, np.random.default_rng(seed), incidents=inc)
    windows = policy_windows(policies)
    s = ExactWindows(windows, T0, step_s)
    s.ingest(seg.ts_ns, seg.row_bad, seg.row_total)
    inst = instants(0, n_s, step_s)
    ans = s.evaluate(inst)
    eps = {p.name: evaluate_policy(p, windows, inst, ans, fam.error_budget) for p in policies}
    return eps, seg.incident_bad


def _wb(name: str) -> Policy:
    return next(p for p in workbook_policies() if p.name == name)


STEADY = Family("steady", "", (), Traffic(100.0, poisson=False, even_errors=True), origin_ns=T0)


def test_approach_3_misses_periodic_spikes_that_mwmb_pages() -> None:
    spikes = (Incident("spikes", H, 10 * H, 0.25, 600, 60),)
    eps, inc_bad = _run([_wb("3-duration"), _wb("6-mwmb")], STEADY, spikes, 12 * H, STEP_S)
    assert len(eps["3-duration"]["page"]) == 0
    first = eps["6-mwmb"]["page"].trigger_ns
    assert len(first) >= 1 and H * NS <= first[0] - T0 < 11 * H * NS
    member = Member("m", 12 * H, spikes)
    page, _, spent = significance(STEADY, member, spikes[0], inc_bad)
    assert page and 0.30 < spent < 0.40  # the Workbook: about 35 % of the budget


def test_approach_2_resets_about_36_hours_after_an_outage() -> None:
    start = 36 * H
    outage = (Incident("outage", start, 600, 1.0),)
    eps, _ = _run([_wb("2-long-window")], STEADY, outage, start + 40 * H, 60)
    ep = eps["2-long-window"]["page"]
    assert len(ep) == 1
    # Clears once the 36 h window holds less than B of it: 129.6 s of the 600 s outage.
    end_s = start + 600
    want_s = start + 600 + 36 * H - 129.6
    assert abs((ep.resolve_ns[0] - T0) / NS - want_s) <= 60
    assert (ep.resolve_ns[0] - T0) / NS - end_s == pytest.approx(35.96 * H, abs=120)


def test_mwmb_tiers_reset_within_one_short_window() -> None:
    start = H
    outage = (Incident("outage", start, 7 * H, 1.0),)
    sloth = next(p for p in default_policies() if p.name == "sloth")
    quick = Policy("quick", (sloth.rules[0],))
    slow = Policy("slow", (sloth.rules[1],))
    eps, _ = _run([quick, slow, _wb("6-mwmb")], STEADY, outage, start + 8 * H + 1800, STEP_S)
    end_ns = T0 + (start + 7 * H) * NS
    for name, want in (("quick", RESET_1H_5M_S), ("slow", RESET_6H_30M_S), ("6-mwmb", RESET_6H_30M_S)):
        ep = eps[name]["page"]
        assert len(ep) == 1, name
        assert abs((ep.resolve_ns[0] - end_ns) / NS - want) <= STEP_S, name


def test_approach_1_pages_on_noise_at_the_budget_and_mwmb_does_not() -> None:
    seed = 8
    print(f"seed={seed}")
    fam = Family("noise", "", (), Traffic(100.0, baseline_error=B, noise_sigma=1.0), origin_ns=T0)
    eps, _ = _run([_wb("1-threshold"), _wb("6-mwmb")], fam, (), DAY, 60, seed)
    assert len(eps["1-threshold"]["page"]) > 10   # the Workbook: up to 144 a day
    assert len(eps["6-mwmb"]["page"]) == 0


# Without the JIT the engine's kernel runs in Python: there it checks the two fastest ratios only.
DETECT_CASES = [("exact", e) for e in sorted(DETECTION_TABLE_S, reverse=True)] + [
    ("engine", e) for e in ([1.0, 0.1] if NO_JIT else sorted(DETECTION_TABLE_S, reverse=True))]


@pytest.mark.parametrize(("strategy", "ratio"), DETECT_CASES)
def test_detection_table_within_one_bucket(strategy: str, ratio: float) -> None:
    sloth = next(p for p in default_policies() if p.name == "sloth")
    tiers = [Policy(r.name, (r,)) for r in sloth.rules]
    windows = policy_windows(tiers)
    hist_s = 3 * DAY
    s = STRATEGIES[strategy](windows, T0, STEP_S)
    # Three days of error-free history as per-minute rows, then per-second rows at ratio e.
    minutes = T0 + np.arange(hist_s // 60, dtype=np.int64) * 60 * NS
    s.ingest(minutes, np.zeros(minutes.size, np.int64), np.full(minutes.size, 6000, np.int64))
    cells = DETECTION_TABLE_S[ratio]
    after_s = int(max([c for c in cells if c is not None], default=3600)) + 1800
    sec = np.arange(after_s, dtype=np.int64)
    total = np.full(after_s, 100, np.int64)
    bad = np.diff(np.floor(ratio * 100 * (sec + 1) + 1e-9).astype(np.int64), prepend=0)
    s.ingest(T0 + (hist_s + sec) * NS, bad, total)
    s.evaluate(instants(0, hist_s))
    inst = instants(hist_s, hist_s + after_s)
    ans = s.evaluate(inst)
    for tier, cell, rounding in zip(tiers, cells, TABLE_ROUNDING_S[ratio], strict=True):
        ep = evaluate_policy(tier, windows, inst, ans, B)[tier.rules[0].severity]
        long_s = tier.rules[0].terms[0].window_s
        bucket = serving_resolution_s(long_s, STEP_S) if strategy == "engine" else 0
        if cell is None:
            assert len(ep) == 0, tier.name
            continue
        assert len(ep) >= 1, tier.name
        got_s = (ep.trigger_ns[0] - T0) / NS - hist_s
        assert cell - rounding - bucket <= got_s <= cell + rounding + STEP_S, (tier.name, got_s)


# ---------------------------------------------------------------------------------------------
# scoring and scenarios


def test_score_member_attributes_alerts_by_hand() -> None:
    inc = [IncidentTruth("big", T0 + 1000 * NS, T0 + 2000 * NS, True, True, 0.05,
                         np.arange(0, 1001, dtype=np.int64) * 10, 100_000.0),
           IncidentTruth("small", T0 + 50_000 * NS, T0 + 50_600 * NS, False, False, 0.001,
                         np.zeros(601, np.int64), 100_000.0)]
    page = Episodes(np.array([T0 + 500 * NS, T0 + 1300 * NS, T0 + 1900 * NS, T0 + 50_100 * NS,
                              T0 + 90_000 * NS]),
                    np.array([T0 + 600 * NS, T0 + 1500 * NS, T0 + 2300 * NS, T0 + 50_700 * NS, -1]),
                    np.zeros(5, np.int64))
    empty = Episodes(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64))
    sc = score_member({"page": page, "ticket": empty}, inc, T0, T0 + 2 * DAY * NS, 6 * H * NS)
    big, small = sc.incidents
    assert big.detected_page and big.detection_s == 300 and big.pages == 2
    assert big.budget_at_detection == pytest.approx(3000 / 100_000)
    assert big.reset_s == 300 and not big.reset_censored
    assert small.detected_page and small.pages == 1
    assert sc.pages == 5 and sc.pages_correct == 2 and sc.pages_outside == 2  # t=500 and t=90000
    assert sc.outside_days == pytest.approx((2 * DAY - (1000 + 6 * H) - (600 + 6 * H)) / DAY)


def test_grid_significance_follows_the_printed_rules() -> None:
    fam = grid_family((1.0, 0.002, 0.001), (60, 2 * DAY), tail_s=0, extra=())
    got = {}
    for i, m in enumerate(fam.members):
        seg = member_segment(fam, i, seed=1)
        got[m.name] = significance(fam, m, m.incidents[0], seg.incident_bad)[:2]
    # Budget: 0.001 x 100/s x 30 d = 259,200 requests; 2 % = 5,184 in an hour, 10 % in 3 days.
    assert got["1x1m"] == (True, False)        # 6,000 bad in 1 min
    assert got["0.002x2d"] == (False, True)    # 4,320 in 6 h < 12,960; 34,560 in 2 d >= 25,920
    assert got["0.001x2d"] == (False, False)   # 17,280 < 25,920


def test_generation_is_seeded_and_delivery_keeps_every_request() -> None:
    fam = Family("late", "", (Member("m", 2 * H, (Incident("i", 600, 600, 0.1),)),),
                 Traffic(50.0, baseline_error=0.001), warmup_s=H, delivery=Delivery())
    a, b, c = (member_segment(fam, 0, seed) for seed in (4, 4, 5))
    np.testing.assert_array_equal(a.bad, b.bad)
    assert not np.array_equal(a.total, c.total)
    assert np.all(np.diff(a.arrival_ns) >= 0) and np.all(a.arrival_ns >= a.ts_ns)
    sec = (a.ts_ns - fam.origin_ns) // NS - a.start_s
    np.testing.assert_array_equal(np.bincount(sec, a.row_total, a.total.size), a.total)
    np.testing.assert_array_equal(np.bincount(sec, a.row_bad, a.total.size), a.bad)
    ratio = a.incident_bad[600:1200].sum() / a.total[600:1200].sum()
    assert 0.08 < ratio < 0.12


def _counts_csv(tmp_path: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(9)
    lines = ["ts,bad,total"]
    start = 1_704_067_200
    for k in range(24 * 60):
        total = int(rng.poisson(600))
        p = 0.1 if 300 <= k < 420 else 0.0005
        lines.append(f"{start + 60 * k},{int(rng.binomial(total, p))},{total}")
    traffic = tmp_path / "counts.csv"
    traffic.write_text("\n".join(lines) + "\n")
    incidents = tmp_path / "incidents.csv"
    incidents.write_text("start,end,name\n2024-01-01T05:00:00Z,2024-01-01T07:00:00Z,bad deploy\n")
    return traffic, incidents


def test_replayed_traffic_runs_through_the_harness(tmp_path: Path) -> None:
    from bench.strategies.__main__ import Options, run_benchmark
    from bench.strategies.report import markdown, summarize

    traffic, incidents = _counts_csv(tmp_path)
    opts = Options(strategies=["exact", "ring-60s"], policies=["sloth", "3-duration"],
                   traffic=str(traffic), incidents=str(incidents), measure_costs=False, progress=False)
    res = run_benchmark(opts)
    fam = res.families[0]
    assert fam.members[0].incidents[0].name == "bad deploy" and fam.warmup_s == 0
    s = summarize([r for r in res.records if r.strategy == "exact" and r.policy == "sloth"])
    assert s["significant"] == 1 and s["recall"] == 1.0
    # 10 % errors: the 1h/5m tier fires after (B / e) * 1h * 14.4 = 8.6 min.
    assert 8 * 60 <= s["detect_med_s"] <= 10 * 60
    text = markdown(res, "2024-01-01")
    assert "## Policies on the `exact` strategy" in text and "| sloth |" in text


def test_replayed_traffic_errors_name_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("ts,bad,total\n1704067200,5,3\n")
    inc = tmp_path / "inc.csv"
    inc.write_text("start,end\n1704067200,1704067260\n")
    with pytest.raises(ValueError, match=r"bad.csv:2: expected 0 <= bad <= total, got bad=5 total=3"):
        traffic_family(str(bad), str(inc))
    traffic, _ = _counts_csv(tmp_path)
    inc.write_text("start,end\n2024-01-03T00:00:00Z,2024-01-03T01:00:00Z\n")
    with pytest.raises(ValueError, match=r"inc.csv:2: expected start < end inside the traffic"):
        traffic_family(str(traffic), str(inc))
    nohead = tmp_path / "nohead.csv"
    nohead.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="expected a header with ts, bad, total"):
        traffic_family(str(nohead), str(inc))


def test_cli_bench_strategies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from engine import cli_bench

    parser = argparse.ArgumentParser()
    cli_bench.register(parser.add_subparsers(dest="command"))
    traffic, incidents = _counts_csv(tmp_path)
    out = tmp_path / "out"
    args = parser.parse_args(["bench", "strategies", "--traffic", str(traffic), "--incidents", str(incidents),
                              "--strategies", "exact", "--policies", "sloth,6-mwmb", "--quick",
                              "--no-progress", "--out", str(out)])
    assert args.func(args) == 0
    text = capsys.readouterr().out
    assert "| 6-mwmb |" in text
    assert (out / "RESULTS.md").read_text().startswith("# Window strategies")
    for name in ("incidents.csv", "policies.csv", "strategies.csv", "precision_recall.png",
                 "burn_rate_error.png"):
        assert (out / name).stat().st_size > 0, name
    args = parser.parse_args(["bench", "strategies", "--traffic", str(traffic), "--no-progress"])
    assert args.func(args) == 2
    assert "--traffic needs --incidents" in capsys.readouterr().err
    args = parser.parse_args(["bench", "strategies", "--scenarios", "nope", "--no-progress"])
    assert args.func(args) == 2
    assert "unknown scenarios ['nope']" in capsys.readouterr().err


def test_unknown_policy_is_a_clear_error() -> None:
    from bench.strategies.__main__ import select

    with pytest.raises(ValueError, match=r"unknown policies \['x'\]; expected some of"):
        select(["x"], ["sloth"], "policies")


def test_burns_treat_no_answer_as_no_data() -> None:
    p = Policy("p", (Rule("r", "page", (Term(60, 1.0),)),))
    ans = WindowAnswers(np.array([[np.nan], [0.0], [5.0]]), np.array([[np.nan], [0.0], [10.0]]))
    ep = evaluate_policy(p, (60,), T0 + np.array([1, 2, 3]) * STEP_S * NS, ans, B)["page"]
    assert (ep.trigger_ns - T0).tolist() == [3 * STEP_S * NS]


def test_replayed_events_are_classified_and_rejections_counted(tmp_path: Path) -> None:
    cfg = tmp_path / "slo.yaml"
    cfg.write_text("slos:\n  - name: api\n    service: api\n    objective: 99.5\n    period: 28d\n"
                   "    sli: {availability: {}}\n")
    events = tmp_path / "events.ndjson"
    lines = [f'{{"ts": {1_704_067_200 + k}, "service": "api", "status": {500 if k % 4 == 0 else 200}}}'
             for k in range(120)]
    lines += ['{"ts": 1704067300, "service": "other", "status": 200}', '{"ts": "not a time"']
    events.write_text("\n".join(lines) + "\n")
    inc = tmp_path / "inc.csv"
    inc.write_text("start,end,name\n1704067200,1704067260,first minute\n")
    fam, rejected = traffic_family(str(events), str(inc), config_path=str(cfg))
    assert (fam.objective, fam.period_s) == (99.5, 28 * DAY)
    seg = fam.loaded[1] if fam.loaded else None
    assert seg is not None
    assert int(seg.total.sum()) == 120 and int(seg.bad.sum()) == 30
    assert rejected["unmatched"] == 1 and sum(rejected.values()) == 2


def test_event_columns_become_rows() -> None:
    from bench.strategies.base import counts_from_events

    ts, bad, total = counts_from_events([T0, T0 + NS, T0 + 2 * NS], [True, False, True], [3, 4, 1])
    assert bad.tolist() == [3, 0, 1] and total.tolist() == [3, 4, 1]
    s = ExactWindows((60,), T0, STEP_S)
    s.ingest(ts, bad, total)
    ans = s.evaluate(instants(0, 10))
    assert (ans.bad[0, 0], ans.total[0, 0]) == (4, 8)
