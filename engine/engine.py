"""The engine: ingest event batches, advance event time, get alert transitions.

Pure: no clock, no sockets, no files. Time enters only as event timestamps and as the watermark
passed to :meth:`Engine.advance`. The same input gives the same alerts, whatever the batching.

Contract (the reference implementation in the tests checks it):

- Evaluation instants are multiples of ``engine.step_s``. The first is the first multiple after the
  smallest timestamp of the first non-empty batch. ``advance(W)`` evaluates every instant E <= W in
  order; at E every ingested event with ts < E is counted and none with ts >= E.
- Events older than the last evaluated step are late: counted in their buckets if at most
  ``max_late_s`` late, else rejected as ``too_late``. Events that match no SLO are rejected as
  ``unmatched``. Nothing is dropped without a counted reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from engine.alerts import AlertEvent, WindowCounts, dedup_key
from engine.batch import EventBatch, EventKey, KeyTable, Rejections
from engine.config import Config
from engine.durations import format_duration
from engine.errors import StateError
from engine.evaluator import budget_remaining, burn_rate
from engine.hdr import HdrLayout
from engine.kernels import step as K  # noqa: N812 - K.run, K.R_TS read like the kernel's own names
from engine.kernels.hdr import ring_percentiles
from engine.plan import NS, SEVERITIES, Plan, SloPlan, build_plan


@dataclass(frozen=True, slots=True)
class SloStatus:
    """An SLO at the last evaluated instant."""

    slo: str
    ts: float | None
    burn_rates: dict[str, float | None]
    windows: dict[str, WindowCounts]
    budget_remaining: float | None
    budget_events: WindowCounts
    firing: dict[str, bool]
    firing_tier: dict[str, str | None]
    factors: dict[str, float]


class Engine:
    """Exact multi-window burn-rate evaluation over event batches.

    Parameters
    ----------
    config
        A validated configuration (:func:`engine.config.load_config`).
    record_capacity
        Alert records buffered per kernel call; the kernel returns early to drain when full.
    """

    def __init__(self, config: Config, *, record_capacity: int = 4096) -> None:
        self.config = config
        self.plan: Plan = build_plan(config)
        self.keys = KeyTable()
        self.rejections = Rejections()
        p = self.plan
        n = p.n_slos
        self._csr_off = np.zeros(1, np.int64)
        self._csr_slo = np.empty(0, np.int32)
        self._csr_rows: list[list[int]] = []
        # Events not yet evaluated: sorted chunks, each one's first event at or after the previous
        # one's last, so that an in-order stream appends without copying what already waits.
        self._chunks: list[EventBatch] = []
        self._max_ts_ns: int | None = None
        self._first_instant_ns = -1
        # Kernel state
        self._clock = np.array([-1, 0, -1], np.int64)
        self._acc = np.zeros((n, 2), np.int64)
        self._cum = np.zeros((n, 2), np.int64)
        self._heads = np.zeros(len(p.res_s), np.int64)
        self._rings = np.zeros((p.total_slots, n, 2), np.int64)
        self._wsum = np.zeros((n, len(p.win_s), 2), np.int64)
        r = p.rule_long.shape[1]
        self._tier_since = np.full((n, r), -1, np.int64)
        self._firing = np.zeros((n, 2), np.bool_)
        self._inactive_since = np.full((n, 2), -1, np.int64)
        self._fired_tier = np.full((n, 2), -1, np.int64)
        self._counters = np.zeros(K.N_COUNTERS, np.int64)
        self._slo_rejects = np.zeros((n, 2), np.int64)
        cap = max(record_capacity, 2 * n + 2)
        self._rec_i64 = np.zeros((cap, 5), np.int64)
        self._rec_sums = np.zeros((cap, len(p.win_s), 2), np.int64)
        self._counted = np.zeros(K.N_COUNTERS, np.int64)
        self.events_ingested = 0
        # Latency histograms: a ring of slots per SLO that keeps one (HdrHistogram layout).
        self.hdr = HdrLayout(highest_trackable_value=p.hist_max_us, significant_figures=p.hist_digits)
        rows = np.cumsum(p.hist_on) - 1
        self._hist_row = np.where(p.hist_on, rows, -1).astype(np.int64)
        self._hist = np.zeros((int(p.hist_on.sum()), p.hist_slots, self.hdr.counts_len), np.int64)
        self._hist_head = np.zeros(1, np.int64)
        self._pcts = np.array([50.0, 95.0, 99.0])
        self._scratch = np.zeros(self.hdr.counts_len, np.int64)
        self._pct_out = np.zeros(3, np.int64)
        self._rec_pct = np.zeros((cap, 3), np.float64)

    # ------------------------------------------------------------------ time

    @property
    def started(self) -> bool:
        return bool(self._clock[0] >= 0)

    @property
    def next_instant_ns(self) -> int | None:
        return int(self._clock[0]) if self.started else None

    @property
    def last_eval_ns(self) -> int | None:
        """The last evaluated instant (ns), or None before the first evaluation."""
        if not self.started:
            return None
        last = int(self._clock[0]) - self.plan.step_ns
        return last if last >= self._first_instant_ns else None

    @property
    def max_ts_ns(self) -> int | None:
        """Newest event time seen (ns)."""
        return self._max_ts_ns

    @property
    def pending_events(self) -> int:
        """Events ingested but not yet evaluated (at or beyond the next instant)."""
        return sum(len(c) for c in self._chunks)

    def _start(self, t0_ns: int) -> None:
        step = self.plan.step_ns
        first = (t0_ns // step) * step + step
        self._first_instant_ns = first
        self._clock[0] = first
        self._clock[2] = first
        for k in range(len(self.plan.res_s)):
            self._heads[k] = (first - step) // int(self.plan.res_ns[k])
        self._hist_head[0] = (first - step) // self.plan.hist_slot_ns

    # ------------------------------------------------------------------ keys

    def _sync_keys(self) -> None:
        n_keys = len(self.keys)
        if n_keys == len(self._csr_rows):
            return
        for kid in range(len(self._csr_rows), n_keys):
            self._csr_rows.append(self.plan.matching_rows(self.keys.keys[kid]))
        counts = np.array([len(r) for r in self._csr_rows], np.int64)
        off = np.zeros(n_keys + 1, np.int64)
        np.cumsum(counts, out=off[1:])
        self._csr_off = off
        self._csr_slo = np.array([s for r in self._csr_rows for s in r], np.int32)

    def key_id(self, service: str, route: str = "", method: str = "",
               labels: tuple[tuple[str, str], ...] = ()) -> int:
        """Intern an event key (for callers that build batches by hand)."""
        return self.keys.intern(EventKey(service, route, method, labels))

    # ------------------------------------------------------------------ ingest

    def ingest(self, batch: EventBatch) -> None:
        """Take a batch of events (any order). Keys must come from ``self.keys``."""
        if len(batch) == 0:
            return
        self._sync_keys()
        if batch.key.size and (int(batch.key.max()) >= len(self.keys) or int(batch.key.min()) < 0):
            raise StateError("batch keys were not interned in this engine's KeyTable")
        if not self.started:
            self._start(int(batch.ts_ns.min()))
        matched = np.diff(self._csr_off)[batch.key] > 0
        # Rejections count records (rows), like decode rejections; a row may stand for many requests.
        n_unmatched = int((~matched).sum())
        if n_unmatched:
            self.rejections.add("unmatched", n_unmatched)
            batch = batch.take(matched)
            if len(batch) == 0:
                return
        ts = batch.ts_ns
        if ts.shape[0] > 1 and not bool(np.all(ts[1:] >= ts[:-1])):
            batch = batch.take(np.argsort(ts, kind="stable"))
            ts = batch.ts_ns
        self.events_ingested += int(batch.weight.sum())
        hi = int(ts[-1])
        self._max_ts_ns = hi if self._max_ts_ns is None else max(self._max_ts_ns, hi)
        chunks = self._chunks
        if not chunks or int(chunks[-1].ts_ns[-1]) <= int(ts[0]):
            chunks.append(batch)
            return
        # Merge with the chunks the batch overlaps (for a stream in rough order: the last one or two).
        k = len(chunks)
        while k > 0 and int(chunks[k - 1].ts_ns[-1]) > int(ts[0]):
            k -= 1
        merged = EventBatch.concat([*chunks[k:], batch])
        chunks[k:] = [merged.take(np.argsort(merged.ts_ns, kind="stable"))]

    @property
    def _pending(self) -> EventBatch:
        """All events not yet evaluated, as one sorted batch (a copy; for snapshots)."""
        return EventBatch.concat(self._chunks) if self._chunks else EventBatch.empty()

    @_pending.setter
    def _pending(self, batch: EventBatch) -> None:
        self._chunks = [batch] if len(batch) else []

    # ------------------------------------------------------------------ advance

    def advance(self, watermark_ns: int) -> list[AlertEvent]:
        """Evaluate every instant up to ``watermark_ns``; return the alert transitions, in order."""
        if not self.started:
            return []
        out: list[AlertEvent] = []
        until = int(watermark_ns)
        chunks = self._chunks
        while chunks:
            # Instants up to the next chunk's first event may be evaluated with this chunk alone:
            # at E every event before E is in it.
            bound = until if len(chunks) == 1 else min(until, int(chunks[1].ts_ns[0]))
            i = self._run(chunks[0], bound, out)
            if i == len(chunks[0]):
                chunks.pop(0)
                continue
            rest = chunks[0].take(slice(i, None))  # a view: the arrays stay contiguous
            if bound == until:
                chunks[0] = rest
                break
            # The next instant needs events of both chunks: join them (the rest is the smaller part).
            chunks[0:2] = [EventBatch.concat([rest, chunks[1]])]
        if not chunks:
            self._run(EventBatch.empty(), until, out)
        self._sync_counters()
        return out

    def _run(self, pend: EventBatch, until: int, out: list[AlertEvent]) -> int:
        """Run the kernel over ``pend`` up to ``until``; append transitions to ``out``; next event index."""
        p = self.plan
        i = 0
        while True:
            i, n_rec, status = K.run(
                pend.ts_ns, pend.key, pend.status, pend.latency_us, pend.weight, i, until,
                self._csr_off, self._csr_slo,
                p.status_class, p.lat_thr_us, p.is_latency, p.budget,
                p.step_ns, p.max_late_ns, p.res_ns, p.ring_n, p.ring_off, p.win_res, p.win_n,
                p.rule_count, p.rule_long, p.rule_short, p.rule_factor, p.rule_sev, p.rule_for_ns,
                p.rule_min_history_ns, p.min_events, p.keep_ns, p.sev_enabled, p.suppress_ticket,
                self._clock, self._acc, self._cum, self._heads, self._rings, self._wsum,
                self._tier_since, self._firing, self._inactive_since, self._fired_tier,
                self._counters, self._slo_rejects, self._rec_i64, self._rec_sums,
                self._hist, self._hist_row, self._hist_head, p.hist_slot_ns, p.hist_window_slots,
                self.hdr.unit_magnitude, self.hdr.sub_bucket_half_count_magnitude, p.hist_max_us,
                self._pcts, self._scratch, self._pct_out, self._rec_pct,
            )
            for r in range(n_rec):
                out.append(self._record_to_event(r))
            if status == K.DONE:
                return int(i)

    def _sync_counters(self) -> None:
        delta = self._counters - self._counted
        if delta[K.C_TOO_LATE]:
            self.rejections.add("too_late", int(delta[K.C_TOO_LATE]))
        if delta[K.C_TOO_OLD]:
            # History older than every window, ingested before the first evaluation.
            self.rejections.add("too_old", int(delta[K.C_TOO_OLD]))
        # Counted in the SLOs, left out of the latency histograms only:
        if delta[K.C_HIST_OUT_OF_RANGE]:
            self.rejections.add("histogram_out_of_range", int(delta[K.C_HIST_OUT_OF_RANGE]))
        if delta[K.C_HIST_TOO_LATE]:
            self.rejections.add("histogram_too_late", int(delta[K.C_HIST_TOO_LATE]))
        self._counted = self._counters.copy()

    @property
    def late_events_accepted(self) -> int:
        return int(self._counters[K.C_LATE_OK])

    def totals(self, slo: str) -> WindowCounts:
        """Events counted by an SLO since the engine started (evaluated steps only)."""
        row = self._slo(slo).row
        return WindowCounts(bad=int(self._cum[row, 1]), total=int(self._cum[row, 0]))

    def uncounted_by_slo(self) -> dict[str, dict[str, int]]:
        """Per SLO, events it could not classify: ``excluded_status`` and ``no_latency``."""
        return {
            sp.slo.name: {"excluded_status": int(self._slo_rejects[sp.row, 0]),
                          "no_latency": int(self._slo_rejects[sp.row, 1])}
            for sp in self.plan.slos
        }

    # ------------------------------------------------------------------ views

    def _slo(self, name: str) -> SloPlan:
        try:
            return self.plan.slos[self.plan.by_name[name]]
        except KeyError:
            raise KeyError(f"no SLO named {name!r}") from None

    def serving_resolution_s(self, slo: str) -> dict[int, int]:
        """Window length (s) -> bucket resolution (s) for an SLO's windows and its period."""
        sp = self._slo(slo)
        p = self.plan
        js = [*sp.window_index, sp.budget_window]
        return {p.win_s[j]: p.res_s[int(p.win_res[j])] for j in js}

    def window_counts(self, slo: str) -> dict[int, tuple[int, int]]:
        """Window length (s) -> (bad, total) at the last evaluated instant."""
        sp = self._slo(slo)
        p = self.plan
        js = [*sp.window_index, sp.budget_window]
        return {p.win_s[j]: (int(self._wsum[sp.row, j, 1]), int(self._wsum[sp.row, j, 0])) for j in js}

    def _coverage(self, sp: SloPlan, at_ns: int | None) -> float:
        """Share of the SLO period covered by history at instant ``at_ns``."""
        if at_ns is None or not self.started:
            return 1.0
        history_ns = at_ns - (self._first_instant_ns - self.plan.step_ns)
        return min(1.0, history_ns / (sp.period_s * NS))

    def _counts_dict(self, sp: SloPlan, sums: list[list[int]], at_ns: int | None) -> tuple[
            dict[str, float | None], dict[str, WindowCounts], float | None, WindowCounts]:
        """Burn rates and counts from one SLO's window sums (``sums[j] == [total, bad]``)."""
        burns: dict[str, float | None] = {}
        windows: dict[str, WindowCounts] = {}
        B = sp.error_budget
        for label, j in zip(sp.window_labels, sp.window_index, strict=True):
            total, bad = sums[j]
            burns[label] = burn_rate(bad, total, B)
            windows[label] = WindowCounts(bad=bad, total=total)
        bt, bb = sums[sp.budget_window]
        remaining = budget_remaining(bb, bt, B, self._coverage(sp, at_ns))
        return burns, windows, remaining, WindowCounts(bad=bb, total=bt)

    def _record_to_event(self, r: int) -> AlertEvent:
        rec = self._rec_i64[r]
        sp = self.plan.slos[int(rec[K.R_SLO])]
        s = sp.slo
        sev = SEVERITIES[int(rec[K.R_SEV])]
        burns, windows, remaining, _ = self._counts_dict(sp, self._rec_sums[r].tolist(),
                                                         int(rec[K.R_TS]))
        tier = sp.tiers[int(rec[K.R_TIER])].name if rec[K.R_TIER] >= 0 else ""
        pct = self._rec_pct[r]
        latency = None if np.isnan(pct[0]) else {"p50": float(pct[0]), "p95": float(pct[1]),
                                                 "p99": float(pct[2])}
        return AlertEvent(
            slo=s.name,
            severity=sev,
            action="trigger" if rec[K.R_ACTION] == K.ACTION_TRIGGER else "resolve",
            ts=int(rec[K.R_TS]) / NS,
            tier=tier,
            burn_rates=burns,
            budget_remaining=remaining,
            dedup_key=dedup_key(s.name, sev),
            pd_severity=s.alerting.severities.get(sev, "critical" if sev == "page" else "warning"),
            service=s.service,
            objective=sp.objective,
            period=format_duration(sp.period_s),
            factors=dict(sp.factors),
            windows=windows,
            latency_ms=latency,
            runbook_url=s.runbook_url,
            labels=dict(s.labels),
            description=s.description,
        )

    def status(self, slo: str) -> SloStatus:
        """Burn rates, budget and alert state of one SLO at the last evaluated instant."""
        sp = self._slo(slo)
        return self._status(sp, self._wsum[sp.row].tolist(), self._firing[sp.row].tolist(),
                            self._fired_tier[sp.row].tolist())

    def statuses(self) -> list[SloStatus]:
        """:meth:`status` of every SLO, in config order (one bulk read of the state)."""
        wsum = self._wsum.tolist()
        firing = self._firing.tolist()
        fired = self._fired_tier.tolist()
        return [self._status(sp, wsum[sp.row], firing[sp.row], fired[sp.row]) for sp in self.plan.slos]

    def _status(self, sp: SloPlan, sums: list[list[int]], firing_row: list[bool],
                fired_row: list[int]) -> SloStatus:
        last = self.last_eval_ns
        burns, windows, remaining, budget_events = self._counts_dict(sp, sums, last)
        firing = {"page": firing_row[0], "ticket": firing_row[1]}
        tiers = {
            sev: (sp.tiers[fired_row[k]].name if firing_row[k] and fired_row[k] >= 0 else None)
            for k, sev in enumerate(SEVERITIES)
        }
        return SloStatus(
            slo=sp.slo.name, ts=None if last is None else last / NS, burn_rates=burns, windows=windows,
            budget_remaining=remaining, budget_events=budget_events, firing=firing, firing_tier=tiers,
            factors=sp.factors,
        )

    # ------------------------------------------------------------------ state

    def state_arrays(self) -> dict[str, Any]:
        """The engine's state as plain arrays (for checkpoints; no pickle needed)."""
        pend = self._pending
        return {
            "clock": self._clock.copy(),
            "acc": self._acc.copy(),
            "cum": self._cum.copy(),
            "heads": self._heads.copy(),
            "rings": self._rings.copy(),
            "tier_since": self._tier_since.copy(),
            "firing": self._firing.copy(),
            "inactive_since": self._inactive_since.copy(),
            "fired_tier": self._fired_tier.copy(),
            "counters": self._counters.copy(),
            "slo_rejects": self._slo_rejects.copy(),
            "pending_ts_ns": pend.ts_ns.copy(),
            "pending_key": pend.key.copy(),
            "pending_status": pend.status.copy(),
            "pending_latency_us": pend.latency_us.copy(),
            "pending_weight": pend.weight.copy(),
            "hist": self._hist.copy(),
            "hist_row": self._hist_row.copy(),
            "hist_head": self._hist_head.copy(),
        }

    def latency_percentiles_ms(self, slo: str) -> dict[str, float] | None:
        """p50/p95/p99 latency (ms) over the histogram window, or None without latency data."""
        row = int(self._hist_row[self._slo(slo).row])
        if row < 0 or not self.started:
            return None
        p = self.plan
        n_slots = self._hist.shape[1]
        head = int(self._hist_head[0])
        first = (head - p.hist_window_slots + 1) % n_slots
        total = ring_percentiles(self._hist[row], first, p.hist_window_slots, self._pcts, self._scratch,
                                 self._pct_out, self.hdr.unit_magnitude,
                                 self.hdr.sub_bucket_half_count_magnitude)
        if total == 0:
            return None
        v = self._pct_out / 1000.0
        return {"p50": float(v[0]), "p95": float(v[1]), "p99": float(v[2])}

    def histogram_window(self, slo: str) -> npt.NDArray[np.int64] | None:
        """The merged latency histogram (HdrHistogram counts, us) of the histogram window."""
        row = int(self._hist_row[self._slo(slo).row])
        if row < 0:
            return None
        p = self.plan
        head = int(self._hist_head[0])
        n_slots = self._hist.shape[1]
        rows = [(head - k) % n_slots for k in range(p.hist_window_slots)]
        return self._hist[row, rows].sum(axis=0)

    def _restore_hist(self, arrays: dict[str, Any], mapping: list[tuple[int, int]]) -> None:
        old_rows = arrays["hist_row"]
        old = arrays["hist"]
        if old.shape[1:] != self._hist.shape[1:]:
            return  # layout or slot count changed: histograms restart empty
        self._hist_head[:] = arrays["hist_head"]
        for i_old, i_new in mapping:
            ro, rn = int(old_rows[i_old]), int(self._hist_row[i_new])
            if ro >= 0 and rn >= 0:
                self._hist[rn] = old[ro]
