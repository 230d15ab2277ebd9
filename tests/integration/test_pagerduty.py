"""Alert delivery over real HTTP: the contract server, the Events API v2 sender, the outbox drain."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from engine.alerts import AlertEvent, dedup_key
from engine.io.delivery import DeliveryLoop
from engine.io.outbox import Outbox
from engine.io.pagerduty import PagerDutyConfig, PagerDutySender
from engine.io.pd_receiver import PagerDutyReceiver
from engine.io.webhook import WebhookSender

pytestmark = pytest.mark.integration

KEY = "IntegrationKey000000000000000001"
TICKET_KEY = "IntegrationKey000000000000000002"
BAD_KEY = "tooShort0123"


def ev(slo: str, action: str, ts: float, severity: str = "page") -> AlertEvent:
    return AlertEvent(slo=slo, severity=severity, action=action, ts=ts, tier="page_quick",
                      burn_rates={"1h": 15.2, "5m": 31.0}, budget_remaining=0.97,
                      dedup_key=dedup_key(slo, severity), service="checkout", factors={"page_quick": 14.4},
                      runbook_url="https://runbooks.example.com/x")


async def post(session: aiohttp.ClientSession, url: str, body: Any, *,
               content_type: str = "application/json") -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with session.post(url, data=data, headers={"Content-Type": content_type}) as resp:
        return resp.status, await resp.json(content_type=None)


def trigger_doc(**over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"routing_key": KEY, "event_action": "trigger", "dedup_key": "k1",
                           "payload": {"summary": "s", "source": "host", "severity": "critical"}}
    doc.update(over)
    return doc


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def make_sender(session: aiohttp.ClientSession, receiver: PagerDutyReceiver, *, timeout_s: float = 2.0,
                ticket_key: str = TICKET_KEY) -> PagerDutySender:
    cfg = PagerDutyConfig.from_mapping({"url": receiver.url + "/v2/enqueue", "routing_key_env": "PD_KEY",
                                        "routing_keys": {"ticket": {"env": "PD_TICKET_KEY"}}})
    return PagerDutySender(session, cfg, timeout_s=timeout_s,
                           environ={"PD_KEY": KEY, "PD_TICKET_KEY": ticket_key})


def make_loop(outbox: Outbox, senders: list[Any], seed: int = 11, **kw: Any) -> DeliveryLoop:
    print(f"jitter seed {seed}")
    opts: dict[str, Any] = {"backoff_base_s": 0.01, "backoff_cap_s": 0.05, "idle_s": 0.02,
                            "rate_per_min": 60_000.0, "burst": 50.0, "rng": random.Random(seed)}
    opts.update(kw)
    return DeliveryLoop(outbox, senders, **opts)


def actions_seen(receiver: PagerDutyReceiver, dkey: str) -> list[str]:
    return [e.event_action or "" for e in receiver.events_for(dkey)]


# ---------------------------------------------------------------------------------------------
# The contract server itself


@pytest.mark.parametrize(("body", "error"), [
    (trigger_doc(routing_key="abc"), "Length of 'routing_key' is incorrect (should be 32 characters)"),
    (trigger_doc(routing_key="x" * 31 + "-"), "'routing_key' must contain only alphanumeric characters"),
    (trigger_doc(routing_key=None), "'routing_key' is missing or blank"),
    (trigger_doc(event_action="page"), "'event_action' must be one of trigger, acknowledge, resolve"),
    (trigger_doc(dedup_key="d" * 256),
     "Length of 'dedup_key' is too long (should be at most 255 characters)"),
    ({"routing_key": KEY, "event_action": "resolve"}, "'dedup_key' is missing or blank"),
    ({"routing_key": KEY, "event_action": "acknowledge", "dedup_key": " "},
     "'dedup_key' is missing or blank"),
    (trigger_doc(payload=None), "'payload' is missing"),
    (trigger_doc(payload={"source": "h", "severity": "info"}), "'payload.summary' is missing or blank"),
    (trigger_doc(payload={"summary": "s" * 1025, "source": "h", "severity": "info"}),
     "Length of 'payload.summary' is too long (should be at most 1024 characters)"),
    (trigger_doc(payload={"summary": "s", "severity": "info"}), "'payload.source' is missing or blank"),
    (trigger_doc(payload={"summary": "s", "source": "h"}), "'payload.severity' is missing or blank"),
    (trigger_doc(payload={"summary": "s", "source": "h", "severity": "high"}),
     "'payload.severity' must be one of critical, error, warning, info"),
    (trigger_doc(payload={"summary": "s", "source": "h", "severity": "info", "timestamp": "yesterday"}),
     "'payload.timestamp' must be an ISO 8601 timestamp"),
    (trigger_doc(payload={"summary": "s", "source": "h", "severity": "info", "custom_details": [1]}),
     "'payload.custom_details' must be an object"),
    (trigger_doc(links=[{"text": "no href"}]), "'links[0].href' is missing or blank"),
    (trigger_doc(images=[{"src": "http://x/a.png"}]), "'images[0].src' must be an https URL"),
    (trigger_doc(images=[{"alt": "a"}]), "'images[0].src' is missing or blank"),
    (trigger_doc(client=5), "'client' must be a string"),
    (["not", "an", "object"], "Event object must be a JSON object"),
    (b"{not json", "Event object is not valid JSON"),
    (trigger_doc(payload={"summary": "s", "source": "h", "severity": "info",
                          "custom_details": {"x": "y" * 512_000}}),
     "Event object exceeds the maximum size of 512000 bytes"),
])
async def test_receiver_answers_400_for_each_broken_rule(pd_receiver: PagerDutyReceiver,
                                                         session: aiohttp.ClientSession, body: Any,
                                                         error: str) -> None:
    status, doc = await post(session, pd_receiver.url + "/v2/enqueue", body)
    assert status == 400
    assert doc["status"] == "invalid event" and doc["message"] == "Event object is invalid"
    assert any(e.startswith(error) for e in doc["errors"]), doc["errors"]
    assert pd_receiver.events == [] and pd_receiver.incidents == []


async def test_receiver_accepts_valid_events_and_generates_dedup_keys(pd_receiver: PagerDutyReceiver,
                                                                      session: aiohttp.ClientSession) -> None:
    url = pd_receiver.url + "/v2/enqueue"
    status, doc = await post(session, url, trigger_doc(
        dedup_key=None, links=[{"href": "https://x", "text": "t"}], images=[{"src": "https://x/a.png"}],
        payload={"summary": "s", "source": "h", "severity": "warning",
                 "timestamp": "2024-05-01T12:00:00.000Z", "component": "c", "group": "g", "class": "k",
                 "custom_details": {"a": 1}}))
    assert status == 202 and doc["status"] == "success" and doc["message"] == "Event processed"
    assert len(doc["dedup_key"]) >= 16 and pd_receiver.incidents[0].dedup_key == doc["dedup_key"]
    status, doc = await post(session, url, trigger_doc(), content_type="text/plain")
    assert status == 400 and doc["errors"][0].startswith("Content-Type must be application/json")
    change = {"routing_key": KEY, "payload": {"summary": "deploy 42", "source": "ci",
                                               "timestamp": "2024-05-01T12:00:00Z"}}
    status, doc = await post(session, pd_receiver.url + "/v2/change/enqueue", change)
    assert status == 202 and doc["message"] == "Change event processed"
    status, doc = await post(session, pd_receiver.url + "/v2/change/enqueue", {**change, "dedup_key": "x"})
    assert status == 400 and doc["errors"] == ["'dedup_key' is not allowed in a change event"]
    assert [e.outcome for e in pd_receiver.events] == ["opened", "change"]


async def test_receiver_alert_state_follows_dedup_semantics(pd_receiver: PagerDutyReceiver,
                                                           session: aiohttp.ClientSession) -> None:
    url = pd_receiver.url + "/v2/enqueue"
    resolve = {"routing_key": KEY, "event_action": "resolve", "dedup_key": "k1"}
    steps = [trigger_doc(), trigger_doc(), {**resolve, "routing_key": TICKET_KEY},
             {**resolve, "event_action": "acknowledge"}, resolve, resolve, trigger_doc()]
    for body in steps:
        status, doc = await post(session, url, body)
        assert status == 202 and doc["dedup_key"] == "k1"
    assert [e.outcome for e in pd_receiver.events] == [
        "opened", "appended", "dropped", "acknowledged", "resolved", "dropped", "opened"]
    assert pd_receiver.events[2].reason == "routing_key differs from the open alert's"
    assert pd_receiver.events[5].reason == "no open alert with this dedup_key"
    first, second = pd_receiver.incidents_for("k1")
    assert (first.trigger_count, first.status, second.status) == (2, "resolved", "open")
    assert first.acknowledged_at is not None and first.resolved_at is not None


async def test_receiver_limits_each_routing_key_over_a_sliding_window(session: aiohttp.ClientSession) -> None:
    now = [0.0]
    receiver = PagerDutyReceiver(clock=lambda: now[0])
    await receiver.start()
    try:
        url = receiver.url + "/v2/enqueue"
        answers = []
        for i in range(121):
            now[0] = i * 0.1
            answers.append((await post(session, url, trigger_doc(dedup_key=f"k{i}")))[0])
        assert answers == [202] * 120 + [429]
        assert (await post(session, url, trigger_doc(routing_key=TICKET_KEY)))[0] == 202  # other key
        now[0] = 60.05  # the first event (t=0) left the 60 s window
        assert (await post(session, url, trigger_doc(dedup_key="late")))[0] == 202
        assert (await post(session, url, trigger_doc(dedup_key="later")))[0] == 429
    finally:
        await receiver.stop()


def test_receiver_as_a_process_with_admin_endpoints(pd_receiver_process: str) -> None:
    url = pd_receiver_process

    def call(path: str, body: Any = None, method: str = "POST") -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as e:
            with e:
                return e.code, json.loads(e.read())

    assert call("/_admin/fail?status=502&count=1")[0] == 200
    assert call("/v2/enqueue", trigger_doc())[0] == 502
    assert call("/v2/enqueue", trigger_doc()) == (202, {"status": "success", "message": "Event processed",
                                                        "dedup_key": "k1"})
    status, incidents = call("/_admin/incidents", method="GET")
    assert status == 200 and len(incidents) == 1 and incidents[0]["dedup_key"] == "k1"
    assert incidents[0]["routing_key"] == KEY[:4] + "..."
    status, requests = call("/_admin/requests", method="GET")
    assert [r["answer"] for r in requests] == ["502", "202"]
    assert call("/_admin/down?seconds=1")[0] == 200
    with pytest.raises(urllib.error.URLError):
        call("/v2/enqueue", trigger_doc())
    deadline = time.monotonic() + 5
    while True:  # back by itself
        try:
            assert call("/_admin/events", method="GET")[0] == 200
            break
        except urllib.error.URLError:
            assert time.monotonic() < deadline
            time.sleep(0.05)


# ---------------------------------------------------------------------------------------------
# Sender and delivery loop against the contract server


async def test_one_incident_per_trigger_resolve_pair(pd_receiver: PagerDutyReceiver,
                                                     session: aiohttp.ClientSession, tmp_path: Path) -> None:
    with Outbox(tmp_path / "outbox.sqlite3") as box:
        loop = make_loop(box, [make_sender(session, pd_receiver)])
        dkey = dedup_key("checkout", "page")
        for i, action in enumerate(["trigger", "resolve", "trigger", "resolve"]):
            box.append([ev("checkout", action, 1000.0 + i)])
            assert await loop.flush(5.0) == 0
        incidents = pd_receiver.incidents_for(dkey)
        assert [(i.status, i.trigger_count) for i in incidents] == [("resolved", 1), ("resolved", 1)]
        assert actions_seen(pd_receiver, dkey) == ["trigger", "resolve", "trigger", "resolve"]
        trig = pd_receiver.events_for(dkey)[0].body
        assert trig["payload"]["summary"].startswith("checkout burning 15.2x budget (1h 15.2x, 5m 31.0x")
        assert loop.delivered == 4 and loop.retried == 0 and loop.dead == 0


async def test_outage_then_429_then_5xx_delivers_everything_in_order(
        pd_receiver: PagerDutyReceiver, session: aiohttp.ClientSession, tmp_path: Path) -> None:
    registry = CollectorRegistry()
    with Outbox(tmp_path / "outbox.sqlite3", coalesce=False) as box:
        loop = make_loop(box, [make_sender(session, pd_receiver)], registry=registry)
        slos = [f"slo-{i}" for i in range(4)]
        await pd_receiver.down()
        box.append([ev(s, "trigger", 100.0) for s in slos])
        assert await loop.flush(0.3) == 4  # nothing gets through while the server is down
        assert loop.retried >= 2 and loop.delivered == 0
        box.append([ev(s, "resolve", 200.0) for s in slos])
        box.append([ev(s, "trigger", 300.0) for s in slos[:2]])
        await pd_receiver.up()
        pd_receiver.fail_next(3, 429)
        pd_receiver.fail_next(1, 500)
        pd_receiver.fail_next(1, 502)
        pd_receiver.fail_next(1, 503)
        assert await loop.flush(10.0) == 0
        for s in slos:
            dkey = dedup_key(s, "page")
            expected = ["trigger", "resolve", "trigger"] if s in slos[:2] else ["trigger", "resolve"]
            assert actions_seen(pd_receiver, dkey) == expected
            statuses = [i.status for i in pd_receiver.incidents_for(dkey)]
            assert statuses == (["resolved", "open"] if s in slos[:2] else ["resolved"])
        answers = [r.answer for r in pd_receiver.requests]
        assert answers.count("429") == 3 and {"500", "502", "503"} <= set(answers)
        assert loop.delivered == 10 and loop.dead == 0 and loop.retried >= 2 + 6
        assert registry.get_sample_value("sloburn_alert_deliveries_total",
                                         {"sink": "pagerduty", "result": "delivered"}) == 10
        assert registry.get_sample_value("sloburn_outbox_pending") == 0
        assert all(r.status == "delivered" for r in box.list())


async def test_400_goes_to_dead_letters_and_is_never_retried(
        pd_receiver: PagerDutyReceiver, session: aiohttp.ClientSession, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    registry = CollectorRegistry()
    with Outbox(tmp_path / "outbox.sqlite3") as box:
        loop = make_loop(box, [make_sender(session, pd_receiver, ticket_key=BAD_KEY)], registry=registry)
        box.append([ev("search", "trigger", 10.0, severity="ticket"), ev("checkout", "trigger", 10.0)])
        assert await loop.flush(5.0) == 0
        for _ in range(3):  # more passes: the dead row is not offered again
            await loop.drain_once()
        (dead,) = box.list("dead")
        assert dead.slo == "search" and dead.attempts == 1
        assert dead.errors == ["Length of 'routing_key' is incorrect (should be 32 characters)"]
        assert [r.answer for r in pd_receiver.requests if r.routing_key == BAD_KEY] == ["400"]
        assert loop.dead == 1 and loop.delivered == 1 and loop.retried == 0
        assert registry.get_sample_value("sloburn_alert_deliveries_total",
                                         {"sink": "pagerduty", "result": "dead"}) == 1
        # The later resolve of the same key is not held back by the dead trigger.
        box.append([ev("search", "resolve", 20.0, severity="ticket")])
        assert await loop.flush(5.0) == 0
        assert [r.action for r in box.list("dead")] == ["trigger", "resolve"]
        assert all(BAD_KEY not in (r.reason or "") + "".join(r.errors) for r in box.list())
    dead_lines = [r for r in caplog.records if "dead-lettered" in r.getMessage()]
    assert len(dead_lines) == 2 and "should be 32 characters" in dead_lines[0].getMessage()
    assert BAD_KEY not in caplog.text and KEY not in caplog.text and TICKET_KEY not in caplog.text


async def test_hangs_and_connection_resets_are_retried(
        pd_receiver: PagerDutyReceiver, session: aiohttp.ClientSession, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    with Outbox(tmp_path / "outbox.sqlite3") as box:
        loop = make_loop(box, [make_sender(session, pd_receiver, timeout_s=0.2)])
        pd_receiver.hang_next(1, seconds=30.0)
        pd_receiver.reset_next(2)
        box.append([ev("checkout", "trigger", 10.0)])
        t0 = time.monotonic()
        assert await loop.flush(5.0) == 0
        assert time.monotonic() - t0 >= 0.2  # the client waited out its timeout once
        assert [r.answer for r in pd_receiver.requests] == ["reset", "reset", "202"]
        assert loop.retried == 3 and loop.delivered == 1
        (row,) = box.list("delivered")
        assert row.attempts == 4
        messages = [r.getMessage() for r in caplog.records]
        assert any("no answer within 0.2s" in m for m in messages)
        assert any("ServerDisconnectedError" in m or "ClientOSError" in m for m in messages)
    await pd_receiver.stop()  # ends the hung request: it is dropped, never processed
    assert [r.answer for r in pd_receiver.requests] == ["reset", "reset", "202", "hang"]
    assert len(pd_receiver.incidents) == 1 and len(pd_receiver.events) == 1


async def test_trigger_accepted_during_a_client_timeout_opens_no_second_incident(
        pd_receiver: PagerDutyReceiver, session: aiohttp.ClientSession, tmp_path: Path) -> None:
    with Outbox(tmp_path / "outbox.sqlite3") as box:
        loop = make_loop(box, [make_sender(session, pd_receiver, timeout_s=0.1)])
        pd_receiver.hang_next(1, seconds=0.3, process=True)
        box.append([ev("checkout", "trigger", 10.0)])
        assert await loop.flush(5.0) == 0
        deadline = time.monotonic() + 5.0
        while len(pd_receiver.events) < 2:  # the hung trigger is processed late, after the retry
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        assert sorted(r.answer for r in pd_receiver.requests) == ["202", "hang+202"]
        box.append([ev("checkout", "resolve", 20.0)])  # attempted trigger: never coalesced
        assert await loop.flush(5.0) == 0
        (incident,) = pd_receiver.incidents
        assert incident.trigger_count == 2 and incident.status == "resolved"


async def test_restart_replay_sends_no_duplicate(pd_receiver: PagerDutyReceiver,
                                                 session: aiohttp.ClientSession, tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    events = [ev("checkout", "trigger", 10.0), ev("search", "trigger", 10.0)]
    with Outbox(path) as box:
        box.append(events)
        assert await make_loop(box, [make_sender(session, pd_receiver)]).flush(5.0) == 0
        # Crash while sending the next transition: counted as attempted, never marked delivered.
        box.append([ev("checkout", "resolve", 20.0)])
        row = box.next_batch()[0]
        box.begin_attempt(row.id)
        status, _ = await post(session, pd_receiver.url + "/v2/enqueue",
                               {"routing_key": KEY, "event_action": "resolve", "dedup_key": row.dedup_key})
        assert status == 202
    with Outbox(path) as box:  # the restarted daemon replays the same transitions
        assert box.append([*events, ev("checkout", "resolve", 20.0)]) == 0
        loop = make_loop(box, [make_sender(session, pd_receiver)])
        assert await loop.flush(5.0) == 0
        assert loop.delivered == 1
    assert len(pd_receiver.incidents) == 2
    assert [i.trigger_count for i in pd_receiver.incidents] == [1, 1]
    checkout = pd_receiver.incidents_for(dedup_key("checkout", "page"))[0]
    assert checkout.status == "resolved"
    outcomes = [e.outcome for e in pd_receiver.events_for(checkout.dedup_key)]
    assert outcomes == ["opened", "resolved", "dropped"]


async def test_backlog_coalesces_pairs_never_sent_but_resolves_sent_triggers(
        pd_receiver: PagerDutyReceiver, session: aiohttp.ClientSession, tmp_path: Path) -> None:
    with Outbox(tmp_path / "outbox.sqlite3") as box:
        loop = make_loop(box, [make_sender(session, pd_receiver)])
        box.append([ev("sent", "trigger", 1.0)])
        assert await loop.flush(5.0) == 0
        box.append([ev("sent", "resolve", 2.0), ev("flap", "trigger", 2.0), ev("flap", "resolve", 3.0)])
        assert await loop.flush(5.0) == 0
        assert [i.status for i in pd_receiver.incidents_for(dedup_key("sent", "page"))] == ["resolved"]
        assert pd_receiver.events_for(dedup_key("flap", "page")) == []
        assert box.counts_by_status()["coalesced"] == 2


async def test_pacing_keeps_under_the_receivers_limit(session: aiohttp.ClientSession, tmp_path: Path) -> None:
    speed = 40.0  # one real second is 40 s on the shared clock; 150 events at 100/min take ~84 s
    t0 = time.monotonic()

    def clock() -> float:
        return (time.monotonic() - t0) * speed

    async def sleep(s: float) -> None:
        await asyncio.sleep(s / speed)

    receiver = PagerDutyReceiver(clock=clock)  # PagerDuty's own 120 per 60 s
    await receiver.start()
    try:
        with Outbox(tmp_path / "outbox.sqlite3") as box:
            box.append([ev(f"slo-{i}", "trigger", 1.0) for i in range(150)])
            loop = make_loop(box, [make_sender(session, receiver)], rate_per_min=100.0, burst=10.0,
                             clock=clock, sleep=sleep, backoff_base_s=5.0, backoff_cap_s=30.0)
            start = clock()
            assert await loop.flush(20.0) == 0
            took_s = clock() - start
        times = [r.clock_s for r in receiver.requests]
        assert [r.answer for r in receiver.requests] == ["202"] * 150
        worst = max(sum(1 for u in times if t <= u < t + 60.0) for t in times)
        assert worst <= 120
        assert took_s >= (150 - 10) / 100 * 60 * 0.95  # really paced, not just lucky
        print(f"150 events paced over {took_s:.0f} s of the shared clock, at most {worst} in any 60 s")

        # Control: without pacing the same receiver refuses the excess, so the limit above is real.
        with Outbox(tmp_path / "fast.sqlite3") as box:
            box.append([ev(f"fast-{i}", "trigger", 1.0) for i in range(150)])
            fast = make_loop(box, [make_sender(session, receiver)], clock=clock, sleep=sleep,
                             backoff_base_s=600.0, backoff_cap_s=600.0)
            await fast.drain_once()
        assert any(r.answer == "429" for r in receiver.requests[150:])
    finally:
        await receiver.stop()


async def test_unexpected_errors_stop_the_loop(pd_receiver: PagerDutyReceiver, tmp_path: Path) -> None:
    session = aiohttp.ClientSession()
    sender = make_sender(session, pd_receiver)
    await session.close()  # a closed session is a bug in the wiring, not a delivery failure
    with Outbox(tmp_path / "outbox.sqlite3") as box:
        box.append([ev("checkout", "trigger", 1.0)])
        loop = make_loop(box, [sender])
        with pytest.raises(RuntimeError, match="Session is closed"):
            await asyncio.wait_for(loop.run(), 5.0)
        (row,) = box.list()
        assert row.status == "pending" and row.attempts == 1
        assert loop.retried == 0 and loop.dead == 0


# ---------------------------------------------------------------------------------------------
# Generic webhook


@pytest.fixture
async def hook_server() -> AsyncIterator[tuple[str, list[bytes], list[int]]]:
    """A plain HTTP endpoint recording bodies; answers the queued statuses, then 200."""
    bodies: list[bytes] = []
    statuses: list[int] = []

    async def handle(request: web.Request) -> web.Response:
        bodies.append(await request.read())
        return web.Response(status=statuses.pop(0) if statuses else 200, text="not here")

    app = web.Application()
    app.router.add_post("/hooks/s3cr3t", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/hooks/s3cr3t", bodies, statuses
    finally:
        await runner.cleanup()


async def test_webhook_delivers_events_as_json_and_classifies_answers(
        hook_server: tuple[str, list[bytes], list[int]], session: aiohttp.ClientSession,
        tmp_path: Path) -> None:
    url, bodies, statuses = hook_server
    statuses.extend([408, 503])
    with Outbox(tmp_path / "outbox.sqlite3", sinks=("webhook",)) as box:
        loop = make_loop(box, [WebhookSender(session, url, timeout_s=2.0)])
        box.append([ev("checkout", "trigger", 1.0)])
        assert await loop.flush(5.0) == 0
        assert loop.retried == 2 and loop.delivered == 1
        assert msgspec.json.decode(bodies[-1], type=AlertEvent) == ev("checkout", "trigger", 1.0)
        statuses.append(404)
        box.append([ev("checkout", "resolve", 2.0)])
        assert await loop.flush(5.0) == 0
        (dead,) = box.list("dead")
        assert dead.reason == "webhook: HTTP 404: not here" and "s3cr3t" not in dead.reason
        assert loop.dead == 1 and len(bodies) == 4
