"""The daemon sections of a configuration: source, sinks, state, HTTP, ticks and limits.

These are frozen msgspec Structs that :class:`engine.config.Config` embeds; the backtester ignores
them. Every problem is reported like the rest of the config (``file: $.path: expected ..., got
...``), unknown fields are refused, and secrets never appear: only the names of the environment
variables or files that hold them.

::

    source:
      kafka:
        bootstrap: "127.0.0.1:9092"
        topics: [requests]
        group_id: sloburn
        format: ndjson              # default: events.format
    sinks:
      pagerduty: {url: "https://events.pagerduty.com/v2/enqueue", routing_key_env: PD_ROUTING_KEY}
    state_dir: /var/lib/sloburn
    http: {listen: "127.0.0.1:9464"}
    tick_s: 1
    daemon: {checkpoint_interval_s: 10, idle_after_s: 30}
    budget_policy: {warning_below_percent: 50, freeze_below_percent: 10}

The Kafka and PagerDuty sections mirror :class:`engine.io.kafka_config.KafkaSourceConfig` and
:class:`engine.io.pagerduty.PagerDutyConfig` field for field (``bootstrap`` is that config's
``bootstrap_servers``); they live here so that reading a config never imports a network client.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from engine.evaluator import BudgetPolicy

PositiveInt = Annotated[int, Meta(ge=1)]
NonNegativeInt = Annotated[int, Meta(ge=0)]
PositiveFloat = Annotated[float, Meta(gt=0)]
NonNegativeFloat = Annotated[float, Meta(ge=0)]


class _Base(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


def _finite(where: str, value: float | None) -> None:
    if value is not None and not math.isfinite(value):
        raise ValueError(f"expected {where} to be a finite number, got {value}")


# ---------------------------------------------------------------------------------------------
# source


class KafkaSecurity(_Base, frozen=True):
    """Transport security and authentication; secrets are named environment variables."""

    protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    username_env: str | None = None
    password_env: str | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_key_password_env: str | None = None
    ssl_check_hostname: bool = True

    def __post_init__(self) -> None:
        if self.protocol.startswith("SASL") and (not self.username_env or not self.password_env):
            raise ValueError(f"expected username_env and password_env with protocol {self.protocol}, "
                             f"got {self.username_env!r} and {self.password_env!r}")


class KafkaSection(_Base, frozen=True):
    """``source.kafka``: where and how events are consumed.

    Attributes
    ----------
    bootstrap
        ``host:port`` or a list of them.
    topics
        Topics to subscribe to.
    group_id, client_id
        Consumer group and client name.
    format
        Message format (``ndjson``, ``json``, ``msgpack``, ``auto``); default ``events.format``. A
        message may hold one event or a batch (NDJSON lines, a JSON array, a msgpack array).
    start
        ``committed`` (default): the group's committed offsets; ``earliest``/``latest``. A
        checkpoint's offsets win over all three.
    reset
        Where a partition without a valid offset starts.
    dead_letter_topic
        Topic receiving rejected messages (reason in headers); None disables dead letters.
    max_message_bytes
        Larger messages are rejected as ``oversized_message`` without decoding.
    check_crcs
        Verify the CRC-32C of fetched record batches (default, as Kafka's clients).
    Others
        Passed to the consumer as in aiokafka (``*_ms`` in milliseconds, ``*_bytes`` in bytes).
    """

    bootstrap: str | list[str] = "127.0.0.1:9092"
    topics: list[str] = msgspec.field(default_factory=lambda: ["requests"])
    group_id: str = "sloburn"
    client_id: str = "sloburn"
    format: Literal["auto", "ndjson", "json", "msgpack"] | None = None
    start: Literal["committed", "earliest", "latest"] = "committed"
    reset: Literal["earliest", "latest"] = "earliest"
    dead_letter_topic: str | None = None
    max_message_bytes: PositiveInt = 1_048_576
    max_records: PositiveInt = 10_000
    fetch_max_bytes: PositiveInt = 52_428_800
    max_partition_fetch_bytes: PositiveInt = 1_048_576
    fetch_min_bytes: PositiveInt = 1
    fetch_max_wait_ms: NonNegativeInt = 100
    session_timeout_ms: PositiveInt = 10_000
    heartbeat_interval_ms: PositiveInt = 3_000
    request_timeout_ms: PositiveInt = 40_000
    isolation_level: Literal["read_uncommitted", "read_committed"] = "read_uncommitted"
    check_crcs: bool = True
    backoff_initial_ms: PositiveInt = 250
    backoff_max_ms: PositiveInt = 10_000
    health_interval_ms: PositiveInt = 2_000
    health_timeout_ms: PositiveInt = 5_000
    security: KafkaSecurity = msgspec.field(default_factory=KafkaSecurity)

    def __post_init__(self) -> None:
        servers = [self.bootstrap] if isinstance(self.bootstrap, str) else self.bootstrap
        if not servers or any(":" not in s or not s.strip() for s in servers):
            raise ValueError(f"expected bootstrap as host:port or a list of them, got {self.bootstrap!r}")
        if not self.topics or any(not t.strip() for t in self.topics):
            raise ValueError(f"expected topics to name at least one topic, got {self.topics!r}")
        if self.heartbeat_interval_ms >= self.session_timeout_ms:
            raise ValueError(f"expected heartbeat_interval_ms below session_timeout_ms "
                             f"({self.session_timeout_ms}), got {self.heartbeat_interval_ms}")
        if self.backoff_max_ms < self.backoff_initial_ms:
            raise ValueError(f"expected backoff_max_ms of at least backoff_initial_ms "
                             f"({self.backoff_initial_ms}), got {self.backoff_max_ms}")


class SourceSection(_Base, frozen=True):
    """``source``: one Kafka source."""

    kafka: KafkaSection | None = None


# ---------------------------------------------------------------------------------------------
# sinks


class KeySource(_Base, frozen=True):
    """Where one routing key is read: an environment variable or a file (exactly one)."""

    env: str | None = None
    file: str | None = None

    def __post_init__(self) -> None:
        if (self.env is None) == (self.file is None):
            raise ValueError(f"expected exactly one of 'env' or 'file', got "
                             f"{'both' if self.env is not None else 'neither'}")


class PagerDutySection(_Base, frozen=True):
    """``sinks.pagerduty``: PagerDuty Events API v2 (see :mod:`engine.io.pagerduty`).

    The routing key of an event is the first of ``per_slo[slo]``, ``routing_keys[severity]`` and
    the default (``routing_key_env`` or ``routing_key_file``).
    """

    url: str = "https://events.pagerduty.com/v2/enqueue"
    routing_key_env: str | None = None
    routing_key_file: str | None = None
    routing_keys: dict[str, KeySource] = msgspec.field(default_factory=dict)
    per_slo: dict[str, KeySource] = msgspec.field(default_factory=dict)
    source: str | None = None
    client: str = "sloburn"
    client_url: str | None = None
    timeout_s: PositiveFloat = 10.0

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"expected url to be an http(s) URL, got {self.url!r}")
        if self.routing_key_env is not None and self.routing_key_file is not None:
            raise ValueError("expected one of routing_key_env or routing_key_file, got both")
        if self.routing_key_env is None and self.routing_key_file is None and not (
                self.routing_keys or self.per_slo):
            raise ValueError("expected a routing key source (routing_key_env, routing_key_file, "
                             "routing_keys or per_slo), got none")
        for sev in self.routing_keys:
            if sev not in ("page", "ticket"):
                raise ValueError(f"expected routing_keys for 'page' or 'ticket', got {sev!r}")
        _finite("timeout_s", self.timeout_s)


class WebhookSection(_Base, frozen=True):
    """``sinks.webhook``: every alert event posted as JSON (the ``alerts.jsonl`` shape).

    The URL often holds a credential: give it in ``url`` or read it from the environment variable
    ``url_env``. ``headers_env`` maps header names to environment variables holding their values.
    """

    url: str | None = None
    url_env: str | None = None
    headers_env: dict[str, str] = msgspec.field(default_factory=dict)
    timeout_s: PositiveFloat = 10.0

    def __post_init__(self) -> None:
        if (self.url is None) == (self.url_env is None):
            raise ValueError(f"expected exactly one of 'url' or 'url_env', got "
                             f"{'both' if self.url is not None else 'neither'}")
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise ValueError("expected url to be an http(s) URL, got another scheme")
        _finite("timeout_s", self.timeout_s)


class DeliverySection(_Base, frozen=True):
    """``sinks.delivery``: pacing and retries of every sink.

    ``rate_per_min`` and ``burst``: token bucket per routing key (PagerDuty allows about 120 events
    per minute per key). Retriable failures back off exponentially from ``backoff_base_s`` up to
    ``backoff_cap_s`` with full jitter. ``coalesce``: a trigger and its resolve that were never sent
    are both skipped.
    """

    rate_per_min: PositiveFloat = 100.0
    burst: Annotated[float, Meta(ge=1)] = 10.0
    backoff_base_s: PositiveFloat = 2.0
    backoff_cap_s: PositiveFloat = 300.0
    coalesce: bool = True

    def __post_init__(self) -> None:
        if self.backoff_cap_s < self.backoff_base_s:
            raise ValueError(f"expected backoff_cap_s of at least backoff_base_s ({self.backoff_base_s}), "
                             f"got {self.backoff_cap_s}")


class SinksSection(_Base, frozen=True):
    """``sinks``: where alert events go (at least one sink for ``sloburn run``)."""

    pagerduty: PagerDutySection | None = None
    webhook: WebhookSection | None = None
    delivery: DeliverySection = msgspec.field(default_factory=DeliverySection)

    def names(self) -> list[str]:
        """Configured sink names, in the order rows are queued."""
        return [n for n in ("pagerduty", "webhook") if getattr(self, n) is not None]


# ---------------------------------------------------------------------------------------------
# http, daemon, policy


class HttpSection(_Base, frozen=True):
    """``http``: ``/metrics``, ``/healthz``, ``/readyz``, ``/v1/budgets``, ``/v1/alerts``.

    ``listen`` is ``host:port`` (``[::1]:9464`` for IPv6, port 0 picks a free port); loopback by
    default. ``enabled: false`` serves nothing.
    """

    listen: str = "127.0.0.1:9464"
    enabled: bool = True

    def __post_init__(self) -> None:
        _host, sep, port = self.listen.strip().rpartition(":")
        if not sep or not port.isdigit() or int(port) > 65535:
            raise ValueError(f"expected listen as host:port like '127.0.0.1:9464', got {self.listen!r}")


class DaemonSection(_Base, frozen=True):
    """``daemon``: checkpoints, event-time rules against the wall clock, backpressure, shutdown.

    Attributes
    ----------
    checkpoint_interval_s
        A checkpoint is written at the first tick this long after the last one, and at every tick
        that produced alert transitions (default 10 s).
    checkpoints_kept
        Valid checkpoints kept on disk (default 3).
    idle_after_s
        When no event arrived for this long (wall clock), the watermark also moves with the wall
        clock: to ``now - allowed_lateness - idle_grace_s``, so that alerts resolve and no-data
        shows when traffic stops. None disables it (the watermark then follows events only, as in
        a backtest). Default 30 s.
    idle_grace_s
        Extra delay behind the wall clock for that idle watermark (default 5 s).
    idle_step_max_s
        Most event time one tick advances by the idle watermark (default one day), so that a
        restart after a long pause catches up over several ticks instead of stalling one.
    max_future_s
        Events stamped more than this ahead of the wall clock are rejected as ``too_far_in_future``
        (default 300 s): one bad clock must not drag the watermark past real time.
    max_pending_events
        Consumption pauses while more events than this wait for the watermark (default 2,000,000;
        about 60 MB).
    max_tick_lag_s
        Consumption also pauses while the ticker runs this late (default 5 s).
    decode_workers
        Processes that parse message values while the daemon goes on fetching and evaluating
        (:mod:`engine.io.decode_pool`); ``auto`` (default) is one less than the usable CPUs (the
        affinity mask, capped by a container's CPU limit), at most 4; 0 parses in the daemon's own
        thread. Each worker takes about 60 MiB of private memory; messages travel through at most 48 MiB of
        ``/dev/shm``.
    shutdown_flush_s
        On SIGTERM, how long the outbox may take to deliver what it holds (default 10 s).
    outbox_keep_delivered_s
        Delivered outbox rows older than this are deleted, checked hourly (default 7 days; the
        newest row of each alert is always kept). Keep it far above the time between checkpoints:
        a pruned row no longer absorbs its replay after a restart.
    """

    checkpoint_interval_s: PositiveFloat = 10.0
    checkpoints_kept: PositiveInt = 3
    idle_after_s: PositiveFloat | None = 30.0
    idle_grace_s: NonNegativeFloat = 5.0
    idle_step_max_s: PositiveFloat = 86_400.0
    max_future_s: NonNegativeFloat = 300.0
    max_pending_events: PositiveInt = 2_000_000
    max_tick_lag_s: PositiveFloat = 5.0
    decode_workers: NonNegativeInt | Literal["auto"] = "auto"
    shutdown_flush_s: NonNegativeFloat = 10.0
    outbox_keep_delivered_s: PositiveFloat = 604_800.0

    def __post_init__(self) -> None:
        for name in ("checkpoint_interval_s", "idle_after_s", "idle_grace_s", "idle_step_max_s",
                     "max_future_s", "max_tick_lag_s", "shutdown_flush_s", "outbox_keep_delivered_s"):
            _finite(name, getattr(self, name))
        if self.outbox_keep_delivered_s < 10 * self.checkpoint_interval_s:
            raise ValueError(f"expected outbox_keep_delivered_s of at least 10 checkpoint intervals "
                             f"({10 * self.checkpoint_interval_s:g} s), got {self.outbox_keep_delivered_s:g}")


class BudgetPolicySection(BudgetPolicy, frozen=True, forbid_unknown_fields=True):
    """``budget_policy``: healthy at >= ``warning_below_percent`` of the budget left, warning
    between, freeze below ``freeze_below_percent`` (defaults 50 and 10)."""

    def __post_init__(self) -> None:
        w, f = self.warning_below_percent, self.freeze_below_percent
        if not (0 <= f <= w <= 100):
            raise ValueError(f"expected 0 <= freeze_below_percent <= warning_below_percent <= 100, "
                             f"got freeze {f} and warning {w}")
