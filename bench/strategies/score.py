"""Scores: alerts against the ground truth, burn-rate error against the exact reference, costs.

Measures (SRE Workbook ch. 5): *precision* = alerted incidents that were significant / (alerted
incidents + alerts outside incidents), so that an incident counts once however often it paged
(:func:`bench.strategies.report.summarize`); *recall* = significant incidents alerted / significant
incidents; *detection time* = incident start -> first alert; *reset time* = incident end -> the
last of its alerts cleared (0 when it cleared before the end; censored at the end of the scenario);
*alerts outside incidents* per day of scored time outside ``[start, end + grace)`` of every
incident; *budget spent before detection* = the incident's own bad requests from its start to the
first page, as a fraction of the period's budget.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from bench.strategies.base import NS, StrategyFactory, WindowAnswers
from bench.strategies.policies import Episodes

T = TypeVar("T")

# ---------------------------------------------------------------------------------------------
# alerts against incidents


@dataclass(frozen=True, slots=True)
class IncidentTruth:
    """One injected incident in absolute time, with its ground truth."""

    name: str
    start_ns: int
    end_ns: int
    page_significant: bool
    ticket_significant: bool
    budget_fraction: float
    cum_bad: np.ndarray      # cumulative own bad requests per second from start_ns
    budget_requests: float


@dataclass(slots=True)
class IncidentOutcome:
    incident: str
    page_significant: bool
    ticket_significant: bool
    budget_fraction: float
    detected_page: bool
    detection_s: float
    budget_at_detection: float
    reset_s: float
    reset_censored: bool
    pages: int
    detected_ticket: bool
    ticket_detection_s: float
    ticket_reset_s: float
    ticket_reset_censored: bool
    tickets: int


@dataclass(slots=True)
class MemberScore:
    """Alerts of one policy on one strategy over one member's scored time."""

    incidents: list[IncidentOutcome]
    pages: int
    tickets: int
    pages_correct: int
    tickets_correct: int
    pages_outside: int
    tickets_outside: int
    outside_days: float


def _attributed(ep: Episodes, inc: IncidentTruth, grace_ns: int) -> np.ndarray:
    return (ep.trigger_ns >= inc.start_ns) & (ep.trigger_ns < inc.end_ns + grace_ns)


def _reset(ep: Episodes, mask: np.ndarray, end_ns: int) -> tuple[float, bool]:
    if not mask.any():
        return math.nan, False
    last = int(np.flatnonzero(mask)[-1])
    res = int(ep.resolve_ns[last])
    if res < 0:
        return math.nan, True
    return max(0.0, (res - end_ns) / NS), False


def score_member(episodes: dict[str, Episodes], incidents: Sequence[IncidentTruth],
                 scored_from_ns: int, scored_to_ns: int, grace_ns: int) -> MemberScore:
    """Attribute the triggers of one run to incidents and count the rest."""
    page, ticket = episodes["page"], episodes["ticket"]
    in_scope_p = page.trigger_ns >= scored_from_ns
    in_scope_t = ticket.trigger_ns >= scored_from_ns
    owned_p = np.zeros(len(page), np.bool_)
    owned_t = np.zeros(len(ticket), np.bool_)
    correct_p = np.zeros(len(page), np.bool_)
    correct_t = np.zeros(len(ticket), np.bool_)
    outcomes: list[IncidentOutcome] = []
    outside_s = (scored_to_ns - scored_from_ns) / NS
    for inc in incidents:
        outside_s -= (min(inc.end_ns + grace_ns, scored_to_ns) - max(inc.start_ns, scored_from_ns)) / NS
        mp = _attributed(page, inc, grace_ns) & in_scope_p
        mt = _attributed(ticket, inc, grace_ns) & in_scope_t
        owned_p |= mp
        owned_t |= mt
        # A page is right for a page-significant incident; a ticket for any significant one.
        if inc.page_significant:
            correct_p |= mp
        if inc.page_significant or inc.ticket_significant:
            correct_t |= mt
        det_s = (int(page.trigger_ns[mp][0]) - inc.start_ns) / NS if mp.any() else math.nan
        tdet_s = (int(ticket.trigger_ns[mt][0]) - inc.start_ns) / NS if mt.any() else math.nan
        spent = math.nan
        if mp.any():
            # cum_bad[k]: the incident's own bad requests of its first k seconds.
            k = min(int(det_s), inc.cum_bad.size - 1)
            spent = float(inc.cum_bad[k]) / inc.budget_requests
        reset, cens = _reset(page, mp, inc.end_ns)
        treset, tcens = _reset(ticket, mt, inc.end_ns)
        outcomes.append(IncidentOutcome(
            inc.name, inc.page_significant, inc.ticket_significant, inc.budget_fraction,
            bool(mp.any()), det_s, spent, reset, cens, int(mp.sum()),
            bool(mt.any()), tdet_s, treset, tcens, int(mt.sum())))
    return MemberScore(
        outcomes, int(in_scope_p.sum()), int(in_scope_t.sum()), int(correct_p.sum()),
        int(correct_t.sum()), int((in_scope_p & ~owned_p).sum()), int((in_scope_t & ~owned_t).sum()),
        max(outside_s, 0.0) / 86400)


# ---------------------------------------------------------------------------------------------
# burn-rate error


class BurnErrors:
    """Absolute burn-rate error against the exact reference, as a log histogram per window.

    Bins: 100 per decade from 1e-4 to 1e5 (p99 read at a bin's upper edge: within 2.3 %), errors
    below 1e-4 in bin 0; the maximum is exact. Instants where the reference has data but the strategy
    gives none (NaN or a zero total) count as *no answer*.
    """

    LO, HI, PER_DECADE = -4.0, 5.0, 100

    def __init__(self, windows_s: Sequence[int]) -> None:
        self.windows_s = tuple(windows_s)
        n_bins = int((self.HI - self.LO) * self.PER_DECADE) + 2
        self.hist = np.zeros((len(self.windows_s), n_bins), np.int64)
        self.max = np.zeros(len(self.windows_s))
        self.no_answer = np.zeros(len(self.windows_s), np.int64)
        self.n = np.zeros(len(self.windows_s), np.int64)

    def add(self, got: WindowAnswers, ref: WindowAnswers, error_budget: float) -> None:
        with np.errstate(divide="ignore", invalid="ignore"):
            has = ref.total > 0
            b_ref = ref.bad / ref.total / error_budget
            answered = np.isfinite(got.total) & (got.total > 0)
            b_got = got.bad / got.total / error_budget
        err = np.abs(b_got - b_ref)
        for j in range(len(self.windows_s)):
            h = has[:, j]
            ok = h & answered[:, j]
            self.no_answer[j] += int((h & ~answered[:, j]).sum())
            e = err[ok, j]
            self.n[j] += e.size
            if e.size:
                self.max[j] = max(self.max[j], float(e.max()))
                idx = np.clip(((np.log10(np.maximum(e, 1e-300)) - self.LO) * self.PER_DECADE).astype(np.int64)
                              + 1, 0, self.hist.shape[1] - 1)
                idx[e < 10 ** self.LO] = 0
                self.hist[j] += np.bincount(idx, minlength=self.hist.shape[1])

    def quantile(self, q: float, windows: Sequence[int] | None = None) -> float:
        """Upper edge of the bin holding quantile ``q`` over ``windows`` (default all); 0 if none."""
        js = range(len(self.windows_s)) if windows is None else [self.windows_s.index(w) for w in windows]
        h = self.hist[list(js)].sum(axis=0)
        total = int(h.sum())
        if total == 0:
            return math.nan
        k = int(np.searchsorted(np.cumsum(h), q * total))
        if k == 0:
            return 0.0
        return float(10 ** (self.LO + k / self.PER_DECADE))

    def maximum(self, windows: Sequence[int] | None = None) -> float:
        js = range(len(self.windows_s)) if windows is None else [self.windows_s.index(w) for w in windows]
        vals = [self.max[j] for j in js if self.n[j]]
        return max(vals) if vals else math.nan

    def no_answer_share(self) -> float:
        total = int(self.n.sum() + self.no_answer.sum())
        return float(self.no_answer.sum()) / total if total else 0.0


# ---------------------------------------------------------------------------------------------
# costs


@dataclass(frozen=True, slots=True)
class Cost:
    memory_bytes: int
    memory_bytes_mwmb: int
    ns_per_event: float
    us_per_evaluation: float
    eval_step_s: int


def _single_events(n_s: int, rate: int, origin_ns: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    ts = origin_ns + np.sort(rng.integers(0, n_s * NS, n_s * rate)).astype(np.int64)
    bad = (rng.random(ts.size) < 0.01).astype(np.int64)
    return ts, bad, np.ones(ts.size, np.int64)


def _drive(factory: StrategyFactory, windows_s: Sequence[int], origin_ns: int, step_s: int,
           events: tuple[np.ndarray, ...] | None, n_s: int, chunk_s: int) -> float:
    s = factory(windows_s, origin_ns, step_s)
    step_ns = s.eval_step_s * NS
    t0 = time.perf_counter()
    for a in range(0, n_s, chunk_s):
        lo, hi = origin_ns + a * NS, origin_ns + (a + chunk_s) * NS
        if events is not None:
            ts = events[0]
            i, j = np.searchsorted(ts, [lo, hi])
            s.ingest(ts[i:j], events[1][i:j], events[2][i:j])
        first = (lo - origin_ns) // step_ns + 1
        last = (hi - origin_ns) // step_ns
        s.evaluate(origin_ns + np.arange(first, last + 1, dtype=np.int64) * step_ns)
    return time.perf_counter() - t0


def measure_cost(factory: StrategyFactory, windows_s: Sequence[int], mwmb_windows_s: Sequence[int],
                 origin_ns: int, step_s: int, *, quick: bool = False, seed: int = 0) -> Cost:
    """Memory, ns per single event (ingest and its share of evaluation) and cost per evaluation.

    Single events (weight 1, 1 % bad) at 1,000/s for ``n`` minutes are ingested every minute and
    the windows evaluated at every step; the same run without events gives the evaluation cost,
    and the difference divided by the events the ingest cost. JIT warm-up runs first, untimed.
    """
    rng = np.random.default_rng(seed)
    n_s = 600 if quick else 1800
    events = _single_events(n_s, 1000, origin_ns, rng)
    small = tuple(e[:2000] for e in events)
    _drive(factory, windows_s, origin_ns, step_s, small, 120, 60)   # JIT warm-up
    with_events = min(_drive(factory, windows_s, origin_ns, step_s, events, n_s, 60) for _ in range(2))
    empty = min(_drive(factory, windows_s, origin_ns, step_s, None, n_s, 60) for _ in range(2))
    s = factory(windows_s, origin_ns, step_s)
    n_inst = n_s // s.eval_step_s
    mem_mwmb = factory(mwmb_windows_s, origin_ns, step_s).memory_bytes()
    return Cost(s.memory_bytes(), mem_mwmb, max(with_events - empty, 0.0) / events[0].size * 1e9,
                empty / n_inst * 1e6, s.eval_step_s)


def fork(strategy: T) -> T:
    """An independent copy of a warmed-up strategy (the harness forks one per scenario member)."""
    return copy.deepcopy(strategy)
