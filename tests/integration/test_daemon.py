"""The daemon end to end: a real broker (Tansu), the PagerDuty contract server, the backtest as oracle."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from aiokafka import AIOKafkaConsumer

from engine.alerts import AlertEvent
from engine.backtest import run_backtest
from engine.cli_daemon import build_senders, kafka_source_config
from engine.config import Config, parse_config
from engine.daemon import Daemon
from engine.daemon_config import KafkaSection, KafkaSecurity, PagerDutySection
from engine.generate import compile_scenario, format_ndjson, generate_events, parse_scenario
from engine.io.kafka import KafkaSource
from engine.io.kafka_config import KafkaSecurity as SourceSecurity
from engine.io.kafka_config import KafkaSourceConfig
from engine.io.kafka_produce import produce_lines
from engine.io.outbox import Outbox
from engine.io.pagerduty import PagerDutyConfig
from engine.io.pd_receiver import PagerDutyReceiver, validate_alert_event

pytestmark = pytest.mark.integration

SEED = 20_251_127
ROUTING_KEY = "R0utingKeyForTheDaemonTests00001"
NS = 1_000_000_000

PAGE_TICKET_TIERS = [
    {"name": "page_quick", "severity": "page", "long_window": "1h", "short_window": "5m", "factor": 14.4},
    {"name": "ticket_quick", "severity": "ticket", "long_window": "2h", "short_window": "15m", "factor": 6},
]


# ---------------------------------------------------------------------------------------------
# traffic, configs and a running daemon (the crash-recovery tests use them too)


def make_traffic(seed: int, *, duration: str = "3h", rate: float = 20.0, incident_at: str = "2h5m",
                 incident_for: str = "20m", error_ratio: float = 0.05, latency_route: bool = False,
                 end_s: float | None = None) -> list[bytes]:
    """NDJSON lines of seeded checkout traffic with one error incident, ending at ``end_s``.

    By default the traffic ends at the last full hour: recent enough for the daemon's future check,
    and aligned with every bucket edge, so that a seed always gives the same alerts.
    """
    incidents: list[dict[str, Any]] = [{"name": "errors", "kind": "error_ratio", "start": incident_at,
                                        "duration": incident_for, "error_ratio": error_ratio, "status": 503}]
    if latency_route:
        incidents.append({"name": "slow cart", "kind": "latency", "start": "1h10m", "duration": "25m",
                          "route": "/api/cart", "latency_add_ms": 400})
    doc = {"name": "daemon-test", "duration": duration, "rate": rate, "error_ratio": 0.0002,
           "services": [{"name": "checkout", "routes": [{"route": "/api/cart"}, {"route": "/api/pay"}]}],
           "incidents": incidents}
    plan0 = compile_scenario(parse_scenario(doc))
    end = (time.time() // 3600) * 3600 if end_s is None else end_s
    doc["start"] = float(int(end) - plan0.duration_s)
    plan = compile_scenario(parse_scenario(doc))
    cols = generate_events(plan, seed)
    return format_ndjson(cols, plan.channels).split(b"\n")[:-1]


def daemon_config(bootstrap: str, topic: str, state_dir: Path, pd_url: str, *, latency: bool = False,
                  **daemon: Any) -> Config:
    slos: list[dict[str, Any]] = [
        {"name": "checkout-availability", "service": "checkout", "objective": 99.9,
         "runbook_url": "https://runbooks.example.com/checkout", "sli": {"availability": {}},
         "alerting": {"windows": PAGE_TICKET_TIERS, "keep_firing_for": "5m"}}]
    if latency:
        slos.append({"name": "cart-latency", "service": "checkout", "route": "/api/cart", "objective": 99,
                     "sli": {"latency": {"threshold_ms": 300}},
                     "alerting": {"windows": PAGE_TICKET_TIERS, "keep_firing_for": "5m"}})
    delivery = daemon.pop("delivery", {})
    kafka = daemon.pop("kafka", {})
    doc = {
        "slos": slos,
        "engine": {"allowed_lateness_s": 5},
        "source": {"kafka": {"bootstrap": bootstrap, "topics": [topic],
                             "group_id": f"g-{uuid.uuid4().hex[:8]}", "format": "ndjson",
                             "start": "earliest", "session_timeout_ms": 2000,
                             "heartbeat_interval_ms": 500, "fetch_max_wait_ms": 50,
                             "request_timeout_ms": 5000, "backoff_initial_ms": 50, "backoff_max_ms": 500,
                             **kafka}},
        "sinks": {"pagerduty": {"url": pd_url, "routing_key_env": "PD_ROUTING_KEY", "timeout_s": 2},
                  # Hours of event time are replayed in a second: a trigger and its resolve often land
                  # in one tick, and the outbox would (rightly) skip both. Deliver every transition.
                  "delivery": {"rate_per_min": 6000, "burst": 100, "backoff_base_s": 0.05,
                               "backoff_cap_s": 0.3, "coalesce": False, **delivery}},
        "state_dir": str(state_dir),
        "http": {"listen": "127.0.0.1:0"},
        "tick_s": 0.1,
        "daemon": {"checkpoint_interval_s": 1, "idle_after_s": None, "shutdown_flush_s": 5, **daemon},
    }
    return parse_config(doc, "test.yaml")


async def wait_until(cond: Callable[[], bool], timeout_s: float, what: str) -> None:
    end = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.05)


class Running:
    """An in-process daemon with its session; ``stop()`` returns the exit code."""

    def __init__(self, cfg: Config, environ: Mapping[str, str] | None = None) -> None:
        self.cfg = cfg
        self.environ = {"PD_ROUTING_KEY": ROUTING_KEY} if environ is None else environ
        self.alerts: list[AlertEvent] = []
        self.session: aiohttp.ClientSession | None = None
        self.daemon: Daemon | None = None
        self.task: asyncio.Future[int] | None = None

    async def __aenter__(self) -> Running:
        self.session = aiohttp.ClientSession()
        senders = build_senders(self.cfg, self.session, "test.yaml", self.environ)
        assert self.cfg.state_dir is not None
        self.daemon = Daemon(self.cfg, state_dir=self.cfg.state_dir,
                             source=KafkaSource(kafka_source_config(self.cfg, "test.yaml")),
                             senders=senders, http_listen=("127.0.0.1", 0), on_alert=self.alerts.append)
        self.task = asyncio.ensure_future(self.daemon.run())
        return self

    async def stop(self) -> int:
        assert self.daemon is not None and self.task is not None
        self.daemon.request_stop()
        return await asyncio.wait_for(self.task, 30)

    async def __aexit__(self, *exc: object) -> None:
        if self.task is not None and not self.task.done():
            await self.stop()
        if self.session is not None:
            await self.session.close()

    async def caught_up(self, topic: str, n_messages: int, last_ts_s: float, timeout_s: float = 30) -> None:
        """Every message consumed and the watermark past the newest event minus the lateness."""
        d = self.daemon
        assert d is not None
        lateness_ns = int(self.cfg.engine.allowed_lateness_s * NS)
        want_ns = int(last_ts_s * NS) - lateness_ns - NS

        def done() -> bool:
            if self.task is not None and self.task.done():
                raise AssertionError(f"the daemon stopped: exit code {self.task.result()}")
            return (d.positions.get((topic, 0)) == n_messages and d.watermark_ns is not None
                    and d.watermark_ns >= want_ns)

        await wait_until(done, timeout_s, f"the daemon to consume {n_messages} messages")


def last_ts_s(lines: list[bytes]) -> float:
    return max(msgspec.json.decode(line)["ts"] for line in lines[-100:])


def timeline(alerts: list[AlertEvent]) -> list[tuple[str, str, str, float, str]]:
    return [(a.slo, a.severity, a.action, a.ts, a.tier) for a in alerts]


def backtest_alerts(cfg: Config, lines: list[bytes], tmp_path: Path) -> list[AlertEvent]:
    path = tmp_path / "events.ndjson"
    path.write_bytes(b"\n".join(lines) + b"\n")
    result = run_backtest(cfg, [str(path)])
    return sorted((a for s in result.series for a in s.events), key=lambda a: (a.ts, a.slo, a.severity))


# ---------------------------------------------------------------------------------------------
# tests


def test_daemon_sections_mirror_the_io_configs() -> None:
    """The config shapes read without network clients stay in step with the I/O modules'."""
    kafka = set(KafkaSection.__struct_fields__) - {"bootstrap", "format", "max_message_bytes"}
    assert kafka | {"bootstrap_servers"} == set(KafkaSourceConfig.__struct_fields__)
    assert set(KafkaSecurity.__struct_fields__) == set(SourceSecurity.__struct_fields__)
    assert set(PagerDutySection.__struct_fields__) == set(PagerDutyConfig.__struct_fields__)
    mine, theirs = KafkaSection(), KafkaSourceConfig(bootstrap_servers="x:1", topics=["t"])
    for name in kafka - {"topics", "fetch_max_wait_ms", "security"}:
        assert getattr(mine, name) == getattr(theirs, name), name


async def test_incident_reaches_the_receiver_once_with_the_backtest_numbers(
        kafka_broker: str, kafka_topic_factory: Callable[..., str], pd_receiver: PagerDutyReceiver,
        tmp_path: Path) -> None:
    print(f"seed={SEED}")
    topic = kafka_topic_factory(1)
    lines = make_traffic(SEED)
    n_msgs = await produce_lines(kafka_broker, topic, lines, per_message=50)
    cfg = daemon_config(kafka_broker, topic, tmp_path / "state", pd_receiver.url + "/v2/enqueue")
    expected = backtest_alerts(cfg, lines, tmp_path)
    assert Counter((a.severity, a.action) for a in expected) == {
        ("page", "trigger"): 1, ("page", "resolve"): 1, ("ticket", "trigger"): 1, ("ticket", "resolve"): 1}
    async with Running(cfg) as run:
        await run.caught_up(topic, n_msgs, last_ts_s(lines))
        await wait_until(lambda: len(pd_receiver.events) >= 4, 20, "four events at the receiver")
        d = run.daemon
        assert d is not None
        # The HTTP view agrees: nothing fires at the end, the budget is served.
        async with aiohttp.ClientSession() as s:
            async with s.get(f"http://127.0.0.1:{d.http_port}/v1/alerts") as r:
                assert r.status == 200 and await r.json() == []
            async with s.get(f"http://127.0.0.1:{d.http_port}/readyz") as r:
                assert r.status == 200, await r.text()
            async with s.get(f"http://127.0.0.1:{d.http_port}/metrics") as r:
                text = await r.text()
        assert f"sloburn_events_ingested_total {float(len(lines))}" in text
        assert await run.stop() == 0
    assert timeline(run.alerts) == timeline(expected)
    got = pd_receiver.events
    assert [e.outcome for e in got].count("opened") == 2 and len(pd_receiver.incidents) == 2
    assert all(i.status == "resolved" and i.trigger_count == 1 for i in pd_receiver.incidents)
    by_key: dict[str, list[Any]] = {}
    for e in got:
        assert validate_alert_event(e.body) == []
        assert e.routing_key == ROUTING_KEY
        by_key.setdefault(e.dedup_key or "", []).append(e)
    assert len(by_key) == 2
    for a in expected:
        events = by_key[a.dedup_key]
        assert [e.event_action for e in events] == ["trigger", "resolve"]
        if a.action == "trigger":
            details = events[0].body["payload"]["custom_details"]
            assert details["burn_rates"] == a.burn_rates
            assert details["error_budget_remaining"] == a.budget_remaining
            pd_severity = "critical" if a.severity == "page" else "warning"
            assert events[0].body["payload"]["severity"] == pd_severity
            assert events[0].body["links"][0]["href"] == "https://runbooks.example.com/checkout"
    # Nothing left behind: the outbox holds every transition as delivered.
    with Outbox(tmp_path / "state" / "outbox.sqlite3") as box:
        assert box.counts_by_status()["delivered"] == 4 and box.depth() == 0


@pytest.mark.parametrize("decode_workers", ["auto", 0, 2])
async def test_daemon_over_kafka_and_backtest_give_the_same_timeline(
        kafka_broker: str, kafka_topic_factory: Callable[..., str], pd_receiver: PagerDutyReceiver,
        tmp_path: Path, decode_workers: int | str) -> None:
    """One event per message this time, two SLOs, latency too: the same AlertEvents, field for field,
    whether messages are decoded in the daemon's thread or in one or two worker processes."""
    print(f"seed={SEED + 1}")
    topic = kafka_topic_factory(1)
    lines = make_traffic(SEED + 1, rate=10, latency_route=True)
    n_msgs = await produce_lines(kafka_broker, topic, lines, per_message=1)
    cfg = daemon_config(kafka_broker, topic, tmp_path / "state", pd_receiver.url + "/v2/enqueue",
                        latency=True, decode_workers=decode_workers)
    expected = backtest_alerts(cfg, lines, tmp_path)
    assert {a.slo for a in expected} == {"checkout-availability", "cart-latency"}
    async with Running(cfg) as run:
        await run.caught_up(topic, n_msgs, last_ts_s(lines), timeout_s=40)
        assert await run.stop() == 0
        d = run.daemon
        assert d is not None
        assert d.engine.events_ingested == len(lines)
        assert dict(d.rejections) == {} and dict(d.engine.rejections) == {}
    key = (lambda a: (a.ts, a.slo, a.severity))  # noqa: E731
    assert sorted(run.alerts, key=key) == expected


async def test_malformed_messages_are_counted_and_dead_lettered(
        kafka_broker: str, kafka_topic_factory: Callable[..., str], pd_receiver: PagerDutyReceiver,
        tmp_path: Path) -> None:
    print(f"seed={SEED + 2}")
    topic = kafka_topic_factory(1)
    dlq = kafka_topic_factory(1, suffix="-dlq")
    good = make_traffic(SEED + 2, duration="20m", rate=5, incident_at="10m", incident_for="1m")
    now = time.time()
    bad: dict[str, list[bytes]] = {
        "malformed_json": [b"\x00\xff garbage \x13", b'{"ts": 17000', b"not json at all"],
        "missing_ts": [b'{"service": "checkout", "status": 200}'],
        "wrong_type": [b'{"ts": %.3f, "service": "checkout", "status": "503"}' % now],
        "oversized_message": [b'{"ts": %.3f, "service": "checkout", "pad": "%s"}' % (now, b"x" * 5000)],
        "too_far_in_future": [b'{"ts": %.3f, "service": "checkout", "status": 200}' % (now + 7200)],
    }
    unmatched = [b'{"ts": %.3f, "service": "billing", "status": 200}' % (now - 60)]
    # Bad messages spread among the good ones, one event per message.
    stream = list(good)
    flat = [m for ms in bad.values() for m in ms] + unmatched
    for i, m in enumerate(flat):
        stream.insert(len(good) * (i + 1) // (len(flat) + 1), m)
    n_msgs = await produce_lines(kafka_broker, topic, stream, per_message=1)
    cfg = daemon_config(kafka_broker, topic, tmp_path / "state", pd_receiver.url + "/v2/enqueue",
                        kafka={"dead_letter_topic": dlq, "max_message_bytes": 2048})
    async with Running(cfg) as run:
        await run.caught_up(topic, n_msgs, last_ts_s(good))
        assert await run.stop() == 0
        d = run.daemon
        assert d is not None
    assert d.engine.events_ingested == len(good)
    assert d.engine.rejections["unmatched"] == 1
    assert dict(d.rejections) == {reason: len(ms) for reason, ms in bad.items()}
    consumer = AIOKafkaConsumer(dlq, bootstrap_servers=kafka_broker, auto_offset_reset="earliest",
                                group_id=None)
    await consumer.start()
    try:
        got: list[Any] = []
        end = time.monotonic() + 10
        while len(got) < len(flat) - 2 and time.monotonic() < end:
            for recs in (await consumer.getmany(timeout_ms=200)).values():
                got.extend(recs)
    finally:
        await consumer.stop()
    # Every rejected message is there with its reason, except the future one (rejected after decoding)
    # and the unmatched one (a valid event no SLO wants).
    reasons = {r.value: dict(r.headers)["sloburn-reason"].decode() for r in got}
    assert len(got) == len(flat) - 2
    for reason, ms in bad.items():
        for m in ms:
            if reason == "too_far_in_future":
                assert m not in reasons
            else:
                assert reasons[m] == reason, (m[:40], reasons.get(m))


async def test_receiver_down_then_429_then_500_all_delivered_in_order(
        kafka_broker: str, kafka_topic_factory: Callable[..., str], pd_receiver: PagerDutyReceiver,
        tmp_path: Path) -> None:
    print(f"seed={SEED + 3}")
    topic = kafka_topic_factory(1)
    lines = make_traffic(SEED + 3)
    n_msgs = await produce_lines(kafka_broker, topic, lines, per_message=100)
    cfg = daemon_config(kafka_broker, topic, tmp_path / "state", pd_receiver.url + "/v2/enqueue")
    await pd_receiver.down()
    async with Running(cfg) as run:
        await run.caught_up(topic, n_msgs, last_ts_s(lines))
        d = run.daemon
        assert d is not None
        await wait_until(lambda: d.outbox_pending == 4, 10, "four transitions waiting in the outbox")
        await asyncio.sleep(0.5)
        assert pd_receiver.events == []
        pd_receiver.fail_next(3, status=429)
        pd_receiver.fail_next(3, status=500)
        await pd_receiver.up()
        await wait_until(lambda: len(pd_receiver.events) == 4, 20, "every event delivered")
        assert await run.stop() == 0
    answers = [r.answer for r in pd_receiver.requests]
    assert answers.count("429") == 3 and answers.count("500") == 3 and answers.count("202") == 4
    assert answers.index("500") > answers.index("429") and answers.index("202") > answers.index("500")
    order = [(e.dedup_key, e.event_action) for e in pd_receiver.events]
    want = [(a.dedup_key, a.action) for a in run.alerts]
    for key in {k for k, _ in want}:
        assert [x for x in order if x[0] == key] == [x for x in want if x[0] == key]
    assert all(i.status == "resolved" for i in pd_receiver.incidents) and len(pd_receiver.incidents) == 2


async def test_a_400_is_a_dead_letter_and_never_retried(
        kafka_broker: str, kafka_topic_factory: Callable[..., str], pd_receiver: PagerDutyReceiver,
        tmp_path: Path) -> None:
    print(f"seed={SEED + 4}")
    topic = kafka_topic_factory(1)
    lines = make_traffic(SEED + 4)
    n_msgs = await produce_lines(kafka_broker, topic, lines, per_message=100)
    cfg = daemon_config(kafka_broker, topic, tmp_path / "state", pd_receiver.url + "/v2/enqueue")
    short_key = "tooShort" * 3  # 24 characters: PagerDuty answers 400
    async with Running(cfg, environ={"PD_ROUTING_KEY": short_key}) as run:
        await run.caught_up(topic, n_msgs, last_ts_s(lines))
        d = run.daemon
        assert d is not None
        await wait_until(lambda: d.outbox.counts_by_status()["dead"] == 4, 10, "four dead letters")
        await asyncio.sleep(1.0)  # several delivery passes: nothing may try them again
        assert await run.stop() == 0
    assert [r.answer for r in pd_receiver.requests] == ["400"] * 4
    assert pd_receiver.events == []
    with Outbox(tmp_path / "state" / "outbox.sqlite3") as box:
        dead = box.list("dead")
    assert len(dead) == 4
    assert all(r.attempts == 1 for r in dead)
    assert all("Length of 'routing_key' is incorrect" in " ".join(r.errors) for r in dead)
    assert all(short_key not in (r.reason or "") for r in dead)


async def test_broker_unreachable_then_up_readyz_and_healthz_say_why(
        pd_receiver: PagerDutyReceiver, tmp_path: Path) -> None:
    from engine.io.broker import EmbeddedBroker, free_port

    port = free_port()
    topic = "late-broker"
    cfg = daemon_config(f"127.0.0.1:{port}", topic, tmp_path / "state", pd_receiver.url + "/v2/enqueue")
    lines = make_traffic(SEED + 5, duration="10m", rate=5, incident_at="5m", incident_for="1m")
    async with Running(cfg) as run:
        d = run.daemon
        assert d is not None
        await wait_until(lambda: d.http_port is not None and d.source.state.failures >= 2, 10,
                         "failed connection attempts")
        url = f"http://127.0.0.1:{d.http_port}"
        async with aiohttp.ClientSession() as s:
            async with s.get(url + "/readyz") as r:
                body = await r.json()
                assert r.status == 503 and body["status"] == "fail"
                assert body["reasons"]["kafka"].startswith("connecting: ")
            async with s.get(url + "/healthz") as r:
                body = await r.json()
                assert r.status == 200 and body["reasons"]["kafka"].startswith("connecting: ")
        async with EmbeddedBroker(port=port) as broker:
            await broker.acreate_topic(topic, 1)
            n = await produce_lines(broker.bootstrap, topic, lines, per_message=10)
            await run.caught_up(topic, n, last_ts_s(lines), timeout_s=30)
            async with aiohttp.ClientSession() as s, s.get(url + "/readyz") as r:
                assert r.status == 200, await r.text()
            assert await run.stop() == 0
        assert d.engine.events_ingested == len(lines)


async def test_a_task_that_dies_stops_the_daemon_with_exit_code_1(
        kafka_broker: str, kafka_topic_factory: Callable[..., str], pd_receiver: PagerDutyReceiver,
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    topic = kafka_topic_factory(1)
    lines = make_traffic(SEED + 6, duration="10m", rate=5, incident_at="5m", incident_for="1m")
    n = await produce_lines(kafka_broker, topic, lines, per_message=10)
    cfg = daemon_config(kafka_broker, topic, tmp_path / "state", pd_receiver.url + "/v2/enqueue")
    async with Running(cfg) as run:
        await run.caught_up(topic, n, last_ts_s(lines))
        assert run.task is not None and not run.task.done()
        # The disk under the outbox goes bad: every task that touches it fails from now on.
        (tmp_path / "state" / "outbox.sqlite3").write_bytes(b"\0" * 8192)
        for wal in (tmp_path / "state").glob("outbox.sqlite3-*"):
            wal.write_bytes(b"\0" * 8192)
        code = await asyncio.wait_for(run.task, 15)
    assert code == 1
    assert any("failed, stopping the daemon" in r.getMessage() for r in caplog.records)


async def test_a_decode_worker_that_dies_stops_the_daemon_with_exit_code_1(
        kafka_broker: str, kafka_topic_factory: Callable[..., str], pd_receiver: PagerDutyReceiver,
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    topic = kafka_topic_factory(1)
    lines = make_traffic(SEED + 7, duration="10m", rate=5, incident_at="5m", incident_for="1m")
    n = await produce_lines(kafka_broker, topic, lines, per_message=10)
    cfg = daemon_config(kafka_broker, topic, tmp_path / "state", pd_receiver.url + "/v2/enqueue",
                        decode_workers=1)
    async with Running(cfg) as run:
        await run.caught_up(topic, n, last_ts_s(lines))
        assert run.daemon is not None and run.daemon.decode_pool is not None
        os.kill(run.daemon.decode_pool.pids[0], signal.SIGKILL)
        # The next fetch finds it gone: no evaluation goes on without the decoder.
        await produce_lines(kafka_broker, topic, lines[-10:], per_message=10)
        code = await asyncio.wait_for(run.task, 15)  # type: ignore[arg-type]
    assert code == 1
    assert any("decode worker" in r.getMessage() and "died" in r.getMessage() for r in caplog.records)


async def test_restart_keeps_unchanged_slos_and_sets_a_corrupt_checkpoint_aside(
        kafka_broker: str, kafka_topic_factory: Callable[..., str], pd_receiver: PagerDutyReceiver,
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    topic = kafka_topic_factory(1)
    lines = make_traffic(SEED + 7, duration="30m", rate=5, incident_at="10m", incident_for="2m")
    half = len(lines) // 2
    n1 = await produce_lines(kafka_broker, topic, lines[:half], per_message=10)
    cfg = daemon_config(kafka_broker, topic, tmp_path / "state", pd_receiver.url + "/v2/enqueue")
    async with Running(cfg) as run:
        await run.caught_up(topic, n1, last_ts_s(lines[:half]))
        assert await run.stop() == 0
        assert run.daemon is not None
        first = run.daemon.engine.totals("checkout-availability")
    async with Running(cfg) as run:  # restarted, nothing new to read: one more checkpoint
        await run.caught_up(topic, n1, last_ts_s(lines[:half]))
        assert await run.stop() == 0
        assert run.daemon is not None
        assert run.daemon.engine.totals("checkout-availability") == first
    ckpts = sorted((tmp_path / "state" / "checkpoints").glob("ckpt-*.npz"))
    assert len(ckpts) >= 2
    # A torn newest checkpoint (as if the disk lied about the fsync): set aside, the previous used.
    newest = ckpts[-1]
    newest.write_bytes(newest.read_bytes()[:1000])
    n2 = await produce_lines(kafka_broker, topic, lines[half:], per_message=10)
    cfg2 = daemon_config(kafka_broker, topic, tmp_path / "state", pd_receiver.url + "/v2/enqueue",
                         latency=True)
    caplog.set_level("INFO", logger="sloburn.daemon")
    async with Running(cfg2) as run:
        await run.caught_up(topic, n1 + n2, last_ts_s(lines))
        assert await run.stop() == 0
        d = run.daemon
        assert d is not None
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert f"checkpoint {newest.name} set aside" in text
    assert (tmp_path / "state" / "checkpoints" / "corrupt" / newest.name).exists()
    assert "kept=['checkout-availability'] fresh=['cart-latency'] dropped=[]" in text
    assert "(config changed)" in text
    # The kept SLO counted every event once; the new one only those read after the restart.
    total = d.engine.totals("checkout-availability")
    assert d.engine.events_ingested == len(lines)
    assert total.total + d.engine.pending_events == len(lines)  # the last lateness is not evaluated
    assert first.total < total.total
    assert d.engine.totals("cart-latency").total < total.total


def test_config_problems_exit_2_without_a_traceback(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    import subprocess
    import sys

    from engine.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("slos: [{name: a, service: s, objective: 99, sli: {availability: {}}}]\n"
                   "source: {kafka: {bootstrap: nohost, topicz: [x]}}\nhttp: {listen: nope}\n")
    proc = subprocess.run([sys.executable, "-m", "engine.cli", "run", "--config", str(bad)],
                          check=False, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert f"{bad}: $.source.kafka.topicz: unknown field 'topicz'" in proc.stderr
    missing = tmp_path / "nostate.yaml"
    missing.write_text("slos: [{name: a, service: s, objective: 99, sli: {availability: {}}}]\n"
                       "source: {kafka: {bootstrap: '127.0.0.1:9', topics: [x]}}\n"
                       "sinks: {pagerduty: {routing_key_env: PD_NOPE_KEY}}\n")
    assert main(["run", "--config", str(missing)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"{missing}: $.state_dir: required field is missing" in err
