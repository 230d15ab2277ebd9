"""Checkpoint files: atomic writes, retention, and damaged files set aside, never used."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest

from engine.batch import EventBatch
from engine.config import config_hash, parse_config
from engine.engine import Engine
from engine.errors import CheckpointError
from engine.io.checkpoint import AlertState, CheckpointStore
from engine.store import restore, snapshot

NS = 1_000_000_000
T0_NS = 1_700_000_000 * NS
CONFIG = {
    "slos": [
        {"name": "avail", "service": "checkout", "objective": 99.9, "sli": {"availability": {}}},
        {"name": "lat", "service": "checkout", "objective": 99, "sli": {"latency": {"threshold_ms": 300}}},
    ],
}


def _engine(seed: int, n: int = 2000) -> Engine:
    cfg = parse_config(CONFIG)
    eng = Engine(cfg)
    rng = np.random.default_rng(seed)
    k = eng.key_id("checkout")
    ts = T0_NS + np.sort(rng.integers(0, 120 * NS, n))
    status = np.where(rng.random(n) < 0.05, 503, 200)
    lat = rng.lognormal(np.log(100_000), 1.0, n)
    eng.ingest(EventBatch.from_arrays(ts, np.full(n, k), status, lat))
    eng.advance(T0_NS + 100 * NS)  # leaves the last 20 s pending
    return eng


def _write(store: CheckpointStore, eng: Engine, offset: int) -> None:
    header, arrays = snapshot(eng)
    store.write(config_hash=config_hash(eng.config), offsets={"requests": {0: offset, 1: offset + 7}},
                alerts=[AlertState(slo="avail", severity="page", dedup_key="d" * 64, firing=True,
                                   tier="page_quick")],
                snapshot=header, arrays=arrays, watermark_ns=T0_NS + 100 * NS)


@pytest.fixture
def seed() -> int:
    s = 20240611
    print(f"seed={s}")
    return s


def test_round_trip_restores_the_same_engine_state(tmp_path: Path, seed: int) -> None:
    eng = _engine(seed)
    store = CheckpointStore(tmp_path)
    _write(store, eng, 42)
    result = store.load_latest()
    assert result.set_aside == []
    ckpt = result.checkpoint
    assert ckpt is not None
    assert ckpt.header.seq == 1
    assert ckpt.header.offsets == {"requests": {0: 42, 1: 49}}
    assert ckpt.header.alerts[0].tier == "page_quick"
    assert ckpt.header.watermark_ns == T0_NS + 100 * NS
    for name, a in eng.state_arrays().items():
        np.testing.assert_array_equal(ckpt.arrays[name], a, err_msg=name)
        assert ckpt.arrays[name].dtype == a.dtype
    fresh = Engine(eng.config)
    report = restore(fresh, ckpt.header.snapshot, ckpt.arrays)
    assert report.kept == ["avail", "lat"]
    assert fresh.pending_events == eng.pending_events > 0
    for slo in ("avail", "lat"):
        assert fresh.window_counts(slo) == eng.window_counts(slo)
    # Both continue identically: the pending events are evaluated by the restored engine too.
    a = eng.advance(T0_NS + 200 * NS)
    b = fresh.advance(T0_NS + 200 * NS)
    assert a == b
    for slo in ("avail", "lat"):
        assert fresh.totals(slo) == eng.totals(slo)


def test_keeps_the_newest_n_with_increasing_sequence_numbers(tmp_path: Path, seed: int) -> None:
    eng = _engine(seed, n=200)
    store = CheckpointStore(tmp_path, keep=3)
    for i in range(5):
        _write(store, eng, i)
    names = [p.name for p in store.paths()]
    assert names == ["ckpt-000000000003.npz", "ckpt-000000000004.npz", "ckpt-000000000005.npz"]
    ckpt = store.load_latest().checkpoint
    assert ckpt is not None and ckpt.header.seq == 5 and ckpt.header.offsets["requests"][0] == 4


def test_leftover_temporary_file_is_removed_and_never_read(tmp_path: Path, seed: int) -> None:
    eng = _engine(seed, n=200)
    store = CheckpointStore(tmp_path)
    _write(store, eng, 1)
    tmp = store.dir / ".ckpt-000000000002.npz.tmp"
    tmp.write_bytes(b"half a checkpoint")
    store2 = CheckpointStore(tmp_path)
    assert not tmp.exists()
    ckpt = store2.load_latest().checkpoint
    assert ckpt is not None and ckpt.header.seq == 1


def _two_checkpoints(tmp_path: Path, seed: int) -> tuple[CheckpointStore, Path, bytes]:
    eng = _engine(seed, n=500)
    store = CheckpointStore(tmp_path)
    _write(store, eng, 10)
    _write(store, eng, 20)
    newest = store.paths()[-1]
    return store, newest, newest.read_bytes()


@pytest.mark.parametrize("fraction", [0.0, 0.01, 0.3, 0.5, 0.9, 0.999])
def test_truncated_newest_is_set_aside_and_the_older_one_used(tmp_path: Path, seed: int,
                                                             fraction: float) -> None:
    store, newest, raw = _two_checkpoints(tmp_path, seed)
    newest.write_bytes(raw[: int(len(raw) * fraction)])
    result = store.load_latest()
    assert result.checkpoint is not None
    assert result.checkpoint.header.offsets["requests"][0] == 10
    assert len(result.set_aside) == 1
    moved = result.set_aside[0]
    assert moved.original == newest
    assert moved.moved_to.parent == store.corrupt_dir and moved.moved_to.exists()
    assert not newest.exists()
    reason = Path(str(moved.moved_to) + ".reason").read_text()
    assert "unreadable" in reason or "missing" in reason
    # The next checkpoint gets a fresh sequence number, not the one set aside.
    eng = _engine(seed, n=50)
    _write(store, eng, 30)
    assert store.paths()[-1].name == "ckpt-000000000003.npz"


def _payload_span(path: Path) -> list[tuple[int, int]]:
    """Byte ranges of the member data (npy headers and arrays) inside the zip file."""
    spans = []
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            # local header: 30 bytes + file name + extra field, then the stored data
            with open(path, "rb") as f:
                f.seek(info.header_offset + 26)
                n_name = int.from_bytes(f.read(2), "little")
                n_extra = int.from_bytes(f.read(2), "little")
            start = info.header_offset + 30 + n_name + n_extra
            spans.append((start, start + info.compress_size))
    return spans


def test_flipped_payload_bytes_are_always_detected(tmp_path: Path, seed: int) -> None:
    _store, newest, raw = _two_checkpoints(tmp_path, seed)
    spans = _payload_span(newest)
    rng = np.random.default_rng(seed)
    target = tmp_path / "flipped.npz"
    for _ in range(40):
        a, b = spans[int(rng.integers(len(spans)))]
        pos = int(rng.integers(a, b))
        damaged = bytearray(raw)
        damaged[pos] ^= 1 << int(rng.integers(8))
        target.write_bytes(bytes(damaged))
        with pytest.raises(CheckpointError, match=r"unreadable|checksum|missing|decode"):
            CheckpointStore.read(target)


def test_flipped_bytes_anywhere_never_yield_different_data(tmp_path: Path, seed: int) -> None:
    _store, newest, raw = _two_checkpoints(tmp_path, seed)
    good = CheckpointStore.read(newest)
    rng = np.random.default_rng(seed + 1)
    target = tmp_path / "flipped.npz"
    rejected = 0
    for _ in range(60):
        damaged = bytearray(raw)
        pos = int(rng.integers(len(raw)))
        damaged[pos] ^= 1 << int(rng.integers(8))
        target.write_bytes(bytes(damaged))
        try:
            got = CheckpointStore.read(target)
        except CheckpointError:
            rejected += 1
            continue
        # Accepted only when the flip hit zip bookkeeping that carries no data (e.g. a timestamp).
        assert got.header == good.header
        for name, arr in good.arrays.items():
            np.testing.assert_array_equal(got.arrays[name], arr)
    assert rejected > 40


def _rewrite(path: Path, change: Any) -> None:
    with np.load(path, allow_pickle=False) as npz:
        members = {n: npz[n] for n in npz.files}
    change(members)
    with open(path, "wb") as f:
        np.savez(f, allow_pickle=False, **members)


def test_missing_array_is_reported_and_set_aside(tmp_path: Path, seed: int) -> None:
    store, newest, _ = _two_checkpoints(tmp_path, seed)
    _rewrite(newest, lambda m: m.pop("rings"))
    with pytest.raises(CheckpointError, match=r"arrays missing: rings"):
        CheckpointStore.read(newest)
    result = store.load_latest()
    assert result.checkpoint is not None and result.checkpoint.header.seq == 1
    assert "arrays missing: rings" in result.set_aside[0].reason


def test_changed_array_fails_the_checksum(tmp_path: Path, seed: int) -> None:
    _store, newest, _ = _two_checkpoints(tmp_path, seed)

    def bump(m: dict[str, Any]) -> None:
        m["cum"] = m["cum"] + 1

    _rewrite(newest, bump)
    with pytest.raises(CheckpointError, match=r"checksum mismatch"):
        CheckpointStore.read(newest)


def test_changed_header_fails_the_checksum(tmp_path: Path, seed: int) -> None:
    _store, newest, _ = _two_checkpoints(tmp_path, seed)

    def offsets(m: dict[str, Any]) -> None:
        doc = msgspec.json.decode(m["__header__"].tobytes())
        doc["offsets"]["requests"]["0"] = 0
        m["__header__"] = np.frombuffer(msgspec.json.encode(doc), np.uint8)

    _rewrite(newest, offsets)
    with pytest.raises(CheckpointError, match=r"checksum mismatch"):
        CheckpointStore.read(newest)


def test_pickled_member_is_refused(tmp_path: Path, seed: int) -> None:
    _store, newest, _ = _two_checkpoints(tmp_path, seed)
    with np.load(newest, allow_pickle=False) as npz:
        members = {n: npz[n] for n in npz.files}
    members["cum"] = np.array([{"not": "an array"}], dtype=object)
    with open(newest, "wb") as f:
        np.savez(f, allow_pickle=True, **members)
    with pytest.raises(CheckpointError, match=r"unreadable: ValueError"):
        CheckpointStore.read(newest)


def test_every_checkpoint_corrupt_gives_none(tmp_path: Path, seed: int) -> None:
    store, _newest, _ = _two_checkpoints(tmp_path, seed)
    for p in store.paths():
        p.write_bytes(b"PK\x03\x04 not really a zip")
    result = store.load_latest()
    assert result.checkpoint is None
    assert len(result.set_aside) == 2
    assert store.paths() == []
    assert sorted(p.name for p in store.corrupt_dir.glob("*.npz")) == [
        "ckpt-000000000001.npz", "ckpt-000000000002.npz"]


def test_header_of_a_newer_format_is_not_used(tmp_path: Path, seed: int) -> None:
    _store, newest, _ = _two_checkpoints(tmp_path, seed)

    def future(m: dict[str, Any]) -> None:
        doc = msgspec.json.decode(m["__header__"].tobytes())
        doc["format"] = 99
        m["__header__"] = np.frombuffer(msgspec.json.encode(doc), np.uint8)

    _rewrite(newest, future)
    with pytest.raises(CheckpointError, match=r"expected checkpoint format 1, got 99"):
        CheckpointStore.read(newest)


def test_write_failure_is_a_checkpoint_error_and_keeps_the_old_one(tmp_path: Path, seed: int) -> None:
    eng = _engine(seed, n=100)
    store = CheckpointStore(tmp_path)
    _write(store, eng, 1)
    header, arrays = snapshot(eng)
    arrays["bad"] = np.array([object()], dtype=object)  # refused without pickle
    with pytest.raises(CheckpointError, match=r"cannot write the checkpoint"):
        store.write(config_hash="x", offsets={}, alerts=[], snapshot=header, arrays=arrays)
    assert [p.name for p in store.paths()] == ["ckpt-000000000001.npz"]
    assert list(store.dir.glob(".ckpt-*")) == []


def test_reserved_array_names_are_refused(tmp_path: Path, seed: int) -> None:
    eng = _engine(seed, n=100)
    store = CheckpointStore(tmp_path)
    header, arrays = snapshot(eng)
    arrays["__header__"] = np.zeros(1)
    with pytest.raises(CheckpointError, match=r"reserved"):
        store.write(config_hash="x", offsets={}, alerts=[], snapshot=header, arrays=arrays)


def test_keep_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"expected at least 1 checkpoint to keep, got 0"):
        CheckpointStore(tmp_path, keep=0)
