"""Decoding fetched Kafka messages into event batches, and the worker processes that do it.

:func:`decode_messages` is the whole decoding step of the daemon: oversized messages, per-message
format sniffing, one ``decode`` call over every NDJSON message of a fetch, and the message-by-message
pass that names the culprits for the dead-letter topic. It is pure (a decoder in, a
:class:`Decoded` out), so the daemon runs the very same function in its event loop or, through
:class:`engine.io.decode_pool.DecodePool`, in :func:`worker_main` processes.

A worker answers each :class:`Task` read from its pipe with a :class:`Reply` (or a :class:`Failed`
for a bug): the message values come in a shared-memory slot (their int64 lengths, then the values
joined by ``\\n``) or in the task itself, and the columns go back into the slot after them
(``COLUMN_BYTES`` per event) or, when they do not fit, in the reply. Each worker interns keys in a
table of its own and reports the keys it added since its previous reply.
"""

from __future__ import annotations

import contextlib
import os
import signal
import traceback
from dataclasses import dataclass, field
from multiprocessing import shared_memory
from multiprocessing.connection import Connection
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from engine.batch import EventBatch, EventKey, KeyTable, Rejections
from engine.config import EventsConfig
from engine.errors import DecodeWorkerError
from engine.events import EventDecoder, sniff_format

COLUMN_BYTES: Final = 8 + 8 + 8 + 4 + 2
"""Bytes per decoded event in a slot: ts_ns, latency_us, weight, key, status."""


@dataclass(slots=True)
class Decoded:
    """One fetch, decoded.

    ``dead`` lists ``(message index, reasons)`` of the messages to copy to the dead-letter topic
    (indices into the values as submitted); ``oversized`` counts messages refused for their size
    (also in ``rejections`` and in ``dead``).
    """

    rejections: Rejections = field(default_factory=Rejections)
    batch: EventBatch = field(default_factory=EventBatch.empty)
    dead: list[tuple[int, str]] = field(default_factory=list)
    n_messages: int = 0
    oversized: int = 0


def decode_messages(decoder: EventDecoder, data: bytes | memoryview, lengths: npt.NDArray[np.int64], *,
                    fmt: str, max_message_bytes: int, dead_letters: bool) -> Decoded:
    """Decode messages given as their values joined by ``\\n`` and their lengths.

    Parameters
    ----------
    decoder
        Interns keys in its own :class:`KeyTable`.
    data
        ``b"\\n".join(values)``.
    lengths
        ``len(value)`` of each message, in order.
    fmt
        ``ndjson``, ``json``, ``msgpack``, ``auto`` (sniffed per message) or a registered format name.
    max_message_bytes
        Longer messages are refused as ``oversized_message`` and not decoded.
    dead_letters
        Whether rejected messages are to be named in ``dead`` (costs a per-message pass over a fetch
        that had rejections).
    """
    n = int(lengths.shape[0])
    out = Decoded(n_messages=n)
    if n == 0:
        return out
    rej, dead = out.rejections, out.dead
    if fmt == "ndjson" and not dead_letters and int(lengths.max()) <= max_message_bytes:
        # The hot path: the joined values are one NDJSON buffer; no per-message Python.
        out.batch, r = decoder.decode(data, "ndjson")
        rej.update(r)
        return out
    view = memoryview(data)
    ends = np.cumsum(lengths + 1) - 1
    starts = ends - lengths
    batches: list[EventBatch] = []
    lines: list[int] = []
    for i in range(n):
        if lengths[i] > max_message_bytes:
            rej.add("oversized_message")
            out.oversized += 1
            dead.append((i, "oversized_message"))
            continue
        value = bytes(view[starts[i]:ends[i]])
        kind = sniff_format(value) if fmt == "auto" else fmt
        if kind == "ndjson":
            lines.append(i)
        else:
            _decode_one(decoder, value, kind, i, batches, rej, dead if dead_letters else None)
    if lines:
        values = [bytes(view[starts[i]:ends[i]]) for i in lines]
        batch, r = decoder.decode(b"\n".join(values), "ndjson")
        if r and dead_letters:
            # Find the culprits: decode message by message (keys intern idempotently).
            for i, value in zip(lines, values, strict=True):
                _decode_one(decoder, value, "ndjson", i, batches, rej, dead)
        else:
            rej.update(r)
            batches.append(batch)
    out.batch = EventBatch.concat([b for b in batches if len(b)])
    dead.sort()  # in message order, whatever the reason
    return out


def _decode_one(decoder: EventDecoder, value: bytes, fmt: str, index: int, batches: list[EventBatch],
                rej: Rejections, dead: list[tuple[int, str]] | None) -> None:
    batch, r = decoder.decode(value, fmt)
    if len(batch):
        batches.append(batch)
    if r:
        rej.update(r)
        if dead is not None:
            dead.append((index, ",".join(sorted(r))))


# ------------------------------------------------------------------------------------------ worker


@dataclass(frozen=True, slots=True)
class Task:
    slot: str | None  # shared memory name, or None: ``payload`` carries the data
    n: int
    nbytes: int
    out_offset: int
    capacity: int
    payload: tuple[bytes, bytes] | None = None  # (lengths as int64 bytes, data) without a slot


@dataclass(frozen=True, slots=True)
class Reply:
    pid: int
    first_key: int  # worker-local id of new_keys[0]
    new_keys: list[EventKey]
    n_events: int
    columns: tuple[Any, ...] | None  # the arrays when they did not fit the slot
    rejections: dict[str, int]
    dead: list[tuple[int, str]]
    n_messages: int
    oversized: int


class Worker:
    def __init__(self, config: EventsConfig, fmt: str, max_message_bytes: int, dead_letters: bool) -> None:
        self.keys = KeyTable()
        self.decoder = EventDecoder(config, self.keys)
        self.fmt, self.max_message_bytes, self.dead_letters = fmt, max_message_bytes, dead_letters
        self.reported = 0
        self.attached: dict[str, shared_memory.SharedMemory] = {}

    def attach(self, name: str) -> shared_memory.SharedMemory:
        """The slot ``name``, mapped once; the least recently used mappings go past 24."""
        shm = self.attached.pop(name, None)
        if shm is None:
            shm = shared_memory.SharedMemory(name)
            while len(self.attached) >= 24:  # slots the pool replaced (or freed) linger here
                old = self.attached.pop(next(iter(self.attached)))
                with contextlib.suppress(BufferError, OSError):
                    old.close()
        self.attached[name] = shm  # most recently used last
        return shm

    def run(self, task: Task) -> Reply:
        if task.slot is None:
            assert task.payload is not None
            lengths = np.frombuffer(task.payload[0], np.int64)
            decoded = self._decode(task.payload[1], lengths)
            return self._reply(decoded, columns=columns_of(decoded.batch))
        buf = shm_buffer(self.attach(task.slot))
        lengths = np.frombuffer(buf, np.int64, task.n, 0)
        data = buf[8 * task.n:8 * task.n + task.nbytes]
        decoded = self._decode(data, lengths)
        del data, lengths  # no view of the slot outlives the task
        m = len(decoded.batch)
        if task.out_offset + m * COLUMN_BYTES > task.capacity:
            return self._reply(decoded, columns=columns_of(decoded.batch))
        for column, dst in zip(columns_of(decoded.batch), column_views(buf, task.out_offset, m), strict=True):
            dst[:] = column
        return self._reply(decoded, columns=None)

    def _decode(self, data: Any, lengths: npt.NDArray[np.int64]) -> Decoded:
        return decode_messages(self.decoder, data, lengths, fmt=self.fmt,
                               max_message_bytes=self.max_message_bytes, dead_letters=self.dead_letters)

    def _reply(self, decoded: Decoded, columns: tuple[Any, ...] | None) -> Reply:
        first, new = self.reported, self.keys.keys[self.reported:]
        self.reported = len(self.keys)
        return Reply(os.getpid(), first, new, len(decoded.batch), columns, dict(decoded.rejections),
                      decoded.dead, decoded.n_messages, decoded.oversized)


def shm_buffer(shm: shared_memory.SharedMemory) -> memoryview:
    buf = shm.buf
    if buf is None:
        raise DecodeWorkerError(f"shared memory {shm.name} is closed")
    return buf


def columns_of(batch: EventBatch) -> tuple[Any, ...]:
    return batch.ts_ns, batch.latency_us, batch.weight, batch.key, batch.status


def column_views(buf: Any, offset: int, m: int) -> list[npt.NDArray[Any]]:
    views = []
    for dtype in (np.int64, np.float64, np.int64, np.int32, np.int16):
        views.append(np.frombuffer(buf, dtype, m, offset))
        offset += m * np.dtype(dtype).itemsize
    return views


@dataclass(frozen=True, slots=True)
class Failed:
    error: str


def worker_main(conn: Connection, config: EventsConfig, fmt: str, max_message_bytes: int,
                 dead_letters: bool) -> None:
    """A worker process: answer each task read from ``conn``; leave at end of file or on None."""
    # The daemon owns the lifecycle: a terminal's Ctrl-C or a service manager's SIGTERM to the
    # whole group must not kill a worker under a daemon that is shutting down cleanly. When the
    # daemon's process goes away, its end of the pipe closes and recv() ends the loop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    worker = Worker(config, fmt, max_message_bytes, dead_letters)
    conn.send(os.getpid())
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        try:
            reply: Reply | Failed = worker.run(task)
        except Exception as e:  # a bug, not bad data: report it, the daemon stops with it
            reply = Failed(f"{type(e).__name__}: {e}\n{traceback.format_exc()}")
        try:
            conn.send(reply)
        except (EOFError, OSError):
            return
