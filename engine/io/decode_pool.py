"""The daemon's decoding in worker processes, pipelined with fetching.

:class:`DecodePool` runs :func:`engine.io.decoding.decode_messages` in ``workers`` processes
(``spawn``), so that JSON parsing, the dearest step per event, uses other cores while the event loop
goes on fetching from Kafka and evaluating. The daemon submits each fetch and ingests the results in
submission order; nothing of a fetch is ingested before all of it is decoded, so engine state and
recorded positions still move together. With ``workers=0`` decoding happens in the caller, as a
finished future.

Transport
    A fetch is cut into tasks of about ``chunk_bytes`` (whole messages; a bigger message makes a
    task of its own). Each task travels through a slot of shared memory (``multiprocessing.
    shared_memory``): the message lengths (int64) and the values joined by ``\\n``, then the
    columns the worker writes back (``COLUMN_BYTES`` per event). The pipes carry only slot names,
    counts, rejections and new keys. Slots are reused, one per task in flight; the daemon stops
    fetching while ``max_inflight_bytes`` of values wait (:attr:`DecodePool.busy`), and the slots
    never hold more than three times that (48 MiB by default). A slot's pages are
    reserved when it is made (``posix_fallocate``): /dev/shm is a tmpfs, where a block that does
    not fit would otherwise fail at its first write, with SIGBUS. A task without a slot (the cap is
    reached, or /dev/shm is full or missing, which is then retried after a minute) goes pickled
    through the pipe to an idle worker, else is decoded in the caller: slower, same result.

Keys
    Every worker interns keys in a table of its own and reports, with each result, the keys it
    added since its previous one; the pool interns them in the caller's :class:`KeyTable` and maps
    the worker's ids through a per-worker array. Reports are applied as replies arrive, in each
    worker's own order, so a worker's new keys are known before any batch that uses them.

Failures
    Bad data never raises (it is counted, see :mod:`engine.events`). A worker that dies breaks the
    pool: the pending futures raise :class:`DecodeWorkerError` and the daemon stops with it
    (supervision) rather than evaluating without its input. Workers ignore SIGINT and SIGTERM (the
    daemon shuts them down after its final tick) and leave when the daemon's process goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import multiprocessing
import os
import time
from collections import deque
from collections.abc import Sequence
from multiprocessing import shared_memory
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from engine.batch import EventBatch, KeyTable, Rejections
from engine.config import EventsConfig
from engine.errors import DecodeWorkerError
from engine.events import EventDecoder
from engine.io.decoding import (
    COLUMN_BYTES,
    Decoded,
    Failed,
    Reply,
    Task,
    column_views,
    decode_messages,
    shm_buffer,
    worker_main,
)

log = logging.getLogger("sloburn.decode")

CHUNK_BYTES: Final = 1 << 20
SLOT_BYTES: Final = 2 << 20
MAX_INFLIGHT_BYTES: Final = 16 << 20

class _Slot:
    """One shared-memory block, reused task after task; replaced by a bigger one when needed."""

    def __init__(self, size: int) -> None:
        self.shm = shared_memory.SharedMemory(create=True, size=size)
        # /dev/shm is a tmpfs, where a new block is a sparse file: without reserving its pages now,
        # a full /dev/shm would show up as SIGBUS at the first write instead of ENOSPC here.
        try:
            os.posix_fallocate(self.shm._fd, 0, size)  # type: ignore[attr-defined]  # POSIX: its file
        except OSError:
            self.release()
            raise

    @property
    def size(self) -> int:
        return self.shm.size

    def release(self) -> None:
        with contextlib.suppress(BufferError, OSError, FileNotFoundError):
            self.shm.close()
        with contextlib.suppress(OSError, FileNotFoundError):
            self.shm.unlink()


def usable_cpus() -> int:
    """CPUs this process may use: its affinity, capped by a cgroup CPU quota (a container's limit)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    quota = _cgroup_quota()
    return max(1, min(cpus, math.ceil(quota))) if quota is not None else cpus


def _cgroup_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The CPU quota in CPUs from cgroup v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us``; None: no limit."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us


def default_workers() -> int:
    """Workers for ``decode_workers: auto``: one less than :func:`usable_cpus`, at most 4."""
    return max(0, min(4, usable_cpus() - 1))


class _Proc:
    """One worker process, its pipe, and the futures of its tasks in order."""

    def __init__(self, ctx: Any, args: tuple[Any, ...]) -> None:
        self.conn, child = ctx.Pipe(duplex=True)
        self.process = ctx.Process(target=worker_main, args=(child, *args), name="sloburn-decode",
                                   daemon=True)
        self.process.start()
        child.close()
        self.pid: int = self.process.pid
        self.waiting: deque[asyncio.Future[Any]] = deque()
        self.failed: str | None = None


class DecodePool:
    """Decodes fetches for the daemon, in order, in ``workers`` processes (or inline with 0).

    Parameters
    ----------
    config, keys
        The events section and the engine's key table (ids in the returned batches are its ids).
    fmt, max_message_bytes, dead_letters
        As for :func:`decode_messages`.
    workers
        Worker processes; 0 decodes in the calling thread.
    chunk_bytes, slot_bytes
        Target bytes of one task and size of one shared-memory slot (see the module docstring).
    """

    def __init__(self, config: EventsConfig, keys: KeyTable, *, fmt: str, max_message_bytes: int,
                 dead_letters: bool, workers: int, chunk_bytes: int = CHUNK_BYTES,
                 slot_bytes: int = SLOT_BYTES, max_inflight_bytes: int = MAX_INFLIGHT_BYTES,
                 start_timeout_s: float = 60.0) -> None:
        if workers < 0:
            raise ValueError(f"expected workers >= 0, got {workers}")
        self.keys = keys
        self.workers = workers
        self._args = (config, fmt, max_message_bytes, dead_letters)
        # Decodes in the caller: with no workers, and for a task that must go by pipe while every
        # worker is busy (a big send to a busy worker could block both sides).
        self._local = EventDecoder(config, keys)
        self._chunk_bytes = chunk_bytes
        self._slot_bytes = slot_bytes
        self._start_timeout_s = start_timeout_s
        self._procs: list[_Proc] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._broken: str | None = None
        self._free: list[_Slot] = []
        self._slots: list[_Slot] = []
        self._shm_refused_until = 0.0
        self._max_inflight_bytes = max_inflight_bytes
        # In flight: up to max_inflight_bytes of values, plus the fetch that crossed the line, in
        # slots about twice the size of their values.
        self._max_shm_bytes = 3 * max_inflight_bytes
        self._inflight_bytes = 0
        self._maps: dict[int, npt.NDArray[np.int32]] = {}
        self._pending = 0
        self.tasks_via_pipe = 0
        """Tasks that went through the pipe instead of shared memory (too big, or no /dev/shm)."""
        self.tasks_local = 0
        """Tasks decoded in the caller although there are workers (pipe tasks while all were busy)."""

    @property
    def pending(self) -> int:
        """Fetches submitted and not yet collected."""
        return self._pending

    @property
    def pids(self) -> list[int]:
        """Process ids of the workers."""
        return [p.pid for p in self._procs]

    async def start(self) -> None:
        """Start the workers and wait until each has imported the decoder.

        Raises
        ------
        DecodeWorkerError
            When a worker does not come up within ``start_timeout_s`` (e.g. a program that starts
            the daemon without the ``if __name__ == "__main__":`` guard that ``spawn`` needs).
        """
        if self.workers == 0 or self._procs:
            return
        loop = self._loop = asyncio.get_running_loop()
        ctx = multiprocessing.get_context("spawn")
        ready = []
        try:
            for _ in range(self.workers):
                proc = _Proc(ctx, self._args)
                self._procs.append(proc)
                fut = loop.create_future()
                proc.waiting.append(fut)
                ready.append(fut)
                loop.add_reader(proc.conn.fileno(), self._readable, proc)
            done, _ = await asyncio.wait(ready, timeout=self._start_timeout_s)
            failed = [f for f in ready if f not in done or f.exception() is not None]
            if failed:
                first = failed[0]
                why = first.exception() if first in done else f"no answer in {self._start_timeout_s:g} s"
                raise DecodeWorkerError(f"decode workers did not start: {why}")
        except (OSError, DecodeWorkerError):
            await self.stop()
            raise
        log.info("decode workers started: %d (pids %s)", self.workers, self.pids)

    async def stop(self) -> None:
        """Stop the workers and free the shared memory; tasks still in flight fail."""
        procs, self._procs = self._procs, []
        for proc in procs:
            if self._loop is not None:
                self._loop.remove_reader(proc.conn.fileno())
            with contextlib.suppress(OSError, ValueError):
                proc.conn.send(None)
            # Nobody reads replies any more: a worker blocked sending one gets EPIPE and leaves
            # instead of waiting for the join timeout.
            proc.conn.close()
            self._fail_waiting(proc, "the decode pool was stopped")

        def join(proc: _Proc) -> None:
            proc.process.join(5.0)
            if proc.process.is_alive():
                proc.process.kill()
                proc.process.join(5.0)

        await asyncio.gather(*(asyncio.to_thread(join, proc) for proc in procs))
        for slot in self._slots:
            slot.release()
        self._slots.clear()
        self._free.clear()

    def _readable(self, proc: _Proc) -> None:
        """Event-loop callback: hand every complete reply of ``proc`` to the future waiting for it."""
        fut: asyncio.Future[Any] | None = None
        try:
            while proc.conn.poll():
                fut = None
                reply = proc.conn.recv()
                fut = proc.waiting.popleft()
                if isinstance(reply, Failed):
                    raise DecodeWorkerError(f"decode worker {proc.pid} failed: {reply.error}")
                if isinstance(reply, Reply):
                    # Here, in the worker's own order: fetches are collected concurrently, so a
                    # later reply of this worker may be applied before an earlier one.
                    self._learn(reply)
                if not fut.done():
                    fut.set_result(reply)
        except Exception as e:
            # The pipe closed (the worker died), a reply could not be read, or keys went out of step:
            # the replies still due can no longer be matched with their tasks. The pool is broken.
            if self._loop is not None:
                self._loop.remove_reader(proc.conn.fileno())
            if isinstance(e, DecodeWorkerError):
                why = str(e)
            else:
                proc.process.join(0.1)
                why = (f"decode worker {proc.pid} died (exit code {proc.process.exitcode}): "
                       f"{type(e).__name__}: {e}")
            log.error("%s", why)
            self._broken = proc.failed = why
            if fut is not None and not fut.done():
                fut.set_exception(DecodeWorkerError(why))
            self._fail_waiting(proc, why)

    @staticmethod
    def _fail_waiting(proc: _Proc, why: str) -> None:
        while proc.waiting:
            fut = proc.waiting.popleft()
            if not fut.done():
                fut.set_exception(DecodeWorkerError(why))

    def submit(self, values: Sequence[bytes]) -> asyncio.Future[Decoded]:
        """Start decoding ``values``; the future gives their :class:`Decoded` (message indices as given).

        Collect results in submission order (the daemon awaits them one after the other).

        Raises
        ------
        DecodeWorkerError
            When a worker has died, or the pool was not started.
        """
        loop = asyncio.get_running_loop()
        lengths = np.fromiter(map(len, values), np.int64, len(values))
        if self.workers == 0:
            fut: asyncio.Future[Decoded] = loop.create_future()
            fut.set_result(self._decode_here(b"\n".join(values), lengths))
            return fut
        if self._broken is not None:
            raise DecodeWorkerError(self._broken)
        if not self._procs:
            raise DecodeWorkerError("decode pool used before start() or after stop()")
        ranges = _chunks(lengths, self._chunk_bytes)
        parts = [self._submit_chunk(loop, values[lo:hi], lengths[lo:hi]) for lo, hi in ranges]
        self._pending += 1
        nbytes = int(lengths.sum())
        self._inflight_bytes += nbytes
        return asyncio.ensure_future(self._combine(parts, [lo for lo, _ in ranges], nbytes))

    def _decode_here(self, data: bytes, lengths: npt.NDArray[np.int64]) -> Decoded:
        _, fmt, max_message_bytes, dead_letters = self._args
        return decode_messages(self._local, data, lengths, fmt=fmt, max_message_bytes=max_message_bytes,
                               dead_letters=dead_letters)

    def _submit_chunk(self, loop: asyncio.AbstractEventLoop, values: Sequence[bytes],
                      lengths: npt.NDArray[np.int64]) -> asyncio.Future[Any]:
        """Send one task to the least busy worker; the future gives (reply, slot, task) or a Decoded."""
        n = len(values)
        nbytes = int(lengths.sum()) + n - 1
        out_offset = -(-(8 * n + nbytes) // 8) * 8
        slot = self._take_slot(out_offset + (n + nbytes // 64) * COLUMN_BYTES)  # typical events
        fut: asyncio.Future[Any] = loop.create_future()
        if slot is None:
            idle = [p for p in self._procs if not p.waiting]
            if not idle:
                self.tasks_local += 1
                fut.set_result(self._decode_here(b"\n".join(values), lengths))
                return fut
            self.tasks_via_pipe += 1
            proc = idle[0]
            task = Task(None, n, nbytes, 0, 0, (lengths.tobytes(), b"\n".join(values)))
        else:
            buf = shm_buffer(slot.shm)
            buf[:8 * n] = lengths.tobytes()
            _write_joined(buf, 8 * n, values, nbytes)
            task = Task(slot.shm.name, n, nbytes, out_offset, slot.size)
            proc = min(self._procs, key=lambda p: len(p.waiting))
        inner: asyncio.Future[Any] = loop.create_future()
        try:
            proc.conn.send(task)
        except OSError as e:
            if slot is not None:
                self._free.append(slot)
            self._broken = f"decode worker {proc.pid} died (its pipe is closed: {e})"
            raise DecodeWorkerError(self._broken) from e
        proc.waiting.append(inner)

        def finish(done: asyncio.Future[Any]) -> None:
            failed = done.cancelled() or done.exception() is not None
            if (fut.done() or failed) and slot is not None:  # nobody applies this reply: slot free
                self._free.append(slot)
            if fut.done():
                return
            if failed:
                fut.set_exception(done.exception() or DecodeWorkerError("decode task cancelled"))
            else:
                fut.set_result((done.result(), slot, task))

        inner.add_done_callback(finish)
        fut.add_done_callback(_retrieve)  # a fetch given up (shutdown) leaves no unread exception
        return fut

    def _take_slot(self, need: int) -> _Slot | None:
        """A free slot of at least ``need`` bytes (reused, replaced or new); None: go by pipe."""
        fits = [i for i, slot in enumerate(self._free) if slot.size >= need]
        if fits:
            return self._free.pop(fits[-1])
        if self._shm_refused_until > time.monotonic():
            return None
        size = max(self._slot_bytes, need)
        while self._free and self._shm_bytes() + size > self._max_shm_bytes:
            old = self._free.pop(0)  # too small for this task: make room
            self._slots.remove(old)
            old.release()
        if self._shm_bytes() + size > self._max_shm_bytes:
            return None  # every slot is in flight: this task goes by pipe
        try:
            slot = _Slot(size)
        except OSError as e:
            # /dev/shm full or missing: this task goes by pipe; try again in a minute.
            self._shm_refused_until = time.monotonic() + 60.0
            log.warning("shared memory refused (%s): decode tasks go through pipes for a minute", e)
            return None
        self._slots.append(slot)
        return slot

    def _shm_bytes(self) -> int:
        return sum(slot.size for slot in self._slots)

    @property
    def busy(self) -> bool:
        """Whether as many message bytes as ``max_inflight_bytes`` wait for decoding: submit no more."""
        return self._inflight_bytes >= self._max_inflight_bytes

    async def _combine(self, parts: list[asyncio.Future[Any]], offsets: list[int], nbytes: int) -> Decoded:
        try:
            out = Decoded()
            batches = []
            first_error: BaseException | None = None
            for part, offset in zip(parts, offsets, strict=True):
                try:
                    got = await part
                except Exception as e:
                    first_error = first_error or e
                    continue
                if isinstance(got, Decoded):  # decoded here
                    part_out, batch = got, got.batch
                else:
                    reply, slot, task = got
                    try:
                        batch = self._apply(reply, slot, task)
                    finally:
                        if slot is not None:
                            self._free.append(slot)
                    part_out = Decoded(Rejections(reply.rejections), batch, reply.dead, reply.n_messages,
                                       reply.oversized)
                batches.append(batch)
                out.rejections.update(part_out.rejections)
                out.dead.extend((offset + i, why) for i, why in part_out.dead)
                out.n_messages += part_out.n_messages
                out.oversized += part_out.oversized
            if first_error is not None:
                raise first_error
            out.batch = EventBatch.concat([b for b in batches if len(b)])
            return out
        finally:
            self._pending -= 1
            self._inflight_bytes -= nbytes

    def _learn(self, reply: Reply) -> None:
        """Intern the keys a worker reports as new, and extend its id map."""
        mapping = self._maps.get(reply.pid, np.empty(0, np.int32))
        if reply.first_key != len(mapping):
            raise DecodeWorkerError(f"decode worker {reply.pid} reported keys from id {reply.first_key}, "
                                    f"expected {len(mapping)}")
        if reply.new_keys:
            added = np.fromiter((self.keys.intern(k) for k in reply.new_keys), np.int32, len(reply.new_keys))
            self._maps[reply.pid] = np.concatenate([mapping, added])

    def _apply(self, reply: Reply, slot: _Slot | None, task: Task) -> EventBatch:
        """Copy the columns out of the slot and map the worker's key ids to the caller's."""
        mapping = self._maps.get(reply.pid, np.empty(0, np.int32))
        m = reply.n_events
        if m == 0:
            return EventBatch.empty()
        if reply.columns is not None:
            ts, lat, weight, key, status = reply.columns
        else:
            assert slot is not None
            views = column_views(shm_buffer(slot.shm), task.out_offset, m)
            ts, lat, weight, key, status = (v.copy() for v in views)
            del views
        return EventBatch(ts, mapping[key], status, lat, weight)


def _retrieve(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


def _write_joined(buf: memoryview, start: int, values: Sequence[bytes], nbytes: int) -> None:
    """Write the values joined by newlines at ``buf[start:]``; big ones without a joined copy."""
    if nbytes < 1024 * len(values):  # small values: one C-level join and a copy beat a Python loop
        buf[start:start + nbytes] = b"\n".join(values)
        return
    pos = start
    for value in values:
        if pos > start:
            buf[pos - 1] = 10  # the "\n" before each value but the first
        end = pos + len(value)
        buf[pos:end] = value
        pos = end + 1


def _chunks(lengths: npt.NDArray[np.int64], chunk_bytes: int) -> list[tuple[int, int]]:
    """Consecutive message ranges of about ``chunk_bytes`` each (at least one message per range)."""
    n = int(lengths.shape[0])
    if n == 0:
        return []
    ends = np.cumsum(lengths + 1)
    if int(ends[-1]) <= chunk_bytes:
        return [(0, n)]
    out = []
    lo = 0
    while lo < n:
        base = int(ends[lo - 1]) if lo else 0
        hi = int(np.searchsorted(ends, base + chunk_bytes, side="right"))
        hi = max(hi, lo + 1)
        out.append((lo, hi))
        lo = hi
    return out
