"""Alerting policies: the SRE Workbook's six approaches, Sloth, Pyrra and sloburn's guards.

A :class:`Policy` is data: rules of terms ``e(window) > factor * B`` (all terms of a rule must
hold), a severity and a ``for`` per rule, and the guards sloburn adds (``min_events`` on a rule's
first window, ``keep_firing_for``, ticket suppression while the page fires). :func:`evaluate_policy`
runs it over the window answers of any strategy with the state machine of
:mod:`engine.kernels.step` (same ``for``, ``keep_firing_for`` and suppression semantics).

Factors are written as budget fractions where the source derives them (``factor = f * P / L``,
SRE Workbook ch. 5), so that they follow the SLO period; for 30 days they are the printed ones.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from numba import njit

from bench.strategies.base import NS, WindowAnswers
from engine.config import Alerting
from engine.durations import format_duration
from engine.windows import burn_rate_factor, resolve_tiers

SEVERITIES = ("page", "ticket")
DAY_S = 86400


@dataclass(frozen=True, slots=True)
class Term:
    """``e(window_s) > factor * B`` (``>=`` when ``inclusive``)."""

    window_s: int
    factor: float
    inclusive: bool = False

    def text(self) -> str:
        op = ">=" if self.inclusive else ">"
        return f"e({format_duration(self.window_s)}) {op} {self.factor:g}B"


@dataclass(frozen=True, slots=True)
class Rule:
    """All terms hold (for ``for_s`` seconds) -> the severity is active."""

    name: str
    severity: str
    terms: tuple[Term, ...]
    for_s: int = 0

    def text(self) -> str:
        body = " and ".join(t.text() for t in self.terms)
        return body + (f" for {format_duration(self.for_s)}" if self.for_s else "")


@dataclass(frozen=True, slots=True)
class Policy:
    """A named alerting policy.

    Attributes
    ----------
    min_events
        A rule holds only when its first (long) window holds at least this many requests (>= 1).
    keep_firing_for_s
        A firing severity resolves only after this long without an active rule (s).
    suppress_ticket
        No ticket triggers while the page fires.
    """

    name: str
    rules: tuple[Rule, ...]
    source: str = ""
    min_events: int = 1
    keep_firing_for_s: int = 0
    suppress_ticket: bool = False
    family: str = "policy"

    @property
    def windows_s(self) -> set[int]:
        return {t.window_s for r in self.rules for t in r.terms}

    @property
    def severities(self) -> set[str]:
        return {r.severity for r in self.rules}

    def text(self) -> str:
        parts = [f"{r.severity}: {r.text()}" for r in self.rules]
        guards = []
        if self.min_events > 1:
            guards.append(f"min_events {self.min_events}")
        if self.keep_firing_for_s:
            guards.append(f"keep_firing_for {format_duration(self.keep_firing_for_s)}")
        if self.suppress_ticket:
            guards.append("ticket suppressed while paging")
        return "; ".join(parts + guards)


def _mwmb(tiers: list[tuple[str, str, int, int, float, int]]) -> tuple[Rule, ...]:
    return tuple(Rule(name, sev, (Term(long_s, f), Term(short_s, f)), for_s)
                 for name, sev, long_s, short_s, f, for_s in tiers)


def _catalog_rules(windows: str, period_s: int) -> tuple[Rule, ...]:
    tiers = resolve_tiers(Alerting(windows=windows), period_s)
    return _mwmb([(t.name, t.severity, t.long_window_s, t.short_window_s, t.burn_rate_factor, t.for_s)
                  for t in tiers])


@dataclass(frozen=True, slots=True)
class Guards:
    """sloburn's guards: the defaults the benchmark supports, and the values it sweeps.

    ``min_events`` 100: below it a single failed request trips the 1h tier of a 99.9 % SLO (it
    needs fewer than 1 / (14.4 B) = 70 requests in the hour); the sweep shows 100 removes the false
    pages of a 1 request/min service and still pages its outages, 1000 misses half of them.
    ``keep_firing_for`` 10 min: the Workbook's spikes every 10 min page once from 5 min on (6 times
    without); 10 min leaves margin for jitter at a cost of 10 min of reset time.
    """

    min_events: int = 100
    keep_firing_for_s: int = 600
    min_events_sweep: tuple[int, ...] = (1, 10, 30, 100, 300, 1000)
    keep_sweep_s: tuple[int, ...] = (0, 300, 600, 900, 1800, 3600)


def workbook_policies(period_s: int = 30 * DAY_S) -> list[Policy]:
    """The SRE Workbook's six approaches (ch. 5), for an SLO period of ``period_s``."""
    P = period_s
    src = "SRE Workbook ch. 5"
    h = 3600
    page_quick = burn_rate_factor(2, P, h)
    page_slow = burn_rate_factor(5, P, 6 * h)
    ticket = burn_rate_factor(10, P, 3 * DAY_S)
    return [
        Policy("1-threshold", (Rule("threshold", "page", (Term(600, 1.0, inclusive=True),)),),
               f"{src}, approach 1: error ratio >= SLO threshold over 10m", family="workbook"),
        Policy("2-long-window", (Rule("long", "page", (Term(36 * h, 1.0),)),),
               f"{src}, approach 2: longer alert window (36h)", family="workbook"),
        Policy("3-duration", (Rule("duration", "page", (Term(60, 1.0),), for_s=h),),
               f"{src}, approach 3: incrementing alert duration (1m for 1h)", family="workbook"),
        Policy("4-burn-rate", (Rule("burn", "page", (Term(h, burn_rate_factor(5, P, h)),)),),
               f"{src}, approach 4: alert on burn rate (1h > 36x at 30d)", family="workbook"),
        Policy("5-multi-burn", (
            Rule("page_quick", "page", (Term(h, page_quick),)),
            Rule("page_slow", "page", (Term(6 * h, page_slow),)),
            Rule("ticket", "ticket", (Term(3 * DAY_S, ticket),))),
            f"{src}, approach 5: multiple burn rates", family="workbook"),
        Policy("6-mwmb", _mwmb([
            ("page_quick", "page", h, 300, page_quick, 0),
            ("page_slow", "page", 6 * h, 1800, page_slow, 0),
            ("ticket_slow", "ticket", 3 * DAY_S, 6 * h, ticket, 0)]),
            f"{src}, approach 6: multiwindow, multi-burn-rate (table 5-8)", family="workbook"),
    ]


def default_policies(period_s: int = 30 * DAY_S, guards: Guards | None = None) -> list[Policy]:
    """Workbook approaches, Sloth's defaults, Pyrra's scaled tiers and sloburn's guarded policy."""
    g = guards or Guards()
    sloth = _catalog_rules("sre-workbook-28d" if period_s == 28 * DAY_S else "sre-workbook-30d", period_s)
    return [
        *workbook_policies(period_s),
        Policy("sloth", sloth, "Sloth google-30d/28d windows (Workbook table 5-8 + 1d/2h ticket)",
               family="catalog"),
        Policy("pyrra", _catalog_rules("pyrra", period_s),
               "Pyrra slo/rules.go, windows and `for` scaled with the period", family="catalog"),
        Policy("sloburn", sloth, "sloth tiers with sloburn's guards", min_events=g.min_events,
               keep_firing_for_s=g.keep_firing_for_s, suppress_ticket=True, family="sloburn"),
    ]


def guard_sweep(period_s: int = 30 * DAY_S, guards: Guards | None = None) -> list[Policy]:
    """Variants of the sloburn policy: one guard swept, the other at its default."""
    g = guards or Guards()
    base = next(p for p in default_policies(period_s, g) if p.name == "sloburn")
    out = [replace(base, name=f"min_events={m}", min_events=m, family="sweep-min-events")
           for m in g.min_events_sweep]
    out += [replace(base, name=f"keep={format_duration(k) if k else '0'}", keep_firing_for_s=k,
                    family="sweep-keep") for k in g.keep_sweep_s]
    return out


def detection_tiers(period_s: int = 30 * DAY_S) -> list[Policy]:
    """Each Workbook/Sloth tier alone, for the detection table."""
    return [Policy(r.name, (r,), "Sloth/Workbook tier", family="tier")
            for r in _catalog_rules("sre-workbook-30d", period_s)]


# ---------------------------------------------------------------------------------------------
# evaluation


@njit(cache=True)
def run_state_machine(instants: np.ndarray, cond: np.ndarray, rule_sev: np.ndarray, rule_for_ns: np.ndarray,
                      keep_ns: int, suppress_ticket: bool, sev_enabled: np.ndarray,
                      out: np.ndarray) -> int:
    """Alert transitions of one policy; rows of ``out``: (instant index, severity, action, rule).

    The engine's rules (engine.kernels.step._evaluate_instant): a rule is active once its
    condition held at every instant of ``[E - for, E]``; a severity triggers when one of its rules
    is active (the ticket not while the page fires, if suppressed) and resolves once no rule was
    active for ``keep_firing_for``. Returns the number of rows written.
    """
    n_rules = cond.shape[1]
    since = np.full(n_rules, -1, np.int64)
    firing = np.zeros(2, np.bool_)
    inactive_since = np.full(2, -1, np.int64)
    n = 0
    for q in range(instants.shape[0]):
        E = instants[q]
        act0 = -1
        act1 = -1
        for r in range(n_rules):
            if cond[q, r]:
                if since[r] < 0:
                    since[r] = E
                if E - since[r] >= rule_for_ns[r]:
                    if rule_sev[r] == 0:
                        if act0 < 0:
                            act0 = r
                    elif act1 < 0:
                        act1 = r
            else:
                since[r] = -1
        for sev in range(2):
            if not sev_enabled[sev]:
                continue
            act = act0 if sev == 0 else act1
            if firing[sev]:
                if act >= 0:
                    inactive_since[sev] = -1
                    continue
                if inactive_since[sev] < 0:
                    inactive_since[sev] = E
                if E - inactive_since[sev] < keep_ns:
                    continue
                firing[sev] = False
                inactive_since[sev] = -1
                out[n, 0] = q
                out[n, 1] = sev
                out[n, 2] = 0
                out[n, 3] = -1
                n += 1
            else:
                if act < 0:
                    continue
                if sev == 1 and suppress_ticket and firing[0]:
                    continue
                firing[sev] = True
                inactive_since[sev] = -1
                out[n, 0] = q
                out[n, 1] = sev
                out[n, 2] = 1
                out[n, 3] = act
                n += 1
    return n


@dataclass(frozen=True, slots=True)
class Episodes:
    """Firing episodes of one severity: trigger and resolve instants (ns); resolve -1 = still firing."""

    trigger_ns: np.ndarray
    resolve_ns: np.ndarray
    rule: np.ndarray

    def __len__(self) -> int:
        return int(self.trigger_ns.size)


@dataclass(frozen=True, slots=True)
class Burns:
    """Burn rates and totals of one strategy's answers, computed once for every policy.

    ``burn`` is NaN where the window has no data (total 0 or no answer).
    """

    burn: np.ndarray
    total: np.ndarray

    @staticmethod
    def of(answers: WindowAnswers, error_budget: float) -> Burns:
        with np.errstate(divide="ignore", invalid="ignore"):
            total = np.where(np.isnan(answers.total), 0.0, answers.total)
            burn = np.where(total > 0, answers.bad / answers.total / error_budget, np.nan)
        return Burns(burn, total)


def rule_conditions(policy: Policy, windows_s: tuple[int, ...], burns: Burns) -> np.ndarray:
    """Boolean ``(n_instants, n_rules)``: every term holds; no data (total 0 or NaN) never holds."""
    col = {w: j for j, w in enumerate(windows_s)}
    cond = np.ones((burns.burn.shape[0], len(policy.rules)), np.bool_)
    with np.errstate(invalid="ignore"):
        for r, rule in enumerate(policy.rules):
            for k, term in enumerate(rule.terms):
                j = col[term.window_s]
                burn = burns.burn[:, j]
                # NaN compares False: no data never holds. Decayed and extrapolated totals are not
                # integers, so "at least n requests" is total >= n.
                holds = burn >= term.factor if term.inclusive else burn > term.factor
                if k == 0 and policy.min_events > 1:
                    holds &= burns.total[:, j] >= policy.min_events
                cond[:, r] &= holds
    return cond


def evaluate_policy(policy: Policy, windows_s: tuple[int, ...], instants_ns: np.ndarray,
                    answers: WindowAnswers | Burns, error_budget: float) -> dict[str, Episodes]:
    """Firing episodes per severity of ``policy`` over one strategy's answers (or their burns)."""
    burns = answers if isinstance(answers, Burns) else Burns.of(answers, error_budget)
    cond = rule_conditions(policy, windows_s, burns)
    rule_sev = np.array([SEVERITIES.index(r.severity) for r in policy.rules], np.int64)
    rule_for = np.array([r.for_s * NS for r in policy.rules], np.int64)
    enabled = np.array([s in policy.severities for s in SEVERITIES], np.bool_)
    out = np.zeros((2 * instants_ns.size + 2, 4), np.int64)
    n = run_state_machine(np.ascontiguousarray(instants_ns, np.int64), cond, rule_sev, rule_for,
                          policy.keep_firing_for_s * NS, policy.suppress_ticket, enabled, out)
    rows = out[:n]
    result: dict[str, Episodes] = {}
    for k, sev in enumerate(SEVERITIES):
        r = rows[rows[:, 1] == k]
        trig = r[r[:, 2] == 1]
        res = r[r[:, 2] == 0]
        t_ns = instants_ns[trig[:, 0]]
        resolve = np.full(t_ns.size, -1, np.int64)
        resolve[: res.shape[0]] = instants_ns[res[:, 0]]
        result[sev] = Episodes(t_ns.astype(np.int64), resolve, trig[:, 3].copy())
    return result


def policy_windows(policies: list[Policy]) -> tuple[int, ...]:
    """The distinct windows every policy needs, ascending."""
    return tuple(sorted(set().union(*(p.windows_s for p in policies))))
