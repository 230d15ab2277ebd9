"""The daemon's HTTP surface (aiohttp): metrics, health, error budgets and active alerts.

Endpoints (all ``GET``; bound to 127.0.0.1 unless told otherwise)::

    /metrics             Prometheus text format (OpenMetrics when the scraper asks for it)
    /healthz             200 {"status": "ok"} | 503 {"status": "fail", "reasons": {component: why}}
    /readyz              same shape: broker connected, state restored, first tick done
    /v1/budgets          JSON list, one :class:`BudgetView` per SLO, in configuration order
    /v1/budgets/{slo}    one :class:`BudgetView`; 404 {"error": ...} for an unknown SLO
    /v1/alerts           JSON list of the last trigger of every SLO x severity that fires

The server reads everything through a :class:`DaemonView`; it never holds state of its own. Nothing
it answers carries a routing key or another secret: budgets and alerts are built from the engine's
records (which have none), and the free-text reasons of the health checks are scrubbed of anything
shaped like a routing key or URL credentials before they leave.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Protocol

import msgspec
from aiohttp import web
from prometheus_client.exposition import choose_encoder

from engine.alerts import AlertEvent, WindowCounts
from engine.durations import format_duration
from engine.engine import Engine
from engine.evaluator import BudgetPolicy, PolicyState, policy_state
from engine.io.metrics import Metrics

log = logging.getLogger("sloburn.http")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9464

_JSON = "application/json"
_SECRET_PATTERNS = (
    re.compile(r"(?<![A-Za-z0-9])[A-Za-z0-9]{32}(?![A-Za-z0-9])"),  # Events API v2 routing/integration key
    re.compile(r"(?<=://)[^/@\s]+@"),                                # user:password@ in a URL
    re.compile(r"(?i)((?:token|key|secret|password|authorization)\s*[=:]\s*)\S+"),
)


class DaemonView(Protocol):
    """What the HTTP server reads from the daemon.

    Handlers run on the event loop thread; the daemon mutates the engine only on that thread too,
    so a handler always sees the engine between two ticks.
    """

    @property
    def engine(self) -> Engine:
        """The running engine."""
        ...

    @property
    def metrics(self) -> Metrics:
        """The daemon's metrics (its registry is what ``/metrics`` serves)."""
        ...

    @property
    def budget_policy(self) -> BudgetPolicy:
        """Thresholds of the error-budget policy."""
        ...

    def health(self) -> tuple[bool, dict[str, str]]:
        """Alive: the supervisor's tasks are running. Reasons keyed by component."""
        ...

    def readiness(self) -> tuple[bool, dict[str, str]]:
        """Ready: broker connected, state restored, first tick done. Reasons keyed by component."""
        ...

    def active_alerts(self) -> list[AlertEvent]:
        """The last trigger of every SLO x severity that is firing."""
        ...


# ---------------------------------------------------------------------------------------------
# JSON shapes


class PolicyView(msgspec.Struct, frozen=True):
    """Error-budget policy state of an SLO and the thresholds (percent) that decide it."""

    state: PolicyState
    thresholds: BudgetPolicy


class BudgetView(msgspec.Struct, frozen=True, kw_only=True):
    """One SLO's error budget at the last evaluated instant (``/v1/budgets``).

    Attributes
    ----------
    slo, service
        SLO name and the service it watches.
    objective
        Objective in percent (99.9).
    period
        SLO period as a duration (``"30d"``).
    ts
        Last evaluated instant, Unix seconds of event time; None before the first evaluation.
    remaining_percent
        Error budget left over the period, percent (100 untouched, 0 spent, negative overspent);
        None when the period holds no events.
    budget_events
        Bad and total events over the period.
    burn_rates
        Burn rate per alert window (``"5m"``, ``"1h"`` ...); None where the window has no events.
    policy
        Policy state (healthy, warning, freeze, no_data) and its thresholds.
    firing
        Whether the ``page`` and ``ticket`` alerts fire.
    firing_tier
        The tier that fired, per severity, while it fires.
    """

    slo: str
    service: str
    objective: float
    period: str
    ts: float | None
    remaining_percent: float | None
    budget_events: WindowCounts
    burn_rates: dict[str, float | None]
    policy: PolicyView
    firing: dict[str, bool]
    firing_tier: dict[str, str | None]


class ErrorView(msgspec.Struct, frozen=True):
    error: str


class HealthView(msgspec.Struct, frozen=True, omit_defaults=True):
    status: str
    reasons: dict[str, str] = msgspec.field(default_factory=dict)


def budget_view(engine: Engine, slo: str, policy: BudgetPolicy) -> BudgetView:
    """The :class:`BudgetView` of one SLO; KeyError for an unknown name."""
    status = engine.status(slo)
    sp = engine.plan.slos[engine.plan.by_name[slo]]
    remaining = status.budget_remaining
    return BudgetView(
        slo=status.slo,
        service=sp.slo.service,
        objective=sp.objective,
        period=format_duration(sp.period_s),
        ts=status.ts,
        remaining_percent=None if remaining is None else remaining * 100.0,
        budget_events=status.budget_events,
        burn_rates=status.burn_rates,
        policy=PolicyView(state=policy_state(remaining, policy), thresholds=policy),
        firing=status.firing,
        firing_tier=status.firing_tier,
    )


def redact(text: str) -> str:
    """``text`` with routing-key-shaped tokens, URL credentials and ``key=value`` secrets masked."""
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) if m.re.groups else "") + "[redacted]", text)
    return text


def parse_listen(text: str) -> tuple[str, int]:
    """``"127.0.0.1:9464"``, ``"[::1]:9464"`` or ``":9464"`` -> (host, port); ValueError otherwise."""
    host, sep, port_text = text.strip().rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"expected host:port like '127.0.0.1:9464', got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"expected an IPv6 host in brackets like '[::1]:9464', got {text!r}")
    return host or DEFAULT_HOST, int(port_text)


# ---------------------------------------------------------------------------------------------
# Server


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class HttpServer:
    """The daemon's HTTP endpoints over a :class:`DaemonView`.

    Parameters
    ----------
    view
        Where answers come from (the daemon).
    shutdown_timeout_s
        How long :meth:`stop` lets open requests finish, seconds. Default 2.
    """

    def __init__(self, view: DaemonView, *, shutdown_timeout_s: float = 2.0) -> None:
        self.view = view
        self._enc = msgspec.json.Encoder()
        self._shutdown_timeout_s = shutdown_timeout_s
        self._runner: web.AppRunner | None = None
        self.app = web.Application(middlewares=[self._json_errors])
        self.app.router.add_get("/metrics", self.metrics)
        self.app.router.add_get("/healthz", self.healthz)
        self.app.router.add_get("/readyz", self.readyz)
        self.app.router.add_get("/v1/budgets", self.budgets)
        self.app.router.add_get("/v1/budgets/{slo}", self.budget)
        self.app.router.add_get("/v1/alerts", self.alerts)

    async def start(self, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> int:
        """Listen on ``host:port`` (port 0 picks a free one); return the port actually bound."""
        if self._runner is not None:
            raise RuntimeError("the HTTP server is already started")
        runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=self._shutdown_timeout_s)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        bound = int(runner.addresses[0][1])
        log.info("HTTP listening on %s:%d", host, bound)
        return bound

    async def stop(self) -> None:
        """Stop listening and close connections; a no-op when not started."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    # ------------------------------------------------------------------ helpers

    def _json(self, obj: object, status: int = 200) -> web.Response:
        return web.Response(body=self._enc.encode(obj), status=status, content_type=_JSON,
                            headers={"Cache-Control": "no-store"})

    @web.middleware
    async def _json_errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as e:
            if e.status < 400:
                raise
            return self._json(ErrorView(f"{e.status} {e.reason}: {request.method} {request.path}"), e.status)
        except Exception:
            log.exception("HTTP %s %s failed", request.method, request.path)
            return self._json(ErrorView("internal error"), 500)

    def _check(self, result: tuple[bool, dict[str, str]]) -> web.Response:
        ok, reasons = result
        clean = {redact(k): redact(v) for k, v in reasons.items()}
        return self._json(HealthView("ok" if ok else "fail", clean), 200 if ok else 503)

    # ------------------------------------------------------------------ handlers

    async def metrics(self, request: web.Request) -> web.Response:
        """Prometheus exposition of the daemon's registry (format chosen from ``Accept``)."""
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        registry = self.view.metrics.registry
        # Building thousands of samples takes milliseconds; keep them off the event loop. Collection
        # is thread-safe: the SLO collector reads one immutable snapshot.
        body = await asyncio.get_running_loop().run_in_executor(None, encoder, registry)
        resp = web.Response(body=body, headers={"Content-Type": content_type})
        resp.enable_compression()
        return resp

    async def healthz(self, request: web.Request) -> web.Response:
        return self._check(self.view.health())

    async def readyz(self, request: web.Request) -> web.Response:
        return self._check(self.view.readiness())

    async def budgets(self, request: web.Request) -> web.Response:
        engine, policy = self.view.engine, self.view.budget_policy
        return self._json([budget_view(engine, sp.slo.name, policy) for sp in engine.plan.slos])

    async def budget(self, request: web.Request) -> web.Response:
        name = request.match_info["slo"]
        engine = self.view.engine
        if name not in engine.plan.by_name:
            return self._json(ErrorView(f"unknown SLO {name!r}"), 404)
        return self._json(budget_view(engine, name, self.view.budget_policy))

    async def alerts(self, request: web.Request) -> web.Response:
        active = sorted(self.view.active_alerts(), key=lambda a: (a.slo, a.severity))
        return self._json(active)
