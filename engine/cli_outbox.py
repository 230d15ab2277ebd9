"""``sloburn outbox``: look into the alert outbox and act on dead letters.

::

    sloburn outbox --state-dir DIR list [--status dead] [--json] [--limit N]
    sloburn outbox --config C.yaml retry ID | --all-dead [--force]
    sloburn outbox --state-dir DIR drop ID

The outbox is ``DIR/outbox.sqlite3``; with ``--config`` DIR is the config's ``state_dir``, relative
paths taken from the config file's directory. It is safe to use while the daemon runs (SQLite WAL):
a retried row is picked up by the daemon's next delivery pass.

Exit codes: 0 done; 1 the operation does not apply (no such row, wrong status, superseded); 2 bad
invocation (no outbox, invalid config).
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path
from typing import Any

import msgspec
from rich.console import Console
from rich.table import Table

from engine.config import load_config
from engine.errors import ConfigError
from engine.io.outbox import STATUSES, Outbox, OutboxError, OutboxRow

OUTBOX_FILE = "outbox.sqlite3"
EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def register(subparsers: Any) -> None:
    """Add the ``outbox`` command to an ``argparse`` subparsers object."""
    p = subparsers.add_parser("outbox", help="list, retry or drop queued alert events",
                              description=__doc__.split("\n\n")[0])
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--state-dir", metavar="DIR", help="the daemon's state directory")
    where.add_argument("--config", "-c", metavar="CONFIG", help="a daemon config with state_dir")
    sub = p.add_subparsers(dest="outbox_command", metavar="ACTION")
    sub.required = True
    ls = sub.add_parser("list", help="list outbox rows (all, or one status)")
    ls.add_argument("--status", choices=STATUSES)
    ls.add_argument("--json", action="store_true", help="one JSON document per row, one per line")
    ls.add_argument("--limit", type=int, default=None, metavar="N")
    rt = sub.add_parser("retry", help="send a dead row again")
    which = rt.add_mutually_exclusive_group(required=True)
    which.add_argument("id", nargs="?", type=int, metavar="ID")
    which.add_argument("--all-dead", action="store_true", help="every dead row that is not superseded")
    rt.add_argument("--force", action="store_true",
                    help="retry even when a later row of the same dedup_key was delivered")
    dr = sub.add_parser("drop", help="give up on a pending or dead row")
    dr.add_argument("id", type=int, metavar="ID")
    p.set_defaults(func=run)


def outbox_path(args: argparse.Namespace) -> Path:
    """The outbox file named by ``--state-dir`` or by the config's ``state_dir``."""
    if args.state_dir:
        return Path(args.state_dir) / OUTBOX_FILE
    cfg = load_config(args.config)
    if not cfg.state_dir:
        raise ConfigError([f"{args.config}: $.state_dir: required field is missing (the outbox lives there)"])
    state = Path(cfg.state_dir)
    if not state.is_absolute():
        state = Path(args.config).resolve().parent / state
    return state / OUTBOX_FILE


def _when(ts: float | None) -> str:
    return "-" if ts is None else dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _detail(row: OutboxRow) -> str:
    if row.status == "delivered":
        return f"at {_when(row.delivered_at)}"
    if row.status in ("dead", "dropped", "coalesced"):
        return row.reason or ""  # a dead row's reason already quotes the sink's errors
    return row.last_error or ""


def _list(box: Outbox, args: argparse.Namespace, out: Console) -> int:
    rows = box.list(args.status, limit=args.limit)
    if args.json:
        enc = msgspec.json.Encoder()
        for row in rows:
            sys.stdout.write(enc.encode(row).decode() + "\n")
        return EXIT_OK
    table = Table(title=f"{box.path}: {len(rows)} row(s)" + (f" {args.status}" if args.status else ""))
    many_sinks = len({r.sink for r in rows}) > 1  # the sink column only when it tells something
    cols = ["id", "status", *(["sink"] if many_sinks else []), "slo/severity", "action", "event time (UTC)",
            "tries", "detail"]
    for col in cols:
        table.add_column(col, no_wrap=col in ("id", "status", "tries"), overflow="fold")
    for r in rows:
        table.add_row(str(r.id), r.status, *([r.sink] if many_sinks else []), f"{r.slo}/{r.severity}",
                      r.action, _when(r.event_ts), str(r.attempts), _detail(r))
    out.print(table)
    print(", ".join(f"{k}: {v}" for k, v in box.counts_by_status().items()))
    return EXIT_OK


def run(args: argparse.Namespace) -> int:
    """Run one ``outbox`` action; return the exit code (module docstring)."""
    # Messages are plain lines (rich would wrap paths); tables go through rich.
    try:
        path = outbox_path(args)
    except ConfigError as e:
        for line in e.problems:
            print(line, file=sys.stderr)
        return EXIT_USAGE
    if not path.is_file():
        print(f"sloburn outbox: no outbox at {path}", file=sys.stderr)
        return EXIT_USAGE
    with Outbox(path) as box:
        try:
            return _act(box, args)
        except OutboxError as e:
            print(f"sloburn outbox: {e}", file=sys.stderr)
            return EXIT_FAIL


def _act(box: Outbox, args: argparse.Namespace) -> int:
    if args.outbox_command == "list":
        return _list(box, args, Console())
    if args.outbox_command == "retry" and args.all_dead:
        retried, skipped = box.retry_all_dead()
        print(f"retried {len(retried)} dead row(s): {retried}")
        if skipped:
            print(f"skipped {len(skipped)} superseded row(s) (retry each with --force): {skipped}")
    elif args.outbox_command == "retry":
        row = box.retry(args.id, force=args.force)
        print(f"row {row.id} ({row.slo} {row.severity} {row.action}) is pending again")
    else:
        row = box.drop(args.id)
        print(f"row {row.id} ({row.slo} {row.severity} {row.action}) dropped")
    return EXIT_OK
