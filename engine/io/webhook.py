"""A generic webhook sink: each :class:`~engine.alerts.AlertEvent` posted as JSON to a URL.

The body is the event itself (msgspec JSON, the same shape as ``alerts.jsonl``). Answers are
classified like PagerDuty's: 2xx delivered; 408, 429 and 5xx, timeouts and connection errors
retriable; any other answer (other 4xx, redirects) permanent. Webhook URLs and headers often
carry credentials (a chat hook's path, a bearer token), so neither is ever shown: ``repr``, pacing
targets and error messages name the sink and the host only.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from urllib.parse import urlsplit

import aiohttp
import msgspec

from engine.alerts import AlertEvent
from engine.errors import ConfigError
from engine.io.delivery import DeliveryResult, SinkUnavailableError, http_outcome, scrub


class WebhookSender:
    """Posts alert events to ``url``; implements the delivery loop's ``Sender``.

    Parameters
    ----------
    session
        The aiohttp session to post with (owned by the caller).
    url
        An http(s) URL.
    name
        Sink name in the outbox and pacing target; default ``"webhook"``.
    headers
        Extra request headers (e.g. ``Authorization``); never shown.
    timeout_s
        Whole-request timeout, seconds; default 10.
    clock
        Epoch seconds for :class:`DeliveryResult` times; default ``time.time``.
    """

    def __init__(self, session: aiohttp.ClientSession, url: str, *, name: str = "webhook",
                 headers: Mapping[str, str] | None = None, timeout_s: float = 10.0,
                 clock: Callable[[], float] = time.time) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError([f"$.sinks.{name}.url: expected an http(s) URL, got a value with scheme "
                               f"{parts.scheme!r}"])
        if not timeout_s > 0:
            raise ConfigError([f"$.sinks.{name}.timeout_s: expected a number of seconds > 0, "
                               f"got {timeout_s}"])
        self._session = session
        self._url = url
        self._host = parts.hostname
        self._name = name
        self._headers = {"Content-Type": "application/json", **(headers or {})}
        # Longest first, so that the whole URL is redacted before its parts; a bare "/" is no secret.
        secrets = [url, parts.path if len(parts.path) > 1 else "", parts.query, *(headers or {}).values()]
        self._secrets = sorted((s for s in secrets if s), key=len, reverse=True)
        self.timeout_s = timeout_s
        self._clock = clock
        self._enc = msgspec.json.Encoder()

    @property
    def name(self) -> str:
        return self._name

    def __repr__(self) -> str:
        return f"WebhookSender(name={self._name!r}, host={self._host!r})"

    __str__ = __repr__

    def target(self, event: AlertEvent) -> str:
        return self._name

    async def send(self, event: AlertEvent) -> DeliveryResult:
        """Post ``event``; raise SinkUnavailableError (retriable) or SinkRejectedError (permanent)."""
        t0 = self._clock()
        try:
            async with self._session.post(
                self._url, data=self._enc.encode(event), headers=self._headers,
                timeout=aiohttp.ClientTimeout(total=self.timeout_s), allow_redirects=False,
            ) as resp:
                status = resp.status
                raw = await resp.read()
        except TimeoutError:
            raise SinkUnavailableError(f"{self._name}: no answer from {self._host} within "
                                       f"{self.timeout_s:g}s") from None
        except aiohttp.ClientError as e:
            raise SinkUnavailableError(
                f"{self._name}: {type(e).__name__}: {scrub(str(e), self._secrets)}") from None
        error = http_outcome(self._name, status, raw, secrets=self._secrets)
        if error is not None:
            raise error
        return DeliveryResult(sink=self._name, target=self._name, status=status, at=self._clock(),
                              elapsed_s=self._clock() - t0)
