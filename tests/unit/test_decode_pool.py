"""DecodePool and decode_messages: worker processes give what decoding in the loop gives."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest

from engine.batch import EventBatch, EventKey, KeyTable
from engine.config import EventsConfig
from engine.errors import DecodeWorkerError
from engine.events import EventDecoder
from engine.io import decode_pool
from engine.io.decode_pool import DecodePool, _chunks
from engine.io.decoding import Decoded, decode_messages
from tests.processes import process_alive

T0_MS = 1_700_000_000_000
SERVICES = ["checkout", "cart", "search"]


def line(rng: random.Random, i: int, service: str | None = None) -> bytes:
    rec: dict[str, Any] = {"ts": T0_MS + i, "service": service or rng.choice(SERVICES),
                           "route": rng.choice(["/", "/pay"]), "status": rng.choice([200, 200, 503]),
                           "latency_ms": round(rng.uniform(1, 900), 3)}
    if rng.random() < 0.1:
        rec["labels"] = {"region": rng.choice(["eu", "us"])}
    if rng.random() < 0.1:
        rec["weight"] = rng.randint(2, 5)
    return json.dumps(rec).encode()


def messages(rng: random.Random, n: int, *, bad: bool, start: int = 0,
             new_services: bool = False) -> list[bytes]:
    """NDJSON messages of 1-20 lines; with ``bad`` some are garbage, truncated or of a wrong schema."""
    out = []
    for m in range(n):
        k = rng.randint(1, 20)
        service = f"svc-{start + m}" if new_services and rng.random() < 0.3 else None
        value = b"\n".join(line(rng, start * 100 + m * 20 + j, service) for j in range(k))
        if bad and rng.random() < 0.15:
            value = rng.choice([b"garbage", value[: len(value) // 2], b'{"ts":"nope","service":1}',
                                b'{"service":"x"}'])
        out.append(value)
    return out


def spelled(batch: EventBatch, keys: KeyTable) -> list[tuple[Any, ...]]:
    return [(int(t), keys.keys[k], int(s), None if math.isnan(lat) else float(lat), int(w))
            for t, k, s, lat, w in zip(batch.ts_ns, batch.key, batch.status, batch.latency_us, batch.weight,
                                       strict=True)]


def oracle(values: list[bytes], *,
           max_message_bytes: int = 1 << 20) -> tuple[list[Any], dict[str, int], list[int]]:
    """Message by message with a plain decoder: rows, rejections, indices of rejected messages."""
    keys = KeyTable()
    dec = EventDecoder(EventsConfig(), keys)
    rows: list[Any] = []
    rej: dict[str, int] = {}
    dead = []
    for i, value in enumerate(values):
        if len(value) > max_message_bytes:
            rej["oversized_message"] = rej.get("oversized_message", 0) + 1
            dead.append(i)
            continue
        batch, r = dec.decode(value, "ndjson")
        rows.extend(spelled(batch, keys))
        for reason, n in r.items():
            rej[reason] = rej.get(reason, 0) + n
        if r:
            dead.append(i)
    return rows, rej, dead


# ---------------------------------------------------------------------------------------------
# decode_messages


@pytest.mark.parametrize("dead_letters", [False, True])
def test_decode_messages_equals_message_by_message(dead_letters: bool) -> None:
    rng = random.Random(3)
    values = messages(rng, 300, bad=True)
    values.append(b"x" * 5000)  # oversized below
    keys = KeyTable()
    got = decode_messages(EventDecoder(EventsConfig(), keys), b"\n".join(values),
                          np.array([len(v) for v in values], np.int64), fmt="ndjson",
                          max_message_bytes=4000, dead_letters=dead_letters)
    rows, rej, dead = oracle(values, max_message_bytes=4000)
    assert sorted(spelled(got.batch, keys)) == sorted(rows)
    assert dict(got.rejections) == rej
    assert got.n_messages == len(values) and got.oversized == 1
    if dead_letters:
        assert [i for i, _ in got.dead] == dead
        assert dict(got.dead)[len(values) - 1] == "oversized_message"
    else:
        assert [i for i, _ in got.dead] == [len(values) - 1]


def test_decode_messages_auto_format_per_message() -> None:
    keys = KeyTable()
    values = [b'{"ts":1700000000,"service":"a"}', b'[{"ts":1700000001,"service":"b"}]',
              msgspec.msgpack.encode({"ts": 1700000002, "service": "c"}), b"\x00\x01 not msgpack"]
    got = decode_messages(EventDecoder(EventsConfig(), keys), b"\n".join(values),
                          np.array([len(v) for v in values], np.int64), fmt="auto",
                          max_message_bytes=1 << 20, dead_letters=True)
    # NDJSON messages are decoded together after the others: the order of events may change.
    assert sorted(k.service for k in (keys.keys[i] for i in got.batch.key)) == ["a", "b", "c"]
    assert got.rejections == {"malformed_msgpack": 1}
    assert [i for i, _ in got.dead] == [3]


def test_chunks_cover_every_message_once() -> None:
    rng = random.Random(5)
    for _ in range(200):
        lengths = np.array([rng.choice([1, 50, 700, 5000]) for _ in range(rng.randint(1, 60))], np.int64)
        size = rng.choice([100, 1000, 10_000])
        ranges = _chunks(lengths, size)
        assert ranges[0][0] == 0 and ranges[-1][1] == len(lengths)
        assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
        for lo, hi in ranges:
            assert hi > lo
            assert hi - lo == 1 or int((lengths[lo:hi] + 1).sum()) <= size
    assert _chunks(np.empty(0, np.int64), 100) == []


# ---------------------------------------------------------------------------------------------
# the pool


def run_pool(fetches: list[list[bytes]], *, workers: int, keys: KeyTable | None = None,
             dead_letters: bool = False, **kwargs: Any) -> tuple[list[Decoded], KeyTable, DecodePool]:
    keys = keys if keys is not None else KeyTable()
    pool = DecodePool(EventsConfig(), keys, fmt="ndjson", max_message_bytes=1 << 20,
                      dead_letters=dead_letters, workers=workers, **kwargs)

    async def go() -> list[Decoded]:
        await pool.start()
        try:
            futures = [pool.submit(values) for values in fetches]  # all in flight at once
            return [await f for f in futures]
        finally:
            await pool.stop()

    return asyncio.run(go()), keys, pool


def summary(results: list[Decoded], keys: KeyTable) -> list[Any]:
    return [(spelled(d.batch, keys), dict(d.rejections), d.dead, d.n_messages) for d in results]


@pytest.mark.parametrize("workers", [1, 2])
def test_workers_give_what_the_loop_gives(workers: int) -> None:
    rng = random.Random(7)
    # New services keep appearing, so that keys are learned by each worker at different times.
    fetches = [messages(rng, rng.randint(1, 400), bad=True, start=k * 1000, new_services=True)
               for k in range(12)]
    # The caller's table already holds keys (as after a restore): worker ids must be mapped.
    restored = KeyTable()
    for s in ("zzz", "checkout"):
        restored.intern(EventKey(s, "/", ""))
    inline, keys0, _ = run_pool(fetches, workers=0, keys=KeyTable(restored.keys.copy(), dict(restored._ids)))
    pooled, keys1, pool = run_pool(fetches, workers=workers, keys=restored, chunk_bytes=8192,
                                   slot_bytes=65536)
    assert summary(pooled, keys1) == summary(inline, keys0)
    assert sum(len(d.batch) for d in pooled) > 10_000
    assert pool.tasks_via_pipe == 0 and pool.tasks_local == 0
    assert keys1.keys[:2] == [EventKey("zzz", "/", ""), EventKey("checkout", "/", "")]


def test_dead_letter_indices_span_chunks() -> None:
    rng = random.Random(11)
    fetches = [messages(rng, 500, bad=True)]
    pooled, _, _ = run_pool(fetches, workers=2, dead_letters=True, chunk_bytes=4096)
    _, rej, dead = oracle(fetches[0])
    assert [i for i, _ in pooled[0].dead] == dead
    assert dict(pooled[0].rejections) == rej


def test_without_shared_memory_tasks_go_by_pipe(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(size: int) -> Any:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(decode_pool, "_Slot", refuse)
    rng = random.Random(13)
    fetches = [messages(rng, 200, bad=True) for _ in range(6)]
    inline, keys0, _ = run_pool(fetches, workers=0)
    pooled, keys1, pool = run_pool(fetches, workers=1, chunk_bytes=4096)
    assert summary(pooled, keys1) == summary(inline, keys0)
    assert pool.tasks_via_pipe >= 1 and pool.tasks_local >= 1  # the busy worker: the rest decoded here


def test_columns_larger_than_the_slot_come_back_by_pipe() -> None:
    # Tiny events: more columns than the slot's estimate leaves room for.
    values = [b"\n".join(b'{"ts":%d,"service":"a"}' % (T0_MS + i) for i in range(j * 200, j * 200 + 200))
              for j in range(50)]
    inline, keys0, _ = run_pool([values], workers=0)
    pooled, keys1, _ = run_pool([values], workers=1, slot_bytes=4096, chunk_bytes=1 << 20)
    assert summary(pooled, keys1) == summary(inline, keys0)
    assert len(pooled[0].batch) == 10_000


def test_a_dead_worker_fails_the_pending_fetch_and_the_pool() -> None:
    rng = random.Random(17)
    pool = DecodePool(EventsConfig(), KeyTable(), fmt="ndjson", max_message_bytes=1 << 20,
                      dead_letters=False, workers=1)

    async def go() -> None:
        await pool.start()
        try:
            ok = await pool.submit(messages(rng, 50, bad=False))
            assert len(ok.batch) > 0
            os.kill(pool.pids[0], signal.SIGKILL)
            with pytest.raises(DecodeWorkerError, match="died"):  # from submit or from the future
                await asyncio.wait_for(pool.submit(messages(rng, 50, bad=False)), 10)
            with pytest.raises(DecodeWorkerError, match="died"):
                pool.submit([b'{"ts":1,"service":"a"}'])
        finally:
            await pool.stop()

    asyncio.run(go())


def test_workers_ignore_sigterm_and_sigint() -> None:
    rng = random.Random(19)
    pool = DecodePool(EventsConfig(), KeyTable(), fmt="ndjson", max_message_bytes=1 << 20,
                      dead_letters=False, workers=1)

    async def go() -> None:
        await pool.start()
        try:
            os.kill(pool.pids[0], signal.SIGTERM)
            os.kill(pool.pids[0], signal.SIGINT)
            await asyncio.sleep(0.2)
            got = await asyncio.wait_for(pool.submit(messages(rng, 20, bad=False)), 10)
            assert got.n_messages == 20 and len(got.batch) > 0
        finally:
            await pool.stop()
        assert not any(process_alive(pid) for pid in pool.pids)

    asyncio.run(go())


def test_stop_frees_shared_memory() -> None:
    rng = random.Random(23)
    pool = DecodePool(EventsConfig(), KeyTable(), fmt="ndjson", max_message_bytes=1 << 20,
                      dead_letters=False, workers=1, chunk_bytes=8192)

    async def go() -> list[str]:
        await pool.start()
        try:
            futures = [pool.submit(messages(rng, 300, bad=False)) for _ in range(4)]
            for f in futures:
                await f
            return [slot.shm.name for slot in pool._slots]
        finally:
            await pool.stop()

    names = asyncio.run(go())
    assert len(names) >= 2  # several tasks were in flight at once
    assert pool._slots == []
    if Path("/dev/shm").is_dir():
        assert not [n for n in names if (Path("/dev/shm") / n.lstrip("/")).exists()]


def test_workers_leave_when_the_daemon_process_is_killed(tmp_path: Path) -> None:
    script = tmp_path / "owner.py"
    script.write_text(
        "import asyncio, os, signal\n"
        "from engine.batch import KeyTable\n"
        "from engine.config import EventsConfig\n"
        "from engine.io.decode_pool import DecodePool\n"
        "async def main():\n"
        "    pool = DecodePool(EventsConfig(), KeyTable(), fmt='ndjson', max_message_bytes=1 << 20,\n"
        "                      dead_letters=False, workers=2)\n"
        "    await pool.start()\n"
        "    print(*pool.pids, flush=True)\n"
        "    await asyncio.sleep(60)\n"
        "if __name__ == '__main__':\n"
        "    asyncio.run(main())\n")
    with subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert len(pids) == 2 and all(process_alive(p) for p in pids)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 10
        while any(process_alive(p) for p in pids):
            assert time.monotonic() < deadline, f"orphaned decode workers {pids}"
            time.sleep(0.05)


def test_cpu_quota_of_cgroup_v2_and_v1(tmp_path: Path) -> None:
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("max 100000\n")
    assert decode_pool._cgroup_quota(v2) is None
    (v2 / "cpu.max").write_text("150000 100000\n")
    assert decode_pool._cgroup_quota(v2) == 1.5
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert decode_pool._cgroup_quota(v1) is None
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("50000\n")
    assert decode_pool._cgroup_quota(v1) == 0.5
    assert decode_pool._cgroup_quota(tmp_path / "none") is None


def test_tuned_gc_freezes_then_restores_the_collector() -> None:
    import gc

    from engine.daemon import GC_THRESHOLDS, tuned_gc

    before = gc.get_threshold()
    with tuned_gc():
        assert gc.get_threshold() == GC_THRESHOLDS
        assert gc.get_freeze_count() > 0
        assert len(gc.get_objects(0)) < 1000  # what lived at entry is out of the young generation
        with tuned_gc():  # a second daemon in the same process
            assert gc.get_threshold() == GC_THRESHOLDS
        assert gc.get_threshold() == GC_THRESHOLDS and gc.get_freeze_count() > 0
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_stop_with_large_replies_in_flight_is_quick() -> None:
    # Tiny events: columns do not fit the small slots and come back through the pipe (~6 MB a
    # reply), so workers are blocked writing them when the pool stops.
    values = [b"\n".join(b'{"ts":%d,"service":"a"}' % (T0_MS + i) for i in range(200_000))]
    pool = DecodePool(EventsConfig(), KeyTable(), fmt="ndjson", max_message_bytes=1 << 30,
                      dead_letters=False, workers=2, slot_bytes=4096)

    async def go() -> float:
        await pool.start()
        futures = [pool.submit(values) for _ in range(8)]
        await asyncio.sleep(0.05)
        t0 = time.monotonic()
        await pool.stop()
        seconds = time.monotonic() - t0
        outcomes = await asyncio.gather(*futures, return_exceptions=True)
        assert all(isinstance(o, Decoded | DecodeWorkerError) for o in outcomes), outcomes
        assert any(isinstance(o, DecodeWorkerError) for o in outcomes)  # some were in flight
        return seconds

    assert asyncio.run(go()) < 3.0
    assert not any(process_alive(pid) for pid in pool.pids)


SHM_FULL = """
import asyncio
from engine.batch import KeyTable
from engine.config import EventsConfig
from engine.io.decode_pool import DecodePool
LINE = b'{"ts":1700000000000,"service":"checkout","route":"/pay","status":200,"latency_ms":12.5}'
async def main():
    pool = DecodePool(EventsConfig(), KeyTable(), fmt="ndjson", max_message_bytes=1 << 20,
                      dead_letters=False, workers=1)
    await pool.start()
    values = [b"\\n".join([LINE] * 100)] * 200  # about 1.8 MB a fetch
    futures = [pool.submit(values) for _ in range(4)]
    print(sum([len((await f).batch) for f in futures]), pool.tasks_via_pipe + pool.tasks_local, flush=True)
    await pool.stop()
if __name__ == "__main__":
    asyncio.run(main())
"""


def test_a_full_dev_shm_falls_back_instead_of_crashing(tmp_path: Path) -> None:
    """A 4 MiB /dev/shm (a private mount namespace): no SIGBUS, every event decoded."""
    script = tmp_path / "shm_full.py"
    script.write_text(SHM_FULL)
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True, check=False) \
        if shutil.which("unshare") else None
    if probe is None or probe.returncode != 0:
        pytest.skip("needs unshare -m (a private mount namespace) to mount a small /dev/shm")
    cmd = f"mount -t tmpfs -o size=4m tmpfs /dev/shm && exec {sys.executable} {script}"
    done = subprocess.run(["unshare", "-m", "sh", "-c", cmd], capture_output=True, text=True, timeout=120,
                          check=False, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr[-2000:]
    events, fallbacks = map(int, done.stdout.split())
    assert events == 4 * 200 * 100
    assert fallbacks >= 1
