"""Compile sloburn's numba kernels into ``$NUMBA_CACHE_DIR`` so that a container starts warm.

Run at image build time, as the user the daemon runs as, against the installed package::

    NUMBA_CACHE_DIR=/opt/sloburn/numba-cache python warm_kernels.py

It drives the engine the way the daemon does (NDJSON decode, ingest, advance to a watermark, SLO
statuses, latency percentiles, snapshot and restore, the metrics refresh) over a short synthetic
stream with an error burst, so that every kernel the daemon calls is compiled for the argument
types it will see. numba's cache index is keyed by the source file's path and contents and by the
CPU name and features: the image sets ``NUMBA_CPU_NAME=generic`` so that what is compiled here
also loads on a different processor at run time.

Exit status: 0 with a summary of the cached kernels, 1 when nothing was cached, 2 when the
environment cannot cache (``NUMBA_CACHE_DIR`` unset, or the JIT disabled).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.config import Config

NS = 1_000_000_000
START_S = 1_700_000_000  # a fixed instant: the stream is synthetic, no clock is read
RATE_PER_S = 50
DURATION_S = 2 * 3600
BURST = (3600, 3600 + 900)  # seconds from the start: every request fails, then recovers


def _config() -> Config:
    from engine.config import parse_config

    return parse_config({
        "slos": [
            {"name": "warm-availability", "service": "warm", "objective": 99.9,
             "sli": {"availability": {"bad_status": ["5xx"]}}},
            {"name": "warm-latency", "service": "warm", "route": "/api",
             "sli": {"latency": "p99 below 300ms"}},
        ],
        "engine": {"step_s": 1, "allowed_lateness_s": 5},
    }, "<warm-up>")


def _ndjson(t0_s: int, t1_s: int) -> bytes:
    """NDJSON events from ``t0_s`` to ``t1_s`` (seconds from the start), RATE_PER_S per second."""
    lines = []
    for s in range(t0_s, t1_s):
        failing = BURST[0] <= s < BURST[1]
        for i in range(RATE_PER_S):
            ts_ms = (START_S + s) * 1000 + i * (1000 // RATE_PER_S)
            status = 503 if failing else 200
            latency_ms = 450.0 if failing else 20.0 + (i % 7)
            lines.append(f'{{"ts":{ts_ms},"service":"warm","route":"/api","method":"GET",'
                         f'"status":{status},"latency_ms":{latency_ms}}}')
    return ("\n".join(lines) + "\n").encode()


def _drive() -> int:
    """Run the engine over the stream; return the number of alert transitions."""
    from engine.engine import Engine
    from engine.events import EventDecoder
    from engine.io.metrics import Metrics
    from engine.store import restore, snapshot

    cfg = _config()
    engine = Engine(cfg)
    decoder = EventDecoder(cfg.events, engine.keys)
    metrics = Metrics()
    alerts = 0
    chunk_s = 300
    for t0 in range(0, DURATION_S, chunk_s):
        batch, rejected = decoder.decode(_ndjson(t0, t0 + chunk_s), "ndjson")
        if rejected:
            raise SystemExit(f"warm-up stream rejected: {dict(rejected)}")
        engine.ingest(batch)
        assert engine.max_ts_ns is not None
        alerts += len(engine.advance(engine.max_ts_ns - 5 * NS))
        engine.statuses()
        engine.latency_percentiles_ms("warm-latency")
        metrics.refresh_from_engine(engine)
        metrics.exposition()
        if t0 == DURATION_S // 2:
            # The daemon restores a checkpoint into a fresh engine at start: warm that path too.
            header, arrays = snapshot(engine)
            engine = Engine(cfg)
            restore(engine, header, arrays)
            decoder = EventDecoder(cfg.events, engine.keys)
    return alerts


def _dispatchers() -> list[tuple[str, Any]]:
    import importlib
    import pkgutil

    from numba.core.registry import CPUDispatcher

    import engine.kernels

    found = []
    for info in pkgutil.iter_modules(engine.kernels.__path__, "engine.kernels."):
        mod = importlib.import_module(info.name)
        for name, obj in vars(mod).items():
            if isinstance(obj, CPUDispatcher) and obj.__module__ == mod.__name__:
                found.append((f"{mod.__name__}.{name}", obj))
    return sorted(found, key=lambda item: item[0])


def main() -> int:
    cache_dir = os.environ.get("NUMBA_CACHE_DIR")
    if not cache_dir:
        print("warm_kernels: NUMBA_CACHE_DIR is not set: numba would cache next to the package "
              "sources, which the runtime user cannot write", file=sys.stderr)
        return 2
    if os.environ.get("NUMBA_DISABLE_JIT") == "1":
        print("warm_kernels: NUMBA_DISABLE_JIT=1: nothing would be compiled", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    alerts = _drive()
    took_s = time.perf_counter() - t0
    compiled = [(name, d) for name, d in _dispatchers() if d.signatures]
    index_files = sorted(Path(cache_dir).rglob("*.nbi"))
    for name, d in compiled:
        print(f"  {name}: {len(d.signatures)} signature(s)")
    print(f"warm_kernels: {len(compiled)} kernels compiled, {len(index_files)} cache index files in "
          f"{cache_dir}, {alerts} alert transitions, {took_s:.1f} s")
    if alerts == 0:
        print("warm_kernels: the error burst raised no alert: the alert path is not warmed", file=sys.stderr)
        return 1
    if not index_files:
        print(f"warm_kernels: no cache index written under {cache_dir}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
