"""A slow, obviously-correct model of the engine's documented semantics, for tests only.

It classifies every event in a Python loop, keeps every accepted one per matching SLO, and answers
each window question by summing the weights of the events whose timestamps fall inside the window. There
are no ring buffers, no running sums and no incremental state besides the alert state machine, so
every number it produces can be checked by hand against the contract:

- Evaluation instants are multiples of ``step``; the first is ``E1 = floor(t0 / step) * step + step``
  with ``t0`` the smallest timestamp of the first non-empty batch. At instant ``E`` the counts hold
  every ingested event with ``ts < E``.
- A window of ``w`` s served at resolution ``r`` covers ``[(h - w/r + 1) * r, E)`` with
  ``h = floor((E - step) / r)``; ``r`` is the largest of {1, 10, 60, 300, 3600} (multiples of the
  step only, plus the step itself) dividing ``w`` with at least 30 buckets, else the step.
- Burn rate ``(bad / total) / B``; a tier holds when ``total_long >= max(1, min_events)``,
  ``total_short >= 1`` and both burn rates are ``> factor`` (SRE Workbook ch. 5, table 5-8); its
  ``for`` asks the condition at every instant of ``[E - for, E]``; a severity fires when any of its
  tiers is active and resolves after ``keep_firing_for`` of inactivity.
- Late events (``ts`` before the last evaluated instant) count if at most ``max_late_s`` late and
  are rejected as ``too_late`` otherwise, one count per event (row) that feeds at least one SLO.

Counting uses sorted timestamps and prefix sums of the weights (``cum[j] - cum[i]`` is the sum of
the weights of events ``i .. j-1``), which is the same sum written so that six hours of instants
can be answered in well under a second; ``window_counts_bruteforce`` keeps the literal per-event
sum for the tests that check the prefix sums themselves.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from engine.alerts import AlertEvent, dedup_key
from engine.batch import EventBatch, EventKey, KeyTable
from engine.config import (
    SLO,
    Config,
    error_budget,
    latency_sli,
    latency_threshold_ms,
    objective_percent,
    period_s,
    status_codes,
)
from engine.durations import format_duration, parse_duration_s
from engine.windows import AlertTier, resolve_tiers

NS_PER_S = 1_000_000_000
RESOLUTIONS_S = (1, 10, 60, 300, 3600)
MIN_BUCKETS = 30
SEVERITIES = ("page", "ticket")


def serving_resolution_s(window_s: int, step_s: int) -> int:
    """Bucket size (s) that serves a window of ``window_s`` s under evaluation step ``step_s``."""
    candidates = {r for r in RESOLUTIONS_S if r % step_s == 0} | {step_s}
    for r in sorted(candidates, reverse=True):
        if window_s % r == 0 and window_s // r >= MIN_BUCKETS:
            return r
    return step_s


def window_start_ns(instant_ns: int, window_s: int, resolution_s: int, step_s: int) -> int:
    """Inclusive lower bound (ns) of the window at instant ``instant_ns``; the upper bound is the instant."""
    r_ns = resolution_s * NS_PER_S
    head = (instant_ns - step_s * NS_PER_S) // r_ns
    return (head - window_s // resolution_s + 1) * r_ns


def burn_rate(bad: int, total: int, budget: float) -> float | None:
    """``(bad / total) / B``, None when the window holds no events."""
    if total == 0:
        return None
    return (bad / total) / budget


def budget_remaining(bad: int, total: int, budget: float, coverage: float = 1.0) -> float | None:
    """``1 - bad / (B * total / coverage)`` over the period, None when the period holds no events.

    ``coverage`` = history / period, capped at 1: before a whole period has been seen, the period's
    events are extrapolated from the traffic so far.
    """
    if total == 0:
        return None
    return 1.0 - bad / (budget * (total / min(1.0, coverage)))


def _codes(specs: list[str | int]) -> frozenset[int]:
    out: set[int] = set()
    for spec in specs:
        out.update(status_codes(spec))
    return frozenset(out)


def _split_by_narrowest(bad: list[str | int], exclude: list[str | int]) -> tuple[frozenset[int],
                                                                             frozenset[int]]:
    """Codes named by both lists go to the list whose narrowest matcher names them; ties exclude."""
    def width(specs: list[str | int], code: int) -> int:
        return min((len(status_codes(s)) for s in specs if code in status_codes(s)), default=10**9)

    bad_out, excl_out = set(), set()
    for code in range(100, 600):
        wb, we = width(bad, code), width(exclude, code)
        if we <= wb and we < 10**9:
            excl_out.add(code)
        elif wb < 10**9:
            bad_out.add(code)
    return frozenset(bad_out), frozenset(excl_out)


@dataclass
class _SloModel:
    """What the reference knows about one SLO; the events are its own copy."""

    slo: SLO
    budget: float
    period_s: int
    tiers: list[AlertTier]
    windows_s: list[int]  # distinct tier windows, first-seen order
    resolution_s: dict[int, int]
    latency_threshold_us: float | None
    bad_codes: frozenset[int]
    exclude_codes: frozenset[int]
    min_events: int
    keep_firing_for_ns: int
    need_for: list[int] = field(default_factory=list)  # per tier: instants in [E - for, E]
    # Accepted events not yet merged into the sorted arrays below.
    new_ts: list[int] = field(default_factory=list)
    new_bad: list[int] = field(default_factory=list)
    new_total: list[int] = field(default_factory=list)
    # Every accepted event, sorted by time, with prefix sums of the weights (cum[0] = 0).
    ts_ns: npt.NDArray[np.int64] = field(default_factory=lambda: np.empty(0, np.int64))
    bad_w: npt.NDArray[np.int64] = field(default_factory=lambda: np.empty(0, np.int64))
    total_w: npt.NDArray[np.int64] = field(default_factory=lambda: np.empty(0, np.int64))
    cum_bad: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(1, np.int64))
    cum_total: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(1, np.int64))
    # Alert state per severity.
    cond_run: list[int] = field(default_factory=list)  # per tier: consecutive instants the condition held
    firing: dict[str, bool] = field(default_factory=dict)
    firing_tier: dict[str, str] = field(default_factory=dict)
    inactive_run: dict[str, int] = field(default_factory=dict)
    counts: dict[int, tuple[int, int]] = field(default_factory=dict)

    def matches(self, key: EventKey) -> bool:
        s = self.slo
        if key.service != s.service:
            return False
        if s.route is not None and key.route != s.route:
            return False
        if s.operation is not None and key.method != s.operation:
            return False
        labels = dict(key.labels)
        return all(labels.get(k) == v for k, v in s.match_labels.items())

    def classify(self, status: int, latency_us: float) -> bool | None:
        """True bad, False good, None not counted."""
        if status in self.exclude_codes:
            return None
        if self.latency_threshold_us is not None:
            if math.isnan(latency_us):
                return None
            return latency_us > self.latency_threshold_us
        if status == 0:
            return None
        return status in self.bad_codes


def _model(slo: SLO, step_s: int) -> _SloModel:
    p_s = period_s(slo)
    tiers = resolve_tiers(slo.alerting, p_s, step_s=step_s)
    windows: list[int] = []
    for t in tiers:
        for w in (t.long_window_s, t.short_window_s):
            if w not in windows:
                windows.append(w)
    all_windows = [*windows, p_s] if p_s not in windows else list(windows)
    lat = latency_sli(slo.sli)
    if lat is not None:
        thr_us: float | None = latency_threshold_ms(lat) * 1000.0
        bad_codes: frozenset[int] = frozenset()
        exclude = _codes(lat.exclude_status)
    else:
        assert slo.sli.availability is not None
        thr_us = None
        av = slo.sli.availability
        bad_codes, exclude = _split_by_narrowest(av.bad_status, av.exclude_status)
    kff = slo.alerting.keep_firing_for
    kff_ns = round(parse_duration_s(kff) * NS_PER_S) if kff is not None else 0
    return _SloModel(
        slo=slo,
        budget=error_budget(slo),
        period_s=p_s,
        tiers=tiers,
        windows_s=windows,
        resolution_s={w: serving_resolution_s(w, step_s) for w in all_windows},
        latency_threshold_us=thr_us,
        bad_codes=bad_codes,
        exclude_codes=exclude,
        min_events=slo.alerting.min_events,
        keep_firing_for_ns=kff_ns,
        cond_run=[0] * len(tiers),
        need_for=[t.for_s // step_s + 1 for t in tiers],
        firing=dict.fromkeys(SEVERITIES, False),
        firing_tier=dict.fromkeys(SEVERITIES, ""),
        inactive_run=dict.fromkeys(SEVERITIES, 0),
    )


class ReferenceEngine:
    """The contract of :class:`engine.engine.Engine`, one event at a time.

    Parameters
    ----------
    cfg
        A validated configuration (``engine.config.parse_config``).
    record_conditions
        When true, ``condition_edges[(slo, tier)]`` lists ``(instant_ns, held)`` every time a tier's
        condition changes (the first entry is the first instant it held).
    """

    def __init__(self, cfg: Config, *, record_conditions: bool = False, record_counts: bool = False) -> None:
        self.cfg = cfg
        self.step_s = cfg.engine.step_s
        self.step_ns = self.step_s * NS_PER_S
        self.max_late_ns = round(cfg.engine.max_late_s * NS_PER_S)
        self.keys = KeyTable()
        self.models = [_model(s, self.step_s) for s in cfg.slos]
        self._by_name = {m.slo.name: m for m in self.models}
        self._routes: dict[int, list[_SloModel]] = {}
        self.first_instant_ns: int | None = None
        self.last_eval_ns: int | None = None
        self.rejections: Counter[str] = Counter()
        self.record_conditions = record_conditions
        self.condition_edges: dict[tuple[str, str], list[tuple[int, bool]]] = {}
        self.record_counts = record_counts
        self.counts_history: dict[str, dict[int, dict[int, tuple[int, int]]]] = {
            m.slo.name: {} for m in self.models
        }

    # -- input ---------------------------------------------------------------------------------

    def _slos_of(self, key_id: int) -> list[_SloModel]:
        found = self._routes.get(key_id)
        if found is None:
            key = self.keys.keys[key_id]
            found = [m for m in self.models if m.matches(key)]
            self._routes[key_id] = found
        return found

    def ingest(self, batch: EventBatch) -> None:
        """Take every event of ``batch``, one by one."""
        if len(batch) == 0:
            return
        if self.first_instant_ns is None:
            t0 = int(batch.ts_ns.min())
            self.first_instant_ns = (t0 // self.step_ns) * self.step_ns + self.step_ns
        ts_l = batch.ts_ns.tolist()
        key_l = batch.key.tolist()
        status_l = batch.status.tolist()
        lat_l = batch.latency_us.tolist()
        weight_l = batch.weight.tolist()
        for ts, key_id, status, lat, weight in zip(ts_l, key_l, status_l, lat_l, weight_l, strict=True):
            slos = self._slos_of(key_id)
            if not slos:
                continue  # feeds no SLO: outside the counts (the engine files it under its own reason)
            if self.last_eval_ns is not None and ts < self.last_eval_ns - self.max_late_ns:
                self.rejections["too_late"] += 1
                continue
            for m in slos:
                bad = m.classify(status, lat)
                if bad is None:
                    continue
                m.new_ts.append(ts)
                m.new_total.append(weight)
                m.new_bad.append(weight if bad else 0)

    # -- counting ------------------------------------------------------------------------------

    @staticmethod
    def _merge(m: _SloModel) -> None:
        """Fold the newly accepted events into the sorted arrays and their prefix sums.

        Only the tail from the oldest new event on is re-sorted and re-summed: the events before it
        and their prefix sums do not change.
        """
        if not m.new_ts:
            return
        new_ts = np.asarray(m.new_ts, np.int64)
        cut = int(np.searchsorted(m.ts_ns, new_ts.min(), side="right"))
        ts = np.concatenate([m.ts_ns[cut:], new_ts])
        bad = np.concatenate([m.bad_w[cut:], np.asarray(m.new_bad, np.int64)])
        total = np.concatenate([m.total_w[cut:], np.asarray(m.new_total, np.int64)])
        order = np.argsort(ts, kind="stable")
        m.ts_ns = np.concatenate([m.ts_ns[:cut], ts[order]])
        m.bad_w = np.concatenate([m.bad_w[:cut], bad[order]])
        m.total_w = np.concatenate([m.total_w[:cut], total[order]])
        m.cum_bad = np.concatenate([m.cum_bad[: cut + 1], m.cum_bad[cut] + np.cumsum(bad[order])])
        m.cum_total = np.concatenate([m.cum_total[: cut + 1], m.cum_total[cut] + np.cumsum(total[order])])
        m.new_ts, m.new_bad, m.new_total = [], [], []

    def _counts_at(
        self, m: _SloModel, instants_ns: npt.NDArray[np.int64]
    ) -> dict[int, tuple[list[int], ...]]:
        """Per window: (bad, total) lists over ``instants_ns``; each a sum over [start, E)."""
        self._merge(m)
        ts, cum_bad, cum_total = m.ts_ns, m.cum_bad, m.cum_total
        hi = np.searchsorted(ts, instants_ns, side="left")
        out: dict[int, tuple[list[int], ...]] = {}
        for w, r in m.resolution_s.items():
            r_ns = r * NS_PER_S
            heads = (instants_ns - self.step_ns) // r_ns
            starts = (heads - w // r + 1) * r_ns
            lo = np.searchsorted(ts, starts, side="left")
            out[w] = ((cum_bad[hi] - cum_bad[lo]).tolist(), (cum_total[hi] - cum_total[lo]).tolist())
        return out

    def window_counts_bruteforce(self, slo_name: str, instant_ns: int) -> dict[int, tuple[int, int]]:
        """The literal sum over every stored event, for checking the prefix sums."""
        m = self._by_name[slo_name]
        self._merge(m)
        out: dict[int, tuple[int, int]] = {}
        for w, r in m.resolution_s.items():
            start = window_start_ns(instant_ns, w, r, self.step_s)
            bad = total = 0
            for ts, b, t in zip(m.ts_ns.tolist(), m.bad_w.tolist(), m.total_w.tolist(), strict=True):
                if start <= ts < instant_ns:
                    bad += b
                    total += t
            out[w] = (bad, total)
        return out

    # -- evaluation ----------------------------------------------------------------------------

    def advance(self, watermark_ns: int) -> list[AlertEvent]:
        """Evaluate every instant ``E <= watermark_ns`` not yet evaluated, in order."""
        if self.first_instant_ns is None:
            return []
        nxt = self.first_instant_ns if self.last_eval_ns is None else self.last_eval_ns + self.step_ns
        if nxt > watermark_ns:
            return []
        n = (watermark_ns - nxt) // self.step_ns + 1
        instants = nxt + self.step_ns * np.arange(n, dtype=np.int64)
        per_slo = [self._counts_at(m, instants) for m in self.models]
        events: list[AlertEvent] = []
        for i, e_ns in enumerate(instants.tolist()):
            for m, counts in zip(self.models, per_slo, strict=True):
                m.counts = {w: (b[i], t[i]) for w, (b, t) in counts.items()}
                if self.record_counts:
                    self.counts_history[m.slo.name][e_ns] = m.counts
                events.extend(self._evaluate(m, e_ns))
            self.last_eval_ns = e_ns
        return events

    def _evaluate(self, m: _SloModel, e_ns: int) -> list[AlertEvent]:
        B = m.budget
        sev_active = dict.fromkeys(SEVERITIES, False)
        sev_tier: dict[str, str] = {}
        for k, t in enumerate(m.tiers):
            bad_l, total_l = m.counts[t.long_window_s]
            bad_s, total_s = m.counts[t.short_window_s]
            burn_l = burn_rate(bad_l, total_l, B)
            burn_s = burn_rate(bad_s, total_s, B)
            history_ns = e_ns - ((self.first_instant_ns or e_ns) - self.step_ns)
            held = (
                total_l >= max(1, m.min_events)
                and total_s >= 1
                # Warm-up guard: the long window must lie within the history seen.
                and (not m.slo.alerting.require_full_windows
                     or history_ns >= t.long_window_s * NS_PER_S)
                and burn_l is not None
                and burn_s is not None
                and burn_l > t.burn_rate_factor
                and burn_s > t.burn_rate_factor
            )
            if self.record_conditions:
                edges = self.condition_edges.setdefault((m.slo.name, t.name), [])
                if (edges[-1][1] if edges else False) != held:
                    edges.append((e_ns, held))
            m.cond_run[k] = m.cond_run[k] + 1 if held else 0
            if m.cond_run[k] >= m.need_for[k] and not sev_active[t.severity]:
                sev_active[t.severity] = True
                sev_tier[t.severity] = t.name
        need_inactive = self.keep_firing_instants(m)
        out: list[AlertEvent] = []
        for sev in SEVERITIES:
            if sev_active[sev]:
                m.inactive_run[sev] = 0
            else:
                m.inactive_run[sev] += 1
            if m.firing[sev]:
                if m.inactive_run[sev] >= need_inactive:
                    m.firing[sev] = False
                    out.append(self._alert(m, sev, "resolve", m.firing_tier[sev], e_ns))
            elif sev_active[sev]:
                if sev == "ticket" and m.slo.alerting.suppress_ticket_while_paging and m.firing["page"]:
                    continue
                m.firing[sev] = True
                m.firing_tier[sev] = sev_tier[sev]
                out.append(self._alert(m, sev, "trigger", sev_tier[sev], e_ns))
        return out

    def keep_firing_instants(self, m: _SloModel) -> int:
        """Instants of inactivity (``[E - keep_firing_for, E]``) needed before a resolve."""
        return m.keep_firing_for_ns // self.step_ns + 1

    def _alert(self, m: _SloModel, sev: str, action: str, tier: str, e_ns: int) -> AlertEvent:
        B = m.budget
        burns = {format_duration(w): burn_rate(*m.counts[w], B) for w in m.windows_s}
        s = m.slo
        return AlertEvent(
            slo=s.name,
            severity=sev,
            action=action,
            ts=e_ns / NS_PER_S,
            tier=tier,
            burn_rates=burns,
            budget_remaining=budget_remaining(
                *m.counts[m.period_s], B,
                (e_ns - (self.first_instant_ns or e_ns) + self.step_ns) / (m.period_s * NS_PER_S)),
            dedup_key=dedup_key(s.name, sev),
            pd_severity=s.alerting.severities.get(sev, "critical"),
            service=s.service,
            objective=objective_percent(s),
            period=format_duration(m.period_s),
        )

    # -- queries -------------------------------------------------------------------------------

    def window_counts(self, slo_name: str) -> dict[int, tuple[int, int]]:
        """Window length (s) -> (bad, total) at the last evaluated instant."""
        return dict(self._by_name[slo_name].counts)

    def serving_resolution_s(self, slo_name: str) -> dict[int, int]:
        """Window length (s) -> bucket resolution (s)."""
        return dict(self._by_name[slo_name].resolution_s)
