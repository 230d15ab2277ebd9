"""The window-strategy interface of the strategy benchmark (``python -m bench.strategies``).

A *window strategy* keeps the request counts of ONE SLO and answers, at evaluation instants, how
many bad and how many total requests each of a fixed set of windows held. Alerting policies
(:mod:`bench.strategies.policies`) only ever see those answers, so that every policy can run on
every strategy and the scores separate "how windows are counted" from "how alerts are decided".

Contract (enforced by the concrete :meth:`WindowStrategy.ingest` and :meth:`WindowStrategy.evaluate`
of this base class; a subclass implements :meth:`WindowStrategy._ingest`,
:meth:`WindowStrategy._evaluate` and :meth:`WindowStrategy.memory_bytes`):

Construction
    A strategy is made by a :data:`StrategyFactory` ``factory(windows_s, origin_ns, step_s)``:

    - ``windows_s``: the distinct window lengths (whole seconds, ascending, each >= 1) every policy
      under test needs, e.g. ``(60, 300, 600, 1800, 3600, ...)``. The strategy answers exactly these,
      in this order (column ``j`` of every answer is ``windows_s[j]``).
    - ``origin_ns``: the start of the stream (ns since the Unix epoch, a multiple of one hour). No
      request is older than it; a row with ``ts_ns < origin_ns`` is rejected as ``before_origin``.
      Everything the strategy aligns (buckets, scrapes, tumbling windows, rule evaluations) is
      aligned to ``origin_ns``.
    - ``step_s``: the harness' evaluation step. A strategy sets :attr:`WindowStrategy.eval_step_s`:
      normally ``step_s``; a strategy that evaluates on its own schedule (Prometheus rules every
      evaluation interval) sets its own interval instead, and the harness then queries it only at
      multiples of that interval.

Ingest: :meth:`WindowStrategy.ingest` ``(ts_ns, bad, total)``
    Three int64 arrays of one length; row ``i`` stands for ``total[i]`` requests with event time
    ``ts_ns[i]`` of which ``bad[i]`` were bad (``0 <= bad <= total``; ``total == 0`` rows are
    allowed and count nothing). The harness usually sends one row per second (``ts_ns`` the start
    of the second, counts of ``[s, s + 1)``), but single events (``total == 1``) and arbitrary
    nanosecond timestamps are valid too. Rows may come in any order within and across calls.
    A row is *late* when its ``ts_ns`` is before the last instant already evaluated: the strategy
    counts it where its state still can (so that it changes answers at later instants) or rejects
    it with a reason in :attr:`WindowStrategy.rejections`, counted in requests (``total``).
    Malformed input (shape or dtype mismatch, negative counts, ``bad > total``) raises
    :class:`ValueError` saying what was expected and what was found.

Evaluate: :meth:`WindowStrategy.evaluate` ``(instants_ns) -> WindowAnswers``
    ``instants_ns``: int64, strictly ascending, all after every instant evaluated before, each
    ``origin_ns + k * eval_step_s * 1e9`` with ``k >= 1``. Before the call the harness has ingested
    every on-time row with ``ts_ns < instants_ns[-1]`` (so a strategy may batch the whole call).
    The answer for window ``w`` at instant ``t`` approximates the requests with event time in
    ``[t - w, t)``; the exact reference (:class:`bench.strategies.windows.ExactWindows`) gives that
    exactly at one-second granularity. Values are float64 (decayed counters and ``rate()``
    extrapolation are not integers). ``bad`` and ``total`` are 0 when the window is empty; both
    are NaN when the strategy has no answer at all (e.g. Prometheus with fewer than two samples in
    the window): policies treat both as *no data* and never as a zero burn rate. A strategy that
    answers with a lag (a tumbling window, a rule evaluated earlier) returns, at ``t``, what a
    rule evaluated at ``t`` would see.

Cost and accuracy figures
    :meth:`memory_bytes` is the state one SLO needs for its windows in steady state, in bytes
    (numpy buffers; Python object overhead excluded). The harness times :meth:`ingest` on a stream of
    single events for *ns per event*, and :meth:`evaluate` for *cost per evaluation* (per instant,
    all windows). :attr:`error_bound` states the strategy's documented error against the exact
    window; the unit tests hold each strategy to it, and the benchmark measures max and p99 burn-rate
    error against the exact reference.

Registration
    A module under ``bench/strategies/`` exposes ``STRATEGIES: dict[str, StrategyFactory]``, keyed
    by the strategy's display name; :func:`bench.strategies.registry` collects them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import numpy.typing as npt

from engine.batch import Rejections

NS = 1_000_000_000
HOUR_NS = 3600 * NS

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class WindowAnswers:
    """Bad and total requests of every window at every instant of one :meth:`evaluate` call.

    Attributes
    ----------
    bad, total
        float64, shape ``(n_instants, n_windows)``; column ``j`` is ``windows_s[j]``. NaN in both
        means *no answer* (no data).
    """

    bad: F64
    total: F64

    @staticmethod
    def concat(parts: Sequence[WindowAnswers], n_windows: int) -> WindowAnswers:
        """Rows of several calls, in call order."""
        if not parts:
            return WindowAnswers(np.zeros((0, n_windows)), np.zeros((0, n_windows)))
        return WindowAnswers(np.concatenate([p.bad for p in parts]),
                             np.concatenate([p.total for p in parts]))


class WindowStrategy(ABC):
    """Counts of one SLO, answering bad/total of fixed windows at evaluation instants.

    Parameters
    ----------
    windows_s
        Distinct window lengths in seconds, ascending, each >= 1.
    origin_ns
        Stream start (ns since the epoch), a multiple of one hour.
    step_s
        Harness evaluation step in seconds (>= 1); the default of :attr:`eval_step_s`.

    Attributes
    ----------
    name
        Display name, unique among the strategies of a run (e.g. ``ring-10s``).
    eval_step_s
        Instants passed to :meth:`evaluate` are multiples of this many seconds after the origin.
    error_bound
        The documented error of a window against the exact one, in words, printed with results.
    rejections
        Rejected requests by reason (``before_origin``, ``too_late`` ...), counted in requests.
    """

    name: str = "strategy"
    error_bound: str = ""

    def __init__(self, windows_s: Sequence[int], origin_ns: int, step_s: int) -> None:
        ws = tuple(int(w) for w in windows_s)
        if not ws or any(w < 1 for w in ws) or any(b <= a for a, b in pairwise(ws)):
            raise ValueError(f"expected distinct ascending window lengths >= 1 s, got {list(windows_s)}")
        if origin_ns % HOUR_NS:
            raise ValueError(f"expected origin_ns to be a multiple of one hour, got {origin_ns}")
        if step_s < 1:
            raise ValueError(f"expected step_s >= 1, got {step_s}")
        self.windows_s: tuple[int, ...] = ws
        self.origin_ns = int(origin_ns)
        self.eval_step_s = int(step_s)
        self.rejections = Rejections()
        self.last_instant_ns: int | None = None

    # ------------------------------------------------------------------ contract

    def ingest(self, ts_ns: npt.ArrayLike, bad: npt.ArrayLike, total: npt.ArrayLike) -> None:
        """Take rows of ``total`` requests at ``ts_ns`` (ns) of which ``bad`` were bad; any order."""
        ts = np.ascontiguousarray(ts_ns, dtype=np.int64)
        b = np.ascontiguousarray(bad, dtype=np.int64)
        t = np.ascontiguousarray(total, dtype=np.int64)
        if not (ts.ndim == b.ndim == t.ndim == 1) or not (ts.shape == b.shape == t.shape):
            raise ValueError("expected ts_ns, bad and total as 1-D arrays of one length, got shapes "
                             f"{np.shape(ts_ns)}, {np.shape(bad)}, {np.shape(total)}")
        if ts.size == 0:
            return
        if int(b.min()) < 0 or int(t.min()) < 0:
            raise ValueError("expected bad >= 0 and total >= 0, got a negative count")
        over = b > t
        if over.any():
            i = int(np.argmax(over))
            raise ValueError(f"expected bad <= total, got bad={int(b[i])} total={int(t[i])} at row {i}")
        early = ts < self.origin_ns
        if early.any():
            self.rejections.add("before_origin", int(t[early].sum()))
            keep = ~early
            ts, b, t = ts[keep], b[keep], t[keep]
            if ts.size == 0:
                return
        self._ingest(ts, b, t)

    def evaluate(self, instants_ns: npt.ArrayLike) -> WindowAnswers:
        """Bad/total of every window at every instant (see the module docstring for the rules)."""
        inst = np.ascontiguousarray(instants_ns, dtype=np.int64)
        nw = len(self.windows_s)
        if inst.ndim != 1:
            raise ValueError(f"expected a 1-D array of instants, got shape {inst.shape}")
        if inst.size == 0:
            return WindowAnswers(np.zeros((0, nw)), np.zeros((0, nw)))
        step_ns = self.eval_step_s * NS
        if inst.size > 1 and not bool(np.all(inst[1:] > inst[:-1])):
            raise ValueError("expected strictly ascending instants")
        first = int(inst[0])
        if self.last_instant_ns is not None and first <= self.last_instant_ns:
            raise ValueError(f"expected instants after the last evaluated one ({self.last_instant_ns}), "
                             f"got {first}")
        rel = inst - self.origin_ns
        if int(rel[0]) <= 0 or bool(np.any(rel % step_ns)):
            raise ValueError(f"expected instants at origin + k * {self.eval_step_s} s with k >= 1")
        out = self._evaluate(inst)
        self.last_instant_ns = int(inst[-1])
        if out.bad.shape != (inst.size, nw) or out.total.shape != (inst.size, nw):
            raise AssertionError(f"{self.name}: answer shape {out.bad.shape}, expected {(inst.size, nw)}")
        return out

    @abstractmethod
    def _ingest(self, ts_ns: I64, bad: I64, total: I64) -> None:
        """Validated rows (int64, ``ts_ns >= origin_ns``, ``0 <= bad <= total``), any order."""

    @abstractmethod
    def _evaluate(self, instants_ns: I64) -> WindowAnswers:
        """Validated instants (ascending, on the step grid, after :attr:`last_instant_ns`)."""

    @abstractmethod
    def memory_bytes(self) -> int:
        """State bytes one SLO needs for its windows in steady state."""

    # ------------------------------------------------------------------ helpers

    def is_late(self, ts_ns: I64) -> npt.NDArray[np.bool_]:
        """Rows before the last evaluated instant."""
        if self.last_instant_ns is None:
            return np.zeros(ts_ns.shape, np.bool_)
        return ts_ns < self.last_instant_ns


StrategyFactory = Callable[[Sequence[int], int, int], WindowStrategy]
"""``factory(windows_s, origin_ns, step_s) -> WindowStrategy`` (a class itself qualifies)."""


def counts_from_events(ts_ns: npt.ArrayLike, is_bad: npt.ArrayLike,
                       weight: npt.ArrayLike | None = None) -> tuple[I64, I64, I64]:
    """Rows for :meth:`WindowStrategy.ingest` from EventBatch-like columns.

    Parameters
    ----------
    ts_ns
        Event time in ns.
    is_bad
        Boolean: the event is bad for the SLO (classified by the caller).
    weight
        Requests per row (default 1), as :attr:`engine.batch.EventBatch.weight`.
    """
    ts = np.ascontiguousarray(ts_ns, dtype=np.int64)
    w = np.ones(ts.shape, np.int64) if weight is None else np.ascontiguousarray(weight, dtype=np.int64)
    bad = np.where(np.asarray(is_bad, dtype=np.bool_), w, 0).astype(np.int64)
    return ts, bad, w
