"""The whole pipeline with real tools: nginx -> JSON access log -> kcat -> Kafka -> sloburn -> PagerDuty.

nginx (in the foreground, one worker) serves ``/`` and ``/api/flaky``, whose requests fail with 503
at a fixed share. wrk drives paced traffic at ``/`` throughout and, for an incident in the middle,
at ``/api/flaky`` as well. ``tail -F`` pipes the access log into ``kcat``, which produces one
message per line into the session's broker; ``sloburn run`` (a child process) consumes the topic
as ``nginx_json`` and pages the local PagerDuty receiver while the load still runs. Then the same
access log goes through ``run_backtest``: the daemon must have sent exactly the backtest's alerts,
with the same event times and the same burn rates.

The SLO event times are nginx's ``$msec`` (wall time): the daemon's idle rule (watermark moving
with the wall clock) is disabled, so that the daemon's watermark follows the events alone, as the
backtest's does. The daemon then evaluates up to the newest event minus the allowed lateness; the
backtest's tail goes one step further, and the comparison stops at the daemon's watermark.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from engine.alerts import AlertEvent
from engine.backtest import run_backtest
from engine.config import load_config
from engine.io.broker import free_port
from engine.io.outbox import Outbox
from engine.io.pagerduty import iso8601
from engine.io.pd_receiver import PagerDutyReceiver, validate_alert_event
from tests.integration.nginx_support import (
    KafkaFrameProxy,
    Proc,
    binary,
    missing_binaries,
    nginx_conf,
    start,
    wrk_pacing_script,
)

pytestmark = pytest.mark.integration

ROUTING_KEY = "R0utingKeyForTheNginxPipeline001"
HOST = "shop.example"
SLO_NAME = "shop-availability"
FLAKY_PERCENT = 50  # of /api/flaky requests answered 503
DELAY_MS = 10  # between requests, per wrk connection: about 200 requests/s per wrk process
GOOD_BEFORE_S = 6
INCIDENT_S = 18
GOOD_AFTER_S = 16
LATENESS_S = 2
FACTOR = 10.0
OBJECTIVE = 99.0
TOL = 1e-9


def pipeline_config(bootstrap: str, topic: str, state_dir: Path, pd_url: str,
                    http_port: int) -> dict[str, Any]:
    """One availability SLO over nginx's host, one page tier with short windows, no idle rule."""
    return {
        "slos": [{
            "name": SLO_NAME, "service": HOST, "objective": OBJECTIVE, "period": "1d",
            "runbook_url": "https://runbooks.example.com/shop",
            "sli": {"availability": {}},
            "alerting": {
                "windows": [{"name": "page_fast", "severity": "page", "long_window": "2m",
                             "short_window": "10s", "factor": FACTOR}],
                "require_full_windows": False, "keep_firing_for": "0s", "min_events": 100,
            },
        }],
        "events": {"format": "nginx_json"},
        "engine": {"allowed_lateness_s": LATENESS_S},
        "source": {"kafka": {"bootstrap": bootstrap, "topics": [topic],
                             "group_id": f"g-{uuid.uuid4().hex[:8]}", "start": "earliest",
                             "session_timeout_ms": 2000, "heartbeat_interval_ms": 500,
                             "fetch_max_wait_ms": 50, "request_timeout_ms": 5000,
                             "backoff_initial_ms": 50, "backoff_max_ms": 500}},
        "sinks": {"pagerduty": {"url": pd_url, "routing_key_env": "PD_ROUTING_KEY", "timeout_s": 2},
                  "delivery": {"rate_per_min": 6000, "burst": 100, "backoff_base_s": 0.05,
                               "backoff_cap_s": 0.3, "coalesce": False}},
        "state_dir": str(state_dir),
        "http": {"listen": f"127.0.0.1:{http_port}"},
        "tick_s": 0.2,
        "daemon": {"checkpoint_interval_s": 2, "idle_after_s": None, "shutdown_flush_s": 5},
    }


async def wait_until(cond: Callable[[], bool], timeout_s: float, what: str,
                     procs: list[Proc] | None = None) -> None:
    end = time.monotonic() + timeout_s
    while not cond():
        for p in procs or []:
            assert p.running(), f"{p.name} exited with {p.popen.returncode}:\n{p.output()}"
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.05)


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


async def metric(session: aiohttp.ClientSession, port: int, name: str) -> float:
    """The value of one unlabelled sample of the daemon's /metrics (0 when absent)."""
    async with session.get(f"http://127.0.0.1:{port}/metrics") as r:
        text = await r.text()
    m = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    return float(m.group(1)) if m else 0.0


async def ready(session: aiohttp.ClientSession, port: int) -> bool:
    try:
        async with session.get(f"http://127.0.0.1:{port}/readyz") as r:
            return r.status == 200
    except aiohttp.ClientError:
        return False


def read_log(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=0.0, abs_tol=TOL)


def same_numbers(got: AlertEvent | dict[str, Any], want: AlertEvent) -> None:
    rates = got.burn_rates if isinstance(got, AlertEvent) else got["burn_rates"]
    left = got.budget_remaining if isinstance(got, AlertEvent) else got["error_budget_remaining"]
    assert set(rates) == set(want.burn_rates) == {"10s", "2m"}
    for w, r in want.burn_rates.items():
        assert close(rates[w], r), (w, rates[w], r)
    assert close(left, want.budget_remaining), (left, want.budget_remaining)


@pytest.mark.skipif(bool(missing_binaries("nginx", "wrk", "kcat", "tail")),
                    reason=f"not installed: {', '.join(missing_binaries('nginx', 'wrk', 'kcat', 'tail'))} "
                           "(apt-get install nginx kcat wrk)")
async def test_nginx_incident_pages_once_with_the_backtest_numbers(
        kafka_broker: str, kafka_topic_factory: Callable[..., str], pd_receiver: PagerDutyReceiver,
        tmp_path: Path) -> None:
    topic = kafka_topic_factory(1)
    www = tmp_path / "nginx"
    www.mkdir()
    nginx_port, http_port = free_port(), free_port()
    while http_port == nginx_port:
        http_port = free_port()
    (www / "nginx.conf").write_text(nginx_conf(www, nginx_port, flaky_percent=FLAKY_PERCENT))
    (www / "pace.lua").write_text(wrk_pacing_script(DELAY_MS))
    access_log = www / "access.log"
    cfg_path = tmp_path / "sloburn.yaml"
    cfg_path.write_text(json.dumps(pipeline_config(kafka_broker, topic, tmp_path / "state",
                                                   pd_receiver.url + "/v2/enqueue", http_port), indent=1))
    procs: list[Proc] = []
    host, _, port = kafka_broker.rpartition(":")
    proxy = await KafkaFrameProxy(host, int(port)).__aenter__()

    def wrk(path: str, seconds: int, name: str) -> Proc:
        return start(name, [binary("wrk"), "-t1", "-c2", f"-d{seconds}s", "--timeout", "5s",
                            "-s", str(www / "pace.lua"), "-H", f"Host: {HOST}",
                            f"http://127.0.0.1:{nginx_port}{path}"], tmp_path / f"{name}.out")

    try:
        nginx = start("nginx", [binary("nginx"), "-p", str(www), "-e", str(www / "error.log"),
                                "-c", str(www / "nginx.conf")], tmp_path / "nginx.out")
        procs.append(nginx)
        await wait_until(lambda: port_open(nginx_port), 20, "nginx to listen", [nginx])
        daemon = start("sloburn", [sys.executable, "-m", "engine.cli", "run", "--config", str(cfg_path),
                                   "--log-json"], tmp_path / "sloburn.out",
                       env={**os.environ, "PD_ROUTING_KEY": ROUTING_KEY})
        procs.append(daemon)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            end = time.monotonic() + 60
            while not await ready(http, http_port):
                assert daemon.running(), f"sloburn exited:\n{daemon.output()}"
                assert time.monotonic() < end, f"sloburn not ready within 60 s:\n{daemon.output()}"
                await asyncio.sleep(0.1)
            # The shipper: every access log line becomes one Kafka message as soon as nginx writes it.
            tail = start("tail", ["tail", "-n", "+1", "-F", str(access_log)], tmp_path / "tail.err",
                         stdout=subprocess.PIPE)
            procs.append(tail)
            assert tail.popen.stdout is not None
            kcat = start("kcat", [binary("kcat"), "-P", "-b", proxy.bootstrap, "-t", topic],
                         tmp_path / "kcat.out", stdin=tail.popen.stdout.fileno())
            tail.popen.stdout.close()
            procs.append(kcat)

            # The load: good traffic throughout, an incident of failing requests in the middle.
            total_s = GOOD_BEFORE_S + INCIDENT_S + GOOD_AFTER_S
            base = wrk("/", total_s, "wrk-base")
            procs.append(base)
            await asyncio.sleep(GOOD_BEFORE_S)
            flaky = wrk("/api/flaky", INCIDENT_S, "wrk-flaky")
            procs.append(flaky)
            await wait_until(lambda: not base.running() and not flaky.running(), total_s + 30,
                             "the load to end", [nginx, daemon, kcat])
            load_end_wall = time.time()
            assert base.popen.returncode == 0 and flaky.popen.returncode == 0, (base.output(), flaky.output())

            # Everything nginx logged reaches the daemon, one message per line: the shipper stops,
            # kcat flushes what it holds at the end of its input and exits.
            await asyncio.sleep(0.5)
            tail.stop()
            await wait_until(lambda: not kcat.running(), 20, "kcat to flush and exit")
            assert kcat.popen.returncode == 0, kcat.output()
            records = read_log(access_log)
            n = len(records)

            async def ingested() -> float:
                return await metric(http, http_port, "sloburn_events_ingested_total")

            end = time.monotonic() + 40
            got = 0.0
            while got < n and time.monotonic() < end:
                assert daemon.running(), daemon.output()
                got = await ingested()
                await asyncio.sleep(0.1)
            assert got == n, f"sloburn ingested {got} of {n} logged requests"
            assert await metric(http, http_port, "sloburn_kafka_messages_consumed_total") == n

            # The oracle: a backtest of the same file (in a thread: the receiver keeps answering).
            cfg = load_config(cfg_path)
            result = await asyncio.to_thread(run_backtest, cfg, [str(access_log)])
            assert sum(result.rejections.values()) == 0, dict(result.rejections)
            backtest = sorted((a for s in result.series for a in s.events), key=lambda a: a.ts)
            last_ts_ns = max(round(float(r["msec"]) * 1000) for r in records) * 1_000_000
            watermark_s = (last_ts_ns - LATENESS_S * 1_000_000_000) / 1e9
            expected = [a for a in backtest if a.ts <= watermark_s]
            assert expected == backtest, "the backtest alerted after the daemon's last evaluated instant"
            assert [(a.severity, a.action) for a in expected] == [("page", "trigger"), ("page", "resolve")]

            await wait_until(lambda: len(pd_receiver.events) >= len(expected), 20,
                             f"{len(expected)} events at the receiver", [daemon])
            await asyncio.sleep(0.5)  # nothing more may come
            # The daemon evaluated through the last whole step at or before the newest event - lateness.
            evaluated_s = await metric(http, http_port, "sloburn_watermark_timestamp_seconds")
            assert watermark_s - 1 < evaluated_s <= watermark_s
        assert daemon.stop(timeout_s=30) == 0, daemon.output()
    finally:
        for p in reversed(procs):
            p.stop()
        await proxy.__aexit__(None, None, None)
    assert nginx.popen.returncode == 0, nginx.output()

    # What nginx logged, read directly: failures only on /api/flaky, and only while the incident ran.
    statuses = Counter((r["uri"], r["status"]) for r in records)
    assert statuses[("/", "200")] > 1000 and statuses[("/api/flaky", "503")] > 300, statuses
    assert set(statuses) <= {("/", "200"), ("/api/flaky", "200"), ("/api/flaky", "503")}, statuses
    assert all(r["host"] == HOST and r["request_method"] == "GET" for r in records)
    fail_ts = [float(r["msec"]) for r in records if r["status"] == "503"]
    first_fail, last_fail = min(fail_ts), max(fail_ts)
    trigger, resolve = expected
    assert first_fail <= trigger.ts <= last_fail + 1
    assert resolve.ts > last_fail

    # The daemon's transitions, as it stored them, are the backtest's.
    with Outbox(tmp_path / "state" / "outbox.sqlite3") as box:
        rows = box.list()
    assert [r.status for r in rows] == ["delivered"] * len(expected)
    daemon_alerts = [r.event for r in rows]
    assert all(a is not None for a in daemon_alerts)
    assert ([(a.slo, a.severity, a.action, a.ts, a.tier) for a in daemon_alerts if a is not None]
            == [(a.slo, a.severity, a.action, a.ts, a.tier) for a in expected])
    for got_alert, want in zip(daemon_alerts, expected, strict=True):
        assert got_alert is not None
        same_numbers(got_alert, want)

    # And the receiver got them: one incident, opened while the load still ran, then resolved.
    events = pd_receiver.events
    assert [(e.dedup_key, e.event_action) for e in events] == [(a.dedup_key, a.action) for a in expected]
    assert all(e.routing_key == ROUTING_KEY for e in events)
    opened = events[0]
    assert validate_alert_event(opened.body) == []
    assert opened.outcome == "opened" and opened.received_at < load_end_wall
    assert opened.body["payload"]["timestamp"] == iso8601(trigger.ts)
    assert opened.body["payload"]["severity"] == "critical"
    details = opened.body["payload"]["custom_details"]
    same_numbers(details, trigger)
    assert details["burn_rates"]["10s"] > FACTOR and details["burn_rates"]["2m"] > FACTOR
    assert len(pd_receiver.incidents) == 1 and pd_receiver.incidents[0].status == "resolved"
