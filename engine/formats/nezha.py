"""The Nezha OnlineBoutique data set (IntelligentDDS/Nezha, MIT) as sloburn NDJSON events.

Three files of that data set are read (see ``data/README.md``):

``front_service_<day>.csv``, one row per minute for the frontend
    ``Time, TimeStamp (unix s), ServiceName, SuccessRate(%), LatencyP50(s) .. LatencyP99(s)``.
    These are aggregates: the request count ``n`` of a minute is not given. It is inferred as the
    smallest integer in [100, 160] for which ``SuccessRate/100 * n`` is within 1e-6 of an integer
    (49.586776859504134 % -> 60 good of 121); when no ``n`` fits, ``n = 120`` is taken and the row is
    counted as ``count_inferred_default``. Minutes at 100 % (or 0 %) fit every ``n`` and tell nothing
    about volume: they get ``n = 120``, the typical load of the data set (110-150 a minute).
    Each minute becomes one event of weight ``good`` with status 200 and one of weight ``bad`` with
    status 500 (a zero weight emits nothing), service ``frontend``, at the row's ``TimeStamp``.
    Per-minute aggregates carry percentiles, not per-request latencies: the good event carries
    ``LatencyP50`` as its latency, which places the median right but says nothing about the other
    requests, so latency SLOs cannot be backtested exactly on these files.

``frontend_requests_during_cpu_contention.csv``, 389 single requests
    ``timestamp (RFC 3339), pod, trace_id, method, path, status, latency_ms, bytes, source_file``
    -> one event each: service ``frontend``, route = path, method, status, latency.

``fault_list_<day>.json``, the injected faults (the ground truth of the incidents)
    ``{"<hour>": [{"inject_time", "inject_timestamp", "inject_pod", "inject_type"}, ...]}``.

Timestamps are written as RFC 3339 strings, so the output decodes the same whatever ``ts_unit`` a
configuration sets. Rows that cannot be used are counted by reason in the ``counts`` Counter the
caller passes (``bad_row``, ``bad_timestamp``, ``bad_success_rate``, ``bad_latency``, ``bad_status``,
``missing_field``), next to ``rows`` (data rows read) and ``events`` (events written); nothing is
dropped silently. A file whose header is not the expected one raises ``DecodeError("bad_header")``.
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import msgspec

from engine.errors import DecodeError
from engine.events import parse_rfc3339_ns

SERVICE: Final = "frontend"
COUNT_RANGE: Final = (100, 160)
DEFAULT_COUNT: Final = 120
COUNT_TOLERANCE: Final = 1e-6
MINUTE_COLUMNS: Final = ("Time", "TimeStamp", "ServiceName", "SuccessRate(%)", "LatencyP50(s)",
                         "LatencyP90(s)", "LatencyP95(s)", "LatencyP99(s)")
REQUEST_COLUMNS: Final = ("timestamp", "pod", "trace_id", "method", "path", "status", "latency_ms",
                          "bytes", "source_file")

_encode = msgspec.json.Encoder().encode


def infer_request_count(
    success_pct: float, lo: int = COUNT_RANGE[0], hi: int = COUNT_RANGE[1]
) -> int | None:
    """Smallest ``n`` in ``[lo, hi]`` with ``success_pct/100 * n`` within 1e-6 of an integer, else None."""
    for n in range(lo, hi + 1):
        good = success_pct / 100.0 * n
        if abs(good - round(good)) <= COUNT_TOLERANCE:
            return n
    return None


def nezha_minutes_to_ndjson(
    csv_path: str | Path, *, latency: bool = True, counts: Counter[str] | None = None
) -> bytes:
    """Convert a ``front_service_<day>.csv`` file into weighted NDJSON events (see the module doc).

    Parameters
    ----------
    csv_path
        The per-minute CSV.
    latency
        Give the good event of each minute ``latency_ms`` = LatencyP50 (s) * 1000.
    counts
        Receives ``rows``, ``events``, ``count_inferred_default`` and rejection reasons.
    """
    counts = Counter() if counts is None else counts
    lines: list[bytes] = []
    for row in _rows(csv_path, MINUTE_COLUMNS, counts):
        counts["rows"] += 1
        try:
            ts_s = int(row[1])
        except ValueError:
            counts["bad_timestamp"] += 1
            continue
        pct = _number(row[3])
        if pct is None or not 0.0 <= pct <= 100.0:
            counts["bad_success_rate"] += 1
            continue
        p50_s = _number(row[4])
        if latency and (p50_s is None or p50_s < 0.0):
            counts["bad_latency"] += 1
            continue
        n = DEFAULT_COUNT if pct in (0.0, 100.0) else infer_request_count(pct)
        if n is None:
            n = DEFAULT_COUNT
            counts["count_inferred_default"] += 1
        good = round(pct / 100.0 * n)
        ts = datetime.fromtimestamp(ts_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        if good:
            event: dict[str, Any] = {"ts": ts, "service": SERVICE, "status": 200, "weight": good}
            if latency and p50_s is not None:
                event["latency_ms"] = p50_s * 1000.0
            lines.append(_encode(event))
        if n - good:
            lines.append(_encode({"ts": ts, "service": SERVICE, "status": 500, "weight": n - good}))
        counts["events"] += (good > 0) + (n - good > 0)
    return b"".join(line + b"\n" for line in lines)


def nezha_requests_to_ndjson(csv_path: str | Path, *, counts: Counter[str] | None = None) -> bytes:
    """Convert ``frontend_requests_during_cpu_contention.csv`` into one NDJSON event per request."""
    counts = Counter() if counts is None else counts
    lines: list[bytes] = []
    for row in _rows(csv_path, REQUEST_COLUMNS, counts):
        counts["rows"] += 1
        ts, _pod, _trace, method, path, status_text, latency_text = row[:7]
        if parse_rfc3339_ns(ts) is None:
            counts["bad_timestamp"] += 1
            continue
        if not method or not path:
            counts["missing_field"] += 1
            continue
        status = int(status_text) if status_text.isdigit() else 0
        if not 100 <= status <= 599:
            counts["bad_status"] += 1
            continue
        latency_ms = _number(latency_text)
        if latency_ms is None or latency_ms < 0.0:
            counts["bad_latency"] += 1
            continue
        lines.append(_encode({"ts": ts, "service": SERVICE, "route": path, "method": method,
                              "status": status, "latency_ms": latency_ms}))
        counts["events"] += 1
    return b"".join(line + b"\n" for line in lines)


def load_fault_list(
    json_path: str | Path, *, counts: Counter[str] | None = None
) -> list[tuple[int, str, str]]:
    """Injected faults as ``(unix seconds, pod, fault type)``, sorted by time.

    Entries without a numeric ``inject_timestamp``, a ``inject_pod`` or a ``inject_type`` are counted
    as ``bad_fault`` in ``counts``.
    """
    counts = Counter() if counts is None else counts
    with open(json_path, encoding="utf-8") as f:
        doc = json.load(f)
    if not isinstance(doc, dict):
        raise DecodeError("bad_header",
                          f"{json_path}: expected an object of hours, got {type(doc).__name__}")
    faults = []
    for entries in doc.values():
        for entry in entries if isinstance(entries, list) else [entries]:
            counts["faults"] += 1
            try:
                fault = (int(entry["inject_timestamp"]), str(entry["inject_pod"]),
                         str(entry["inject_type"]))
            except (KeyError, TypeError, ValueError):
                counts["bad_fault"] += 1
                continue
            if not fault[1] or not fault[2]:
                counts["bad_fault"] += 1
                continue
            faults.append(fault)
    return sorted(faults)


def _rows(csv_path: str | Path, columns: tuple[str, ...], counts: Counter[str]) -> list[list[str]]:
    """Data rows with the expected number of columns; the others are counted as ``bad_row``."""
    with open(csv_path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or tuple(h.strip() for h in header) != columns:
            raise DecodeError("bad_header", f"{csv_path}: expected the columns {', '.join(columns)}, "
                                            f"got {', '.join(header or []) or 'an empty file'}")
        rows = []
        for row in reader:
            if not row:
                continue  # a blank line
            if len(row) != len(columns):
                counts["rows"] += 1
                counts["bad_row"] += 1
                continue
            rows.append(row)
    return rows


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None
