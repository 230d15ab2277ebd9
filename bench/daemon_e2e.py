"""Daemon end to end: ``python -m bench.daemon_e2e``.

Two figures, against a local Tansu broker and the local PagerDuty receiver:

- throughput: events/s the daemon (Kafka -> decode -> engine -> ticks, checkpoints) consumes from a
  filled topic, with 1 and with 100 events per message, as a ratio to a bare aiokafka ``getmany``
  loop reading the same topic (:func:`bench.kafka_throughput.consume_bare`) under the daemon's
  garbage-collector settings (:func:`engine.daemon.tuned_gc`; they double the bare loop's rate at one
  event per message, so comparing with a loop under CPython's defaults would flatter the daemon; that
  ratio is shown too), and to that loop parsing what it reads with the daemon's decoder (the naive
  consumer). The daemon's source is paused until the group has assigned the partition, so the join
  (and any prefetch) is excluded. The readers take turns, ``--repeat`` times each; the best rate of
  each is shown, with the CPU each process spent meanwhile.
- alert delay: live traffic stamped with the wall clock (``allowed_lateness_s: 0``); one service at a
  time turns to 100 % errors. The deciding event is the first one stamped at or after the instant at
  which the alert fires (the engine evaluates that instant once an event that late has arrived);
  the delay runs from producing it to the receiver accepting the trigger: Kafka, the wait for the
  next tick, outbox, checkpoint and the HTTP delivery. With a lateness L the watermark, and so every
  alert, comes L later in event time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import numpy as np
from aiokafka import AIOKafkaProducer
from rich.console import Console
from rich.table import Table

from bench.kafka_throughput import SERVICES, T0_MS, consume_bare, fill_topic
from engine.batch import KeyTable
from engine.cli_daemon import build_senders, kafka_source_config
from engine.config import Config, EventsConfig, parse_config
from engine.daemon import Daemon, tuned_gc
from engine.events import EventDecoder
from engine.io.broker import EmbeddedBroker, create_topics
from engine.io.kafka import KafkaSource, join_ndjson
from engine.io.pd_receiver import PagerDutyReceiver

ROUTING_KEY = "BenchRoutingKey00000000000000000"
ENV = {"PD_ROUTING_KEY": ROUTING_KEY}


def config(bootstrap: str, topic: str, pd_url: str, state_dir: Path, slos: list[dict[str, Any]], *,
           lateness_s: float, tick_s: float, decode_workers: int | str = "auto") -> Config:
    return parse_config({
        "slos": slos,
        "engine": {"allowed_lateness_s": lateness_s},
        "source": {"kafka": {"bootstrap": bootstrap, "topics": [topic],
                             "group_id": f"b-{uuid.uuid4().hex[:8]}", "format": "ndjson",
                             "start": "earliest", "session_timeout_ms": 2000,
                             "heartbeat_interval_ms": 500, "fetch_max_wait_ms": 20,
                             "fetch_max_bytes": 64 * 2**20}},
        "sinks": {"pagerduty": {"url": pd_url, "routing_key_env": "PD_ROUTING_KEY"},
                  "delivery": {"coalesce": False}},
        "state_dir": str(state_dir),
        "http": {"enabled": False},
        "tick_s": tick_s,
        "daemon": {"idle_after_s": None, "checkpoint_interval_s": 10, "decode_workers": decode_workers},
    }, "bench")


async def start_daemon(cfg: Config, session: aiohttp.ClientSession, *,
                       paused: bool = False) -> tuple[Daemon, asyncio.Future[int]]:
    """A running daemon; with ``paused`` its source fetches nothing until ``daemon.source.resume()``."""
    assert cfg.state_dir is not None
    source = KafkaSource(kafka_source_config(cfg, "bench"))
    if paused:
        source.pause()
    daemon = Daemon(cfg, state_dir=cfg.state_dir, source=source,
                    senders=build_senders(cfg, session, "bench", ENV))
    return daemon, asyncio.ensure_future(daemon.run())


# ---------------------------------------------------------------------------------------------
# throughput


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux ``/proc``; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    """Private anonymous resident memory of process ``pid`` in MiB (``RssAnon`` of Linux ``/proc``:
    shared libraries and shared-memory slots excluded; NaN elsewhere)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
        line = next(x for x in status if x.startswith("RssAnon:"))
    except (OSError, StopIteration):
        return float("nan")
    return int(line.split()[1]) / 1024


@dataclass(frozen=True, slots=True)
class Run:
    """One read of a topic: events/s and the CPU seconds each process spent meanwhile."""

    rate: float
    wall_s: float
    broker_cpu_s: float
    reader_cpu_s: float
    workers_cpu_s: float = 0.0
    workers_rss_mib: float = 0.0  # private resident memory (RssAnon) of the largest decode worker


async def daemon_rate(bootstrap: str, topic: str, n_messages: int, per_message: int, pd_url: str,
                      work: Path, decode_workers: int | str = "auto", broker_pid: int | None = None) -> Run:
    """Events/s of the daemon over ``topic``, from the end of its group join to the last message."""
    slos = [{"name": f"{s}-availability", "service": s, "objective": 99.9, "sli": {"availability": {}}}
            for s in SERVICES]
    cfg = config(bootstrap, topic, pd_url, work / uuid.uuid4().hex, slos, lateness_s=5, tick_s=1,
                 decode_workers=decode_workers)
    async with aiohttp.ClientSession() as session:
        # Paused until the group has assigned the partitions: nothing is prefetched during the join.
        daemon, task = await start_daemon(cfg, session, paused=True)
        source = daemon.source
        assert isinstance(source, KafkaSource)
        try:
            deadline = time.monotonic() + 60
            while len(source.assignment()) < 1 or source.state.status != "connected":
                if task.done() or time.monotonic() > deadline:
                    raise RuntimeError(f"no assignment: {source.state}")
                await asyncio.sleep(0.01)
            workers = daemon.decode_pool.pids if daemon.decode_pool is not None else []
            cpu0 = [cpu_seconds(p) for p in (broker_pid, os.getpid(), *workers)]
            t0 = time.perf_counter()
            source.resume()
            while daemon.messages_consumed < n_messages:
                if task.done() or time.monotonic() > deadline:
                    raise RuntimeError(f"the daemon stopped at {daemon.messages_consumed} messages")
                await asyncio.sleep(0.002)
            seconds = time.perf_counter() - t0
            cpu = [cpu_seconds(p) - c for p, c in zip((broker_pid, os.getpid(), *workers), cpu0, strict=True)]
            rss = max((rss_mib(p) for p in workers), default=0.0)
        finally:
            daemon.request_stop()
            await task
    return Run(n_messages * per_message / seconds, seconds, cpu[0], cpu[1], sum(cpu[2:]), rss)


async def bare_rate(bootstrap: str, topic: str, n_messages: int, per_message: int, partitions: int,
                    decode: Callable[[list[bytes]], object] | None, broker_pid: int | None, *,
                    daemon_gc: bool) -> Run:
    """Events/s of the bare ``getmany`` loop, parsing in the loop with ``decode`` if given.

    With ``daemon_gc`` the loop runs under the daemon's collector settings
    (:func:`engine.daemon.tuned_gc`), else under CPython's defaults.
    """
    cpu0 = cpu_seconds(broker_pid), cpu_seconds(os.getpid())
    with tuned_gc() if daemon_gc else contextlib.nullcontext():
        got, seconds = await consume_bare(bootstrap, topic, n_messages, max_records=10_000,
                                          max_partition_fetch_bytes=1 << 20, n_partitions=partitions,
                                          check_crcs=True, decode=decode)
    return Run(got * per_message / seconds, seconds, cpu_seconds(broker_pid) - cpu0[0],
               cpu_seconds(os.getpid()) - cpu0[1])


def bench_lines(n: int, seed: int) -> list[bytes]:
    """``n`` NDJSON request events in event-time order, 10 per millisecond, 0.05 % errors."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        status = 503 if rng.random() < 0.0005 else 200
        out.append((f'{{"ts":{T0_MS + i // 10},"service":"{rng.choice(SERVICES)}","route":"/api/v1/items",'
                    f'"method":"GET","status":{status},"latency_ms":{rng.lognormvariate(3.5, 0.6):.3f}}}'
                    ).encode())
    return out


async def throughput(args: argparse.Namespace, bootstrap: str, broker_pid: int | None, pd_url: str,
                     work: Path, console: Console) -> list[tuple[int, dict[str, Run]]]:
    # Warm-up: the engine's kernels compile (or load from the numba cache) on first use.
    warm = f"e2e-warm-{uuid.uuid4().hex[:8]}"
    await fill_topic(bootstrap, warm, bench_lines(20_000, args.seed), args.partitions, 1 << 20)
    await daemon_rate(bootstrap, warm, 20_000, 1, pd_url, work, args.decode_workers, broker_pid)
    rows = []
    for per_message, n_messages in ((1, args.messages), (100, args.batched_messages)):
        topic = f"e2e-{per_message}x-{uuid.uuid4().hex[:8]}"
        pool = bench_lines(n_messages * per_message, args.seed)
        values = pool if per_message == 1 else [b"\n".join(pool[i:i + per_message])
                                               for i in range(0, len(pool), per_message)]
        del pool
        produce_s = await fill_topic(bootstrap, topic, values, args.partitions,
                                     max(1_048_576, max(map(len, values)) + 1024))
        console.print(f"[dim]{topic}: {n_messages:,} messages x {per_message} events, produced in "
                      f"{produce_s:.1f} s[/dim]")
        del values
        runs: dict[str, list[Run]] = {name: [] for name in READERS}
        for _ in range(args.repeat):  # interleaved, so that a noisy moment hits every reader alike
            for name, decode, daemon_gc in (("bare, default GC", None, False), ("bare", None, True),
                                            ("getmany + parse", parser(), True)):
                runs[name].append(await bare_rate(bootstrap, topic, n_messages, per_message, args.partitions,
                                                  decode, broker_pid, daemon_gc=daemon_gc))
            runs["daemon"].append(await daemon_rate(bootstrap, topic, n_messages, per_message, pd_url, work,
                                                    args.decode_workers, broker_pid))
        rows.append((per_message, {name: max(rs, key=lambda r: r.rate) for name, rs in runs.items()}))
    return rows


READERS = ("bare, default GC", "bare", "getmany + parse", "daemon")
"""The readers: a bare getmany loop under CPython's collector defaults, the same under the daemon's
collector settings (the baseline of the ratio), that loop parsing with the daemon's decoder, and the
daemon."""


def parser() -> Callable[[list[bytes]], object]:
    """The naive consumer's parsing: the daemon's own decoder, called in the consume loop."""
    decoder = EventDecoder(EventsConfig(), KeyTable())
    return lambda values: decoder.decode(join_ndjson(values), "ndjson")


# ---------------------------------------------------------------------------------------------
# alert delay


async def alert_delays(args: argparse.Namespace, bootstrap: str, receiver: PagerDutyReceiver,
                       work: Path) -> list[float]:
    """One incident per service in turn; seconds from the deciding event to the trigger's arrival."""
    n = args.runs
    services = [f"svc-{k}" for k in range(n)]
    tiers = [{"name": "page_quick", "severity": "page", "long_window": "20s", "short_window": "5s",
              "factor": 10}]
    slos = [{"name": s, "service": s, "objective": 99, "sli": {"availability": {}},
             "alerting": {"windows": tiers}} for s in services]
    topic = f"delay-{uuid.uuid4().hex[:8]}"
    await create_topics(bootstrap, {topic: 1})
    cfg = config(bootstrap, topic, receiver.url + "/v2/enqueue", work / uuid.uuid4().hex, slos,
                 lateness_s=0, tick_s=args.tick_s)
    sent: list[tuple[float, float, str]] = []  # (wall send time, event time, service) of bad events
    bad: set[str] = set()
    stop = asyncio.Event()

    async def traffic() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
        await producer.start()
        try:
            while not stop.is_set():
                now = time.time()
                lines = [msgspec.json.encode({"ts": now, "service": s, "status": 503 if s in bad else 200})
                         for s in services for _ in range(2)]
                # Stamped with the wall clock at the moment of sending: event time = send time.
                await producer.send_and_wait(topic, b"\n".join(lines))
                sent.extend((now, now, s) for s in bad)
                await asyncio.sleep(0.01)
        finally:
            await producer.stop()

    delays: list[float] = []
    async with aiohttp.ClientSession() as session:
        daemon, task = await start_daemon(cfg, session)
        producer = asyncio.ensure_future(traffic())
        try:
            await asyncio.sleep(3 + 20)  # join, then a full long window of good traffic
            for s in services:
                n_before = len(receiver.events)
                bad.add(s)
                deadline = time.monotonic() + 30
                while not any(e.event_action == "trigger" for e in receiver.events[n_before:]):
                    if task.done() or time.monotonic() > deadline:
                        raise RuntimeError(f"no trigger for {s}")
                    await asyncio.sleep(0.005)
                arrival = next(e for e in receiver.events[n_before:] if e.event_action == "trigger")
                alert = daemon.active_alerts()
                fired = [a for a in alert if a.slo == s]
                if not fired:
                    raise RuntimeError(f"{s}: the receiver has a trigger the daemon does not list")
                instant = fired[0].ts
                # The deciding event: the first one stamped at or after the instant that fired.
                send_wall = min(w for w, ts, svc in sent if svc == s and ts >= instant)
                delays.append(arrival.received_at - send_wall)
                bad.discard(s)
        finally:
            stop.set()
            await producer
            daemon.request_stop()
            await task
    return delays


def _workers(text: str) -> int | str:
    return text if text == "auto" else int(text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.daemon_e2e", description=__doc__.split("\n")[0])
    p.add_argument("--messages", type=int, default=200_000, help="messages of the 1-event topic")
    p.add_argument("--batched-messages", type=int, default=20_000, help="messages of the 100-event topic")
    p.add_argument("--partitions", type=int, default=1)
    p.add_argument("--repeat", type=int, default=2, help="reads per topic and reader; the best is shown")
    p.add_argument("--runs", type=int, default=10, help="incidents timed for the alert delay")
    p.add_argument("--tick-s", type=float, default=1.0, help="the daemon's tick for the delay runs")
    p.add_argument("--decode-workers", type=_workers, default="auto",
                   help="the daemon's decode_workers (default auto)")
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--skip-delay", action="store_true")
    args = p.parse_args(argv)
    console = Console() if sys.stdout.isatty() else Console(width=120)
    console.print(f"seed {args.seed}")

    async def run() -> None:
        work = Path(tempfile.mkdtemp(prefix="sloburn-bench-"))
        receiver = PagerDutyReceiver(rate_limit=10_000)
        async with EmbeddedBroker() as broker:
            await receiver.start()
            try:
                if not args.skip_throughput:
                    pd_url = receiver.url + "/v2/enqueue"
                    rows = await throughput(args, broker.bootstrap, broker.pid, pd_url, work, console)
                    t = Table(title=f"End-to-end throughput from Kafka (Tansu, {args.partitions} "
                                    f"partition(s), best of {args.repeat}, decode_workers "
                                    f"{args.decode_workers}), events/s")
                    for col in ("events/msg", "bare getmany, default GC", "bare getmany, daemon's GC",
                                "getmany + parse", "daemon", "ratio to bare (same GC)",
                                "ratio to bare, default GC", "ratio to getmany + parse"):
                        t.add_column(col, justify="right")
                    for per_message, best in rows:
                        rate = {name: run.rate for name, run in best.items()}
                        t.add_row(str(per_message), *(f"{rate[name]:,.0f}" for name in READERS),
                                  f"{rate['daemon'] / rate['bare']:.2f}",
                                  f"{rate['daemon'] / rate['bare, default GC']:.2f}",
                                  f"{rate['daemon'] / rate['getmany + parse']:.2f}")
                    console.print(t)
                    t = Table(title="CPU seconds per million events during the runs above (/proc)")
                    for col in ("events/msg", "reader", "wall s", "broker", "reader process",
                                "decode workers", "all"):
                        t.add_column(col, justify="left" if col == "reader" else "right")
                    for per_message, best in rows:
                        for name, run in best.items():
                            m = run.rate * run.wall_s / 1e6  # millions of events read
                            cells = (run.wall_s, run.broker_cpu_s, run.reader_cpu_s, run.workers_cpu_s,
                                     run.broker_cpu_s + run.reader_cpu_s + run.workers_cpu_s)
                            t.add_row(str(per_message), name, *(f"{v / m:.3f}" for v in cells))
                    console.print(t)
                    rss = max(best["daemon"].workers_rss_mib for _, best in rows)
                    console.print(f"largest decode worker private memory at the end of a run (RssAnon; "
                                  f"shared libraries and slots excluded): {rss:.0f} MiB")
                if not args.skip_delay:
                    delays = np.array(await alert_delays(args, broker.bootstrap, receiver, work))
                    t = Table(title=f"Delay from the deciding event to the trigger at the receiver "
                                    f"({len(delays)} incidents, tick_s={args.tick_s:g}, lateness 0)")
                    for col in ("p50 s", "p99 s", "max s", "min s"):
                        t.add_column(col, justify="right")
                    t.add_row(*(f"{v:.3f}" for v in (np.percentile(delays, 50), np.percentile(delays, 99),
                                                     delays.max(), delays.min())))
                    console.print(t)
            finally:
                await receiver.stop()

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
