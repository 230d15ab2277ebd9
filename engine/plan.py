"""Compile a validated :class:`~engine.config.Config` into the flat arrays the kernels run on.

SLOs become rows. Every distinct window length (the long and short windows of every tier, and each
SLO's period for the error budget) is served by one bucket resolution::

    r(w) = max{ r in RESOLUTIONS_S, r a multiple of step : w % r == 0 and w / r >= MIN_BUCKETS }

falling back to the evaluation step itself. At an evaluation instant E the window covers the
``w / r`` buckets ending with the bucket that holds the last step, cut at E: exactly ``[E - w, E)``
when E is a multiple of r, and at most one bucket (``r - step``) shorter in between. That is the
documented error bound of a window: one bucket of its serving resolution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from engine.batch import EventKey
from engine.config import (
    SLO,
    Config,
    error_budget,
    latency_sli,
    latency_threshold_ms,
    objective_percent,
    period_s,
    status_codes,
    status_verdicts,
)
from engine.durations import format_duration, parse_duration_s
from engine.windows import AlertTier, resolve_tiers

RESOLUTIONS_S = (1, 10, 60, 300, 3600)
"""Candidate bucket widths. With MIN_BUCKETS = 30 the SRE Workbook windows land on: 5m -> 10 s,
30m/1h/2h -> 1 min, 6h/1d -> 5 min, 3d/30d -> 1 h."""

MIN_BUCKETS = 30
"""A window is served by at least this many buckets, bounding its edge error to 1/30 of its length."""

STATUS_GOOD, STATUS_BAD, STATUS_EXCLUDED = 0, 1, 2
SEVERITIES = ("page", "ticket")
NS = 1_000_000_000


def serving_resolution_s(window_s: int, step_s: int) -> int:
    """Bucket width that serves a window of ``window_s`` seconds (see module docstring)."""
    best = step_s
    for r in RESOLUTIONS_S:
        if r % step_s == 0 and window_s % r == 0 and window_s // r >= MIN_BUCKETS:
            best = max(best, r)
    return best


@dataclass(frozen=True, slots=True)
class SloPlan:
    """What the engine needs to know about one SLO beyond its arrays."""

    slo: SLO
    row: int
    error_budget: float
    objective: float
    period_s: int
    tiers: list[AlertTier]
    windows_s: list[int]          # distinct windows of its tiers, ascending
    window_index: list[int]       # global window index of each of windows_s
    budget_window: int            # global window index of the period
    is_latency: bool
    threshold_ms: float | None
    fingerprint: str = ""
    window_labels: list[str] = field(default_factory=list)   # format_duration of windows_s
    factors: dict[str, float] = field(default_factory=dict)  # tier name -> burn-rate factor


@dataclass(slots=True)
class Plan:
    """Arrays describing every SLO; built once per config."""

    step_s: int
    step_ns: int
    max_late_ns: int
    slos: list[SloPlan]
    # resolutions
    res_s: list[int]
    res_ns: npt.NDArray[np.int64]
    ring_n: npt.NDArray[np.int64]
    ring_off: npt.NDArray[np.int64]
    total_slots: int
    # windows
    win_s: list[int]
    win_res: npt.NDArray[np.int64]
    win_n: npt.NDArray[np.int64]
    # classification
    status_class: npt.NDArray[np.int8]       # (n_slos, 600)
    lat_thr_us: npt.NDArray[np.float64]      # (n_slos,) inf for availability
    is_latency: npt.NDArray[np.bool_]
    budget: npt.NDArray[np.float64]
    # rules
    rule_count: npt.NDArray[np.int64]
    rule_long: npt.NDArray[np.int64]
    rule_short: npt.NDArray[np.int64]
    rule_factor: npt.NDArray[np.float64]
    rule_sev: npt.NDArray[np.int64]
    rule_for_ns: npt.NDArray[np.int64]
    rule_min_history_ns: npt.NDArray[np.int64]
    min_events: npt.NDArray[np.int64]
    keep_ns: npt.NDArray[np.int64]
    sev_enabled: npt.NDArray[np.bool_]       # (n_slos, 2)
    suppress_ticket: npt.NDArray[np.bool_]
    budget_win: npt.NDArray[np.int64]
    # histograms
    hist_on: npt.NDArray[np.bool_]
    hist_slot_ns: int
    hist_slots: int
    hist_window_slots: int
    hist_digits: int
    hist_max_us: int
    by_name: dict[str, int] = field(default_factory=dict)

    @property
    def n_slos(self) -> int:
        return len(self.slos)

    def matching_rows(self, key: EventKey) -> list[int]:
        """SLO rows an event with ``key`` feeds."""
        rows = []
        labels = dict(key.labels)
        for sp in self.slos:
            s = sp.slo
            if s.service != key.service:
                continue
            if s.route is not None and s.route != key.route:
                continue
            if s.operation is not None and s.operation != key.method:
                continue
            if any(labels.get(k) != v for k, v in s.match_labels.items()):
                continue
            rows.append(sp.row)
        return rows


def _status_table(slo: SLO) -> npt.NDArray[np.int8]:
    table = np.zeros(600, np.int8)
    if slo.sli.availability is not None:
        av = slo.sli.availability
        for code, verdict in status_verdicts(av.bad_status, av.exclude_status).items():
            table[code] = STATUS_BAD if verdict == "bad" else STATUS_EXCLUDED
        table[:100] = STATUS_EXCLUDED  # no status: an availability SLO cannot classify it
    else:
        lat = latency_sli(slo.sli)
        assert lat is not None
        for spec in lat.exclude_status:
            r = status_codes(spec)
            table[r.start : r.stop] = STATUS_EXCLUDED
    return table


def build_plan(cfg: Config) -> Plan:
    """Turn a validated config into kernel arrays."""
    from engine.config import slo_fingerprint

    step_s = int(cfg.engine.step_s)
    n = len(cfg.slos)
    slo_tiers: list[list[AlertTier]] = []
    slo_windows: list[list[int]] = []
    all_windows: set[int] = set()
    for s in cfg.slos:
        p = period_s(s)
        tiers = resolve_tiers(s.alerting, p, step_s=step_s)
        ws = sorted({t.long_window_s for t in tiers} | {t.short_window_s for t in tiers})
        slo_tiers.append(tiers)
        slo_windows.append(ws)
        all_windows.update(ws)
        all_windows.add(p)
    win_s = sorted(all_windows)
    win_r = [serving_resolution_s(w, step_s) for w in win_s]
    res_s = sorted(set(win_r))
    win_res = np.array([res_s.index(r) for r in win_r], np.int64)
    win_n = np.array([w // r for w, r in zip(win_s, win_r, strict=True)], np.int64)
    max_late_s = float(cfg.engine.max_late_s)
    ring_n = np.zeros(len(res_s), np.int64)
    for k, r in enumerate(res_s):
        longest = max(int(win_n[j]) for j in range(len(win_s)) if win_res[j] == k)
        # Slots: the longest window's buckets, the late horizon, and one spare so that the slot
        # being cleared for a new head never belongs to a window.
        ring_n[k] = longest + math.ceil(max_late_s / r) + 2
    ring_off = np.zeros(len(res_s), np.int64)
    if len(res_s) > 1:
        ring_off[1:] = np.cumsum(ring_n)[:-1]
    total_slots = int(ring_n.sum())

    widx = {w: j for j, w in enumerate(win_s)}
    max_rules = max((len(t) for t in slo_tiers), default=1) or 1
    rule_count = np.zeros(n, np.int64)
    rule_long = np.zeros((n, max_rules), np.int64)
    rule_short = np.zeros((n, max_rules), np.int64)
    rule_factor = np.zeros((n, max_rules), np.float64)
    rule_sev = np.zeros((n, max_rules), np.int64)
    rule_for_ns = np.zeros((n, max_rules), np.int64)
    rule_min_history_ns = np.zeros((n, max_rules), np.int64)
    status_class = np.zeros((n, 600), np.int8)
    lat_thr = np.full(n, np.inf)
    is_lat = np.zeros(n, np.bool_)
    budget = np.zeros(n)
    min_events = np.zeros(n, np.int64)
    keep_ns = np.zeros(n, np.int64)
    sev_enabled = np.ones((n, 2), np.bool_)
    suppress = np.zeros(n, np.bool_)
    budget_win = np.zeros(n, np.int64)
    hist_on = np.zeros(n, np.bool_)
    plans: list[SloPlan] = []
    for i, s in enumerate(cfg.slos):
        tiers = slo_tiers[i]
        p = period_s(s)
        B = error_budget(s)
        budget[i] = B
        status_class[i] = _status_table(s)
        lat = latency_sli(s.sli)
        thr_ms = latency_threshold_ms(lat) if lat is not None else None
        if thr_ms is not None:
            lat_thr[i] = thr_ms * 1000.0
            is_lat[i] = True
        rule_count[i] = len(tiers)
        for r, t in enumerate(tiers):
            rule_long[i, r] = widx[t.long_window_s]
            rule_short[i, r] = widx[t.short_window_s]
            rule_factor[i, r] = t.burn_rate_factor
            rule_sev[i, r] = SEVERITIES.index(t.severity)
            rule_for_ns[i, r] = t.for_s // step_s * step_s * NS  # whole steps, as keep_firing_for
            if s.alerting.require_full_windows:
                rule_min_history_ns[i, r] = t.long_window_s * NS
        a = s.alerting
        min_events[i] = max(1, a.min_events)
        # Instants come every step: "inactive at every instant of [E - keep, E]" holds from the
        # first inactive instant S once E - S >= keep rounded down to whole steps.
        keep = int(parse_duration_s(a.keep_firing_for) * NS) if a.keep_firing_for is not None else 0
        keep_ns[i] = keep // (step_s * NS) * (step_s * NS)
        for k, sev in enumerate(SEVERITIES):
            sev_enabled[i, k] = sev not in a.disable
        suppress[i] = a.suppress_ticket_while_paging
        budget_win[i] = widx[p]
        hist_on[i] = s.histogram
        plans.append(SloPlan(
            slo=s, row=i, error_budget=B, objective=objective_percent(s), period_s=p, tiers=tiers,
            windows_s=slo_windows[i], window_index=[widx[w] for w in slo_windows[i]],
            budget_window=widx[p], is_latency=thr_ms is not None, threshold_ms=thr_ms,
            fingerprint=slo_fingerprint(s, cfg.engine),
            window_labels=[format_duration(w) for w in slo_windows[i]],
            factors={t.name: t.burn_rate_factor for t in tiers},
        ))
    e = cfg.engine
    hist_window_slots = e.histogram_window_s // e.histogram_slot_s
    return Plan(
        step_s=step_s, step_ns=step_s * NS, max_late_ns=int(max_late_s * NS), slos=plans,
        res_s=res_s, res_ns=np.array([r * NS for r in res_s], np.int64), ring_n=ring_n,
        ring_off=ring_off, total_slots=total_slots, win_s=win_s, win_res=win_res, win_n=win_n,
        status_class=status_class, lat_thr_us=lat_thr, is_latency=is_lat, budget=budget,
        rule_count=rule_count, rule_long=rule_long, rule_short=rule_short, rule_factor=rule_factor,
        rule_sev=rule_sev, rule_for_ns=rule_for_ns, rule_min_history_ns=rule_min_history_ns,
        min_events=min_events, keep_ns=keep_ns,
        sev_enabled=sev_enabled, suppress_ticket=suppress, budget_win=budget_win, hist_on=hist_on,
        hist_slot_ns=e.histogram_slot_s * NS,
        # The window's slots (the newest partly filled) plus one spare being cleared for the next.
        hist_slots=hist_window_slots + 1, hist_window_slots=hist_window_slots,
        hist_digits=e.histogram_digits, hist_max_us=e.histogram_max_us,
        by_name={sp.slo.name: sp.row for sp in plans},
    )
