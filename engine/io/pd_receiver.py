"""A local server that honours the PagerDuty Events API v2 contract, with fault injection.

PagerDuty itself cannot be reached from tests or demos, so this server enforces every rule of
``reference/pagerduty-events-v2.md``: it validates ``POST /v2/enqueue`` and ``POST /v2/change/enqueue``
bodies and answers 400 with PagerDuty's body shape, keeps per-``dedup_key`` alert state (open,
acknowledged, resolved) scoped by routing key as PagerDuty does, records every accepted event, and
rate-limits itself to ``rate_limit`` events per sliding ``rate_window_s`` per routing key (429).

Faults are queued, first in first out, and each applies to the next ``count`` event requests:
``fail_next`` (answer 429/500/502/503...), ``hang_next`` (sleep past the client's timeout, then drop
the event or process it late), ``reset_next`` (TCP reset, no answer). ``down`` stops listening (new
connections are refused, kept-alive ones are closed) until ``up`` or for ``for_s`` seconds.

The same controls exist over HTTP under ``/_admin/`` for use from another process::

    POST /_admin/fail?status=503&count=3     POST /_admin/hang?count=2&seconds=5&process=1
    POST /_admin/reset?count=1               POST /_admin/down?seconds=5
    POST /_admin/clear                       GET  /_admin/events | /_admin/incidents | /_admin/requests

Run it as a process with ``python -m engine.io.pd_receiver --host 127.0.0.1 --port 0``: the first
line on stdout is its base URL.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import signal
import socket
import struct
import sys
import time
import uuid
from collections import deque
from collections.abc import Callable
from datetime import datetime
from typing import Any

import msgspec
from aiohttp import web

MAX_BODY_BYTES = 512_000
"""Largest accepted body, bytes (Alertmanager's reading of PagerDuty's 512 KB)."""

_ROUTING_KEY = re.compile(r"[A-Za-z0-9]{32}")
_ACTIONS = ("trigger", "acknowledge", "resolve")
_SEVERITIES = ("critical", "error", "warning", "info")


# ---------------------------------------------------------------------------------------------
# Validation (pure)


def _is_blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _check_str(errors: list[str], doc: dict[str, Any], field: str, where: str, *, required: bool = False,
               max_len: int | None = None) -> None:
    value = doc.get(field)
    if _is_blank(value):
        if required:
            errors.append(f"'{where}{field}' is missing or blank")
        return
    if not isinstance(value, str):
        errors.append(f"'{where}{field}' must be a string")
    elif max_len is not None and len(value) > max_len:
        errors.append(f"Length of '{where}{field}' is too long (should be at most {max_len} characters)")


def _check_routing_key(errors: list[str], doc: dict[str, Any]) -> None:
    key = doc.get("routing_key")
    if _is_blank(key):
        errors.append("'routing_key' is missing or blank")
    elif not isinstance(key, str):
        errors.append("'routing_key' must be a string")
    elif len(key) != 32:
        errors.append("Length of 'routing_key' is incorrect (should be 32 characters)")
    elif not _ROUTING_KEY.fullmatch(key):
        errors.append("'routing_key' must contain only alphanumeric characters")


def _check_links_images(errors: list[str], doc: dict[str, Any]) -> None:
    for field, required, optional in (("links", "href", ("text",)), ("images", "src", ("href", "alt"))):
        items = doc.get(field)
        if items is None:
            continue
        if not isinstance(items, list):
            errors.append(f"'{field}' must be an array")
            continue
        for i, item in enumerate(items):
            where = f"{field}[{i}]."
            if not isinstance(item, dict):
                errors.append(f"'{field}[{i}]' must be an object")
                continue
            _check_str(errors, item, required, where, required=True)
            for name in optional:
                _check_str(errors, item, name, where)
            src = item.get(required)
            if field == "images" and isinstance(src, str) and src.strip() and not src.startswith("https://"):
                errors.append(f"'images[{i}].src' must be an https URL")


def _check_payload_common(errors: list[str], payload: dict[str, Any]) -> None:
    ts = payload.get("timestamp")
    if ts is not None:
        ok = isinstance(ts, str)
        if ok:
            try:
                datetime.fromisoformat(ts)
            except ValueError:
                ok = False
        if not ok:
            errors.append("'payload.timestamp' must be an ISO 8601 timestamp")
    details = payload.get("custom_details")
    if details is not None and not isinstance(details, dict):
        errors.append("'payload.custom_details' must be an object")


def validate_alert_event(doc: Any) -> list[str]:
    """Every rule an alert event (``/v2/enqueue``) breaks, in PagerDuty's wording; empty when valid."""
    if not isinstance(doc, dict):
        return ["Event object must be a JSON object"]
    errors: list[str] = []
    _check_routing_key(errors, doc)
    action = doc.get("event_action")
    if _is_blank(action):
        errors.append("'event_action' is missing or blank")
    elif action not in _ACTIONS:
        errors.append(f"'event_action' must be one of {', '.join(_ACTIONS)}")
    _check_str(errors, doc, "dedup_key", "", required=action in ("acknowledge", "resolve"), max_len=255)
    payload = doc.get("payload")
    if payload is None:
        if action == "trigger":
            errors.append("'payload' is missing")
    elif not isinstance(payload, dict):
        errors.append("'payload' must be an object")
    else:
        trigger = action == "trigger"
        _check_str(errors, payload, "summary", "payload.", required=trigger, max_len=1024)
        _check_str(errors, payload, "source", "payload.", required=trigger)
        sev = payload.get("severity")
        if _is_blank(sev):
            if trigger:
                errors.append("'payload.severity' is missing or blank")
        elif sev not in _SEVERITIES:
            errors.append(f"'payload.severity' must be one of {', '.join(_SEVERITIES)}")
        for name in ("component", "group", "class"):
            _check_str(errors, payload, name, "payload.")
        _check_payload_common(errors, payload)
    _check_links_images(errors, doc)
    # client/client_url only mean something on a trigger; PagerDuty ignores them otherwise.
    for name in ("client", "client_url"):
        _check_str(errors, doc, name, "")
    return errors


def validate_change_event(doc: Any) -> list[str]:
    """Every rule a change event (``/v2/change/enqueue``) breaks; empty when valid."""
    if not isinstance(doc, dict):
        return ["Event object must be a JSON object"]
    errors: list[str] = []
    _check_routing_key(errors, doc)
    for name in ("event_action", "dedup_key"):
        if name in doc:
            errors.append(f"'{name}' is not allowed in a change event")
    payload = doc.get("payload")
    if not isinstance(payload, dict):
        errors.append("'payload' is missing" if payload is None else "'payload' must be an object")
    else:
        _check_str(errors, payload, "summary", "payload.", required=True, max_len=1024)
        _check_str(errors, payload, "source", "payload.")
        if "severity" in payload:
            errors.append("'payload.severity' is not allowed in a change event")
        _check_payload_common(errors, payload)
    _check_links_images(errors, doc)
    return errors


# ---------------------------------------------------------------------------------------------
# Records


class ReceivedEvent(msgspec.Struct, kw_only=True):
    """One accepted (202) event and what it did to the alert state.

    ``outcome``: ``opened``, ``appended`` (trigger on an open alert), ``acknowledged``, ``resolved``,
    ``dropped`` (follow-up with no open alert for its routing key; ``reason`` says why) or ``change``.
    """

    seq: int
    path: str
    received_at: float
    clock_s: float
    routing_key: str
    event_action: str | None
    dedup_key: str | None
    outcome: str
    incident_id: int | None = None
    reason: str | None = None
    body: dict[str, Any] = msgspec.field(default_factory=dict)


class Incident(msgspec.Struct, kw_only=True):
    """One alert opened by a trigger; later triggers on the open key add to ``trigger_count``."""

    id: int
    routing_key: str
    dedup_key: str
    opened_at: float
    summary: str
    severity: str
    status: str = "open"
    trigger_count: int = 1
    acknowledged_at: float | None = None
    resolved_at: float | None = None


class RequestRecord(msgspec.Struct, kw_only=True):
    """Every request to an event endpoint with what was answered (a code, ``hang``, ``reset``, ``down``)."""

    seq: int
    path: str
    received_at: float
    clock_s: float
    answer: str
    dedup_key: str | None = None
    routing_key: str | None = None


class Fault(msgspec.Struct, kw_only=True):
    kind: str  # status | hang | reset
    remaining: int
    status: int = 503
    hang_s: float = 30.0
    process: bool = False


def _mask(key: str | None) -> str | None:
    return None if key is None else (key[:4] + "..." if len(key) > 8 else "...")


# ---------------------------------------------------------------------------------------------
# Server


class PagerDutyReceiver:
    """The contract server; start in-process with :meth:`start`, stop with :meth:`stop`.

    Parameters
    ----------
    host, port
        Where to listen; port 0 picks a free port (kept across :meth:`down`/:meth:`up`).
    rate_limit, rate_window_s
        More than ``rate_limit`` accepted events per routing key within the sliding ``rate_window_s``
        seconds are answered 429. Defaults: 120 per 60 s, as PagerDuty documents.
    clock
        Monotonic seconds for the rate limiter and ``clock_s`` of records (inject a fast clock to
        test pacing in seconds); default ``time.monotonic``.
    wall_clock
        Epoch seconds for ``received_at``; default ``time.time``.
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, rate_limit: int = 120,
                 rate_window_s: float = 60.0, clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.host = host
        self.port = port
        self.rate_limit = rate_limit
        self.rate_window_s = rate_window_s
        self._clock = clock
        self._wall = wall_clock
        self.events: list[ReceivedEvent] = []
        self.incidents: list[Incident] = []
        self.requests: list[RequestRecord] = []
        self._open: dict[tuple[str, str], Incident] = {}
        self._faults: deque[Fault] = deque()
        self._accepted: dict[str, deque[float]] = {}
        self._seq = 0
        self._is_down = False
        self._up_task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None

    def __repr__(self) -> str:
        return f"PagerDutyReceiver(url={self.url!r}, events={len(self.events)})"

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:43211``; post alert events to ``url + '/v2/enqueue'``."""
        return f"http://{self.host}:{self.port}"

    async def start(self) -> str:
        """Listen and return the base URL."""
        app = web.Application(client_max_size=4 * MAX_BODY_BYTES)
        app.router.add_post("/v2/enqueue", self._enqueue)
        app.router.add_post("/v2/change/enqueue", self._enqueue)
        for name in ("fail", "hang", "reset", "down", "clear"):
            app.router.add_post(f"/_admin/{name}", self._admin_control)
        app.router.add_get("/_admin/{what}", self._admin_get)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await self._listen()
        return self.url

    async def _listen(self) -> None:
        assert self._runner is not None
        self._site = web.TCPSite(self._runner, self.host, self.port)
        await self._site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        """Stop listening and end hanging requests; idempotent."""
        self._stopping.set()
        if self._up_task is not None:
            self._up_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._up_task
            self._up_task = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
            self._site = None

    async def down(self, for_s: float | None = None) -> None:
        """Refuse connections (closed listener) until :meth:`up`, or for ``for_s`` seconds."""
        self._is_down = True
        if self._site is not None:
            await self._site.stop()
            self._site = None
        if self._up_task is not None:
            self._up_task.cancel()
            self._up_task = None
        if for_s is not None:
            self._up_task = asyncio.get_running_loop().create_task(self._up_later(for_s))

    async def _up_later(self, for_s: float) -> None:
        await asyncio.sleep(for_s)
        self._up_task = None
        await self.up()

    async def up(self) -> None:
        """Listen again on the same port after :meth:`down`."""
        self._is_down = False
        if self._site is None and self._runner is not None:
            await self._listen()

    # -- faults ---------------------------------------------------------------------------------

    def fail_next(self, count: int, status: int = 503) -> None:
        """Answer the next ``count`` event requests with ``status`` (429, 500, 502, 503 ...)."""
        self._faults.append(Fault(kind="status", remaining=count, status=status))

    def hang_next(self, count: int, seconds: float = 30.0, *, process: bool = False) -> None:
        """Hold the next ``count`` requests ``seconds`` (past the client's timeout).

        With ``process`` the event is then accepted as if PagerDuty had processed it while the
        client gave up, which is how a retried trigger can reach PagerDuty twice.
        """
        self._faults.append(Fault(kind="hang", remaining=count, hang_s=seconds, process=process))

    def reset_next(self, count: int) -> None:
        """Reset the connection (TCP RST, no answer) on the next ``count`` requests."""
        self._faults.append(Fault(kind="reset", remaining=count))

    def clear_faults(self) -> None:
        self._faults.clear()

    def _take_fault(self) -> Fault | None:
        while self._faults and self._faults[0].remaining <= 0:
            self._faults.popleft()
        if not self._faults:
            return None
        fault = self._faults[0]
        fault.remaining -= 1
        return fault

    # -- queries --------------------------------------------------------------------------------

    def incidents_for(self, dedup_key: str) -> list[Incident]:
        return [i for i in self.incidents if i.dedup_key == dedup_key]

    def events_for(self, dedup_key: str) -> list[ReceivedEvent]:
        return [e for e in self.events if e.dedup_key == dedup_key]

    # -- handlers -------------------------------------------------------------------------------

    def _record(self, request: web.Request, arrival: tuple[float, float], answer: str, doc: Any) -> None:
        self._seq += 1
        d = doc if isinstance(doc, dict) else {}
        rk, dk = d.get("routing_key"), d.get("dedup_key")
        wall, clock = arrival
        self.requests.append(RequestRecord(
            seq=self._seq, path=request.path, received_at=wall, clock_s=clock, answer=answer,
            routing_key=rk if isinstance(rk, str) else None, dedup_key=dk if isinstance(dk, str) else None))

    @staticmethod
    def _abort(request: web.Request, *, rst: bool) -> web.Response:
        transport = request.transport
        if transport is not None:
            sock = transport.get_extra_info("socket")
            if rst and sock is not None:
                # SO_LINGER with a zero timeout turns close() into a TCP RST.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        return web.Response(status=500)  # never reaches the client

    async def _enqueue(self, request: web.Request) -> web.StreamResponse:
        arrival = (self._wall(), self._clock())
        if self._is_down:
            self._record(request, arrival, "down", None)
            return self._abort(request, rst=False)
        raw = await request.read()
        doc: Any = None
        with contextlib.suppress(msgspec.DecodeError):
            doc = msgspec.json.decode(raw)
        fault = self._take_fault()
        if fault is not None and fault.kind == "status":
            self._record(request, arrival, str(fault.status), doc)
            return web.json_response({"status": "error", "message": "Injected failure"}, status=fault.status)
        if fault is not None and fault.kind == "reset":
            self._record(request, arrival, "reset", doc)
            return self._abort(request, rst=True)
        if fault is not None and fault.kind == "hang":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), fault.hang_s)
            if not fault.process or self._stopping.is_set():
                self._record(request, arrival, "hang", doc)
                return self._abort(request, rst=False)
            return self._process(request, arrival, raw, doc, note="hang+")
        return self._process(request, arrival, raw, doc)

    def _process(self, request: web.Request, arrival: tuple[float, float], raw: bytes, doc: Any,
                 note: str = "") -> web.Response:
        change = request.path == "/v2/change/enqueue"
        if request.content_type != "application/json":
            errors = [f"Content-Type must be application/json, got {request.content_type!r}"]
        elif len(raw) > MAX_BODY_BYTES:
            errors = [f"Event object exceeds the maximum size of {MAX_BODY_BYTES} bytes ({len(raw)} bytes)"]
        elif doc is None:
            errors = ["Event object is not valid JSON"]
        else:
            errors = validate_change_event(doc) if change else validate_alert_event(doc)
        if errors:
            self._record(request, arrival, note + "400", doc)
            body = {"status": "invalid event", "message": "Event object is invalid", "errors": errors}
            return web.json_response(body, status=400)
        now = self._clock()
        window = self._accepted.setdefault(doc["routing_key"], deque())
        while window and window[0] <= now - self.rate_window_s:
            window.popleft()
        if len(window) >= self.rate_limit:
            self._record(request, arrival, note + "429", doc)
            return web.json_response({"status": "throttle event", "message": "Requests for this service "
                                      "are arriving too quickly. Please retry later."}, status=429)
        window.append(now)
        self._record(request, arrival, note + "202", doc)
        if change:
            self._store(request, doc, None, None, outcome="change")
            return web.json_response({"status": "success", "message": "Change event processed"}, status=202)
        dedup = doc.get("dedup_key") or uuid.uuid4().hex
        self._apply(request, doc, dedup)
        return web.json_response({"status": "success", "message": "Event processed", "dedup_key": dedup},
                                 status=202)

    def _store(self, request: web.Request, doc: dict[str, Any], action: str | None, dedup: str | None, *,
               outcome: str, incident: Incident | None = None, reason: str | None = None) -> None:
        self.events.append(ReceivedEvent(
            seq=self._seq, path=request.path, received_at=self._wall(), clock_s=self._clock(),
            routing_key=doc["routing_key"], event_action=action, dedup_key=dedup, outcome=outcome,
            incident_id=incident.id if incident else None, reason=reason, body=doc))

    def _apply(self, request: web.Request, doc: dict[str, Any], dedup: str) -> None:
        action, rk = doc["event_action"], doc["routing_key"]
        key = (rk, dedup)
        incident = self._open.get(key)
        if action == "trigger":
            if incident is not None:
                incident.trigger_count += 1
                self._store(request, doc, action, dedup, outcome="appended", incident=incident)
                return
            payload = doc["payload"]
            incident = Incident(id=len(self.incidents) + 1, routing_key=rk, dedup_key=dedup,
                                opened_at=self._wall(), summary=payload["summary"],
                                severity=payload["severity"])
            self.incidents.append(incident)
            self._open[key] = incident
            self._store(request, doc, action, dedup, outcome="opened", incident=incident)
            return
        if incident is None:
            other = any(k[1] == dedup for k in self._open)
            reason = ("routing_key differs from the open alert's" if other
                      else "no open alert with this dedup_key")
            self._store(request, doc, action, dedup, outcome="dropped", reason=reason)
            return
        if action == "acknowledge":
            incident.status = "acknowledged"
            incident.acknowledged_at = self._wall()
            self._store(request, doc, action, dedup, outcome="acknowledged", incident=incident)
            return
        incident.status = "resolved"
        incident.resolved_at = self._wall()
        del self._open[key]
        self._store(request, doc, action, dedup, outcome="resolved", incident=incident)

    # -- admin ----------------------------------------------------------------------------------

    async def _admin_control(self, request: web.Request) -> web.Response:
        name = request.path.rsplit("/", 1)[-1]
        q = request.query
        try:
            count = int(q.get("count", "1"))
            if name == "fail":
                self.fail_next(count, int(q.get("status", "503")))
            elif name == "hang":
                process = q.get("process", "0") in ("1", "true")
                self.hang_next(count, float(q.get("seconds", "30")), process=process)
            elif name == "reset":
                self.reset_next(count)
            elif name == "clear":
                self.clear_faults()
            else:
                # Over HTTP the server must come back by itself: a duration is required.
                # Closing the listener leaves this connection open, so the answer still goes out.
                await self.down(float(q["seconds"]))
        except (KeyError, ValueError) as e:
            return web.json_response({"status": "error", "message": f"bad parameter: {e}"}, status=400)
        return web.json_response({"status": "ok", "faults": len(self._faults)})

    async def _admin_get(self, request: web.Request) -> web.Response:
        what = request.match_info["what"]
        items: list[Any]
        if what == "events":
            items = self.events
        elif what == "incidents":
            items = self.incidents
        elif what == "requests":
            items = self.requests
        else:
            raise web.HTTPNotFound()
        out = msgspec.to_builtins(items)
        for item in out:  # routing keys are shown masked, including inside stored bodies
            item["routing_key"] = _mask(item.get("routing_key"))
            if isinstance(item.get("body"), dict):
                item["body"] = {**item["body"], "routing_key": _mask(item["body"].get("routing_key"))}
        return web.json_response(out)


async def _serve(args: argparse.Namespace) -> None:
    receiver = PagerDutyReceiver(host=args.host, port=args.port, rate_limit=args.rate_limit,
                                 rate_window_s=args.rate_window_s)
    url = await receiver.start()
    print(url, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await receiver.stop()


def main(argv: list[str] | None = None) -> int:
    """``python -m engine.io.pd_receiver``: serve until SIGINT/SIGTERM; prints the URL first."""
    parser = argparse.ArgumentParser(prog="python -m engine.io.pd_receiver",
                                     description="A local PagerDuty Events API v2 contract server.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--rate-limit", type=int, default=120, help="events per window per routing key")
    parser.add_argument("--rate-window-s", type=float, default=60.0)
    asyncio.run(_serve(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
