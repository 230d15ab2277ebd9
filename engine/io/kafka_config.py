"""Configuration of the Kafka source: brokers, topics, group, fetch sizes, security.

:class:`KafkaSourceConfig` is what :class:`engine.io.kafka.KafkaSource` runs with (the daemon builds it
from the ``source.kafka`` section); :func:`connection_kwargs` turns it into aiokafka's connection
arguments, reading credentials from the environment variables the config names.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Literal

import msgspec
from aiokafka.helpers import create_ssl_context

from engine.errors import ConfigError


class KafkaSecurity(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Transport security and authentication, passed through to aiokafka.

    Secrets are never written in the config: ``username_env``, ``password_env`` and
    ``ssl_key_password_env`` name environment variables that are read at start.
    """

    protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    username_env: str | None = None
    password_env: str | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_key_password_env: str | None = None
    ssl_check_hostname: bool = True


class KafkaSourceConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Where and how the daemon consumes events.

    Attributes
    ----------
    bootstrap_servers
        ``host:port`` or a list of them.
    topics
        Topics to subscribe to (at least one).
    group_id, client_id
        Consumer group and client name seen by the brokers.
    start
        ``committed`` (default): resume from the group's committed offsets, ``reset`` where a partition
        has none. ``earliest`` / ``latest``: ignore committed offsets the first time a partition is
        assigned to this source. An explicit :meth:`KafkaSource.seek` wins over all three.
    reset
        Where a partition with no valid offset (none committed, or out of range) starts.
        ``latest`` (in ``start`` or ``reset``) asks the broker for end offsets, which the bundled
        Tansu broker answers wrongly (see :mod:`engine.io.broker`); real Kafka answers right.
    max_records
        Most messages one :meth:`KafkaSource.fetch` returns.
    fetch_max_bytes, max_partition_fetch_bytes, fetch_min_bytes, fetch_max_wait_ms
        Fetch request sizes, as in aiokafka and Kafka.
    session_timeout_ms, heartbeat_interval_ms, request_timeout_ms
        Group and request timeouts, as in aiokafka.
    isolation_level
        ``read_committed`` skips aborted transactions; lag is then measured to the last stable offset.
    check_crcs
        Verify the CRC-32C of every fetched record batch (default, as Kafka's clients). Turning it
        off saves the checksum's CPU; ``python -m bench.kafka_throughput --no-check-crcs`` measures it.
    dead_letter_topic
        Topic receiving rejected messages with their reason in headers; None disables dead letters.
    backoff_initial_ms, backoff_max_ms
        Reconnection backoff: doubles from the initial delay after each failure, capped.
    health_interval_ms, health_timeout_ms
        While no message arrives, the broker is probed (metadata request) this often, with this timeout.
    """

    bootstrap_servers: str | list[str]
    topics: list[str]
    group_id: str = "sloburn"
    client_id: str = "sloburn"
    start: Literal["committed", "earliest", "latest"] = "committed"
    reset: Literal["earliest", "latest"] = "earliest"
    max_records: int = 10_000
    fetch_max_bytes: int = 52_428_800
    max_partition_fetch_bytes: int = 1_048_576
    fetch_min_bytes: int = 1
    fetch_max_wait_ms: int = 500
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 3_000
    request_timeout_ms: int = 40_000
    isolation_level: Literal["read_uncommitted", "read_committed"] = "read_uncommitted"
    check_crcs: bool = True
    dead_letter_topic: str | None = None
    backoff_initial_ms: int = 250
    backoff_max_ms: int = 10_000
    health_interval_ms: int = 2_000
    health_timeout_ms: int = 5_000
    security: KafkaSecurity = msgspec.field(default_factory=KafkaSecurity)

    @classmethod
    def from_mapping(cls, data: Any, where: str = "<config>: $.source.kafka") -> KafkaSourceConfig:
        """Decode and check a mapping; raise ConfigError with one ``where.path: ...`` line per problem."""
        try:
            cfg = msgspec.convert(data, cls)
        except msgspec.ValidationError as e:
            text, _, path = str(e).partition(" - at `$")
            path = path.rstrip("`")
            raise ConfigError([f"{where}{path}: {text[:1].lower()}{text[1:]}"]) from None
        problems = cfg.problems(where)
        if problems:
            raise ConfigError(problems)
        return cfg

    def problems(self, where: str) -> list[str]:
        """Cross-field problems, each as ``where.field: expected ..., got ...``."""
        out: list[str] = []
        servers = self.bootstrap_servers
        servers = [servers] if isinstance(servers, str) else servers
        if not servers or any(not s.strip() for s in servers):
            out.append(f"{where}.bootstrap_servers: expected host:port, got {self.bootstrap_servers!r}")
        if not self.topics or any(not t.strip() for t in self.topics):
            out.append(f"{where}.topics: expected at least one non-empty topic name, got {self.topics!r}")
        for name in ("max_records", "fetch_max_bytes", "max_partition_fetch_bytes", "fetch_min_bytes",
                     "session_timeout_ms", "heartbeat_interval_ms", "request_timeout_ms",
                     "backoff_initial_ms", "backoff_max_ms", "health_interval_ms", "health_timeout_ms"):
            if getattr(self, name) < 1:
                out.append(f"{where}.{name}: expected an integer >= 1, got {getattr(self, name)}")
        if self.fetch_max_wait_ms < 0:
            out.append(f"{where}.fetch_max_wait_ms: expected an integer >= 0, got {self.fetch_max_wait_ms}")
        if self.heartbeat_interval_ms >= self.session_timeout_ms:
            out.append(f"{where}.heartbeat_interval_ms: expected less than session_timeout_ms "
                       f"({self.session_timeout_ms}), got {self.heartbeat_interval_ms}")
        if self.backoff_max_ms < self.backoff_initial_ms:
            out.append(f"{where}.backoff_max_ms: expected at least backoff_initial_ms "
                       f"({self.backoff_initial_ms}), got {self.backoff_max_ms}")
        sec = self.security
        if sec.protocol.startswith("SASL") and (not sec.username_env or not sec.password_env):
            out.append(f"{where}.security: expected username_env and password_env with protocol "
                       f"{sec.protocol}, got {sec.username_env!r} and {sec.password_env!r}")
        return out


def connection_kwargs(config: KafkaSourceConfig, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """aiokafka connection keyword arguments (servers, client id, security) with secrets read from env.

    Raises
    ------
    ConfigError
        When a named environment variable is not set (the message names the variable, not a value).
    """
    env = os.environ if environ is None else environ
    sec = config.security

    def secret(attr: str) -> str | None:
        var = getattr(sec, attr)
        if var is None:
            return None
        if var not in env:
            raise ConfigError([f"$.source.kafka.security.{attr}: expected environment variable "
                               f"{var!r} to be set, got nothing"])
        return env[var]

    kwargs: dict[str, Any] = {
        "bootstrap_servers": config.bootstrap_servers,
        "client_id": config.client_id,
        "request_timeout_ms": config.request_timeout_ms,
        "security_protocol": sec.protocol,
    }
    if sec.protocol.startswith("SASL"):
        kwargs["sasl_mechanism"] = sec.sasl_mechanism
        kwargs["sasl_plain_username"] = secret("username_env")
        kwargs["sasl_plain_password"] = secret("password_env")
    if sec.protocol.endswith("SSL"):
        ctx = create_ssl_context(cafile=sec.ssl_cafile, certfile=sec.ssl_certfile, keyfile=sec.ssl_keyfile,
                                 password=secret("ssl_key_password_env"))
        ctx.check_hostname = sec.ssl_check_hostname
        kwargs["ssl_context"] = ctx
    return kwargs


