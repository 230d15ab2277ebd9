"""The durable alert outbox: a SQLite file that keeps every alert transition until a sink has it.

One row per (alert event, sink). A row is ``pending`` until the delivery loop marks it ``delivered``
(with the time), ``dead`` (refused for good, with the reason and the sink's errors) or an operator
``dropped`` it; ``coalesced`` rows were superseded before anyone saw them (below). Rows are marked,
never deleted before delivery; :meth:`Outbox.prune` removes old delivered rows on request.

Durability
    WAL journal with ``synchronous=FULL``: every commit is fsynced before it returns. With
    ``NORMAL`` a power loss may undo the last commits; the daemon commits Kafka offsets right after
    appending a tick's alerts, so an undone append would be an alert lost for good. The cost is one
    fsync per append or status change, a few per second at most.

Idempotency
    Each row carries ``idem_key`` = SHA-256 of (sink, dedup_key, action, event time), unique in the
    table, and :meth:`Outbox.append` is ``INSERT OR IGNORE``. A daemon restarted after ``kill -9``
    replays Kafka from its last checkpoint and re-appends the same transitions: nothing new is
    inserted, so PagerDuty sees no duplicate.

Order
    Each (sink, dedup_key) is a lane delivered strictly in insertion order: :meth:`Outbox.next_batch`
    offers only the oldest pending row of each lane, so a row being retried holds back the rows
    behind it. A ``dead`` row does not: PagerDuty refused it (400), it never reached an incident,
    and holding the lane would turn one bad event into a silent loss of every later transition of
    that alert. It stays listed until an operator retries or drops it.

Coalescing
    When the oldest pending row of a lane is a trigger that was never attempted and the next pending
    row is its resolve, neither needs sending: both become ``coalesced``. Not when the trigger was
    attempted (a timeout may hide an accepted trigger) nor when an earlier trigger of the lane may
    have opened an alert: a delivered trigger always gets its resolve.
"""

from __future__ import annotations

import builtins
import hashlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import msgspec

from engine.alerts import AlertEvent
from engine.errors import EngineError

STATUSES = ("pending", "delivered", "dead", "dropped", "coalesced")
_SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    idem_key     TEXT NOT NULL UNIQUE,
    sink         TEXT NOT NULL,
    dedup_key    TEXT NOT NULL,
    action       TEXT NOT NULL,
    slo          TEXT NOT NULL,
    severity     TEXT NOT NULL,
    event_ts     REAL NOT NULL,
    event        BLOB NOT NULL,
    batch_id     TEXT,
    status       TEXT NOT NULL DEFAULT 'pending',
    created_at   REAL NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    last_error   TEXT,
    delivered_at REAL,
    target       TEXT,
    reason       TEXT,
    errors       TEXT
);
CREATE INDEX IF NOT EXISTS outbox_lane ON outbox (sink, dedup_key, status, id);
CREATE INDEX IF NOT EXISTS outbox_status ON outbox (status, id);
"""

_COLUMNS = ("id, sink, dedup_key, action, slo, severity, event_ts, event, batch_id, status, created_at, "
            "attempts, last_error, delivered_at, target, reason, errors")


class OutboxError(EngineError):
    """The outbox file cannot be opened, or an operation does not apply to a row."""


class OutboxRow(msgspec.Struct, kw_only=True):
    """One stored transition for one sink.

    ``event`` is None when the stored bytes no longer decode as an :class:`AlertEvent`
    (``decode_error`` says why); the delivery loop marks such rows dead.
    """

    id: int
    sink: str
    dedup_key: str
    action: str
    slo: str
    severity: str
    event_ts: float
    status: str
    created_at: float
    attempts: int
    event: AlertEvent | None
    batch_id: str | None = None
    last_error: str | None = None
    delivered_at: float | None = None
    target: str | None = None
    reason: str | None = None
    errors: list[str] = msgspec.field(default_factory=list)
    decode_error: str | None = None


def idempotency_key(event: AlertEvent, sink: str) -> str:
    """SHA-256 hex of (sink, dedup_key, action, event time); ``repr`` keeps the float exact."""
    text = f"{sink}\x1f{event.dedup_key}\x1f{event.action}\x1f{float(event.ts)!r}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class Outbox:
    """SQLite outbox at ``path`` (created with its directory if missing).

    Parameters
    ----------
    path
        The database file, e.g. ``state_dir/outbox.sqlite3``.
    sinks
        Sink names each appended event is queued for (one row per sink); default ``("pagerduty",)``.
    coalesce
        Skip a never-attempted trigger followed by its resolve (see the module docstring); default on.
    clock
        Epoch seconds for ``created_at`` and ``delivered_at``; default ``time.time``.

    Methods are synchronous and thread-safe; each write is one transaction.
    """

    def __init__(self, path: str | Path, *, sinks: Sequence[str] = ("pagerduty",), coalesce: bool = True,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.sinks = tuple(sinks)
        self.coalesce = coalesce
        self._clock = clock
        self._lock = threading.RLock()
        self._dec = msgspec.json.Decoder(AlertEvent)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10.0)
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            self._db.execute("PRAGMA synchronous=FULL")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > _SCHEMA_VERSION:
                raise OutboxError(f"{self.path}: expected outbox schema version <= {_SCHEMA_VERSION}, "
                                  f"got {version} (written by a newer sloburn)")
            with self._tx():
                for stmt in _SCHEMA.split(";"):
                    if stmt.strip():
                        self._db.execute(stmt)
                self._db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
        except sqlite3.Error as e:
            raise OutboxError(f"{self.path}: cannot open the outbox: {e}") from e
        if mode.lower() != "wal":
            self._db.close()
            raise OutboxError(f"{self.path}: expected journal_mode 'wal', got {mode!r} "
                              "(is the file on a filesystem without shared memory?)")

    def __repr__(self) -> str:
        return f"Outbox({str(self.path)!r}, sinks={self.sinks!r})"

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def pragma(self, name: str) -> str | int:
        """The value of one PRAGMA (``journal_mode``, ``synchronous`` ...), for checks."""
        with self._lock:
            return self._db.execute(f"PRAGMA {name}").fetchone()[0]  # type: ignore[no-any-return]

    # -- writing --------------------------------------------------------------------------------

    def append(self, events: Iterable[AlertEvent], *, batch_id: str | None = None) -> int:
        """Queue ``events`` for every sink in one transaction; return the number of new rows.

        Transitions already present (same idempotency key) are ignored, so replaying a tick after a
        crash inserts nothing twice.
        """
        now = self._clock()
        enc = msgspec.json.Encoder()
        rows = [(idempotency_key(e, sink), sink, e.dedup_key, e.action, e.slo, e.severity, e.ts,
                 enc.encode(e), batch_id, now)
                for e in events for sink in self.sinks]
        with self._tx() as db:
            before = db.total_changes
            db.executemany(
                "INSERT OR IGNORE INTO outbox (idem_key, sink, dedup_key, action, slo, severity, event_ts, "
                "event, batch_id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            return db.total_changes - before

    def begin_attempt(self, row_id: int) -> None:
        """Count an attempt before it is made: a crash mid-send then still counts as attempted."""
        with self._tx() as db:
            db.execute("UPDATE outbox SET attempts = attempts + 1 WHERE id = ?", (row_id,))

    def mark_delivered(self, row_id: int, *, target: str | None = None) -> None:
        with self._tx() as db:
            db.execute("UPDATE outbox SET status = 'delivered', delivered_at = ?, target = ?, "
                       "last_error = NULL WHERE id = ?", (self._clock(), target, row_id))

    def mark_failed(self, row_id: int, error: str) -> None:
        """Record a retriable failure; the row stays pending."""
        with self._tx() as db:
            db.execute("UPDATE outbox SET last_error = ? WHERE id = ?", (error, row_id))

    def mark_dead(self, row_id: int, reason: str, errors: Sequence[str] = ()) -> None:
        """Keep a refused row as a dead letter with the reason and the sink's error list."""
        with self._tx() as db:
            db.execute("UPDATE outbox SET status = 'dead', reason = ?, errors = ? WHERE id = ? AND "
                       "status = 'pending'", (reason, msgspec.json.encode(list(errors)).decode(), row_id))

    # -- reading --------------------------------------------------------------------------------

    def _row(self, r: tuple) -> OutboxRow:  # type: ignore[type-arg]
        (rid, sink, dedup, action, slo, severity, ts, blob, batch_id, status, created, attempts, last_error,
         delivered_at, target, reason, errors) = r
        event: AlertEvent | None = None
        decode_error = None
        try:
            event = self._dec.decode(blob)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            decode_error = f"stored event does not decode: {e}"
        return OutboxRow(id=rid, sink=sink, dedup_key=dedup, action=action, slo=slo, severity=severity,
                         event_ts=ts, status=status, created_at=created, attempts=attempts, event=event,
                         batch_id=batch_id, last_error=last_error, delivered_at=delivered_at, target=target,
                         reason=reason, errors=msgspec.json.decode(errors) if errors else [],
                         decode_error=decode_error)

    def get(self, row_id: int) -> OutboxRow:
        with self._lock:
            r = self._db.execute(f"SELECT {_COLUMNS} FROM outbox WHERE id = ?", (row_id,)).fetchone()
        if r is None:
            raise OutboxError(f"{self.path}: no outbox row with id {row_id}")
        return self._row(r)

    def list(self, status: str | None = None, *, limit: int | None = None) -> list[OutboxRow]:
        """Rows in insertion order, all or those with ``status``."""
        if status is not None and status not in STATUSES:
            raise OutboxError(f"expected a status among {', '.join(STATUSES)}, got {status!r}")
        sql = f"SELECT {_COLUMNS} FROM outbox"
        args: list[object] = []
        if status is not None:
            sql += " WHERE status = ?"
            args.append(status)
        sql += " ORDER BY id"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        with self._lock:
            return [self._row(r) for r in self._db.execute(sql, args).fetchall()]

    def depth(self, sinks: Iterable[str] | None = None) -> int:
        """Rows still to deliver (``pending``), of every sink or of ``sinks``."""
        sql = "SELECT COUNT(*) FROM outbox WHERE status = 'pending'"
        names = [] if sinks is None else builtins.list(sinks)
        if sinks is not None:
            sql += f" AND sink IN ({', '.join('?' * len(names))})"
        with self._lock:
            return int(self._db.execute(sql, names).fetchone()[0])

    def counts_by_status(self) -> dict[str, int]:
        """Row count per status, every status present (zero when none)."""
        counts = dict.fromkeys(STATUSES, 0)
        with self._lock:
            for status, n in self._db.execute("SELECT status, COUNT(*) FROM outbox GROUP BY status"):
                counts[status] = n
        return counts

    def next_batch(self, limit: int = 500, *, after_id: int = 0) -> builtins.list[OutboxRow]:
        """The deliverable rows: the oldest pending row of each (sink, dedup_key) lane, oldest first.

        At most ``limit`` rows with ids above ``after_id`` (to page through a long backlog).
        Coalesces superseded trigger/resolve pairs first when enabled (module docstring).
        """
        sql = (f"SELECT {_COLUMNS} FROM outbox WHERE id IN (SELECT MIN(id) FROM outbox WHERE status = "
               "'pending' GROUP BY sink, dedup_key) AND id > ? ORDER BY id LIMIT ?")
        with self._lock:
            while True:
                heads = self._db.execute(sql, (after_id, limit)).fetchall()
                if not (self.coalesce and self._coalesce(heads)):
                    return [self._row(r) for r in heads]

    def _coalesce(self, heads: builtins.list[tuple]) -> bool:  # type: ignore[type-arg]
        done = False
        for head in heads:
            rid, sink, dedup, action, attempts = head[0], head[1], head[2], head[3], head[11]
            if action != "trigger" or attempts:
                continue
            nxt = self._db.execute(
                "SELECT id, action FROM outbox WHERE sink = ? AND dedup_key = ? AND status = 'pending' "
                "AND id > ? ORDER BY id LIMIT 1", (sink, dedup, rid)).fetchone()
            if nxt is None or nxt[1] != "resolve":
                continue
            # May an earlier trigger of this lane have opened an alert? Dead rows were refused; any
            # other row that was delivered or attempted may have reached the sink.
            prev = self._db.execute(
                "SELECT action FROM outbox WHERE sink = ? AND dedup_key = ? AND id < ? AND status != 'dead' "
                "AND (status = 'delivered' OR attempts > 0) ORDER BY id DESC LIMIT 1",
                (sink, dedup, rid)).fetchone()
            if prev is not None and prev[0] == "trigger":
                continue
            with self._tx() as db:
                db.execute("UPDATE outbox SET status = 'coalesced', reason = ? WHERE id IN (?, ?) AND "
                           "status = 'pending'", (f"trigger {rid} and resolve {nxt[0]} were never sent: "
                                                  "superseded before delivery", rid, nxt[0]))
            done = True
        return done

    # -- operator actions -----------------------------------------------------------------------

    def _superseded_by(self, row: OutboxRow) -> int | None:
        with self._lock:
            r = self._db.execute("SELECT id FROM outbox WHERE sink = ? AND dedup_key = ? AND id > ? AND "
                                 "status = 'delivered' ORDER BY id LIMIT 1",
                                 (row.sink, row.dedup_key, row.id)).fetchone()
        return None if r is None else int(r[0])

    def retry(self, row_id: int, *, force: bool = False) -> OutboxRow:
        """Put a dead row back to pending; it is then the next row of its lane.

        Raises :class:`OutboxError` when the row is not dead, or when a later row of its lane was
        already delivered (sending it now would reverse the order, e.g. re-open a resolved alert)
        unless ``force``.
        """
        row = self.get(row_id)
        if row.status != "dead":
            raise OutboxError(f"row {row_id}: expected a dead row to retry, got status {row.status!r}")
        later = self._superseded_by(row)
        if later is not None and not force:
            raise OutboxError(f"row {row_id}: superseded by row {later} of the same dedup_key, already "
                              "delivered; retrying would deliver out of order (use force to do it anyway)")
        with self._tx() as db:
            db.execute("UPDATE outbox SET status = 'pending', last_error = reason, reason = NULL, "
                       "errors = NULL WHERE id = ? AND status = 'dead'", (row_id,))
        return self.get(row_id)

    def retry_all_dead(self) -> tuple[builtins.list[int], builtins.list[int]]:
        """Retry every dead row that is not superseded; return (retried ids, skipped ids)."""
        retried: builtins.list[int] = []
        skipped: builtins.list[int] = []
        for row in self.list("dead"):
            if self._superseded_by(row) is not None:
                skipped.append(row.id)
            else:
                self.retry(row.id)
                retried.append(row.id)
        return retried, skipped

    def drop(self, row_id: int, reason: str = "dropped by operator") -> OutboxRow:
        """Give up on a pending or dead row; delivered and coalesced rows cannot be dropped."""
        row = self.get(row_id)
        if row.status not in ("pending", "dead"):
            raise OutboxError(f"row {row_id}: expected a pending or dead row to drop, "
                              f"got status {row.status!r}")
        with self._tx() as db:
            db.execute("UPDATE outbox SET status = 'dropped', reason = ? WHERE id = ? AND status IN "
                       "('pending', 'dead')", (reason, row_id))
        return self.get(row_id)

    def prune(self, older_than_s: float) -> int:
        """Delete delivered and coalesced rows older than ``older_than_s`` seconds; return how many.

        The newest delivered row of each lane is kept: it tells whether the alert is open. Pruned
        rows take their idempotency keys with them, so keep ``older_than_s`` far above the replay
        span of a restart (the time between checkpoints).
        """
        cutoff = self._clock() - older_than_s
        with self._tx() as db:
            cur = db.execute(
                "DELETE FROM outbox WHERE ((status = 'delivered' AND delivered_at < ?) OR "
                "(status = 'coalesced' AND created_at < ?)) AND id NOT IN (SELECT MAX(id) FROM outbox "
                "WHERE status = 'delivered' GROUP BY sink, dedup_key)", (cutoff, cutoff))
            return cur.rowcount
