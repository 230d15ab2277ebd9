"""``sloburn demo`` (``make run``): the whole pipeline on one machine, in about a minute.

1. start the embedded Kafka broker (:class:`engine.io.broker.EmbeddedBroker`) and a local
   PagerDuty Events API v2 receiver (:class:`engine.io.pd_receiver.PagerDutyReceiver`), both on
   free ports;
2. generate the ``demo`` traffic preset (6 h of checkout traffic with an error incident and a
   latency incident) ending at the present, and compute the alerts a backtest of it gives;
3. run the daemon (Kafka -> engine -> outbox -> PagerDuty) in this process;
4. replay the traffic into Kafka in event-time order, accelerated: 6 h of event time in
   ``--replay-s`` seconds (40 by default). The daemon's watermark follows event time, so the burn
   rates and alerts are those of the real 6 h;
5. show burn rates, alert states and what the receiver got, live; stop everything cleanly.

Exit code 0 when the receiver saw exactly the alert transitions the backtest predicts (each page
trigger with its resolve on the same dedup key), 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import math
import os
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from engine.alerts import AlertEvent
from engine.config import Config, load_config, parse_config
from engine.errors import ConfigError, EngineError

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"
DEMO_ROUTING_KEY = "sloburnDemoRoutingKey00000000000"  # 32 alphanumerics: the receiver checks the shape
WINDOWS_SHOWN = ("5m", "30m", "1h", "6h")

log = logging.getLogger("sloburn.demo")


@dataclass
class Replay:
    """Traffic to replay: NDJSON messages with the event time (s) of their first line."""

    start_s: float
    duration_s: float
    messages: list[bytes] = field(default_factory=list)
    first_ts_s: list[float] = field(default_factory=list)
    n_events: int = 0


def build_replay(scenario_name: str, seed: int, per_message: int, now_s: float) -> tuple[Replay, Any]:
    """The scenario ending at ``now_s``, as messages of ``per_message`` NDJSON lines."""
    from engine.generate import compile_scenario, format_ndjson, generate_blocks, preset

    scenario = preset(scenario_name)
    plan0 = compile_scenario(scenario)
    start_s = float(math.floor(now_s) - plan0.duration_s)
    plan = compile_scenario(msgspec.structs.replace(scenario, start=start_s))
    replay = Replay(start_s=start_s, duration_s=float(plan.duration_s))
    for _, cols in generate_blocks(plan, seed):
        lines = format_ndjson(cols, plan.channels).split(b"\n")[:-1]
        ts = cols.ts_ms
        for a in range(0, len(lines), per_message):
            replay.messages.append(b"\n".join(lines[a:a + per_message]))
            replay.first_ts_s.append(float(ts[a]) / 1000.0)
        replay.n_events += len(lines)
    return replay, plan


def expected_alerts(cfg: Config, replay: Replay) -> list[AlertEvent]:
    """What ``sloburn backtest`` reports for the same events, fed in the same order."""
    from engine.backtest import Backtest
    from engine.events import EventDecoder

    bt = Backtest(cfg)
    decoder = EventDecoder(cfg.events, bt.engine.keys)
    chunk = 2000
    for a in range(0, len(replay.messages), chunk):
        batch, rej = decoder.decode(b"\n".join(replay.messages[a:a + chunk]) + b"\n", "ndjson")
        bt.feed(batch, rej)
    # The daemon's last watermark trails the newest event by the allowed lateness, like feed().
    return bt.alerts


def demo_config(path: Path, *, bootstrap: str, topic: str, pd_url: str, state_dir: Path) -> Config:
    """The demo config with the broker, topic, receiver and state directory of this run."""
    cfg = load_config(path)
    doc: dict[str, Any] = msgspec.to_builtins(cfg)
    kafka = doc["source"].get("kafka") or {}
    kafka.update(bootstrap=bootstrap, topics=[topic])
    doc["source"]["kafka"] = kafka
    pd = doc["sinks"].get("pagerduty") or {"routing_key_env": "PD_ROUTING_KEY"}
    pd["url"] = pd_url
    doc["sinks"]["pagerduty"] = pd
    doc["state_dir"] = str(state_dir)
    return parse_config(doc, str(path))


async def produce(bootstrap: str, topic: str, replay: Replay, speed: float, progress: list[float]) -> None:
    """Send every message at ``start + (event time - scenario start) / speed`` of wall time."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_batch_size=1 << 20)
    await producer.start()
    try:
        t0 = time.monotonic()
        pending: list[asyncio.Future[Any]] = []
        for i, (msg, ts) in enumerate(zip(replay.messages, replay.first_ts_s, strict=True)):
            due = t0 + (ts - replay.start_s) / speed
            wait = due - time.monotonic()
            if wait > 0.01:
                if pending:
                    await asyncio.gather(*pending)
                    pending.clear()
                await asyncio.sleep(wait)
            pending.append(await producer.send(topic, msg))
            progress[0] = (i + 1) / len(replay.messages)
            progress[1] = ts
        if pending:
            await asyncio.gather(*pending)
    finally:
        await producer.stop()


def _utc(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%H:%M:%S")


def _view(daemon: Any, receiver: Any, replay: Replay, progress: list[float]) -> Any:
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    eng = daemon.engine
    wm = daemon.watermark_ns
    offset_h = (progress[1] - replay.start_s) / 3600 if progress[1] else 0.0
    head = Text.assemble(
        ("sloburn demo  ", "bold"),
        f"replayed {progress[0]:6.1%} ({offset_h:4.2f} h of {replay.duration_s / 3600:g} h)  ",
        f"watermark {_utc(None if wm is None else wm / 1e9)} UTC  ",
        f"events {eng.events_ingested:,}  messages {daemon.messages_consumed:,}  ",
        f"outbox pending {daemon.outbox_pending}",
    )
    slos = Table(title="Burn rates (event time)", expand=True)
    slos.add_column("SLO")
    for w in WINDOWS_SHOWN:
        slos.add_column(w, justify="right")
    slos.add_column("budget left", justify="right")
    slos.add_column("page")
    slos.add_column("ticket")
    for st in eng.statuses():
        cells = []
        for w in WINDOWS_SHOWN:
            v = st.burn_rates.get(w)
            factor_hit = v is not None and any(v >= f for f in st.factors.values())
            cells.append(Text("-" if v is None else f"{v:.2f}", style="bold red" if factor_hit else ""))
        left = "-" if st.budget_remaining is None else f"{st.budget_remaining:.1%}"
        states = [Text("FIRING " + (st.firing_tier[s] or ""), style="bold red") if st.firing[s]
                  else Text("ok", style="green") for s in ("page", "ticket")]
        slos.add_row(st.slo, *cells, left, *states)
    got = Table(title=f"PagerDuty receiver ({receiver.url})", expand=True)
    for col in ("#", "action", "outcome", "incident", "dedup_key"):
        got.add_column(col, no_wrap=True)
    got.add_column("summary", no_wrap=True, overflow="ellipsis", ratio=1)
    for e in receiver.events[-8:]:
        summary = (e.body.get("payload") or {}).get("summary", "") if isinstance(e.body, dict) else ""
        style = "bold red" if e.event_action == "trigger" else "green"
        got.add_row(str(e.seq), Text(str(e.event_action), style=style), e.outcome, str(e.incident_id),
                    (e.dedup_key or "")[:12] + "...", summary[:90])
    if not receiver.events:
        got.add_row("-", "waiting", "", "", "", "")
    return Group(head, slos, got)


def check(expected: list[AlertEvent], receiver: Any) -> tuple[bool, list[str]]:
    """Compare what the receiver accepted with the backtest's transitions."""
    want = Counter((a.dedup_key, a.action) for a in expected)
    got = Counter((e.dedup_key, e.event_action) for e in receiver.events)
    lines = []
    ok = want == got and bool(want)
    for a in expected:
        lines.append(f"expected {a.action:8s} {a.slo}/{a.severity} at event time {_utc(a.ts)} "
                     f"(tier {a.tier})")
    for inc in receiver.incidents:
        lines.append(f"receiver incident #{inc.id}: {inc.status}, severity {inc.severity}, "
                     f"triggers {inc.trigger_count}: {inc.summary[:100]}")
    if not want:
        lines.append("the backtest predicts no alert: nothing to show")
    elif want != got:
        lines.append(f"MISMATCH: missing {dict(want - got)}, unexpected {dict(got - want)}")
    return ok, lines


async def run_demo(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.live import Live

    from engine.cli_daemon import build_senders, kafka_source_config
    from engine.daemon import Daemon
    from engine.io.broker import EmbeddedBroker
    from engine.io.kafka import KafkaSource
    from engine.io.pd_receiver import PagerDutyReceiver

    console = Console()
    state_dir = Path(tempfile.mkdtemp(prefix="sloburn-demo-"))
    t_start = time.monotonic()
    broker = EmbeddedBroker()
    receiver = PagerDutyReceiver()
    try:
        with console.status("starting the Kafka broker and the PagerDuty receiver..."):
            await broker.astart()
            topic = await broker.acreate_topic("requests", partitions=1)
            await receiver.start()
        console.print(f"broker {broker.bootstrap}, topic {topic!r}; PagerDuty receiver {receiver.url}")
        cfg = demo_config(Path(args.config), bootstrap=broker.bootstrap, topic=topic,
                          pd_url=receiver.url + "/v2/enqueue", state_dir=state_dir)
        with console.status("generating traffic and backtesting it..."):
            replay, plan = await asyncio.to_thread(build_replay, args.preset, args.seed, args.per_message,
                                                   time.time())
            expected = await asyncio.to_thread(expected_alerts, cfg, replay)
        console.print(f"traffic: {replay.n_events:,} events in {len(replay.messages):,} messages, "
                      f"{replay.duration_s / 3600:g} h of event time replayed in {args.replay_s:g} s; "
                      "incidents: " + "; ".join(f"{i.name} at +{i.start_s / 3600:g}h for "
                                                 f"{(i.end_s - i.start_s) / 60:g} min"
                                                 for i in plan.incidents))
        console.print(f"the backtest of the same events predicts {len(expected)} alert transition(s)")
        import aiohttp

        from engine.io.http import parse_listen

        async with aiohttp.ClientSession() as session:
            environ = {**os.environ, "PD_ROUTING_KEY": DEMO_ROUTING_KEY}
            senders = build_senders(cfg, session, str(args.config), environ)
            daemon = Daemon(cfg, state_dir=state_dir, source=KafkaSource(kafka_source_config(cfg, "demo")),
                            senders=senders, http_listen=parse_listen(cfg.http.listen))
            run_task = asyncio.ensure_future(daemon.run())
            progress = [0.0, 0.0]
            speed = replay.duration_s / args.replay_s
            producer = asyncio.ensure_future(produce(broker.bootstrap, topic, replay, speed, progress))
            want = Counter((a.dedup_key, a.action) for a in expected)
            deadline: float | None = None
            with Live(_view(daemon, receiver, replay, progress), console=console, refresh_per_second=4,
                      transient=False, auto_refresh=False) as live:
                while not run_task.done():
                    await asyncio.sleep(0.25)
                    live.update(_view(daemon, receiver, replay, progress), refresh=True)
                    if producer.done():
                        producer.result()  # a failed producer ends the demo with its error
                        if deadline is None:
                            deadline = time.monotonic() + args.settle_s
                        got = Counter((e.dedup_key, e.event_action) for e in receiver.events)
                        if (got == want and daemon.outbox_pending == 0) or time.monotonic() > deadline:
                            break
                if daemon.http_port:
                    console.print(f"daemon HTTP was on 127.0.0.1:{daemon.http_port} (/metrics, /v1/budgets)")
                daemon.request_stop()
                code = await run_task
                live.update(_view(daemon, receiver, replay, progress), refresh=True)
            if not producer.done():
                producer.cancel()
    finally:
        await receiver.stop()
        await broker.astop()
        shutil.rmtree(state_dir, ignore_errors=True)
    ok, lines = check(expected, receiver)
    for line in lines:
        console.print(line)
    wall = time.monotonic() - t_start
    if code != EXIT_OK:
        console.print(f"[bold red]the daemon exited with code {code}[/]")
        return EXIT_FAIL
    if not ok:
        console.print(f"[bold red]demo failed[/] after {wall:.1f} s: the receiver did not see what the "
                      "backtest predicts")
        return EXIT_FAIL
    console.print(f"[bold green]demo ok[/] in {wall:.1f} s: every predicted trigger and resolve reached the "
                  "receiver once, on the same dedup keys")
    return EXIT_OK


def _cmd_demo(args: argparse.Namespace) -> int:
    from rich.logging import RichHandler

    logging.basicConfig(level=logging.WARNING, format="%(message)s", handlers=[RichHandler(show_path=False)])
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    logging.getLogger("sloburn.daemon").setLevel(logging.INFO)
    try:
        try:
            import uvloop

            return int(uvloop.run(run_demo(args)))
        except ImportError:
            return asyncio.run(run_demo(args))
    except ConfigError as e:
        for line in e.problems:
            print(line)
        return EXIT_USAGE
    except EngineError as e:
        print(f"sloburn demo: {e}")
        return EXIT_FAIL


def register(subparsers: Any) -> None:
    """Add ``demo`` to an ``argparse`` subparsers object."""
    p = subparsers.add_parser("demo", help="broker + PagerDuty receiver + daemon + accelerated traffic",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--config", "-c", default=str(DEFAULT_CONFIG), help="demo config (default: %(default)s)")
    p.add_argument("--preset", default="demo", help="traffic preset of `sloburn generate`")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--replay-s", type=float, default=40.0, help="wall seconds for the whole traffic")
    p.add_argument("--per-message", type=int, default=100, help="events per Kafka message")
    p.add_argument("--settle-s", type=float, default=15.0,
                   help="after the replay, how long to wait for the last alerts to arrive")
    p.set_defaults(func=_cmd_demo)
