"""Window strategies: the exact reference, bucketed rings, the engine's tiers, decay and tumbling.

Every strategy implements :class:`bench.strategies.base.WindowStrategy`; ``STRATEGIES`` registers
them by display name. Error bounds (against the exact window ``[t - w, t)``):

- ``exact``: per-second counts and prefix sums. Exact at one-second granularity: an event counts in
  the second that holds it, so a window on whole seconds (every instant is one) is exact.
- ``ring-<r>``: one ring of ``r``-second buckets. At ``t`` a window of ``w`` covers the ``w / r``
  buckets ending with the bucket that holds ``t - 1 ns``: exactly ``[t - w, t)`` when ``t`` is a
  multiple of ``r``, otherwise shorter by ``r - (t mod r)`` (less than one bucket) at its old end.
- ``engine``: :class:`engine.engine.Engine` itself, with the resolution tiers of
  :mod:`engine.plan` (each window served by buckets of 1 s .. 1 h, at least 30 per window): the
  same bound with ``r`` the window's serving resolution; late events beyond ``max_late_s`` rejected.
- ``decay``: exponentially decaying counters with time constant ``w``: not a window, no bound. It
  equals the exact ratio only for traffic constant over several ``w``; after a step it reaches
  63 % of the new ratio at ``w`` (the exact window reaches 100 %).
- ``tumbling``: fixed windows ``[k w, (k + 1) w)`` aligned to the origin; at ``t`` the last complete
  one. The answer is up to one window ``w`` old.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence

import numpy as np
from numba import njit

from bench.strategies.base import I64, NS, StrategyFactory, WindowAnswers, WindowStrategy

# Kernel counters
K_TOO_LATE = 0


class _Pending:
    """Rows waiting for the instant that consumes them, kept sorted by time (stable)."""

    def __init__(self) -> None:
        self.ts = np.empty(0, np.int64)
        self.bad = np.empty(0, np.int64)
        self.total = np.empty(0, np.int64)

    def add(self, ts: I64, bad: I64, total: I64) -> None:
        if ts.size > 1 and not bool(np.all(ts[1:] >= ts[:-1])):
            order = np.argsort(ts, kind="stable")
            ts, bad, total = ts[order], bad[order], total[order]
        if self.ts.size == 0:
            self.ts, self.bad, self.total = ts, bad, total
            return
        ts2 = np.concatenate([self.ts, ts])
        bad2 = np.concatenate([self.bad, bad])
        tot2 = np.concatenate([self.total, total])
        if int(self.ts[-1]) > int(ts[0]):
            order = np.argsort(ts2, kind="stable")
            ts2, bad2, tot2 = ts2[order], bad2[order], tot2[order]
        self.ts, self.bad, self.total = ts2, bad2, tot2

    def drop(self, n: int) -> None:
        if n:
            self.ts, self.bad, self.total = self.ts[n:], self.bad[n:], self.total[n:]


# ---------------------------------------------------------------------------------------------
# exact reference


class ExactWindows(WindowStrategy):
    """Per-second counts with prefix sums: the reference (exact at one-second granularity).

    Keeps every second since the origin (the benchmark needs the whole history); the steady-state
    memory it reports is what an exact evaluator needs: one (bad, total) pair per second of the
    longest window.
    """

    name = "exact"
    error_bound = "exact at 1 s granularity (every instant is a whole second)"

    def __init__(self, windows_s: Sequence[int], origin_ns: int, step_s: int) -> None:
        super().__init__(windows_s, origin_ns, step_s)
        self._bad = np.zeros(4096, np.int64)
        self._total = np.zeros(4096, np.int64)
        self._n = 0                       # seconds [0, n) may hold counts
        self._cum_bad = np.zeros(1, np.int64)
        self._cum_total = np.zeros(1, np.int64)
        self._clean = 0                   # prefix sums valid for seconds [0, clean)

    def _grow(self, n: int) -> None:
        if n > self._bad.size:
            cap = max(n, 2 * self._bad.size)
            for attr in ("_bad", "_total"):
                old = getattr(self, attr)
                new = np.zeros(cap, np.int64)
                new[: old.size] = old
                setattr(self, attr, new)
        self._n = max(self._n, n)

    def _ingest(self, ts_ns: I64, bad: I64, total: I64) -> None:
        sec = (ts_ns - self.origin_ns) // NS
        self._grow(int(sec.max()) + 1)
        np.add.at(self._bad, sec, bad)
        np.add.at(self._total, sec, total)
        self._clean = min(self._clean, int(sec.min()))

    def _prefix(self, upto: int) -> None:
        """Prefix sums over seconds [0, upto): ``cum[k]`` = sum of seconds < k."""
        self._grow(upto)
        if self._cum_bad.size < upto + 1:
            cap = max(upto + 1, 2 * self._cum_bad.size)
            for attr in ("_cum_bad", "_cum_total"):
                old = getattr(self, attr)
                new = np.zeros(cap, np.int64)
                new[: old.size] = old
                setattr(self, attr, new)
            self._clean = min(self._clean, old.size - 1)
        a = self._clean
        if a < upto:
            np.cumsum(self._bad[a:upto], out=self._cum_bad[a + 1 : upto + 1])
            np.cumsum(self._total[a:upto], out=self._cum_total[a + 1 : upto + 1])
            self._cum_bad[a + 1 : upto + 1] += self._cum_bad[a]
            self._cum_total[a + 1 : upto + 1] += self._cum_total[a]
            self._clean = upto

    def window_sums(self, instants_ns: I64) -> WindowAnswers:
        """Exact counts of ``[t - w, t)`` at any whole-second instants (no step grid needed)."""
        end = (np.asarray(instants_ns, np.int64) - self.origin_ns) // NS
        if end.size == 0:
            nw = len(self.windows_s)
            return WindowAnswers(np.zeros((0, nw)), np.zeros((0, nw)))
        self._prefix(int(end.max()))
        w = np.asarray(self.windows_s, np.int64)
        lo = np.maximum(end[:, None] - w[None, :], 0)
        hi = np.broadcast_to(end[:, None], lo.shape)
        bad = (self._cum_bad[hi] - self._cum_bad[lo]).astype(np.float64)
        total = (self._cum_total[hi] - self._cum_total[lo]).astype(np.float64)
        return WindowAnswers(bad, total)

    def _evaluate(self, instants_ns: I64) -> WindowAnswers:
        return self.window_sums(instants_ns)

    def memory_bytes(self) -> int:
        return max(self.windows_s) * 2 * 8 + len(self.windows_s) * 2 * 8


# ---------------------------------------------------------------------------------------------
# single-resolution ring


@njit(cache=True)
def ring_run(ts: np.ndarray, bad: np.ndarray, total: np.ndarray, instants: np.ndarray, res_ns: int,
             win_n: np.ndarray, slots: np.ndarray, head: np.ndarray, wsum: np.ndarray,
             out_bad: np.ndarray, out_total: np.ndarray, counters: np.ndarray) -> int:
    """Feed sorted rows (times relative to the origin) and answer every instant; return rows used.

    ``slots[b % n]`` holds bucket ``b`` for ``b`` in ``head - n + 1 .. head``; ``wsum[j]`` is the sum
    of buckets ``head - win_n[j] + 1 .. head`` (the invariant between instants).
    """
    n_slots = slots.shape[0]
    n_win = win_n.shape[0]
    i = 0
    n_rows = ts.shape[0]
    for q in range(instants.shape[0]):
        E = instants[q]
        new_head = (E - 1) // res_ns
        while head[0] < new_head:
            h = head[0] + 1
            for j in range(n_win):
                leave = h - win_n[j]
                if leave >= 0:
                    s = leave % n_slots
                    wsum[j, 0] -= slots[s, 0]
                    wsum[j, 1] -= slots[s, 1]
            s = h % n_slots
            slots[s, 0] = 0
            slots[s, 1] = 0
            head[0] = h
        hd = head[0]
        while i < n_rows and ts[i] < E:
            b = ts[i] // res_ns
            if b > hd - n_slots:
                s = b % n_slots
                slots[s, 0] += bad[i]
                slots[s, 1] += total[i]
                for j in range(n_win):
                    if b > hd - win_n[j]:
                        wsum[j, 0] += bad[i]
                        wsum[j, 1] += total[i]
            else:
                counters[K_TOO_LATE] += total[i]
            i += 1
        for j in range(n_win):
            out_bad[q, j] = wsum[j, 0]
            out_total[q, j] = wsum[j, 1]
    return i


class _KernelStrategy(WindowStrategy):
    """Shared plumbing: rows wait in time order until an instant after them is evaluated."""

    def __init__(self, windows_s: Sequence[int], origin_ns: int, step_s: int) -> None:
        super().__init__(windows_s, origin_ns, step_s)
        self._pending = _Pending()
        self._counters = np.zeros(2, np.int64)
        self._counted = 0

    def _ingest(self, ts_ns: I64, bad: I64, total: I64) -> None:
        self._pending.add(ts_ns - self.origin_ns, bad, total)

    def _evaluate(self, instants_ns: I64) -> WindowAnswers:
        p = self._pending
        nw = len(self.windows_s)
        out_bad = np.zeros((instants_ns.size, nw))
        out_total = np.zeros((instants_ns.size, nw))
        used = self._run(p.ts, p.bad, p.total, instants_ns - self.origin_ns, out_bad, out_total)
        p.drop(used)
        late = int(self._counters[K_TOO_LATE])
        if late > self._counted:
            self.rejections.add("too_late", late - self._counted)
            self._counted = late
        return WindowAnswers(out_bad, out_total)

    @abstractmethod
    def _run(self, ts: I64, bad: I64, total: I64, instants: I64, out_bad: np.ndarray,
             out_total: np.ndarray) -> int:
        """Run the strategy's kernel over pending rows; fill the answers; return the rows used."""


class BucketRing(_KernelStrategy):
    """One ring of ``res_s``-second buckets serving every window (``w`` a multiple of ``res_s``).

    Parameters
    ----------
    res_s
        Bucket width in seconds; each window must be a whole number of buckets.
    """

    def __init__(self, windows_s: Sequence[int], origin_ns: int, step_s: int, *, res_s: int) -> None:
        super().__init__(windows_s, origin_ns, step_s)
        bad_w = [w for w in self.windows_s if w % res_s]
        if bad_w:
            raise ValueError(f"ring-{res_s}s: expected windows that are multiples of {res_s} s, got {bad_w}")
        self.res_s = res_s
        self.name = f"ring-{res_s}s"
        self.error_bound = (f"window up to one bucket ({res_s} s) short at its old end, exact on "
                            f"multiples of {res_s} s")
        self._win_n = np.array([w // res_s for w in self.windows_s], np.int64)
        # One spare slot: the one cleared for a new head never belongs to a window.
        self._slots = np.zeros((int(self._win_n.max()) + 1, 2), np.int64)
        self._head = np.array([-1], np.int64)
        self._wsum = np.zeros((len(self.windows_s), 2), np.int64)

    def _run(self, ts: I64, bad: I64, total: I64, instants: I64, out_bad: np.ndarray,
             out_total: np.ndarray) -> int:
        return int(ring_run(ts, bad, total, instants, self.res_s * NS, self._win_n, self._slots,
                            self._head, self._wsum, out_bad, out_total, self._counters))

    def memory_bytes(self) -> int:
        return int(self._slots.nbytes + self._wsum.nbytes + self._head.nbytes)


# ---------------------------------------------------------------------------------------------
# exponentially decaying counters


@njit(cache=True)
def decay_run(ts: np.ndarray, bad: np.ndarray, total: np.ndarray, instants: np.ndarray,
              tau_ns: np.ndarray, value: np.ndarray, t_last: np.ndarray, out_bad: np.ndarray,
              out_total: np.ndarray) -> int:
    """``value[j]`` = sum of counts weighted ``exp(-(t_last - ts) / tau_j)``, kept at ``t_last``."""
    n_win = tau_ns.shape[0]
    i = 0
    n_rows = ts.shape[0]
    for q in range(instants.shape[0]):
        E = instants[q]
        while i < n_rows and ts[i] < E:
            t = ts[i]
            if t > t_last[0]:
                for j in range(n_win):
                    f = np.exp(-(t - t_last[0]) / tau_ns[j])
                    value[j, 0] *= f
                    value[j, 1] *= f
                t_last[0] = t
            for j in range(n_win):
                # A late row enters with the weight it would have had (decay is order-free).
                f = np.exp(-(t_last[0] - t) / tau_ns[j]) if t < t_last[0] else 1.0
                value[j, 0] += bad[i] * f
                value[j, 1] += total[i] * f
            i += 1
        for j in range(n_win):
            f = np.exp(-(E - t_last[0]) / tau_ns[j])
            out_bad[q, j] = value[j, 0] * f
            out_total[q, j] = value[j, 1] * f
    return i


class DecayingCounters(_KernelStrategy):
    """Exponentially decaying (bad, total) per window, time constant = the window length."""

    name = "decay"
    error_bound = "none (not a window): 63 % of a step change after w, exact only for steady traffic"

    def __init__(self, windows_s: Sequence[int], origin_ns: int, step_s: int) -> None:
        super().__init__(windows_s, origin_ns, step_s)
        self._tau_ns = np.array([float(w) * NS for w in self.windows_s])
        self._value = np.zeros((len(self.windows_s), 2))
        self._t_last = np.zeros(1, np.int64)

    def _run(self, ts: I64, bad: I64, total: I64, instants: I64, out_bad: np.ndarray,
             out_total: np.ndarray) -> int:
        return int(decay_run(ts, bad, total, instants, self._tau_ns, self._value, self._t_last,
                             out_bad, out_total))

    def memory_bytes(self) -> int:
        return int(self._value.nbytes + self._t_last.nbytes)


# ---------------------------------------------------------------------------------------------
# tumbling windows


@njit(cache=True)
def tumbling_run(ts: np.ndarray, bad: np.ndarray, total: np.ndarray, instants: np.ndarray,
                 win_ns: np.ndarray, k_cur: np.ndarray, cur: np.ndarray, prev: np.ndarray,
                 out_bad: np.ndarray, out_total: np.ndarray, counters: np.ndarray) -> int:
    """Per window: ``cur`` accumulates window ``k_cur``; ``prev`` holds window ``k_cur - 1``."""
    n_win = win_ns.shape[0]
    i = 0
    n_rows = ts.shape[0]
    for q in range(instants.shape[0]):
        E = instants[q]
        while i < n_rows and ts[i] < E:
            lost = False
            for j in range(n_win):
                k = ts[i] // win_ns[j]
                if k > k_cur[j]:
                    if k == k_cur[j] + 1:
                        prev[j, 0] = cur[j, 0]
                        prev[j, 1] = cur[j, 1]
                    else:
                        prev[j, 0] = 0
                        prev[j, 1] = 0
                    cur[j, 0] = 0
                    cur[j, 1] = 0
                    k_cur[j] = k
                if k == k_cur[j]:
                    cur[j, 0] += bad[i]
                    cur[j, 1] += total[i]
                elif k == k_cur[j] - 1:
                    prev[j, 0] += bad[i]
                    prev[j, 1] += total[i]
                else:
                    lost = True
            if lost:
                counters[K_TOO_LATE] += total[i]
            i += 1
        for j in range(n_win):
            k = E // win_ns[j]  # the window holding E; the one before it is the last complete one
            if k > k_cur[j]:
                if k == k_cur[j] + 1:
                    prev[j, 0] = cur[j, 0]
                    prev[j, 1] = cur[j, 1]
                else:
                    prev[j, 0] = 0
                    prev[j, 1] = 0
                cur[j, 0] = 0
                cur[j, 1] = 0
                k_cur[j] = k
            out_bad[q, j] = prev[j, 0]
            out_total[q, j] = prev[j, 1]
    return i


class TumblingWindows(_KernelStrategy):
    """Fixed windows aligned to the origin; the answer at ``t`` is the last complete one.

    A late row still counts while its window is the open or the last complete one; a row that
    some window could no longer take is counted once as ``too_late``.
    """

    name = "tumbling"
    error_bound = "answers the last complete window: up to one window w old"

    def __init__(self, windows_s: Sequence[int], origin_ns: int, step_s: int) -> None:
        super().__init__(windows_s, origin_ns, step_s)
        nw = len(self.windows_s)
        self._win_ns = np.array([w * NS for w in self.windows_s], np.int64)
        self._k = np.zeros(nw, np.int64)
        self._cur = np.zeros((nw, 2), np.int64)
        self._prev = np.zeros((nw, 2), np.int64)

    def _run(self, ts: I64, bad: I64, total: I64, instants: I64, out_bad: np.ndarray,
             out_total: np.ndarray) -> int:
        return int(tumbling_run(ts, bad, total, instants, self._win_ns, self._k, self._cur, self._prev,
                                out_bad, out_total, self._counters))

    def memory_bytes(self) -> int:
        return int(self._k.nbytes + self._cur.nbytes + self._prev.nbytes)


# ---------------------------------------------------------------------------------------------
# the engine's multi-resolution tiers


class EngineTiers(WindowStrategy):
    """:class:`engine.engine.Engine` with one availability SLO whose tiers name every window.

    Each window becomes a tier ``long = short = w`` with a factor no burn rate reaches, so that the
    engine keeps exactly the windows asked for (plus its period, the smallest whole number of days
    that holds the longest window). Rows become two weighted events (status 500 for bad, 200 for
    good). Late rows follow the engine's rule: counted up to ``max_late_s`` (default 300 s) behind
    the last evaluated instant, rejected as ``too_late`` beyond (counted here in requests).
    """

    name = "engine"
    error_bound = ("window up to one bucket of its serving resolution short (1 s .. 1 h, >= 30 "
                   "buckets per window), exact on multiples of it")

    def __init__(self, windows_s: Sequence[int], origin_ns: int, step_s: int, *,
                 max_late_s: float = 300.0) -> None:
        from engine.config import parse_config
        from engine.engine import Engine

        super().__init__(windows_s, origin_ns, step_s)
        period_days = -(-max(self.windows_s) // 86400)
        tiers = [{"name": f"w{w}", "severity": "page", "factor": 1e300, "long_window": f"{w}s",
                  "short_window": f"{w}s"} for w in self.windows_s]
        cfg = parse_config({
            "slos": [{"name": "slo", "service": "svc", "objective": 99.9, "period": f"{period_days}d",
                      "sli": {"availability": {}}, "histogram": False,
                      "alerting": {"windows": tiers}}],
            "engine": {"step_s": self.eval_step_s, "max_late_s": max_late_s},
        })
        self.engine = Engine(cfg)
        self._key = self.engine.key_id("svc")
        self._max_late_ns = int(max_late_s * NS)

    def _ingest(self, ts_ns: I64, bad: I64, total: I64) -> None:
        from engine.batch import EventBatch

        last = self.engine.last_eval_ns
        if last is not None:
            late = ts_ns < last - self._max_late_ns
            if late.any():
                self.rejections.add("too_late", int(total[late].sum()))
        good = total - bad
        ts2 = np.concatenate([ts_ns, ts_ns])
        w2 = np.concatenate([good, bad])
        st2 = np.concatenate([np.full(ts_ns.size, 200, np.int16), np.full(ts_ns.size, 500, np.int16)])
        keep = w2 > 0
        if not keep.any():
            return
        batch = EventBatch.from_arrays(ts2[keep], np.full(int(keep.sum()), self._key, np.int32),
                                       st2[keep], weight=w2[keep])
        self.engine.ingest(batch)

    def _evaluate(self, instants_ns: I64) -> WindowAnswers:
        nw = len(self.windows_s)
        out_bad = np.zeros((instants_ns.size, nw))
        out_total = np.zeros((instants_ns.size, nw))
        eng = self.engine
        for q, t in enumerate(instants_ns.tolist()):
            eng.advance(t)
            if eng.last_eval_ns != t:
                continue  # nothing ingested yet (the engine starts at its first event): empty
            counts = eng.window_counts("slo")
            for j, w in enumerate(self.windows_s):
                out_bad[q, j], out_total[q, j] = counts[w]
        return WindowAnswers(out_bad, out_total)

    def memory_bytes(self) -> int:
        arrays = self.engine.state_arrays()
        return int(sum(v.nbytes for k, v in arrays.items() if not k.startswith("pending_")))


def _ring(res_s: int) -> StrategyFactory:
    def make(windows_s: Sequence[int], origin_ns: int, step_s: int) -> WindowStrategy:
        return BucketRing(windows_s, origin_ns, step_s, res_s=res_s)

    return make


STRATEGIES: dict[str, StrategyFactory] = {
    "exact": ExactWindows,
    "ring-1s": _ring(1),
    "ring-10s": _ring(10),
    "ring-60s": _ring(60),
    "engine": EngineTiers,
    "decay": DecayingCounters,
    "tumbling": TumblingWindows,
}
