"""The backtest driver: replay files through the engine in event time, as fast as it can.

Files (plain, .gz, .zst, or ``-`` for stdin) are read in chunks that end on record boundaries,
decoded into batches, ingested, and the engine is advanced to the watermark (newest event minus the
allowed lateness) after each chunk -- the same calls the daemon makes on each Kafka fetch and tick.
Every ``sample_s`` of event time the state of each SLO is sampled for the report.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from engine.alerts import AlertEvent
from engine.batch import EventBatch, Rejections
from engine.config import Config
from engine.engine import Engine
from engine.plan import NS
from engine.series import BacktestResult, SloSeries

ProgressFn = Callable[[int, int | None], None]
"""Called with (bytes read so far, total bytes or None)."""


@dataclass
class _Sampler:
    """Per-SLO samples of burn rates, budget and latency every ``sample_ns`` of event time."""

    engine: Engine
    sample_ns: int
    next_ns: int | None = None
    ts: list[float] = field(default_factory=list)
    rows: dict[str, list[list[float]]] = field(default_factory=dict)
    budget: dict[str, list[float]] = field(default_factory=dict)
    latency: dict[str, list[list[float]]] = field(default_factory=dict)

    def take(self, at_ns: int) -> None:
        eng = self.engine
        self.ts.append(at_ns / NS)
        for sp in eng.plan.slos:
            st = eng.status(sp.slo.name)
            name = sp.slo.name
            self.rows.setdefault(name, []).append(
                [np.nan if v is None else v for v in st.burn_rates.values()])
            self.budget.setdefault(name, []).append(
                np.nan if st.budget_remaining is None else st.budget_remaining)
            lat = eng.latency_percentiles_ms(name)
            self.latency.setdefault(name, []).append(
                [np.nan, np.nan, np.nan] if lat is None else [lat["p50"], lat["p95"], lat["p99"]])


class Backtest:
    """Drive an :class:`Engine` from decoded batches and collect what the report needs.

    Parameters
    ----------
    config
        The validated configuration.
    sample_s
        Event-time interval between samples of each SLO's state (report plots, peak burn).
    """

    def __init__(self, config: Config, *, sample_s: int = 60) -> None:
        self.config = config
        self.engine = Engine(config)
        self.alerts: list[AlertEvent] = []
        self.rejections = Rejections()
        self._lateness_ns = int(config.engine.allowed_lateness_s * NS)
        step = self.engine.plan.step_ns
        self._sample_ns = max(step, (int(sample_s * NS) // step) * step)
        self._sampler = _Sampler(self.engine, self._sample_ns)
        self.events_in = 0

    def feed(self, batch: EventBatch, rejected: Rejections | None = None) -> list[AlertEvent]:
        """Ingest one decoded batch and advance to the watermark; returns new alert events."""
        if rejected:
            self.rejections.update(rejected)
        self.events_in += len(batch)
        self.engine.ingest(batch)
        if self.engine.max_ts_ns is None:
            return []
        return self._advance_to(self.engine.max_ts_ns - self._lateness_ns)

    def _advance_to(self, watermark_ns: int) -> list[AlertEvent]:
        eng = self.engine
        new: list[AlertEvent] = []
        s = self._sampler
        if s.next_ns is None:
            first = eng.next_instant_ns
            if first is None:
                return new
            s.next_ns = -(-first // self._sample_ns) * self._sample_ns
        while s.next_ns <= watermark_ns:
            new.extend(eng.advance(s.next_ns))
            s.take(s.next_ns)
            s.next_ns += self._sample_ns
        new.extend(eng.advance(watermark_ns))
        self.alerts.extend(new)
        return new

    def finish(self) -> list[AlertEvent]:
        """End of input: evaluate through the step holding the newest event."""
        eng = self.engine
        if eng.max_ts_ns is None:
            return []
        step = eng.plan.step_ns
        end = (eng.max_ts_ns // step) * step + step
        return self._advance_to(end)

    def result(self, inputs: list[str], wall_s: float) -> BacktestResult:
        eng = self.engine
        s = self._sampler
        rej = Rejections()
        rej.update(self.rejections)
        rej.update(eng.rejections)
        series: list[SloSeries] = []
        ts = np.array(s.ts, np.float64)
        for sp in eng.plan.slos:
            name = sp.slo.name
            n_win = len(sp.windows_s)
            burn = np.array(s.rows.get(name, []), np.float64).reshape(-1, n_win)
            lat = np.array(s.latency.get(name, []), np.float64).reshape(-1, 3)
            tot = eng.totals(name)
            series.append(SloSeries(
                slo=name,
                objective=sp.objective,
                period_s=sp.period_s,
                window_labels=list(sp.window_labels),
                ts_s=ts,
                burn=burn,
                budget_remaining=np.array(s.budget.get(name, []), np.float64),
                latency_ms=lat,
                tiers=list(sp.tiers),
                events=[a for a in self.alerts if a.slo == name],
                totals={"events": tot.total, "bad": tot.bad},
                threshold_ms=sp.threshold_ms,
                error_budget=sp.error_budget,
            ))
        return BacktestResult(
            series=series,
            inputs=inputs,
            rejections=dict(rej),
            wall_s=wall_s,
            events_per_s=self.events_in / wall_s if wall_s > 0 else 0.0,
            events=self.events_in,
        )


def run_backtest(config: Config, inputs: list[str], *, fmt: str | None = None,
                 progress: ProgressFn | None = None,
                 on_alert: Callable[[AlertEvent], None] | None = None,
                 sample_s: int = 60) -> BacktestResult:
    """Replay ``inputs`` (paths or ``-``) through a fresh engine; return everything the report needs."""
    from engine.events import EventDecoder
    from engine.io.files import FileSource

    bt = Backtest(config, sample_s=sample_s)
    decoder = EventDecoder(config.events, bt.engine.keys)
    t0 = time.perf_counter()
    sources = [FileSource(p) for p in inputs]
    total = None
    if all(src.size_bytes is not None for src in sources):
        total = sum(int(src.size_bytes or 0) for src in sources)
    done = 0
    for src in sources:
        base = done
        for chunk in src:
            batch, rej = decoder.decode(chunk, fmt)
            for a in bt.feed(batch, rej):
                if on_alert:
                    on_alert(a)
            if progress:
                progress(base + src.read_bytes, total)
        done = base + src.read_bytes
    for a in bt.finish():
        if on_alert:
            on_alert(a)
    return bt.result(inputs, time.perf_counter() - t0)
