"""``sloburn budget``: gate a deploy on an SLO's error budget, as reported by a running daemon.

::

    sloburn budget --url http://127.0.0.1:9464 --slo checkout-availability --min 10

Exit status:

    0  the budget remaining is at or above the floor
    1  the budget remaining is below the floor (the state and numbers are printed)
    2  usage error, or the daemon knows no such SLO
    3  the daemon cannot be reached or answered unexpectedly, or the SLO has no data yet

Without ``--min`` the floor is the daemon's freeze threshold (``freeze_below_percent`` of its budget
policy), so the gate fails exactly when the policy says ``freeze``.
"""

from __future__ import annotations

import argparse
import math
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import msgspec

from engine.io.http import BudgetView, ErrorView

EXIT_OK, EXIT_BELOW_FLOOR, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3
DEFAULT_URL = "http://127.0.0.1:9464"
MAX_ANSWER_BYTES = 1_000_000


class _UnavailableError(Exception):
    """The daemon could not give an answer; the message says why."""


def register(subparsers: Any) -> None:
    """Add the ``budget`` sub-command to the ``sloburn`` parser."""
    p = subparsers.add_parser(
        "budget", help="exit non-zero when an SLO's error budget is below a floor",
        description="Fetch an SLO's error budget from a running daemon. Exit 0 when at least --min "
                    "percent of it is left, 1 below that floor, 2 for a usage error or an unknown SLO, "
                    "3 when the daemon cannot be reached or the SLO has no data yet.")
    p.add_argument("--url", default=DEFAULT_URL,
                   help=f"base URL of the daemon's HTTP endpoint (default {DEFAULT_URL})")
    p.add_argument("--slo", required=True, help="SLO name")
    p.add_argument("--min", dest="min_percent", type=float, default=None, metavar="PERCENT",
                   help="lowest acceptable budget remaining, percent (default: the policy's freeze "
                        "threshold)")
    p.add_argument("--timeout", dest="timeout_s", type=float, default=5.0, metavar="SECONDS",
                   help="how long to wait for the daemon (default 5)")
    p.add_argument("--json", action="store_true", help="print the SLO's budget object as JSON")
    p.set_defaults(func=run)


def _err(msg: str) -> None:
    print(f"sloburn budget: {msg}", file=sys.stderr)


def _budget_url(base: str, slo: str) -> str:
    return f"{base.rstrip('/')}/v1/budgets/{urllib.parse.quote(slo, safe='')}"


def _fetch(url: str, timeout_s: float) -> tuple[int, bytes]:
    """(HTTP status, body) of a GET; _UnavailableError when no answer comes."""
    req = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return int(resp.status), resp.read(MAX_ANSWER_BYTES)
    except urllib.error.HTTPError as e:
        with e:
            return int(e.code), e.read(MAX_ANSWER_BYTES)
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", None) or e
        raise _UnavailableError(f"cannot reach the daemon at {url}: {reason}") from None


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def _usage_problem(args: argparse.Namespace) -> str | None:
    parts = urllib.parse.urlsplit(args.url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return f"--url: expected an http(s) URL like {DEFAULT_URL}, got {args.url!r}"
    if not args.slo.strip():
        return "--slo: expected an SLO name, got an empty string"
    if args.min_percent is not None and not math.isfinite(args.min_percent):
        return f"--min: expected a finite percentage, got {args.min_percent}"
    if not args.timeout_s > 0:
        return f"--timeout: expected seconds > 0, got {args.timeout_s}"
    return None


def _get_budget(args: argparse.Namespace) -> BudgetView | int:
    """The SLO's budget object, or the exit status after saying what went wrong."""
    url = _budget_url(args.url, args.slo)
    try:
        status, body = _fetch(url, args.timeout_s)
    except _UnavailableError as e:
        _err(str(e))
        return EXIT_UNAVAILABLE
    if status == 404:
        try:
            detail = msgspec.json.decode(body, type=ErrorView).error
        except msgspec.DecodeError:
            detail = f"{url} answered 404"
        _err(f"{detail} (GET /v1/budgets lists the SLOs)")
        return EXIT_USAGE
    if status != 200:
        _err(f"the daemon at {args.url} answered HTTP {status} for {url}")
        return EXIT_UNAVAILABLE
    try:
        return msgspec.json.decode(body, type=BudgetView)
    except msgspec.DecodeError as e:
        _err(f"unexpected answer from {url}: {e}")
        return EXIT_UNAVAILABLE


def run(args: argparse.Namespace) -> int:
    """Fetch ``/v1/budgets/{slo}`` and compare its ``remaining_percent`` with the floor."""
    problem = _usage_problem(args)
    if problem:
        _err(problem)
        return EXIT_USAGE
    view = _get_budget(args)
    if isinstance(view, int):
        return view
    if args.json:
        print(msgspec.json.encode(view).decode())
    remaining = view.remaining_percent
    floor = args.min_percent if args.min_percent is not None else view.policy.thresholds.freeze_below_percent
    if remaining is None:
        _err(f"{view.slo}: no data: the SLO's {view.period} period holds no events yet "
             f"(policy state {view.policy.state}), cannot compare with the floor {floor:g}%")
        return EXIT_UNAVAILABLE
    below = remaining < floor
    burns = ", ".join(f"{w}={_fmt(v)}" for w, v in view.burn_rates.items())
    ev = view.budget_events
    # With --json, stdout carries only the object; the verdict goes to stderr.
    print(f"{view.slo}: {'BELOW FLOOR' if below else 'ok'}: {remaining:.2f}% of the error budget "
          f"left (floor {floor:g}%), policy {view.policy.state}; objective {view.objective:g}% "
          f"over {view.period}, {ev.bad} bad of {ev.total} events; burn rates {burns}",
          file=sys.stderr if args.json else sys.stdout)
    return EXIT_BELOW_FLOOR if below else EXIT_OK
