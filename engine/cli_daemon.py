"""``sloburn run``: the daemon, from a config file and flags that override its sections.

::

    sloburn run --config C.yaml [--bootstrap HOST:PORT] [--topic T ...] [--group-id G]
                [--state-dir DIR] [--listen HOST:PORT | --no-http] [--pd-url URL] [--tick-s S]
                [--start committed|earliest|latest] [--log-json] [--log-level info]

Runs until SIGTERM or SIGINT, then stops consuming, runs a final tick, writes a checkpoint, flushes
the outbox within ``daemon.shutdown_flush_s`` and commits: exit code 0. A task that fails stops the
daemon with exit code 1; configuration problems print one line each and exit 2. A relative
``state_dir`` is taken from the config file's directory.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from engine.config import Config, load_config, parse_config
from engine.errors import ConfigError, EngineError

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2

_LOG_RECORD_FIELDS = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: ``ts`` (UTC ISO 8601), ``level``, ``logger``, ``message``, extras."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _LOG_RECORD_FIELDS and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return msgspec.json.encode(doc, enc_hook=str).decode()


def configure_logging(*, json_lines: bool, level: str = "info") -> None:
    """Log to stderr, as JSON lines or as plain text."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLogFormatter() if json_lines else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # aiokafka logs every refused connection at ERROR; the source reports them in its state instead.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)


# ---------------------------------------------------------------------------------------------
# config + flags


def apply_overrides(cfg: Config, args: argparse.Namespace, source: str) -> Config:
    """The config with the command-line overrides applied, checked again as a whole."""
    doc: dict[str, Any] = msgspec.to_builtins(cfg)
    kafka: dict[str, Any] = dict(doc.get("source", {}).get("kafka") or {})
    if args.bootstrap:
        kafka["bootstrap"] = args.bootstrap
    if args.topic:
        kafka["topics"] = list(args.topic)
    if args.group_id:
        kafka["group_id"] = args.group_id
    if args.start:
        kafka["start"] = args.start
    if kafka:
        doc.setdefault("source", {})["kafka"] = kafka
    if args.state_dir:
        doc["state_dir"] = args.state_dir
    if args.listen:
        doc.setdefault("http", {})["listen"] = args.listen
    if args.no_http:
        doc.setdefault("http", {})["enabled"] = False
    if args.pd_url:
        sinks = doc.setdefault("sinks", {})
        pd = dict(sinks.get("pagerduty") or {})
        pd["url"] = args.pd_url
        pd.setdefault("routing_key_env", "PD_ROUTING_KEY")
        sinks["pagerduty"] = pd
    if args.tick_s is not None:
        doc["tick_s"] = args.tick_s
    return parse_config(doc, source)


def resolve_state_dir(cfg: Config, config_path: str | None, where: str) -> Path:
    """``state_dir`` as a path; relative ones start at the config file's directory."""
    if not cfg.state_dir:
        raise ConfigError([f"{where}: $.state_dir: required field is missing (the daemon keeps its "
                           "outbox and checkpoints there)"])
    path = Path(cfg.state_dir)
    if not path.is_absolute() and config_path is not None:
        path = Path(config_path).resolve().parent / path
    return path


def kafka_source_config(cfg: Config, where: str) -> Any:
    """The :class:`engine.io.kafka_config.KafkaSourceConfig` of ``source.kafka``."""
    from engine.io.kafka_config import KafkaSourceConfig

    k = cfg.source.kafka
    if k is None:
        raise ConfigError([f"{where}: $.source.kafka: required field is missing (or give --bootstrap "
                           "and --topic)"])
    doc = msgspec.to_builtins(k)
    doc["bootstrap_servers"] = doc.pop("bootstrap")
    for own in ("format", "max_message_bytes"):
        doc.pop(own)
    return KafkaSourceConfig.from_mapping(doc, where=f"{where}: $.source.kafka")


def build_senders(cfg: Config, session: Any, where: str,
                  environ: Mapping[str, str] | None = None) -> list[Any]:
    """One sender per configured sink; routing keys and secret URLs are read here."""
    from engine.io.pagerduty import PagerDutyConfig, PagerDutySender
    from engine.io.webhook import WebhookSender

    env = os.environ if environ is None else environ
    senders: list[Any] = []
    s = cfg.sinks
    if s.pagerduty is not None:
        pd = PagerDutyConfig.from_mapping(msgspec.to_builtins(s.pagerduty),
                                          where=f"{where}: $.sinks.pagerduty")
        senders.append(PagerDutySender(session, pd, environ=env))
    if s.webhook is not None:
        w = s.webhook
        url = w.url
        if url is None:
            assert w.url_env is not None
            url = env.get(w.url_env, "").strip()
            if not url:
                raise ConfigError([f"{where}: $.sinks.webhook.url_env: expected the URL in environment "
                                   f"variable {w.url_env}, got it unset or empty"])
        headers: dict[str, str] = {}
        for header, var in w.headers_env.items():
            if var not in env:
                raise ConfigError([f"{where}: $.sinks.webhook.headers_env.{header}: expected environment "
                                   f"variable {var} to be set, got nothing"])
            headers[header] = env[var]
        senders.append(WebhookSender(session, url, headers=headers, timeout_s=w.timeout_s))
    if not senders:
        raise ConfigError([f"{where}: $.sinks: expected at least one sink (pagerduty or webhook), got none"])
    return senders


def http_listen(cfg: Config, where: str) -> tuple[str, int] | None:
    from engine.io.http import parse_listen

    if not cfg.http.enabled:
        return None
    try:
        return parse_listen(cfg.http.listen)
    except ValueError as e:
        raise ConfigError([f"{where}: $.http.listen: {e}"]) from None


async def run_daemon(cfg: Config, *, config_path: str | None, install_signals: bool = True,
                     environ: Mapping[str, str] | None = None) -> int:
    """Build the daemon from ``cfg`` and run it until signalled; return the exit code."""
    import aiohttp

    from engine.daemon import Daemon
    from engine.io.kafka import KafkaSource

    where = config_path or "<config>"
    state_dir = resolve_state_dir(cfg, config_path, where)
    source = KafkaSource(kafka_source_config(cfg, where), environ=environ)
    listen = http_listen(cfg, where)
    async with aiohttp.ClientSession() as session:
        senders = build_senders(cfg, session, where, environ)
        daemon = Daemon(cfg, state_dir=state_dir, source=source, senders=senders, http_listen=listen)
        if install_signals:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, daemon.request_stop)
            if _early_stop:
                daemon.request_stop()
        return await daemon.run()


_early_stop: list[int] = []


def _stop_early(signum: int, frame: Any) -> None:
    # A signal before the daemon's loop handlers exist: remembered, then honoured once it runs.
    _early_stop.append(signum)


def _cmd_run(args: argparse.Namespace) -> int:
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _stop_early)
    configure_logging(json_lines=args.log_json, level=args.log_level)
    try:
        cfg = apply_overrides(load_config(args.config), args, args.config)
        try:
            import uvloop

            return int(uvloop.run(run_daemon(cfg, config_path=args.config)))
        except ImportError:
            return asyncio.run(run_daemon(cfg, config_path=args.config))
    except ConfigError as e:
        for line in e.problems:
            print(line, file=sys.stderr)
        return EXIT_USAGE
    except EngineError as e:
        print(f"sloburn run: {e}", file=sys.stderr)
        return EXIT_FAIL


def register(subparsers: Any) -> None:
    """Add ``run`` to an ``argparse`` subparsers object."""
    p = subparsers.add_parser("run", help="run the daemon: Kafka in, alerts out",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--config", "-c", required=True, metavar="CONFIG")
    p.add_argument("--bootstrap", metavar="HOST:PORT", help="override source.kafka.bootstrap")
    p.add_argument("--topic", action="append", metavar="TOPIC", help="override source.kafka.topics "
                   "(repeat for several)")
    p.add_argument("--group-id", metavar="GROUP", help="override source.kafka.group_id")
    p.add_argument("--start", choices=["committed", "earliest", "latest"],
                   help="override source.kafka.start (a checkpoint's offsets still win)")
    p.add_argument("--state-dir", metavar="DIR", help="override state_dir")
    p.add_argument("--listen", metavar="HOST:PORT", help="override http.listen")
    p.add_argument("--no-http", action="store_true", help="serve no HTTP endpoints")
    p.add_argument("--pd-url", metavar="URL", help="override sinks.pagerduty.url")
    p.add_argument("--tick-s", type=float, default=None, metavar="S", help="override tick_s")
    p.add_argument("--log-json", action="store_true", help="log JSON lines instead of text")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=_cmd_run)
