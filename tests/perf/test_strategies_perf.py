"""Ingest and query cost of every window strategy of the strategy benchmark.

Run: ``.venv/bin/pytest -m perf --benchmark-enable tests/perf/test_strategies_perf.py``. Each
strategy answers the Sloth/Workbook windows (5m .. 3d). *ingest*: one hour of single events at
1,000/s (3.6 M rows) followed by one evaluation (strategies that buffer rows do their work there);
*query*: one day of evaluations (every 10 s, or the strategy's own rule interval) with no events.
JIT warm-up runs before timing; each benchmark checks its answer against the exact reference.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from bench.strategies import registry
from bench.strategies.base import NS, WindowStrategy

pytestmark = pytest.mark.perf

SEED = 4_242
T0 = 1_704_067_200 * NS
WINDOWS = (300, 1800, 3600, 7200, 21600, 86400, 259200)
STEP_S = 10
N_S = 3600
RATE = 1000
STRATEGIES = registry()


def _events(seed: int = SEED) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ts = T0 + np.sort(rng.integers(0, N_S * NS, N_S * RATE)).astype(np.int64)
    return ts, (rng.random(ts.size) < 0.01).astype(np.int64), np.ones(ts.size, np.int64)


def _warm(name: str) -> None:
    s = STRATEGIES[name](WINDOWS, T0, STEP_S)
    s.ingest(np.array([T0 + NS]), np.array([1]), np.array([2]))
    s.evaluate(T0 + np.arange(1, 10, dtype=np.int64) * s.eval_step_s * NS)


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_ingest_one_hour_of_single_events(benchmark: Any, name: str) -> None:
    print(f"seed={SEED}")
    events = _events()
    _warm(name)

    def setup() -> tuple[tuple[WindowStrategy], dict[str, Any]]:
        return (STRATEGIES[name](WINDOWS, T0, STEP_S),), {}

    def run(s: WindowStrategy) -> tuple[float, float]:
        s.ingest(*events)
        end = T0 + N_S * NS
        ans = s.evaluate(np.array([end - end % (s.eval_step_s * NS)]))
        return float(ans.total[0, WINDOWS.index(3600)]), float(ans.bad[0, WINDOWS.index(3600)])

    total, bad = benchmark.pedantic(run, setup=setup, rounds=3)
    if benchmark.stats is not None:
        benchmark.extra_info["ns_per_event"] = benchmark.stats.stats.mean / events[0].size * 1e9
    # Every strategy that keeps a window holds the whole hour in its 1 h window at the hour's end.
    if name in ("exact", "ring-1s", "ring-10s", "ring-60s", "engine", "tumbling"):
        assert total == events[0].size and bad == int(events[1].sum())


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_query_one_day_of_instants(benchmark: Any, name: str) -> None:
    _warm(name)
    step_s = STRATEGIES[name](WINDOWS, T0, STEP_S).eval_step_s
    inst = T0 + np.arange(1, 86400 // step_s + 1, dtype=np.int64) * step_s * NS

    def setup() -> tuple[tuple[WindowStrategy], dict[str, Any]]:
        s = STRATEGIES[name](WINDOWS, T0, STEP_S)
        s.ingest(np.array([T0]), np.array([1]), np.array([1000]))
        return (s,), {}

    def run(s: WindowStrategy) -> float:
        return float(s.evaluate(inst).total[-1, WINDOWS.index(259200)])

    last = benchmark.pedantic(run, setup=setup, rounds=3)
    if benchmark.stats is not None:
        benchmark.extra_info["us_per_evaluation"] = benchmark.stats.stats.mean / inst.size * 1e6
    if name in ("exact", "ring-1s", "ring-10s", "ring-60s", "engine"):
        assert last == 1000  # the 3-day window still holds the one row
