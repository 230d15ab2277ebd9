"""What a backtest hands to the report: per-SLO series sampled in event time, and the run's totals.

The backtest driver samples each SLO's state (burn rate of every alert window, error budget left,
latency percentiles) every ``sample_s`` of event time and collects the alert transitions; the report
(:mod:`engine.report`) and the terminal summary read only these records. NaN means "no data" in every
array: a window with no events has no burn rate (0/0 is never 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from engine.alerts import AlertEvent
from engine.windows import AlertTier

FloatArray = npt.NDArray[np.float64]


def _as_float(name: str, value: object, shape: tuple[int, ...]) -> FloatArray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {arr.shape}")
    return arr


@dataclass
class SloSeries:
    """The sampled history of one SLO over a backtest.

    Attributes
    ----------
    slo
        SLO name.
    objective
        Objective in percent (``99.9``).
    period_s
        SLO period in seconds (30 d = 2,592,000).
    window_labels
        Alert window labels, one per column of ``burn`` (``["5m", "30m", "1h", ...]``).
    ts_s
        Sample times, epoch seconds of event time, non-decreasing, shape ``(n,)``.
    burn
        Burn rate of each window at each sample, shape ``(n, len(window_labels))``; NaN = no data.
    budget_remaining
        Share of the period's error budget left (1.0 = untouched, may go negative), shape ``(n,)``;
        NaN = the period holds no events yet.
    latency_ms
        p50, p95 and p99 latency in milliseconds, shape ``(n, 3)``; NaN = no latency data.
    tiers
        The alert tiers the SLO is evaluated against (factors already scaled to the period).
    events
        Alert transitions of this SLO, in event-time order.
    totals
        Counts over the whole run: ``{"events": ..., "bad": ...}``.
    threshold_ms
        Latency threshold of a latency SLO, None for availability SLOs.
    error_budget
        ``B = 1 - objective/100`` as a ratio; computed from ``objective`` when not given.
    service
        Service the SLO watches (for headings; may be empty).
    """

    slo: str
    objective: float
    period_s: int
    window_labels: list[str]
    ts_s: FloatArray
    burn: FloatArray
    budget_remaining: FloatArray
    latency_ms: FloatArray
    tiers: list[AlertTier]
    events: list[AlertEvent]
    totals: dict[str, int]
    threshold_ms: float | None = None
    error_budget: float | None = None
    service: str = ""

    def __post_init__(self) -> None:
        ts = np.asarray(self.ts_s, dtype=np.float64)
        if ts.ndim != 1:
            raise ValueError(f"{self.slo}: ts_s: expected a 1-d array, got shape {ts.shape}")
        n = ts.shape[0]
        if n and not np.all(np.isfinite(ts)):
            raise ValueError(f"{self.slo}: ts_s: expected finite sample times, got NaN or inf")
        if n > 1 and np.any(np.diff(ts) < 0):
            raise ValueError(f"{self.slo}: ts_s: expected non-decreasing sample times")
        self.ts_s = ts
        self.burn = _as_float(f"{self.slo}: burn", self.burn, (n, len(self.window_labels)))
        self.budget_remaining = _as_float(f"{self.slo}: budget_remaining", self.budget_remaining, (n,))
        self.latency_ms = _as_float(f"{self.slo}: latency_ms", self.latency_ms, (n, 3))
        if not 0 < self.objective < 100:
            raise ValueError(f"{self.slo}: objective: expected a percentage in (0, 100), "
                             f"got {self.objective}")
        if self.error_budget is None:
            # Rounded once, as engine.config.error_budget does, to drop the artefact of 100 - 99.9.
            self.error_budget = round(1.0 - self.objective / 100.0, 12)

    @property
    def n_samples(self) -> int:
        return int(self.ts_s.shape[0])

    @property
    def end_s(self) -> float | None:
        """Last moment the run knows about for this SLO (last sample or last alert), epoch s."""
        ends = [float(self.ts_s[-1])] if self.n_samples else []
        ends.extend(a.ts for a in self.events)
        return max(ends) if ends else None

    @property
    def final_budget_remaining(self) -> float | None:
        """The last budget-remaining sample that holds data, or None."""
        finite = self.budget_remaining[np.isfinite(self.budget_remaining)]
        return float(finite[-1]) if finite.size else None

    def peak_burn(self) -> tuple[float, str] | None:
        """Highest sampled burn rate over all windows and its window label; None without data."""
        if not self.burn.size or not np.isfinite(self.burn).any():
            return None
        flat = np.where(np.isfinite(self.burn), self.burn, -math.inf)
        i, j = np.unravel_index(int(np.argmax(flat)), flat.shape)
        return float(self.burn[i, j]), self.window_labels[j]


@dataclass
class BacktestResult:
    """Everything one backtest run produced, as handed to the report and the terminal summary.

    Attributes
    ----------
    series
        One :class:`SloSeries` per SLO, in configuration order.
    inputs
        Input file names as given (``-`` for stdin).
    rejections
        Rejected records by reason (``decode_error``, ``too_late`` ...).
    wall_s
        Wall-clock duration of the replay in seconds.
    events_per_s
        Records replayed per wall-clock second.
    events
        Records decoded into events (accepted by the decoder).
    """

    series: list[SloSeries]
    inputs: list[str]
    rejections: dict[str, int] = field(default_factory=dict)
    wall_s: float = 0.0
    events_per_s: float = 0.0
    events: int = 0
