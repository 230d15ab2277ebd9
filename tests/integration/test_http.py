"""The daemon's HTTP endpoints and ``sloburn budget``, against a real aiohttp server on a free port.

The view behind the server is a small real daemon stand-in: a real engine fed with real batches, real
metrics refreshed from it, and the active alerts kept from the transitions ``advance`` returned.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import msgspec
import numpy as np
import pytest
from aiohttp import ClientSession
from prometheus_client.parser import text_string_to_metric_families

from engine.alerts import AlertEvent
from engine.batch import EventBatch, EventKey
from engine.cli_budget import register
from engine.config import parse_config
from engine.engine import Engine
from engine.evaluator import BudgetPolicy
from engine.io.http import HttpServer, parse_listen
from engine.io.metrics import Metrics

pytestmark = pytest.mark.integration

NS = 1_000_000_000
T0_S = 1_700_002_800  # a whole hour, so that the windows below end on bucket edges
SCENARIO_S = T0_S + 3 * 86_400 + 3_500  # 3 days of quiet history: every window and the period full
ROUTING_KEY = "R0ABCDEFGHIJKLMNOPQRSTUVWXYZ0123"  # 32 characters, the shape of an Events API v2 key
N_EVENTS = 1000

# name -> (service, objective %, bad events out of N_EVENTS); budget B = 1 - objective / 100.
# remaining = 1 - bad / (B * N): checkout 1 - 20/100 = 80 %,
# search 1 - 55/100 = 45 % (burn 0.55, under the 3-day page_slow factor 0.6),
# payments 1 - 100/1 = -9900 % (burn rate 0.1 / 0.001 = 100: the page fires).
SCENARIO = {
    "checkout-availability": ("checkout", 90.0, 20),
    "search-latency": ("search", 90.0, 55),
    "payments-availability": ("payments", 99.9, 100),
}
IDLE = "reports/daily export"  # no events at all; a "/" and a space in the name on purpose


@dataclass
class View:
    """A DaemonView over a real engine."""

    engine: Engine
    metrics: Metrics
    budget_policy: BudgetPolicy = field(default_factory=BudgetPolicy)
    alive: tuple[bool, dict[str, str]] = (True, {})
    ready: tuple[bool, dict[str, str]] = (True, {})
    firing: dict[tuple[str, str], AlertEvent] = field(default_factory=dict)

    def health(self) -> tuple[bool, dict[str, str]]:
        return self.alive

    def readiness(self) -> tuple[bool, dict[str, str]]:
        return self.ready

    def active_alerts(self) -> list[AlertEvent]:
        return list(self.firing.values())

    def tick(self, watermark_ns: int) -> None:
        for a in self.engine.advance(watermark_ns):
            if a.action == "trigger":
                self.firing[(a.slo, a.severity)] = a
            else:
                self.firing.pop((a.slo, a.severity), None)
        self.metrics.refresh_from_engine(self.engine, self.budget_policy)


def build_view() -> View:
    slos = []
    for name, (service, objective, _) in SCENARIO.items():
        sli = {"latency": {"threshold_ms": 300}} if "latency" in name else {"availability": {}}
        # Tickets off: over a 3-day period their factors (0.3, 0.1) would catch every SLO here.
        slos.append({"name": name, "service": service, "objective": objective, "period": "3d",
                     "sli": sli, "alerting": {"disable": ["ticket"], "min_events": 0, "keep_firing_for": 0}})
    slos.append({"name": IDLE, "service": "reports", "objective": 99.0, "period": "3d",
                 "sli": {"availability": {}}})
    engine = Engine(parse_config({"slos": slos}))
    view = View(engine=engine, metrics=Metrics())
    # History starts at T0 with an event no SLO takes; the SLOs see their events a day later.
    anchor = engine.keys.intern(EventKey("anchor"))
    engine.ingest(EventBatch.from_arrays([T0_S * NS], [anchor], [200]))
    offsets = np.arange(N_EVENTS, dtype=np.int64) * (100 * NS // N_EVENTS)
    for name, (service, _, bad) in SCENARIO.items():
        key = engine.keys.intern(EventKey(service))
        # Payments fails from its first event (its page fires at once); the others spread their bad
        # events evenly, staying under the 3-day period's page factors (1.44 and 0.6).
        if name == "payments-availability":
            is_bad = np.arange(N_EVENTS) < bad
        else:
            is_bad = np.zeros(N_EVENTS, bool)
            is_bad[np.linspace(0, N_EVENTS - 1, bad).astype(int)] = True
        latency_ms = np.where(is_bad, 900.0, 40.0)
        status = np.where(is_bad & ("latency" not in name), 503, 200)
        # Two batches per service, as a consumer would hand them over.
        for part in np.array_split(np.arange(N_EVENTS), 2):
            engine.ingest(EventBatch.from_arrays(
                SCENARIO_S * NS + offsets[part], np.full(part.size, key), status[part],
                latency_ms[part] * 1000.0))
    # Every event lies in [S, S+100): at S+100, a bucket edge of every resolution, every window holds
    # them all and the 3-day period is exactly [T0+1 h, S+100 s), all history.
    view.tick((SCENARIO_S + 100) * NS)
    return view


@pytest.fixture
async def served() -> AsyncIterator[tuple[View, str]]:
    view = build_view()
    server = HttpServer(view)
    port = await server.start("127.0.0.1", 0)
    try:
        yield view, f"http://127.0.0.1:{port}"
    finally:
        await server.stop()


async def get(url: str, **headers: str) -> tuple[int, str, bytes]:
    async with ClientSession() as s, s.get(url, headers=headers) as r:
        return r.status, r.headers.get("Content-Type", ""), await r.read()


def budget_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sloburn")
    register(parser.add_subparsers(dest="command"))
    return parser.parse_args(["budget", *argv])


async def run_budget(*argv: str) -> int:
    # urllib blocks: run the command in a thread so that the server on this loop can answer.
    args = budget_args(*argv)
    code: int = await asyncio.to_thread(args.func, args)
    return code


def expected_remaining_percent(name: str) -> float:
    _, objective, bad = SCENARIO[name]
    budget = round(1 - objective / 100, 12)
    return (1 - bad / (budget * N_EVENTS)) * 100


# ------------------------------------------------------------------------------------ endpoints


async def test_budgets_list_and_policy_states(served: tuple[View, str]) -> None:
    view, base = served
    status, ctype, body = await get(f"{base}/v1/budgets")
    assert status == 200 and ctype.startswith("application/json")
    items = msgspec.json.decode(body)
    assert [b["slo"] for b in items] == [*SCENARIO, IDLE]
    by_name = {b["slo"]: b for b in items}
    for name in SCENARIO:
        b = by_name[name]
        assert b["remaining_percent"] == pytest.approx(expected_remaining_percent(name))
        assert b["budget_events"] == {"bad": SCENARIO[name][2], "total": N_EVENTS}
        assert b["policy"]["thresholds"] == {"warning_below_percent": 50.0, "freeze_below_percent": 10.0}
    assert by_name["checkout-availability"]["policy"]["state"] == "healthy"
    assert by_name["search-latency"]["policy"]["state"] == "warning"
    assert by_name["payments-availability"]["policy"]["state"] == "freeze"
    assert by_name["payments-availability"]["firing"] == {"page": True, "ticket": False}
    assert by_name["payments-availability"]["burn_rates"]["5m"] == pytest.approx(0.1 / 0.001)
    assert by_name["checkout-availability"]["firing"] == {"page": False, "ticket": False}
    idle = by_name[IDLE]
    assert idle["remaining_percent"] is None
    assert idle["policy"]["state"] == "no_data"
    assert set(idle["burn_rates"]) == {"5m", "30m", "1h", "2h", "6h", "1d", "3d"}
    assert all(v is None for v in idle["burn_rates"].values())

    # Thresholds are configurable and read per request.
    view.budget_policy = BudgetPolicy(warning_below_percent=90.0, freeze_below_percent=50.0)
    items = msgspec.json.decode((await get(f"{base}/v1/budgets"))[2])
    states = {b["slo"]: b["policy"]["state"] for b in items}
    assert states["checkout-availability"] == "warning"
    assert states["search-latency"] == "freeze"


async def test_one_budget_and_unknown_slo(served: tuple[View, str]) -> None:
    _, base = served
    status, _, body = await get(f"{base}/v1/budgets/checkout-availability")
    assert status == 200
    one = msgspec.json.decode(body)
    assert one["slo"] == "checkout-availability" and one["objective"] == 90.0 and one["period"] == "3d"
    assert one["ts"] == SCENARIO_S + 100

    status, _, body = await get(f"{base}/v1/budgets/reports%2Fdaily%20export")
    assert status == 200 and msgspec.json.decode(body)["slo"] == IDLE

    status, ctype, body = await get(f"{base}/v1/budgets/nope")
    assert status == 404 and ctype.startswith("application/json")
    assert msgspec.json.decode(body) == {"error": "unknown SLO 'nope'"}

    status, ctype, body = await get(f"{base}/v1/nothing-here")
    assert status == 404 and ctype.startswith("application/json")
    assert "error" in msgspec.json.decode(body)
    async with ClientSession() as s, s.post(f"{base}/v1/budgets") as r:
        assert r.status == 405
        assert "error" in await r.json()


async def test_alerts(served: tuple[View, str]) -> None:
    _, base = served
    status, _, body = await get(f"{base}/v1/alerts")
    assert status == 200
    alerts = msgspec.json.decode(body)
    assert [(a["slo"], a["severity"], a["action"]) for a in alerts] == [
        ("payments-availability", "page", "trigger")]
    a = alerts[0]
    assert a["dedup_key"] == hashlib.sha256(b"payments-availability/page").hexdigest()
    assert a["tier"] == "page_quick"
    # It fired at the first instant after its events began, S+1 s, over the 10 events before it: all bad.
    assert a["ts"] == SCENARIO_S + 1
    assert a["burn_rates"]["1h"] == pytest.approx(1.0 / 0.001)
    assert a["windows"]["5m"] == {"bad": 10, "total": 10}


async def test_health_and_readiness(served: tuple[View, str]) -> None:
    view, base = served
    for path in ("/healthz", "/readyz"):
        status, _, body = await get(base + path)
        assert status == 200 and msgspec.json.decode(body) == {"status": "ok"}

    view.alive = (False, {"sender": f"task died: 400 from PagerDuty for routing key {ROUTING_KEY}",
                          "checkpoint": "disk full"})
    view.ready = (False, {"kafka": "broker 127.0.0.1:9092 unreachable, retrying",
                          "sink": "https://user:hunter2@hooks.example/alert token=abc123"})
    status, _, body = await get(f"{base}/healthz")
    assert status == 503
    doc = msgspec.json.decode(body)
    assert doc["status"] == "fail" and set(doc["reasons"]) == {"sender", "checkpoint"}
    assert doc["reasons"]["checkpoint"] == "disk full"
    assert ROUTING_KEY not in body.decode()
    status, _, body = await get(f"{base}/readyz")
    assert status == 503
    text = body.decode()
    assert "broker 127.0.0.1:9092 unreachable" in text
    assert "hunter2" not in text and "abc123" not in text


async def test_metrics_endpoint(served: tuple[View, str]) -> None:
    _, base = served
    status, ctype, body = await get(f"{base}/metrics")
    assert status == 200
    assert ctype == "text/plain; version=0.0.4; charset=utf-8"
    smp = {(s.name, frozenset(s.labels.items())): s.value
           for f in text_string_to_metric_families(body.decode()) for s in f.samples}
    assert smp[("sloburn_slo_alert_firing",
                frozenset({"slo": "payments-availability", "severity": "page"}.items()))] == 1
    assert smp[("sloburn_slo_burn_rate",
                frozenset({"slo": "checkout-availability", "window": "1h"}.items()))] == pytest.approx(0.2)
    assert smp[("sloburn_events_ingested_total", frozenset())] == 3 * N_EVENTS
    assert not [k for k in smp if k[0] == "sloburn_slo_burn_rate" and ("slo", IDLE) in k[1]]

    status, ctype, body = await get(f"{base}/metrics", Accept="application/openmetrics-text; version=1.0.0")
    assert status == 200 and ctype.startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")


async def test_no_secret_in_any_response(served: tuple[View, str]) -> None:
    view, base = served
    view.alive = (False, {"pagerduty": f"rejected key={ROUTING_KEY}"})
    view.ready = (False, {"pagerduty": ROUTING_KEY})
    for path in ("/metrics", "/healthz", "/readyz", "/v1/budgets", "/v1/alerts",
                 "/v1/budgets/payments-availability"):
        _, _, body = await get(base + path)
        assert ROUTING_KEY.encode() not in body, path


# ------------------------------------------------------------------------------------ sloburn budget


async def test_budget_command_exit_codes(served: tuple[View, str],
                                         capsys: pytest.CaptureFixture[str]) -> None:
    _, base = served
    # checkout: 80 % left.
    assert await run_budget("--url", base, "--slo", "checkout-availability", "--min", "10") == 0
    assert "ok: 80.00% of the error budget left (floor 10%), policy healthy" in capsys.readouterr().out
    assert await run_budget("--url", base, "--slo", "checkout-availability", "--min", "80") == 0
    assert await run_budget("--url", base, "--slo", "checkout-availability", "--min", "85") == 1
    out = capsys.readouterr().out
    assert "BELOW FLOOR: 80.00%" in out and "20 bad of 1000 events" in out
    # Without --min the floor is the policy's freeze threshold: search (45 %) passes, payments fails.
    assert await run_budget("--url", f"{base}/", "--slo", "search-latency") == 0
    assert await run_budget("--url", base, "--slo", "payments-availability") == 1
    assert "policy freeze" in capsys.readouterr().out
    # Unknown SLO and usage errors: 2.
    assert await run_budget("--url", base, "--slo", "nope", "--min", "10") == 2
    assert "unknown SLO 'nope'" in capsys.readouterr().err
    assert await run_budget("--url", "ftp://example", "--slo", "x") == 2
    assert await run_budget("--url", base, "--slo", "checkout-availability", "--min", "nan") == 2
    # No data: 3, and it says so.
    assert await run_budget("--url", base, "--slo", IDLE, "--min", "10") == 3
    assert "no data" in capsys.readouterr().err


async def test_budget_command_json(served: tuple[View, str], capsys: pytest.CaptureFixture[str]) -> None:
    _, base = served
    assert await run_budget("--url", base, "--slo", "search-latency", "--min", "50", "--json") == 1
    captured = capsys.readouterr()
    doc = msgspec.json.decode(captured.out)
    assert doc["slo"] == "search-latency"
    assert doc["remaining_percent"] == pytest.approx(expected_remaining_percent("search-latency"))
    assert doc["policy"]["state"] == "warning"
    assert "BELOW FLOOR" in captured.err


async def test_budget_command_unreachable(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:  # a port nobody listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code = await run_budget("--url", f"http://127.0.0.1:{port}", "--slo", "x", "--timeout", "2")
    assert code == 3
    assert f"cannot reach the daemon at http://127.0.0.1:{port}/v1/budgets/x" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ lifecycle


async def test_start_stop_and_listen_parsing() -> None:
    server = HttpServer(build_view())
    port = await server.start(port=0)
    with pytest.raises(RuntimeError, match="already started"):
        await server.start(port=0)
    status, _, _ = await get(f"http://127.0.0.1:{port}/healthz")
    assert status == 200
    await server.stop()
    await server.stop()  # idempotent
    with pytest.raises(OSError):
        await get(f"http://127.0.0.1:{port}/healthz")

    assert parse_listen("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert parse_listen("[::1]:80") == ("::1", 80)
    assert parse_listen(":9464") == ("127.0.0.1", 9464)
    with pytest.raises(ValueError, match="expected host:port"):
        parse_listen("localhost")
    with pytest.raises(ValueError, match="in brackets"):
        parse_listen("::1:80")
