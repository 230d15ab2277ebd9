"""Engine benchmarks (pytest-benchmark; ``make bench``). Goals from the engine's issue:

ingest >= 50 M events/s on one core from a columnar batch; one evaluation tick over 10,000 SLOs x 4
tiers < 5 ms; ``sloburn backtest`` on NDJSON >= 1 M events/s end to end.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.engine_throughput import NS, T0, _batch, _config, state_bytes_per_slo
from engine.backtest import run_backtest
from engine.config import parse_config
from engine.engine import Engine

pytestmark = pytest.mark.perf


@pytest.mark.parametrize("latency", [False, True], ids=["availability", "latency+hdr"])
def test_ingest_kernel(benchmark: Any, latency: bool) -> None:
    n = 2_000_000
    probe = Engine(_config(1, histogram=latency, latency=latency))
    batch = _batch(probe, n, 100, 1)
    probe.ingest(batch)
    probe.advance(int(batch.ts_ns[-1]) + NS)  # compile outside the measurement

    def setup() -> tuple[tuple[Engine, int], dict[str, Any]]:
        eng = Engine(_config(1, histogram=latency, latency=latency))
        _batch(eng, 1, 1, 1)  # intern the same key
        eng.ingest(batch)
        return (eng, int(batch.ts_ns[-1]) + NS), {}

    benchmark.pedantic(lambda eng, until: eng.advance(until), setup=setup, rounds=5)
    events_per_s = n / benchmark.stats.stats.min
    benchmark.extra_info["events_per_s"] = events_per_s
    assert events_per_s > 0


def test_tick_over_10000_slos(benchmark: Any) -> None:
    eng = Engine(_config(10_000))
    batch = _batch(eng, 200_000, 60, 10_000)
    eng.ingest(batch)
    e = [int(batch.ts_ns[-1]) // NS * NS + NS]
    eng.advance(e[0])

    def tick() -> None:
        e[0] += NS
        eng.advance(e[0])

    benchmark.pedantic(tick, rounds=600, iterations=1)
    benchmark.extra_info["state_kib_per_slo"] = state_bytes_per_slo(100, histogram=False) / 1024
    assert benchmark.stats.stats.mean > 0


def test_backtest_ndjson(benchmark: Any, tmp_path: Path) -> None:
    n = 500_000
    rng = np.random.default_rng(7)
    ts = T0 + np.sort(rng.random(n) * 3600)
    status = np.where(rng.random(n) < 0.001, 503, 200)
    lines = [f'{{"ts":{t:.3f},"service":"checkout","route":"/pay","status":{s},"latency_ms":42.5}}'
             for t, s in zip(ts, status, strict=True)]
    path = tmp_path / "events.ndjson"
    path.write_text("\n".join(lines) + "\n")
    cfg = parse_config({"slos": [
        {"name": "a", "service": "checkout", "objective": 99.9, "sli": {"availability": {}}},
        {"name": "l", "service": "checkout", "objective": 99, "sli": {"latency": {"threshold_ms": 300}}},
    ]})
    run_backtest(cfg, [str(path)])
    result = benchmark.pedantic(run_backtest, args=(cfg, [str(path)]), rounds=3)
    benchmark.extra_info["events_per_s"] = n / benchmark.stats.stats.min
    assert result.events == n
