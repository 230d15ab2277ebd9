"""Real tools for the pipeline test: nginx in the foreground, wrk at a paced rate, tail | kcat.

Every process is started in its own session and stopped by its own id (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import struct
import subprocess
from pathlib import Path
from typing import Any

__all__ = ["NGINX_JSON_FORMAT", "KafkaFrameProxy", "Proc", "binary", "missing_binaries", "nginx_conf",
           "start", "wrk_pacing_script"]

NGINX_JSON_FORMAT = (
    '{"msec":"$msec","status":"$status","request_time":"$request_time",'
    '"upstream_response_time":"$upstream_response_time","host":"$host","uri":"$uri",'
    '"request_method":"$request_method"}'
)
"""The access log line: every field the ``nginx_json`` format reads, quoted as nginx escapes JSON."""


def missing_binaries(*names: str) -> list[str]:
    """The names of ``names`` not found on PATH (nor in /usr/sbin, where Debian puts nginx)."""
    path = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin"
    return [n for n in names if shutil.which(n, path=path) is None]


def binary(name: str) -> str:
    """The full path of ``name`` (see :func:`missing_binaries`)."""
    path = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin"
    found = shutil.which(name, path=path)
    assert found is not None, name
    return found


def nginx_conf(prefix: Path, port: int, *, flaky_percent: int) -> str:
    """A self-contained nginx.conf: one worker, no daemon, every path below ``prefix``.

    ``/`` answers 200; ``/api/flaky`` answers 503 for ``flaky_percent`` % of requests, chosen by a
    hash of ``$request_id`` (``split_clients``), 200 otherwise. Nothing is read from disk but this
    file, so the worker's user does not matter.
    """
    for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (prefix / "temp" / d).mkdir(parents=True, exist_ok=True)
    p = prefix
    return f"""
worker_processes 1;
daemon off;
master_process on;
pid {p}/nginx.pid;
error_log {p}/error.log warn;
events {{ worker_connections 256; }}
http {{
    client_body_temp_path {p}/temp/client_body;
    proxy_temp_path {p}/temp/proxy;
    fastcgi_temp_path {p}/temp/fastcgi;
    uwsgi_temp_path {p}/temp/uwsgi;
    scgi_temp_path {p}/temp/scgi;
    log_format sloburn escape=json '{NGINX_JSON_FORMAT}';
    access_log {p}/access.log sloburn;
    default_type text/html;
    keepalive_requests 1000000;
    split_clients "$request_id" $flaky_fail {{
        {flaky_percent}% 1;
        * "";
    }}
    server {{
        listen 127.0.0.1:{port};
        server_name shop.example;
        location = /api/flaky {{
            if ($flaky_fail) {{
                return 503;
            }}
            return 200 "flaky but fine\\n";
        }}
        location / {{
            return 200 "<!doctype html><title>shop</title><p>ok</p>\\n";
        }}
    }}
}}
"""


def wrk_pacing_script(delay_ms: int) -> str:
    """A wrk Lua script: every connection waits ``delay_ms`` before each request (a paced rate)."""
    return f"function delay()\n  return {delay_ms}\nend\n"


class Proc:
    """A started child process, stopped by its id; its output goes to a file."""

    def __init__(self, name: str, popen: subprocess.Popen[bytes], log_path: Path) -> None:
        self.name = name
        self.popen = popen
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout_s``; returns the exit code."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=timeout_s)
        return self.popen.returncode


def start(name: str, argv: list[str], log_path: Path, *, stdin: int | None = None,
          stdout: int | None = None, env: dict[str, str] | None = None) -> Proc:
    """Start ``argv`` with stderr (and stdout unless given) appended to ``log_path``."""
    log = open(log_path, "ab")  # noqa: SIM115 - handed to the child, closed right after
    try:
        popen = subprocess.Popen(argv, stdin=stdin if stdin is not None else subprocess.DEVNULL,
                                 stdout=stdout if stdout is not None else log, stderr=log, env=env)
    finally:
        log.close()
    return Proc(name, popen, log_path)


# ---------------------------------------------------------------------------------------------
# kcat (librdkafka 2.0) in front of the embedded broker


def _uvarint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7


def _skip_tags(buf: bytes, pos: int) -> int:
    n, pos = _uvarint(buf, pos)
    for _ in range(n):
        _tag, pos = _uvarint(buf, pos)
        size, pos = _uvarint(buf, pos)
        pos += size
    return pos


def plain_api_versions(payload: bytes) -> bytes:
    """An ApiVersions v3+ response (correlation id first) without its top-level tagged fields.

    librdkafka 2.0 misreads the four tagged fields (supported and finalized features, ZK
    migration) that the embedded broker sends after ``throttle_time_ms``, and gives up on the
    broker; they are optional, and nothing else of the response changes.
    """
    pos = 4 + 2  # correlation id, error code
    count, pos = _uvarint(payload, pos)
    for _ in range(max(0, count - 1)):
        pos = _skip_tags(payload, pos + 6)  # api key, min and max version, then the entry's tags
    pos += 4  # throttle_time_ms
    return payload[:pos] + b"\x00"


class KafkaFrameProxy:
    """A TCP proxy to a Kafka broker that makes it readable to kcat: see :func:`plain_api_versions`.

    Metadata responses name the proxy instead of the broker (same host, the port swapped), so
    every connection of the client goes through the proxy. Everything else passes as it is.
    """

    def __init__(self, broker_host: str, broker_port: int) -> None:
        self.broker = (broker_host, broker_port)
        self.port = 0
        self._server: Any = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def bootstrap(self) -> str:
        return f"{self.broker[0]}:{self.port}"

    async def __aenter__(self) -> KafkaFrameProxy:
        self._server = await asyncio.start_server(self._serve, self.broker[0], 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        for w in list(self._writers):
            w.close()  # the pumps see the end of their streams and return
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)  # type: ignore[arg-type]
        try:
            b_reader, b_writer = await asyncio.open_connection(*self.broker)
        except OSError:
            writer.close()
            self._tasks.discard(task)  # type: ignore[arg-type]
            return
        self._writers.update((writer, b_writer))
        requests: dict[bytes, tuple[int, int]] = {}
        old = self.broker[0].encode() + struct.pack(">i", self.broker[1])
        new = self.broker[0].encode() + struct.pack(">i", self.port)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, upstream: bool) -> None:
            try:
                while True:
                    size = struct.unpack(">i", await src.readexactly(4))[0]
                    payload = await src.readexactly(size)
                    if upstream:
                        api_key, version = struct.unpack(">hh", payload[:4])
                        requests[payload[4:8]] = (api_key, version)
                    else:
                        api_key, version = requests.pop(payload[:4], (-1, -1))
                        if api_key == 18 and version >= 3:
                            payload = plain_api_versions(payload)
                        elif api_key == 3:
                            payload = payload.replace(old, new)
                    dst.write(struct.pack(">i", len(payload)) + payload)
                    await dst.drain()
            except (asyncio.IncompleteReadError, ConnectionError, IndexError, struct.error):
                pass
            finally:
                dst.close()

        try:
            await asyncio.gather(pump(reader, b_writer, True), pump(b_reader, writer, False))
        finally:
            self._writers.difference_update((writer, b_writer))
            self._tasks.discard(task)  # type: ignore[arg-type]
