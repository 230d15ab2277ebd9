"""kill -9 of ``sloburn run`` at random points of a stream: state and incidents as if nothing happened.

The daemon runs as a child process (``python -m engine.cli run``) against the session's broker and an
in-process PagerDuty receiver. It is killed with SIGKILL several times while events stream in, and
restarted each time; at the end it is stopped with SIGTERM. Its last checkpoint must then hold the
same engine state, array for array, as one uninterrupted engine fed the same events, and the
receiver must have seen each predicted incident exactly once, resolved when predicted.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import msgspec
import numpy as np
import pytest
from aiokafka import AIOKafkaProducer

from engine.config import Config
from engine.engine import Engine
from engine.errors import CheckpointError
from engine.events import EventDecoder
from engine.io.broker import free_port
from engine.io.checkpoint import Checkpoint, CheckpointStore
from engine.io.pd_receiver import PagerDutyReceiver
from engine.store import restore
from tests.integration.test_daemon import ROUTING_KEY, daemon_config, last_ts_s, make_traffic
from tests.processes import process_alive

pytestmark = pytest.mark.integration

SEED = 20_251_128
N_KILLS = 3
PER_MESSAGE = 20


def newest_checkpoint(state_dir: Path) -> Checkpoint | None:
    store_dir = state_dir / "checkpoints"
    if not store_dir.is_dir():
        return None
    for p in sorted(store_dir.glob("ckpt-*.npz"), reverse=True):
        try:
            return CheckpointStore.read(p)
        except CheckpointError:
            continue  # pruned while being read
    return None


async def produce_paced(bootstrap: str, topic: str, lines: list[bytes], span_s: float) -> int:
    """Messages of PER_MESSAGE lines spread evenly over ``span_s`` seconds; returns their count."""
    messages = [b"\n".join(lines[i:i + PER_MESSAGE]) for i in range(0, len(lines), PER_MESSAGE)]
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        t0 = time.monotonic()
        step = 50
        for i in range(0, len(messages), step):
            futures = [await producer.send(topic, m) for m in messages[i:i + step]]
            await asyncio.gather(*futures)
            wait = t0 + span_s * (i + step) / len(messages) - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
    finally:
        await producer.stop()
    return len(messages)


class Child:
    """``python -m engine.cli run`` as a child process."""

    def __init__(self, config_path: Path, log_path: Path) -> None:
        self.config_path = config_path
        self.log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None
        self.starts = 0

    async def start(self) -> None:
        env = {**os.environ, "PD_ROUTING_KEY": ROUTING_KEY}
        with open(self.log_path, "ab") as log:
            log.write(f"--- start {self.starts}\n".encode())
            log.flush()
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "engine.cli", "run", "--config", str(self.config_path), "--log-json",
                stdout=log, stderr=log, env=env)
        self.starts += 1

    async def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        assert await self.proc.wait() == -signal.SIGKILL

    async def terminate(self, timeout_s: float = 30) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.proc.wait(), timeout_s)

    async def ensure_stopped(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


async def wait_for_log(child: Child, text: str, count: int, timeout_s: float = 20) -> None:
    end = time.monotonic() + timeout_s
    while child.log_path.read_text().count(text) < count:
        assert child.proc is not None and child.proc.returncode is None, child.log_path.read_text()[-3000:]
        assert time.monotonic() < end, f"no {text!r} in the daemon log after {timeout_s} s"
        await asyncio.sleep(0.05)


def reference_engine(cfg: Config, lines: list[bytes], watermark_ns: int) -> Engine:
    """One engine, never interrupted, fed the same events in the same order."""
    eng = Engine(cfg)
    decoder = EventDecoder(cfg.events, eng.keys)
    for i in range(0, len(lines), 5000):
        batch, rej = decoder.decode(b"\n".join(lines[i:i + 5000]) + b"\n", "ndjson")
        assert not rej
        eng.ingest(batch)
    eng.advance(watermark_ns)
    return eng


async def test_kill_9_at_random_points_loses_and_duplicates_nothing(
        kafka_broker: str, kafka_topic_factory: Callable[..., str], pd_receiver: PagerDutyReceiver,
        tmp_path: Path) -> None:
    rng = random.Random(SEED)
    print(f"seed={SEED}")
    topic = kafka_topic_factory(1)
    lines = make_traffic(SEED, rate=15)
    state_dir = tmp_path / "state"
    cfg = daemon_config(kafka_broker, topic, state_dir, pd_receiver.url + "/v2/enqueue",
                        checkpoint_interval_s=0.5)
    doc = msgspec.to_builtins(cfg)
    doc["tick_s"] = 0.2
    doc["http"]["listen"] = f"127.0.0.1:{free_port()}"
    config_path = tmp_path / "daemon.yaml"
    config_path.write_bytes(msgspec.json.encode(doc))  # JSON is YAML
    child = Child(config_path, tmp_path / "daemon.log")
    kills: list[float] = []
    try:
        await child.start()
        producer = asyncio.ensure_future(produce_paced(kafka_broker, topic, lines, span_s=14.0))
        t0 = time.monotonic()
        for k in range(N_KILLS):
            # Once it has restored its state and started consuming, killed wherever it is; the first
            # time only once it has written a checkpoint, so that some restart has state to restore
            # (a cold JIT cache can delay the first checkpoint by seconds).
            await wait_for_log(child, "daemon running", k + 1)
            if k == 0:
                deadline = time.monotonic() + 60
                while newest_checkpoint(state_dir) is None:
                    assert time.monotonic() < deadline, "no checkpoint within 60 s"
                    await asyncio.sleep(0.1)
            await asyncio.sleep(rng.uniform(0.2, 2.5))
            kills.append(round(time.monotonic() - t0, 2))
            await child.kill()
            await child.start()
        n_messages = await producer
        print(f"killed at {kills} s; {n_messages} messages, {len(lines)} events")
        want_ns = int(last_ts_s(lines) * 1e9) - int(cfg.engine.allowed_lateness_s * 1e9) - 10**9
        end = time.monotonic() + 45
        while True:
            ckpt = newest_checkpoint(state_dir)
            if (ckpt is not None and ckpt.header.offsets.get(topic, {}).get(0) == n_messages
                    and (ckpt.header.watermark_ns or 0) >= want_ns):
                break
            assert child.proc is not None and child.proc.returncode is None, \
                (tmp_path / "daemon.log").read_text()[-3000:]
            assert time.monotonic() < end, "the restarted daemon did not catch up"
            await asyncio.sleep(0.2)
        await wait_for_log(child, "daemon running", child.starts)
        assert await child.terminate() == 0
    finally:
        await child.ensure_stopped()
    log_text = (tmp_path / "daemon.log").read_text()
    assert log_text.count("restored checkpoint") >= 1, log_text[-3000:]
    # No decode worker outlives its daemon, killed or stopped.
    workers = [int(p) for found in re.findall(r"decode workers started: \d+ \(pids \[([\d, ]+)\]", log_text)
               for p in found.split(",")]
    assert len(workers) >= N_KILLS + 1, log_text[-3000:]
    deadline = time.monotonic() + 10
    while alive := [p for p in workers if process_alive(p)]:
        assert time.monotonic() < deadline, f"orphaned decode workers: {alive}"
        await asyncio.sleep(0.1)
    ckpt = newest_checkpoint(state_dir)
    assert ckpt is not None and ckpt.header.watermark_ns is not None
    restored = Engine(cfg)
    report = restore(restored, ckpt.header.snapshot, ckpt.arrays)
    assert report.kept == ["checkout-availability"]
    ref = reference_engine(cfg, lines, ckpt.header.watermark_ns)
    assert restored.events_ingested == ref.events_ingested == len(lines)
    assert dict(restored.rejections) == dict(ref.rejections) == {}
    assert restored.window_counts("checkout-availability") == ref.window_counts("checkout-availability")
    assert restored.totals("checkout-availability") == ref.totals("checkout-availability")
    mine, theirs = restored.state_arrays(), ref.state_arrays()
    for name, arr in theirs.items():
        np.testing.assert_array_equal(mine[name], arr, err_msg=name)
    # The receiver: each predicted incident opened once, and resolved.
    predicted = Engine(cfg)
    decoder = EventDecoder(cfg.events, predicted.keys)
    predicted.ingest(decoder.decode(b"\n".join(lines) + b"\n", "ndjson")[0])
    transitions = predicted.advance(ckpt.header.watermark_ns)
    want = Counter((a.dedup_key, a.action) for a in transitions)
    actions = Counter(action for _, action in want)
    assert actions["trigger"] >= 1 and actions["resolve"] == actions["trigger"], want
    await asyncio.sleep(1.0)  # the final flush ran before exit; nothing may arrive after it
    incidents = Counter(i.dedup_key for i in pd_receiver.incidents)
    assert incidents == Counter(k for k, action in want if action == "trigger")
    assert all(i.status == "resolved" for i in pd_receiver.incidents)
    got = Counter((e.dedup_key, e.event_action) for e in pd_receiver.events)
    assert set(got) == set(want)
    # A trigger re-sent after a kill between PagerDuty's 202 and the outbox update is folded into
    # the open incident (PagerDuty's dedup); it never opens a second one.
    print(f"events at the receiver: {dict(got)}; appended triggers: "
          f"{sum(1 for e in pd_receiver.events if e.outcome == 'appended')}")
