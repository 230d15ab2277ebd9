"""The ingest-and-evaluate kernel: events in time order in, alert transitions out.

State (all SLOs are rows; see :mod:`engine.plan` for the layout):

- ``clock[0]``: the next evaluation instant E (ns); ``clock[1]``: 1 once an instant was evaluated;
  ``clock[2]``: the first instant (history starts one step before it).
  Events with ts in ``[E - step, E)`` belong to the current step and go to ``acc`` (one add per
  event and SLO: the hot path).
- ``acc[slo, 0:2]``: (total, bad) of the current step; ``cum[slo, 0:2]`` the same since the start.
- ``rings[ring_off[k] + b % ring_n[k], slo, 0:2]``: (total, bad) of bucket ``b`` of resolution k
  (slot-major, so that clearing a slot or subtracting a leaving bucket walks memory in order).
- ``heads[k]``: the bucket of resolution k holding the last evaluated step, ``(E - step) // res_ns[k]``
  for the last evaluated instant E.
- ``wsum[slo, j, 0:2]``: running sums of window j over buckets ``heads[k] - win_n[j] + 1 .. heads[k]``
  (k = win_res[j]). Invariant between steps: ``wsum == sum of those ring buckets``.

At each instant E every resolution's head first moves to the bucket holding the step that ends at
E (where it enters a new bucket, the bucket leaving each of its windows is subtracted and the new
head slot is cleared); then the step's ``acc`` is added to the head buckets and to every window sum,
and the alert rules are evaluated. Heads stay put until the next instant, so that the state between
calls is exactly the state evaluated at the last instant. Late events (before the current step,
within ``max_late_ns``; or any age before the first evaluation, as history) are added directly to
their bucket in every resolution whose ring still holds it, and to the windows that cover it.

Evaluation follows the SRE Workbook's multiwindow, multi-burn-rate rule (ch. 5, table 5-8): a tier
holds when ``b(long) > factor`` and ``b(short) > factor`` with ``b = (bad / total) / B``.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from engine.kernels.hdr import counts_index, ring_percentiles

# Record columns (rec_i64)
R_TS, R_SLO, R_SEV, R_ACTION, R_TIER = 0, 1, 2, 3, 4
ACTION_RESOLVE, ACTION_TRIGGER = 0, 1

# Kernel return status
DONE, NEED_DRAIN = 0, 1

# Engine counters (counters array)
C_LATE_OK, C_TOO_LATE, C_HIST_OUT_OF_RANGE, C_HIST_TOO_LATE, C_TOO_OLD = 0, 1, 2, 3, 4
N_COUNTERS = 8


@njit(cache=True, inline="always")
def _classify(slo: int, status: int, lat_us: float, status_class: np.ndarray, lat_thr_us: np.ndarray,
              is_latency: np.ndarray) -> int:
    """0 good, 1 bad, 2 not counted (excluded status), 3 not counted (no latency)."""
    s = status if 0 <= status < 600 else 0
    c = status_class[slo, s]
    if c == 2:
        return 2
    if is_latency[slo]:
        if lat_us != lat_us:  # NaN: the event carries no latency
            return 3
        return 1 if lat_us > lat_thr_us[slo] else 0
    return c


@njit(cache=True)
def _add_late(slo: int, ts: int, w: int, bad: int, heads: np.ndarray, res_ns: np.ndarray,
              ring_n: np.ndarray, ring_off: np.ndarray, rings: np.ndarray, wsum: np.ndarray,
              win_res: np.ndarray, win_n: np.ndarray) -> bool:
    """Count an event of an already evaluated step into its buckets and the windows covering it.

    A resolution whose ring no longer holds the event's bucket skips it: none of its windows can
    cover that bucket again. Returns False when no ring holds it (the caller counts a rejection).
    """
    stored = False
    for k in range(res_ns.shape[0]):
        b = ts // res_ns[k]
        # Slots hold buckets head - ring_n + 2 .. head (one spare is cleared for the next head).
        if b > heads[k] - ring_n[k] + 1:
            slot = ring_off[k] + b % ring_n[k]
            rings[slot, slo, 0] += w
            rings[slot, slo, 1] += bad
            stored = True
    for j in range(win_res.shape[0]):
        k = win_res[j]
        b = ts // res_ns[k]
        if b > heads[k] - win_n[j]:
            wsum[slo, j, 0] += w
            wsum[slo, j, 1] += bad
    return stored


@njit(cache=True, inline="always")
def _hist_record(hist: np.ndarray, row: int, slot: int, lat_us: float, w: int, um: int, hm: int,
                 hist_max_us: int, counters: np.ndarray) -> None:
    # Round half up to a whole microsecond first, exactly as engine.kernels.hdr.record_into does,
    # so that both record paths accept and reject the same values.
    if lat_us != lat_us:
        return
    if lat_us < 0 or lat_us >= 9.2e18:
        counters[C_HIST_OUT_OF_RANGE] += 1
        return
    v = math.floor(lat_us)
    if lat_us - v >= 0.5:
        v += 1
    if v > hist_max_us:
        counters[C_HIST_OUT_OF_RANGE] += 1
        return
    hist[row, slot, counts_index(v, um, hm)] += w


@njit(cache=True, inline="always")
def _burn(bad: int, total: int, B: float) -> float:
    return (bad / total) / B


@njit(cache=True)
def _evaluate_instant(E: int, n_slos: int, acc: np.ndarray, cum: np.ndarray, heads: np.ndarray,
                      ring_n: np.ndarray,
                      ring_off: np.ndarray, rings: np.ndarray, wsum: np.ndarray, budget: np.ndarray,
                      rule_count: np.ndarray, rule_long: np.ndarray, rule_short: np.ndarray,
                      rule_factor: np.ndarray, rule_sev: np.ndarray, rule_for_ns: np.ndarray,
                      rule_min_hist: np.ndarray, history_start: int, min_events: np.ndarray,
                      keep_ns: np.ndarray, sev_enabled: np.ndarray,
                      suppress_ticket: np.ndarray, tier_since: np.ndarray, firing: np.ndarray,
                      inactive_since: np.ndarray, fired_tier: np.ndarray, rec_i64: np.ndarray,
                      rec_sums: np.ndarray, n_rec: int, hist: np.ndarray, hist_row: np.ndarray,
                      hist_head: int, hist_window: int, pcts: np.ndarray, scratch: np.ndarray,
                      pct_out: np.ndarray, rec_pct: np.ndarray, um: int, hm: int) -> int:
    n_res = heads.shape[0]
    n_win = wsum.shape[1]
    for s in range(n_slos):
        # 1. Fold the finished step into the head buckets and the window sums.
        at = acc[s, 0]
        ab = acc[s, 1]
        if at != 0 or ab != 0:
            for k in range(n_res):
                slot = ring_off[k] + heads[k] % ring_n[k]
                rings[slot, s, 0] += at
                rings[slot, s, 1] += ab
            for j in range(n_win):
                wsum[s, j, 0] += at
                wsum[s, j, 1] += ab
            cum[s, 0] += at
            cum[s, 1] += ab
            acc[s, 0] = 0
            acc[s, 1] = 0
        # 2. Tier conditions and `for`.
        B = budget[s]
        active0 = -1
        active1 = -1
        for r in range(rule_count[s]):
            jl = rule_long[s, r]
            js = rule_short[s, r]
            tl = wsum[s, jl, 0]
            ts_ = wsum[s, js, 0]
            f = rule_factor[s, r]
            cond = (tl >= min_events[s] and ts_ >= 1 and E - history_start >= rule_min_hist[s, r]
                    and _burn(wsum[s, jl, 1], tl, B) > f and _burn(wsum[s, js, 1], ts_, B) > f)
            if cond:
                if tier_since[s, r] < 0:
                    tier_since[s, r] = E
                if E - tier_since[s, r] >= rule_for_ns[s, r]:
                    if rule_sev[s, r] == 0:
                        if active0 < 0:
                            active0 = r
                    elif active1 < 0:
                        active1 = r
            else:
                tier_since[s, r] = -1
        # 3. Severity state machines: page first, then ticket (which may be suppressed by the page).
        for sev in range(2):
            act = active0 if sev == 0 else active1
            if not sev_enabled[s, sev]:
                continue
            if firing[s, sev]:
                if act >= 0:
                    inactive_since[s, sev] = -1
                    continue
                if inactive_since[s, sev] < 0:
                    inactive_since[s, sev] = E
                if E - inactive_since[s, sev] < keep_ns[s]:
                    continue
                firing[s, sev] = False
                inactive_since[s, sev] = -1
                action = ACTION_RESOLVE
                tier = fired_tier[s, sev]
            else:
                if act < 0:
                    continue
                if sev == 1 and suppress_ticket[s] and firing[s, 0]:
                    continue
                firing[s, sev] = True
                inactive_since[s, sev] = -1
                fired_tier[s, sev] = act
                action = ACTION_TRIGGER
                tier = act
            rec_i64[n_rec, R_TS] = E
            rec_i64[n_rec, R_SLO] = s
            rec_i64[n_rec, R_SEV] = sev
            rec_i64[n_rec, R_ACTION] = action
            rec_i64[n_rec, R_TIER] = tier
            for j in range(n_win):
                rec_sums[n_rec, j, 0] = wsum[s, j, 0]
                rec_sums[n_rec, j, 1] = wsum[s, j, 1]
            hr = hist_row[s]
            rec_pct[n_rec, 0] = np.nan
            rec_pct[n_rec, 1] = np.nan
            rec_pct[n_rec, 2] = np.nan
            if hr >= 0:
                n_slots = hist.shape[1]
                first = (hist_head - hist_window + 1) % n_slots
                if ring_percentiles(hist[hr], first, hist_window, pcts, scratch, pct_out, um, hm) > 0:
                    for q in range(3):
                        rec_pct[n_rec, q] = pct_out[q] / 1000.0
            n_rec += 1
    return n_rec


@njit(cache=True)
def _advance_clock(E_next: int, step_ns: int, n_slos: int, heads: np.ndarray, res_ns: np.ndarray,
                   ring_n: np.ndarray, ring_off: np.ndarray, rings: np.ndarray, wsum: np.ndarray,
                   win_res: np.ndarray, win_n: np.ndarray) -> None:
    """Move every resolution's head to the bucket holding the step that ends at ``E_next``."""
    for k in range(heads.shape[0]):
        new_head = (E_next - step_ns) // res_ns[k]
        while heads[k] < new_head:
            h = heads[k] + 1
            for j in range(win_res.shape[0]):
                if win_res[j] != k:
                    continue
                leave = ring_off[k] + (h - win_n[j]) % ring_n[k]
                for s in range(n_slos):
                    wsum[s, j, 0] -= rings[leave, s, 0]
                    wsum[s, j, 1] -= rings[leave, s, 1]
            slot = ring_off[k] + h % ring_n[k]
            rings[slot, :, :] = 0
            heads[k] = h


@njit(cache=True)
def _advance_hist(E_next: int, step_ns: int, hist: np.ndarray, hist_head: np.ndarray,
                  hist_slot_ns: int) -> None:
    new_head = (E_next - step_ns) // hist_slot_ns
    n_slots = hist.shape[1]
    while hist_head[0] < new_head:
        h = hist_head[0] + 1
        hist[:, h % n_slots, :] = 0
        hist_head[0] = h


@njit(cache=True)
def _ingest_step(i: int, E: int, ts_ns: np.ndarray, key: np.ndarray, status: np.ndarray,
                 lat_us: np.ndarray, weight: np.ndarray, csr_off: np.ndarray, csr_slo: np.ndarray,
                 status_class: np.ndarray, lat_thr_us: np.ndarray, is_latency: np.ndarray,
                 acc: np.ndarray, slo_rejects: np.ndarray, hist: np.ndarray, hist_row: np.ndarray,
                 hist_slot: int, um: int, hm: int, hist_max_us: int, counters: np.ndarray) -> int:
    """Events ``i..`` of the current step (ts < E): one add per event and SLO; returns the next i.

    Classification is written out here rather than called: a call per event costs more than the
    work itself.
    """
    n_ev = ts_ns.shape[0]
    while i < n_ev:
        if ts_ns[i] >= E:
            break
        kid = key[i]
        w = weight[i]
        st = status[i]
        if st < 0 or st >= 600:
            st = 0
        for p in range(csr_off[kid], csr_off[kid + 1]):
            s = csr_slo[p]
            c = status_class[s, st]
            if is_latency[s] and c != 2:
                lu = lat_us[i]
                c = 3 if lu != lu else (1 if lu > lat_thr_us[s] else 0)
            if c >= 2:
                slo_rejects[s, c - 2] += w
                continue
            acc[s, 0] += w
            acc[s, 1] += c * w
            hr = hist_row[s]
            if hr >= 0:
                _hist_record(hist, hr, hist_slot, lat_us[i], w, um, hm, hist_max_us, counters)
        i += 1
    return i


@njit(cache=True)
def run(ts_ns: np.ndarray, key: np.ndarray, status: np.ndarray, lat_us: np.ndarray, weight: np.ndarray,
        i0: int, until_ns: int,
        csr_off: np.ndarray, csr_slo: np.ndarray,
        status_class: np.ndarray, lat_thr_us: np.ndarray, is_latency: np.ndarray, budget: np.ndarray,
        step_ns: int, max_late_ns: int, res_ns: np.ndarray, ring_n: np.ndarray, ring_off: np.ndarray,
        win_res: np.ndarray, win_n: np.ndarray,
        rule_count: np.ndarray, rule_long: np.ndarray, rule_short: np.ndarray,
        rule_factor: np.ndarray, rule_sev: np.ndarray, rule_for_ns: np.ndarray,
        rule_min_hist: np.ndarray, min_events: np.ndarray, keep_ns: np.ndarray,
        sev_enabled: np.ndarray,
        suppress_ticket: np.ndarray,
        clock: np.ndarray, acc: np.ndarray, cum: np.ndarray, heads: np.ndarray, rings: np.ndarray,
        wsum: np.ndarray,
        tier_since: np.ndarray, firing: np.ndarray, inactive_since: np.ndarray,
        fired_tier: np.ndarray, counters: np.ndarray, slo_rejects: np.ndarray,
        rec_i64: np.ndarray, rec_sums: np.ndarray,
        hist: np.ndarray, hist_row: np.ndarray, hist_head: np.ndarray, hist_slot_ns: int,
        hist_window: int, um: int, hm: int, hist_max_us: int, pcts: np.ndarray, scratch: np.ndarray,
        pct_out: np.ndarray, rec_pct: np.ndarray) -> tuple[int, int, int]:
    """Ingest events ``i0..`` (sorted by ts) and evaluate every instant ``E <= until_ns``.

    Stops before the first instant beyond ``until_ns`` (its events stay unconsumed), or when the
    record buffer could overflow at the next instant. Returns ``(next_event,
    n_records, status)`` with status DONE or NEED_DRAIN.
    """
    n_slos = acc.shape[0]
    n_ev = ts_ns.shape[0]
    cap = rec_i64.shape[0]
    n_rec = 0
    i = i0
    step = step_ns
    n_hslots = hist.shape[1]
    while True:
        E = clock[0]
        # Events of a step are taken only when its instant is evaluated in this call: between
        # calls the state is exactly the state evaluated at the last instant, and everything else
        # waits in the caller's pending buffer.
        if until_ns < E:
            return i, n_rec, DONE
        if n_rec + 2 * n_slos > cap:
            return i, n_rec, NEED_DRAIN
        # The histogram ring moves first: events of the step ending at E are recorded straight
        # into its slot, which must be cleared before they land there.
        _advance_hist(E, step, hist, hist_head, hist_slot_ns)
        # Ingest every event that belongs to a step before E. Events are sorted: those of already
        # evaluated steps (late, or history before the first evaluation) come first.
        step_start = E - step
        late_floor = step_start - max_late_ns
        while i < n_ev and ts_ns[i] < step_start:
            t = ts_ns[i]
            if clock[1] > 0 and t < late_floor:
                counters[C_TOO_LATE] += 1
                i += 1
                continue
            counters[C_LATE_OK] += 1
            kid = key[i]
            w = weight[i]
            for p in range(csr_off[kid], csr_off[kid + 1]):
                s = csr_slo[p]
                c = _classify(s, status[i], lat_us[i], status_class, lat_thr_us, is_latency)
                if c >= 2:
                    slo_rejects[s, c - 2] += w
                    continue
                hr = hist_row[s]
                if hr >= 0:
                    hb = t // hist_slot_ns
                    if hb > hist_head[0] - n_hslots + 1:
                        _hist_record(hist, hr, hb % n_hslots, lat_us[i], w, um, hm, hist_max_us, counters)
                    else:
                        counters[C_HIST_TOO_LATE] += 1
                if _add_late(s, t, w, c * w, heads, res_ns, ring_n, ring_off, rings, wsum, win_res,
                             win_n):
                    cum[s, 0] += w
                    cum[s, 1] += c * w
                else:
                    counters[C_TOO_OLD] += 1
            i += 1
        # The hot path, in a function of its own so that LLVM optimises the loop in isolation.
        i = _ingest_step(i, E, ts_ns, key, status, lat_us, weight, csr_off, csr_slo, status_class,
                         lat_thr_us, is_latency, acc, slo_rejects, hist, hist_row,
                         hist_head[0] % n_hslots, um, hm, hist_max_us, counters)
        # Move every head to the bucket holding the step that ends at E, then fold and evaluate.
        # Heads stay there until the next instant, so that views and late events between calls
        # see the windows exactly as they were evaluated at E.
        _advance_clock(E, step, n_slos, heads, res_ns, ring_n, ring_off, rings, wsum, win_res, win_n)
        n_rec = _evaluate_instant(E, n_slos, acc, cum, heads, ring_n, ring_off, rings, wsum, budget,
                                  rule_count, rule_long, rule_short, rule_factor, rule_sev,
                                  rule_for_ns, rule_min_hist, clock[2] - step, min_events, keep_ns,
                                  sev_enabled, suppress_ticket,
                                  tier_since, firing, inactive_since, fired_tier, rec_i64, rec_sums,
                                  n_rec, hist, hist_row, hist_head[0], hist_window, pcts, scratch,
                                  pct_out, rec_pct, um, hm)
        clock[0] = E + step
        clock[1] = 1
