"""Durable checkpoints of the daemon: engine state, alert states and Kafka offsets, written atomically.

Layout under ``state_dir``::

    checkpoints/ckpt-000000000042.npz     newest valid ones, the last ``keep`` (default 3)
    checkpoints/corrupt/...               checkpoints that failed to read, set aside with a reason file

One checkpoint is one ``.npz`` file (``numpy.savez``, read back with ``allow_pickle=False``): the
engine's arrays as written by :func:`engine.store.snapshot`, plus two reserved members:

- ``__header__``: the msgspec-JSON :class:`CheckpointHeader` (sequence number, creation time, config
  hash, Kafka offsets ``{topic: {partition: next_offset}}``, alert states, the engine's
  :class:`~engine.store.SnapshotHeader`, and the names of every array member);
- ``__sha256__``: the SHA-256 of the header bytes and every array (name, dtype, shape, bytes) in name
  order. The zip CRC catches most damage; the digest catches the rest, and a missing member.

Writing: ``.ckpt-N.npz.tmp`` -> ``fsync`` -> ``os.replace`` to ``ckpt-N.npz`` -> ``fsync`` of the
directory. A crash at any point leaves either the previous checkpoint set or the new one, never a
torn file under a checkpoint name. Reading (:meth:`CheckpointStore.load_latest`) tries the newest
first; a checkpoint that cannot be trusted is moved to ``corrupt/`` with the reason, reported, and the
next older one is tried. Nothing unreadable is ever used.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import struct
import time
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt

from engine.alerts import AlertEvent
from engine.errors import CheckpointError
from engine.store import SnapshotHeader

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
"""Version of the checkpoint file layout (the engine snapshot carries its own version)."""

_HEADER = "__header__"
_DIGEST = "__sha256__"
_NAME = re.compile(r"^ckpt-(\d{12})\.npz$")

Offsets = dict[str, dict[int, int]]
"""Kafka positions: topic -> partition -> next offset to read."""


class AlertState(msgspec.Struct, frozen=True, kw_only=True):
    """One SLO x severity alert as it stood when the checkpoint was taken."""

    slo: str
    severity: str
    dedup_key: str
    firing: bool
    tier: str | None = None
    trigger: AlertEvent | None = None
    """The trigger that opened the alert while it fires (what ``/v1/alerts`` shows after a restart)."""


class CheckpointHeader(msgspec.Struct, frozen=True, kw_only=True):
    """Everything in a checkpoint that is not an engine array.

    Attributes
    ----------
    seq
        Sequence number, increasing by one per checkpoint written in this state directory.
    created_s
        Wall-clock time of writing, epoch seconds.
    config_hash
        :func:`engine.config.config_hash` of the configuration the state was built with.
    offsets
        Next Kafka offset to read per topic and partition: every message before it is in the state.
    alerts
        Alert states (for humans and ``/v1/alerts``; the engine arrays are authoritative).
    snapshot
        The engine's snapshot header (:func:`engine.store.snapshot`).
    arrays
        Names of every array member, so that a missing one is detected.
    watermark_ns
        The last watermark the engine was advanced to, or None.
    """

    seq: int
    created_s: float
    config_hash: str
    offsets: Offsets
    alerts: list[AlertState]
    snapshot: SnapshotHeader
    arrays: list[str] = msgspec.field(default_factory=list)
    watermark_ns: int | None = None
    format: int = CHECKPOINT_FORMAT


class Checkpoint(msgspec.Struct, frozen=True):
    """A checkpoint read back and verified."""

    path: Path
    header: CheckpointHeader
    arrays: dict[str, npt.NDArray[Any]]


class SetAside(msgspec.Struct, frozen=True):
    """A checkpoint that could not be trusted: where it went and why."""

    original: Path
    moved_to: Path
    reason: str


class LoadResult(msgspec.Struct, frozen=True):
    """What :meth:`CheckpointStore.load_latest` found: the checkpoint to use (or None), what it set aside."""

    checkpoint: Checkpoint | None
    set_aside: list[SetAside]


def _digest(header_bytes: bytes, arrays: dict[str, npt.NDArray[Any]]) -> str:
    h = hashlib.sha256()
    h.update(len(header_bytes).to_bytes(8, "little"))
    h.update(header_bytes)
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        meta = f"{name}\x1f{a.dtype.str}\x1f{a.shape}".encode()
        h.update(len(meta).to_bytes(8, "little"))
        h.update(meta)
        h.update(a.nbytes.to_bytes(8, "little"))
        h.update(a.tobytes())
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class CheckpointStore:
    """Checkpoints in ``state_dir/checkpoints``.

    Parameters
    ----------
    state_dir
        The daemon's state directory (created if missing).
    keep
        Valid checkpoints kept after each write (default 3, at least 1).
    clock
        Epoch seconds for ``created_s``; default ``time.time``.
    """

    def __init__(self, state_dir: str | Path, *, keep: int = 3,
                 clock: Callable[[], float] = time.time) -> None:
        if keep < 1:
            raise CheckpointError(f"keep: expected at least 1 checkpoint to keep, got {keep}")
        self.dir = Path(state_dir) / "checkpoints"
        self.corrupt_dir = self.dir / "corrupt"
        self.keep = keep
        self._clock = clock
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CheckpointError(f"{self.dir}: cannot create the checkpoint directory: {e}") from e
        self._remove_temporaries()

    # -- listing --------------------------------------------------------------------------------

    def paths(self) -> list[Path]:
        """Checkpoint files, oldest first."""
        found = []
        for p in self.dir.iterdir():
            m = _NAME.match(p.name)
            if m and p.is_file():
                found.append((int(m.group(1)), p))
        return [p for _, p in sorted(found)]

    def _max_seq(self) -> int:
        seqs = [0]
        for d in (self.dir, self.corrupt_dir):
            if d.is_dir():
                for p in d.iterdir():
                    m = re.match(r"^ckpt-(\d{12})\.npz", p.name)
                    if m:
                        seqs.append(int(m.group(1)))
        return max(seqs)

    def _remove_temporaries(self) -> None:
        # Left by a crash in the middle of a write; never a checkpoint.
        for p in self.dir.glob(".ckpt-*.tmp"):
            with contextlib.suppress(OSError):
                p.unlink()

    # -- writing --------------------------------------------------------------------------------

    def write(self, *, config_hash: str, offsets: Offsets, alerts: list[AlertState],
              snapshot: SnapshotHeader, arrays: dict[str, npt.NDArray[Any]],
              watermark_ns: int | None = None) -> CheckpointHeader:
        """Write the next checkpoint atomically and prune old ones; return its header.

        Raises
        ------
        CheckpointError
            When the file cannot be written (disk full, permissions ...); the previous checkpoints
            are untouched.
        """
        for name in arrays:
            if name.startswith("__"):
                raise CheckpointError(f"array name {name!r} is reserved")
        seq = self._max_seq() + 1
        header = CheckpointHeader(
            seq=seq, created_s=self._clock(), config_hash=config_hash,
            offsets={t: dict(ps) for t, ps in offsets.items()}, alerts=list(alerts),
            snapshot=snapshot, arrays=sorted(arrays), watermark_ns=watermark_ns,
        )
        header_bytes = msgspec.json.encode(header)
        members: dict[str, npt.NDArray[Any]] = {
            name: np.ascontiguousarray(a) for name, a in arrays.items()
        }
        digest = _digest(header_bytes, members)
        members[_HEADER] = np.frombuffer(header_bytes, dtype=np.uint8)
        members[_DIGEST] = np.frombuffer(digest.encode("ascii"), dtype=np.uint8)
        final = self.dir / f"ckpt-{seq:012d}.npz"
        tmp = self.dir / f".ckpt-{seq:012d}.npz.tmp"
        try:
            with open(tmp, "wb") as f:
                np.savez(f, allow_pickle=False, **members)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
            _fsync_dir(self.dir)
        except (OSError, ValueError) as e:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise CheckpointError(f"{final}: cannot write the checkpoint: {e}") from e
        self._prune()
        return header

    def _prune(self) -> None:
        paths = self.paths()
        for p in paths[: max(0, len(paths) - self.keep)]:
            try:
                p.unlink()
            except OSError as e:
                log.warning("cannot remove old checkpoint %s: %s", p, e)

    # -- reading --------------------------------------------------------------------------------

    @staticmethod
    def read(path: str | Path) -> Checkpoint:
        """Read and verify one checkpoint file.

        Raises
        ------
        CheckpointError
            With the reason when the file is unreadable, incomplete or fails its checksum.
        """
        p = Path(path)
        try:
            # Opened here, not by np.load: a file that is not a zip must still be closed.
            with open(p, "rb") as f, np.load(f, allow_pickle=False) as npz:
                names = set(npz.files)
                for reserved in (_HEADER, _DIGEST):
                    if reserved not in names:
                        raise CheckpointError(f"{p}: member {reserved!r} is missing")
                header_bytes = npz[_HEADER].tobytes()
                stored = npz[_DIGEST].tobytes().decode("ascii", errors="replace")
                try:
                    header = msgspec.json.decode(header_bytes, type=CheckpointHeader)
                except (msgspec.DecodeError, msgspec.ValidationError) as e:
                    raise CheckpointError(f"{p}: header does not decode: {e}") from None
                if header.format != CHECKPOINT_FORMAT:
                    raise CheckpointError(f"{p}: expected checkpoint format {CHECKPOINT_FORMAT}, "
                                          f"got {header.format}")
                missing = [n for n in header.arrays if n not in names]
                if missing:
                    raise CheckpointError(f"{p}: arrays missing: {', '.join(missing)}")
                arrays = {n: npz[n] for n in header.arrays}
        except CheckpointError:
            raise
        except FileNotFoundError as e:
            raise CheckpointError(f"{p}: cannot read: {e.strerror}") from None
        except (OSError, ValueError, EOFError, KeyError, SyntaxError, struct.error, zlib.error,
                zipfile.BadZipFile, zipfile.LargeZipFile) as e:
            # BadZipFile carries the zip CRC failures; the others come from damaged npy headers.
            raise CheckpointError(f"{p}: unreadable: {type(e).__name__}: {e}") from None
        actual = _digest(header_bytes, arrays)
        if actual != stored:
            raise CheckpointError(f"{p}: checksum mismatch (stored {stored[:16]}..., "
                                  f"computed {actual[:16]}...)")
        return Checkpoint(p, header, arrays)

    def set_aside(self, path: Path, reason: str) -> SetAside:
        """Move an untrusted checkpoint to ``corrupt/`` with a ``.reason`` file next to it."""
        self.corrupt_dir.mkdir(parents=True, exist_ok=True)
        target = self.corrupt_dir / path.name
        n = 1
        while target.exists():
            target = self.corrupt_dir / f"{path.name}.{n}"
            n += 1
        os.replace(path, target)
        with contextlib.suppress(OSError):
            target.with_name(target.name + ".reason").write_text(reason + "\n", encoding="utf-8")
        with contextlib.suppress(OSError):
            _fsync_dir(self.dir)
        return SetAside(path, target, reason)

    def load_latest(self) -> LoadResult:
        """The newest checkpoint that reads and verifies; untrusted newer ones are set aside.

        Every checkpoint set aside is logged at ERROR level and listed in the result.
        """
        moved: list[SetAside] = []
        for p in reversed(self.paths()):
            try:
                ckpt = self.read(p)
            except CheckpointError as e:
                item = self.set_aside(p, str(e))
                log.error("checkpoint set aside: %s (moved to %s)", e, item.moved_to)
                moved.append(item)
                continue
            return LoadResult(ckpt, moved)
        return LoadResult(None, moved)
