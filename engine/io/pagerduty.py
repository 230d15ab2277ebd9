"""PagerDuty Events API v2: event bodies built from :class:`~engine.alerts.AlertEvent`, and the sender.

Configuration (``sinks.pagerduty`` in the daemon config), decoded by :meth:`PagerDutyConfig.from_mapping`::

    url: https://events.pagerduty.com/v2/enqueue     # EU: https://events.eu.pagerduty.com/v2/enqueue
    routing_key_env: PD_ROUTING_KEY                   # default key: an environment variable ...
    routing_key_file: /run/secrets/pd_routing_key     # ... or a file (exactly one of the two, or none)
    routing_keys:                                     # per alert severity (page, ticket)
      page: {env: PD_PAGE_KEY}
      ticket: {file: /run/secrets/pd_ticket_key}
    per_slo:                                          # per SLO name, over everything else
      checkout-availability: {env: PD_CHECKOUT_KEY}
    source: null        # payload.source; default the event's service, else this host's name
    client: sloburn
    client_url: null    # e.g. the daemon's /v1/budgets page
    timeout_s: 10

Routing keys never appear in the configuration itself, only where to read them. They are read when
the sender is built (a missing variable or file is a :class:`~engine.errors.ConfigError` at
startup) and held in :class:`RoutingKey` objects whose ``repr`` shows the source, never the value;
they are redacted from error messages and never logged. The key for an event is the first of
``per_slo[slo]``, ``routing_keys[severity]``, the default. Since it depends only on the SLO and
severity, a resolve goes to the routing key of its trigger (unless an operator changes the key in
between: PagerDuty then drops the resolve, and the old alert must be resolved by hand).

Bodies follow ``reference/pagerduty-events-v2.md``: trigger bodies carry the summary (which SLO
burns how fast over which windows), source, severity, ISO 8601 timestamp, component (service),
group (SLO), class (tier), custom details and the runbook link; resolve bodies carry only
``routing_key``, ``event_action`` and ``dedup_key``. A body never exceeds 512,000 bytes: custom
details are trimmed first, largest entry first (Alertmanager drops them whole), then the summary;
an event still too large is refused before sending.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import msgspec

from engine.alerts import AlertEvent
from engine.durations import parse_duration_s
from engine.errors import ConfigError
from engine.io.delivery import DeliveryResult, SinkRejectedError, SinkUnavailableError, http_outcome, scrub

log = logging.getLogger("sloburn.pagerduty")

MAX_BODY_BYTES = 512_000
"""Largest body sent, bytes (PagerDuty's 512 KB as Alertmanager enforces it)."""
MAX_SUMMARY_CHARS = 1024
DEFAULT_URL = "https://events.pagerduty.com/v2/enqueue"


class KeySource(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Where one routing key is read: an environment variable or a file (exactly one)."""

    env: str | None = None
    file: str | None = None


class PagerDutyConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The ``sinks.pagerduty`` section; see the module docstring for each field."""

    url: str = DEFAULT_URL
    routing_key_env: str | None = None
    routing_key_file: str | None = None
    routing_keys: dict[str, KeySource] = msgspec.field(default_factory=dict)
    per_slo: dict[str, KeySource] = msgspec.field(default_factory=dict)
    source: str | None = None
    client: str = "sloburn"
    client_url: str | None = None
    timeout_s: float = 10.0

    @classmethod
    def from_mapping(cls, data: Any, where: str = "$.sinks.pagerduty") -> PagerDutyConfig:
        """Decode and check a config section; :class:`ConfigError` lists every problem."""
        try:
            cfg = msgspec.convert(data, cls)
        except msgspec.ValidationError as e:
            text = str(e)
            path = ""
            if " - at `$" in text:
                text, _, path = text.rpartition(" - at `$")
                path = path.rstrip("`")
            raise ConfigError([f"{where}{path}: {text[:1].lower()}{text[1:]}"]) from None
        problems = cfg.problems(where)
        if problems:
            raise ConfigError(problems)
        return cfg

    def sources(self) -> dict[str, KeySource]:
        """Every key source by its path in the config, default first."""
        out: dict[str, KeySource] = {}
        if self.routing_key_env is not None or self.routing_key_file is not None:
            out["routing_key"] = KeySource(env=self.routing_key_env, file=self.routing_key_file)
        out.update({f"routing_keys.{k}": v for k, v in self.routing_keys.items()})
        out.update({f"per_slo.{k}": v for k, v in self.per_slo.items()})
        return out

    def problems(self, where: str) -> list[str]:
        """Cross-field problems, each ``where.field: expected ..., got ...``."""
        out: list[str] = []
        url = urlsplit(self.url)
        if url.scheme not in ("http", "https") or not url.hostname:
            out.append(f"{where}.url: expected an http(s) URL, got {self.url!r}")
        if not (self.timeout_s > 0 and math.isfinite(self.timeout_s)):
            out.append(f"{where}.timeout_s: expected a number of seconds > 0, got {self.timeout_s}")
        sources = self.sources()
        if not sources:
            out.append(f"{where}: expected a routing key source (routing_key_env, routing_key_file, "
                       "routing_keys or per_slo), got none")
        for path, src in sources.items():
            if (src.env is None) == (src.file is None):
                at = f"{where}.{'routing_key_env/routing_key_file' if path == 'routing_key' else path}"
                out.append(f"{at}: expected exactly one of 'env' or 'file', got "
                           f"{'both' if src.env is not None else 'neither'}")
        for sev in self.routing_keys:
            if sev not in ("page", "ticket"):
                out.append(f"{where}.routing_keys.{sev}: expected 'page' or 'ticket', got {sev!r}")
        return out


class RoutingKey:
    """A routing key and where it came from; ``repr``/``str`` show only the source."""

    __slots__ = ("_value", "source")

    def __init__(self, value: str, source: str) -> None:
        self._value = value
        self.source = source

    def reveal(self) -> str:
        """The key itself, for the request body only."""
        return self._value

    def __repr__(self) -> str:
        return f"RoutingKey(<{self.source}>)"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError("a RoutingKey is not picklable")


def load_routing_keys(cfg: PagerDutyConfig, *, environ: Mapping[str, str] | None = None,
                      where: str = "$.sinks.pagerduty") -> dict[str, RoutingKey]:
    """Read every configured key; :class:`ConfigError` names each missing one (never a value)."""
    env = os.environ if environ is None else environ
    keys: dict[str, RoutingKey] = {}
    problems: list[str] = []
    for path, src in cfg.sources().items():
        at = f"{where}.{path}"
        if src.env is not None:
            value = env.get(src.env, "").strip()
            label = f"env:{src.env}"
            if not value:
                problems.append(f"{at}: expected the routing key in environment variable {src.env}, "
                                "got it unset or empty")
        else:
            assert src.file is not None
            label = f"file:{src.file}"
            try:
                value = Path(src.file).read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as e:
                problems.append(f"{at}: expected the routing key in file {src.file}, got "
                                f"{getattr(e, 'strerror', None) or type(e).__name__}")
                continue
            if not value:
                problems.append(f"{at}: expected the routing key in file {src.file}, got an empty file")
        if value:
            keys[path] = RoutingKey(value, label)
    if problems:
        raise ConfigError(problems)
    return keys


# ---------------------------------------------------------------------------------------------
# Bodies (pure)


def _window_s(label: str) -> float:
    try:
        return parse_duration_s(label)
    except ValueError:
        return -1.0


def _fmt_rate(rate: float) -> str:
    return f"{rate:.1f}x" if math.isfinite(rate) else "inf"


def summarize(event: AlertEvent) -> str:
    """One line, at most 1024 characters, saying which SLO burns how fast over which windows.

    ``checkout-availability burning 15.2x budget (1h 15.2x, 5m 31.0x; page_quick, factor 14.4),
    97.8% budget left``. The headline rate is that of the longest window burning above the tier's
    factor (the tier's long window in the shipped catalogs), else the highest rate; windows are
    listed longest first.
    """
    rates = sorted(((w, r) for w, r in event.burn_rates.items() if r is not None and not math.isnan(r)),
                   key=lambda wr: (-_window_s(wr[0]), wr[0]))
    factor = event.factors.get(event.tier)
    if factor is None and len(event.factors) == 1:
        factor = next(iter(event.factors.values()))
    over = [r for _, r in rates if factor is not None and r >= factor]
    head = over[0] if over else max((r for _, r in rates), default=None)
    text = event.slo + (f" burning {_fmt_rate(head)} budget" if head is not None
                        else " burning budget (no window has data)")
    inner = ", ".join(f"{w} {_fmt_rate(r)}" for w, r in rates)
    tier = event.tier + (f", factor {factor:g}" if factor is not None else "")
    text += f" ({inner}; {tier})" if inner else f" ({tier})"
    if event.budget_remaining is not None and math.isfinite(event.budget_remaining):
        text += f", {event.budget_remaining:.1%} budget left"
    if event.action == "resolve":
        text = f"resolved: {text}"
    if len(text) > MAX_SUMMARY_CHARS:
        text = text[: MAX_SUMMARY_CHARS - 3] + "..."
    return text


def iso8601(ts: float) -> str:
    """``2024-05-01T12:00:00.000Z`` for epoch seconds; ValueError when ``ts`` is not a usable time."""
    try:
        return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    except (ValueError, OverflowError, OSError) as e:
        raise ValueError(f"expected an epoch time in seconds, got {ts!r}") from e


def custom_details(event: AlertEvent) -> dict[str, Any]:
    """Everything a responder needs beyond the summary, as PagerDuty ``custom_details``."""
    details: dict[str, Any] = {
        "slo": event.slo,
        "severity": event.severity,
        "tier": event.tier,
        "burn_rates": event.burn_rates,
        "burn_rate_factors": event.factors,
        "error_budget_remaining": event.budget_remaining,
        "events": {w: {"bad": c.bad, "total": c.total} for w, c in event.windows.items()},
        "objective_percent": event.objective,
        "period": event.period,
    }
    if event.latency_ms:
        details["latency_ms"] = event.latency_ms
    if event.labels:
        details["labels"] = event.labels
    if event.description:
        details["description"] = event.description
    if event.runbook_url:
        details["runbook_url"] = event.runbook_url
    return details


def build_body(event: AlertEvent, routing_key: str, *, source: str, client: str | None = "sloburn",
               client_url: str | None = None, max_bytes: int = MAX_BODY_BYTES) -> tuple[bytes, list[str]]:
    """The JSON body for ``event`` and the list of what was trimmed to fit ``max_bytes``.

    Raises
    ------
    ValueError
        When the event time is not a usable time, or the body exceeds ``max_bytes`` even with the
        custom details removed and the summary cut.
    """
    if event.action != "trigger":
        doc: dict[str, Any] = {"routing_key": routing_key, "event_action": event.action,
                               "dedup_key": event.dedup_key}
        return msgspec.json.encode(doc), []
    payload: dict[str, Any] = {"summary": summarize(event), "source": source, "severity": event.pd_severity,
                               "timestamp": iso8601(event.ts)}
    if event.service:
        payload["component"] = event.service
    payload["group"] = event.slo
    payload["class"] = event.tier
    details = custom_details(event)
    payload["custom_details"] = details
    doc = {"routing_key": routing_key, "event_action": "trigger", "dedup_key": event.dedup_key,
           "payload": payload}
    if event.runbook_url:
        doc["links"] = [{"href": event.runbook_url, "text": "Runbook"}]
    if client:
        doc["client"] = client
        if client_url:
            doc["client_url"] = client_url
    data = msgspec.json.encode(doc)
    trimmed: list[str] = []
    note = "trimmed"
    while len(data) > max_bytes and any(k != note for k in details):
        biggest = max((k for k in details if k != note), key=lambda k: len(msgspec.json.encode(details[k])))
        del details[biggest]
        trimmed.append(f"custom_details.{biggest}")
        details[note] = (f"removed {', '.join(t.split('.', 1)[1] for t in trimmed)} to keep the event "
                         f"under {max_bytes} bytes")
        data = msgspec.json.encode(doc)
    if len(data) > max_bytes and "custom_details" in payload:
        del payload["custom_details"]
        trimmed.append("custom_details")
        data = msgspec.json.encode(doc)
    while len(data) > max_bytes and len(payload["summary"]) > 16:
        summary = payload["summary"]
        excess = len(data) - max_bytes
        payload["summary"] = summary[: max(13, len(summary) - excess - 3)] + "..."
        if "payload.summary" not in trimmed:
            trimmed.append("payload.summary")
        data = msgspec.json.encode(doc)
    if len(data) > max_bytes:
        raise ValueError(f"expected an event body of at most {max_bytes} bytes, got {len(data)} bytes "
                         "with custom details removed and the summary cut")
    return data, trimmed


# ---------------------------------------------------------------------------------------------
# Sender


class PagerDutySender:
    """Sends alert events to the Events API v2; implements the delivery loop's ``Sender``.

    Parameters
    ----------
    session
        The aiohttp session to post with (owned by the caller).
    config
        The ``sinks.pagerduty`` section.
    name
        Sink name in the outbox; default ``"pagerduty"``.
    timeout_s
        Whole-request timeout, seconds; default ``config.timeout_s`` (10 s).
    clock
        Epoch seconds for :class:`DeliveryResult` times; default ``time.time``.
    environ
        Where ``env`` key sources are read; default ``os.environ``.

    Raises
    ------
    ConfigError
        When a configured routing key cannot be read.
    """

    def __init__(self, session: aiohttp.ClientSession, config: PagerDutyConfig, *, name: str = "pagerduty",
                 timeout_s: float | None = None, clock: Callable[[], float] = time.time,
                 environ: Mapping[str, str] | None = None) -> None:
        problems = config.problems(f"$.sinks.{name}")
        if problems:
            raise ConfigError(problems)
        self._session = session
        self.config = config
        self._name = name
        self.timeout_s = config.timeout_s if timeout_s is None else timeout_s
        self._clock = clock
        self._keys = load_routing_keys(config, environ=environ, where=f"$.sinks.{name}")
        # Pacing is per key value: two sources holding one key share the first one's bucket.
        first: dict[str, str] = {}
        self._pace: dict[str, str] = {}
        for path, key in self._keys.items():
            self._pace[path] = first.setdefault(key.reveal(), key.source)
            if len(key.reveal()) != 32 or not key.reveal().isalnum():
                log.warning("routing key from %s is not 32 alphanumeric characters: PagerDuty will refuse "
                            "events sent with it", key.source)
        self._host = socket.gethostname()

    @property
    def name(self) -> str:
        return self._name

    def __repr__(self) -> str:
        srcs = ", ".join(f"{p}=<{k.source}>" for p, k in self._keys.items())
        return f"PagerDutySender(name={self._name!r}, url={self.config.url!r}, keys=[{srcs}])"

    __str__ = __repr__

    def _key_path(self, event: AlertEvent) -> str | None:
        for path in (f"per_slo.{event.slo}", f"routing_keys.{event.severity}", "routing_key"):
            if path in self._keys:
                return path
        return None

    def target(self, event: AlertEvent) -> str:
        path = self._key_path(event)
        return f"{self._name}:{self._pace[path] if path is not None else '<no key>'}"

    def body(self, event: AlertEvent) -> tuple[bytes, list[str]]:
        """The request body for ``event`` and what was trimmed; raises SinkRejectedError when unsendable."""
        path = self._key_path(event)
        if path is None:
            raise SinkRejectedError(f"{self._name}: no routing key configured for SLO {event.slo!r} "
                                    f"severity {event.severity!r}", errors=["no routing key"])
        source = self.config.source or event.service or self._host
        try:
            return build_body(event, self._keys[path].reveal(), source=source, client=self.config.client,
                              client_url=self.config.client_url)
        except ValueError as e:
            raise SinkRejectedError(f"{self._name}: {e}", errors=[str(e)]) from None

    async def send(self, event: AlertEvent) -> DeliveryResult:
        """Post ``event``; raise SinkUnavailableError (retriable) or SinkRejectedError (permanent)."""
        data, trimmed = self.body(event)
        if trimmed:
            log.warning("alert body for SLO %s trimmed to %d bytes: %s", event.slo, len(data),
                        ", ".join(trimmed))
        path = self._key_path(event)
        assert path is not None
        secret = self._keys[path].reveal()
        t0 = self._clock()
        try:
            async with self._session.post(
                self.config.url, data=data, headers={"Content-Type": "application/json"},
                timeout=aiohttp.ClientTimeout(total=self.timeout_s), allow_redirects=False,
            ) as resp:
                status = resp.status
                raw = await resp.read()
        except TimeoutError:
            raise SinkUnavailableError(f"{self._name}: no answer within {self.timeout_s:g}s") from None
        except aiohttp.ClientError as e:
            raise SinkUnavailableError(
                f"{self._name}: {type(e).__name__}: {scrub(str(e), [secret])}") from None
        error = http_outcome(self._name, status, raw, secrets=[secret])
        if error is not None:
            raise error
        dedup: str | None = None
        try:
            doc = msgspec.json.decode(raw)
            if isinstance(doc, dict) and isinstance(doc.get("dedup_key"), str):
                dedup = doc["dedup_key"]
        except msgspec.DecodeError:
            pass  # 2xx without a JSON body: accepted all the same
        return DeliveryResult(sink=self._name, target=self.target(event), status=status, at=self._clock(),
                              elapsed_s=self._clock() - t0, dedup_key=dedup)
