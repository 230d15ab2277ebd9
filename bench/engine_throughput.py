"""Engine throughput, evaluation cost and memory: ``python -m bench.engine_throughput``.

Measures, excluding JIT warm-up:

- ingest: the ingest-and-evaluate kernel on a columnar batch (events/s, one core);
- evaluation: one tick (1 s of event time, no events) over N SLOs x 4 tiers (ms per tick, mean/p99/max);
- memory: bytes of state per availability SLO at the default windows (no histograms), and with one;
- backtest: ``sloburn backtest`` on NDJSON end to end, as a ratio to msgspec decoding alone.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
from rich.console import Console
from rich.table import Table

from engine.batch import EventBatch
from engine.config import Config, parse_config
from engine.engine import Engine

NS = 1_000_000_000
T0 = 1_700_000_000


def _config(n_slos: int, *, histogram: bool = False, latency: bool = False) -> Config:
    slos: list[dict[str, Any]] = []
    for i in range(n_slos):
        sli: dict[str, Any] = {"latency": {"threshold_ms": 300}} if latency else {"availability": {}}
        slos.append({"name": f"slo-{i}", "service": f"svc-{i}", "objective": 99.9, "sli": sli,
                     "histogram": histogram})
    return parse_config({"slos": slos})


def _batch(eng: Engine, n: int, span_s: int, n_services: int, seed: int = 1) -> EventBatch:
    rng = np.random.default_rng(seed)
    keys = np.array([eng.key_id(f"svc-{i}") for i in range(n_services)], np.int32)
    ts = T0 * NS + np.sort(rng.integers(0, span_s * NS, n))
    status = np.where(rng.random(n) < 0.001, 503, 200)
    lat = rng.lognormal(np.log(80_000), 0.6, n)
    return EventBatch.from_arrays(ts, keys[rng.integers(0, n_services, n)], status, lat)


def bench_ingest(n: int, *, histogram: bool, latency: bool, repeat: int = 5) -> float:
    """Events/s of ingest+advance over a sorted batch spanning 100 s (best of ``repeat``)."""
    best = float("inf")
    for r in range(repeat + 1):
        eng = Engine(_config(1, histogram=histogram, latency=latency))
        batch = _batch(eng, n, 100, 1)
        eng.ingest(batch)
        t = time.perf_counter()
        eng.advance(int(batch.ts_ns[-1]) + NS)
        dt = time.perf_counter() - t
        if r:  # the first round compiles
            best = min(best, dt)
    return n / best


def bench_eval(n_slos: int, ticks: int) -> tuple[float, float, float]:
    """Per-tick wall time (ms) over ``n_slos`` SLOs with 4 tiers: mean, p99, max."""
    eng = Engine(_config(n_slos))
    batch = _batch(eng, 20 * n_slos, 60, n_slos)
    eng.ingest(batch)
    e = int(batch.ts_ns[-1]) // NS * NS + NS
    eng.advance(e)
    times = []
    for _ in range(ticks):
        e += NS
        t = time.perf_counter()
        eng.advance(e)
        times.append(time.perf_counter() - t)
    arr = np.array(times) * 1000
    return float(arr.mean()), float(np.percentile(arr, 99)), float(arr.max())


def state_bytes_per_slo(n_slos: int, *, histogram: bool) -> float:
    eng = Engine(_config(n_slos, histogram=histogram))
    arrays = eng.state_arrays()
    per_slo = sum(a.nbytes for k, a in arrays.items() if not k.startswith("pending"))
    per_slo += eng._wsum.nbytes
    return per_slo / n_slos


def bench_backtest(n: int) -> tuple[float, float]:
    """(backtest events/s, msgspec decode_lines events/s) on the same NDJSON file."""
    from engine.backtest import run_backtest

    rng = np.random.default_rng(7)
    ts = T0 + np.sort(rng.random(n) * 3600)
    status = np.where(rng.random(n) < 0.001, 503, 200)
    lat = np.round(rng.lognormal(np.log(80), 0.6, n), 3)
    routes = ["/pay", "/cart", "/home"]
    lines = [
        f'{{"ts":{t:.3f},"service":"checkout","route":"{routes[i % 3]}","status":{s},"latency_ms":{lt}}}'
        for i, (t, s, lt) in enumerate(zip(ts, status, lat, strict=True))
    ]
    data = ("\n".join(lines) + "\n").encode()

    class Ev(msgspec.Struct):
        ts: float
        service: str
        route: str
        status: int
        latency_ms: float

    dec = msgspec.json.Decoder(Ev)
    best_dec = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        dec.decode_lines(data)
        best_dec = min(best_dec, time.perf_counter() - t)
    cfg = parse_config({"slos": [
        {"name": "checkout-availability", "service": "checkout", "objective": 99.9,
         "sli": {"availability": {}}},
        {"name": "checkout-latency", "service": "checkout", "objective": 99,
         "sli": {"latency": {"threshold_ms": 300}}},
    ]})
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "events.ndjson"
        path.write_bytes(data)
        run_backtest(cfg, [str(path)])  # warm-up (JIT)
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            run_backtest(cfg, [str(path)])
            best = min(best, time.perf_counter() - t)
    return n / best, n / best_dec


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=2_000_000)
    ap.add_argument("--slos", type=int, default=10_000)
    ap.add_argument("--ticks", type=int, default=300)
    ap.add_argument("--backtest-events", type=int, default=1_000_000)
    args = ap.parse_args(argv)
    con = Console()
    table = Table(title="sloburn engine")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("goal")
    table.add_row("ingest, availability SLO (events/s)",
                  f"{bench_ingest(args.events, histogram=False, latency=False):,.0f}", ">= 50 M")
    table.add_row("ingest, latency SLO + HDR histogram (events/s)",
                  f"{bench_ingest(args.events, histogram=True, latency=True):,.0f}", "")
    mean, p99, mx = bench_eval(args.slos, args.ticks)
    table.add_row(f"tick over {args.slos:,} SLOs x 4 tiers (ms) mean / p99 / max",
                  f"{mean:.2f} / {p99:.2f} / {mx:.2f}", "< 5 ms")
    table.add_row("state per availability SLO, no histogram (KiB)",
                  f"{state_bytes_per_slo(100, histogram=False) / 1024:.1f}", "<= 64 KiB")
    table.add_row("state per SLO with latency histogram (KiB)",
                  f"{state_bytes_per_slo(100, histogram=True) / 1024:.1f}", "")
    bt, dec = bench_backtest(args.backtest_events)
    table.add_row("backtest NDJSON end to end (events/s)", f"{bt:,.0f}", ">= 1 M")
    table.add_row("msgspec decode_lines alone (events/s)", f"{dec:,.0f}", "")
    table.add_row("backtest / decode ratio", f"{bt / dec:.2f}", "")
    con.print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
