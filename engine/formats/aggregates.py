"""Counts instead of requests: per-interval aggregates as weighted events.

Prometheus counters become aggregates the same way in :mod:`engine.formats.prometheus`.

Per-interval aggregates (``aggregates_csv``, ``aggregates_ndjson``)
    One row per interval (and key): ``ts`` (end of the interval; a number in ``events.ts_unit`` or
    RFC 3339), ``total`` and ``bad`` request counts, optional ``service``, ``route``, ``method``,
    and optional cumulative latency buckets: CSV columns ``le_<bound in ms>`` (``le_100``,
    ``le_0.5``), or an NDJSON object ``"latency_buckets_ms": {"100": 80, "250": 97}``; each
    counts the requests with latency <= the bound, as Prometheus' ``le`` buckets do, and
    ``total`` is the ``+Inf`` bucket. Example CSV::

        ts,service,total,bad,le_100,le_250
        2024-05-01T10:01:00Z,checkout,120,3,80,111

Events
    Per interval and key: status 200 with weight ``total - bad`` and status 500 with weight ``bad``,
    no latency; and, for the latency, latency-only events (status ``NO_STATUS``, which availability
    SLOs do not count): for each bucket the requests between the previous bound and this one at the
    bound's latency, and those above the last bound just above it (the next float). A latency SLO
    whose threshold is a bucket bound then classifies every request exactly; percentiles are those
    of the bucket bounds. Zero counts emit nothing.

Rejections (rows or lines)
    ``malformed_line`` (a CSV row of the wrong width),
    ``bad_header`` (a CSV without ``ts``, ``total`` and ``bad`` columns, or bounds that are not
    numbers), ``malformed_json``, ``not_an_object``, ``missing_ts``, ``bad_ts``, ``bad_count``
    (``total``/``bad`` not integers with 0 <= bad <= total), ``bad_histogram`` (bucket counts not
    integers, decreasing, or above ``total``), ``missing_service``.
"""

from __future__ import annotations

import csv
import io
import math
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np

from engine.batch import NO_STATUS, EventBatch, Rejections
from engine.formats.registry import KeyInterner, epoch_ns, finish_batch

if TYPE_CHECKING:
    from engine.events import EventDecoder

GOOD_STATUS, BAD_STATUS = 200, 500
"""Statuses given to the good and the bad requests of an interval."""


class Rows:
    """Counts of requests per time and key -> weighted events (see the module docstring)."""

    def __init__(self) -> None:
        self.ts: list[int] = []
        self.key: list[int] = []
        self.status: list[int] = []
        self.latency_us: list[float] = []
        self.weight: list[int] = []

    def add(self, ts: int, key: int, status: int, latency_us: float, weight: int) -> None:
        if weight > 0:
            self.ts.append(ts)
            self.key.append(key)
            self.status.append(status)
            self.latency_us.append(latency_us)
            self.weight.append(weight)

    def add_interval(self, ts: int, key: int, total: int, bad: int,
                     buckets: list[tuple[float, int]]) -> None:
        self.add(ts, key, GOOD_STATUS, math.nan, total - bad)
        self.add(ts, key, BAD_STATUS, math.nan, bad)
        below = 0
        for bound_us, cumulative in buckets:
            self.add(ts, key, NO_STATUS, bound_us, cumulative - below)
            below = cumulative
        if buckets:
            self.add(ts, key, NO_STATUS, math.nextafter(buckets[-1][0], math.inf), total - below)

    def batch(self, rej: Rejections) -> EventBatch:
        if not self.ts:
            return EventBatch.empty()
        key = np.array(self.key, np.int32)
        return finish_batch(rej, np.array(self.ts, np.int64), key, np.array(self.status, np.int64),
                            np.array(self.latency_us, np.float64), np.array(self.weight, np.int64))


def _count(value: Any) -> int | None:
    """A non-negative integer count (int, integral float or numeric text), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value) if value.strip() else None
        except ValueError:
            return None
    if isinstance(value, int | float) and math.isfinite(value) and value >= 0 and value == int(value):
        return int(value)
    return None


def _check_interval(total: Any, bad: Any, buckets: list[tuple[float, Any]]
                    ) -> tuple[str | None, int, int, list[tuple[float, int]]]:
    """(reason or None, total, bad, buckets as ints) of one aggregate row."""
    t, b = _count(total), _count(bad)
    if t is None or b is None or b > t:
        return "bad_count", 0, 0, []
    counts = [(bound, _count(c)) for bound, c in buckets]
    last = 0
    for _, c in counts:
        if c is None or c < last or c > t:
            return "bad_histogram", 0, 0, []
        last = c
    return None, t, b, counts  # type: ignore[return-value]


class _AggregatesBase:
    def __init__(self, events: EventDecoder) -> None:
        self._interner = KeyInterner(events.keys, events.config.default_service)
        self._ts_unit = events.config.ts_unit

    def _emit(self, records: list[tuple[Any, Any, Any, Any, Any, Any, list[tuple[float, Any]]]],
              rej: Rejections) -> EventBatch:
        """(ts, service, route, method, total, bad, buckets) -> events."""
        if not records:
            return EventBatch.empty()
        ts, services, routes, methods, totals, bads, buckets = zip(*records, strict=True)
        ts_ns, missing_ts, bad_ts = epoch_ns(list(ts), self._ts_unit)
        keys = self._interner.ids(services, routes, methods)
        rows = Rows()
        for i in range(len(records)):
            reason = ("missing_ts" if missing_ts[i] else "bad_ts" if bad_ts[i] else
                      "missing_service" if keys[i] < 0 else None)
            if reason is None:
                reason, total, bad, counts = _check_interval(totals[i], bads[i], buckets[i])
            if reason is not None:
                rej.add(reason)
                continue
            rows.add_interval(int(ts_ns[i]), int(keys[i]), total, bad, counts)
        return rows.batch(rej)


def _bound_us(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value * 1e3 if math.isfinite(value) and value >= 0 else None


class AggregatesCsvDecoder(_AggregatesBase):
    """CSV rows ``ts,total,bad[,service,route,method][,le_<ms>...]`` with a header line.

    The header is that of the first buffer; a later line whose first cell is ``ts`` is a header
    again (one more file).
    """

    def __init__(self, events: EventDecoder) -> None:
        super().__init__(events)
        self._header: dict[str, int] | None = None
        self._bounds: list[tuple[float, int]] = []
        self._width = 0

    def decode(self, data: bytes) -> tuple[EventBatch, Rejections]:
        rej = Rejections()
        records = []
        text = data.decode("utf-8", "replace")
        for row in csv.reader(io.StringIO(text)):
            if not row or not "".join(row).strip():
                continue
            if row[0].strip().lower() == "ts":
                self._read_header(row)
                continue
            if self._header is None:
                rej.add("bad_header")
                continue
            if len(row) != self._width:
                rej.add("malformed_line")
                continue
            h = self._header
            cell = {name: row[i].strip() for name, i in h.items()}
            records.append((cell["ts"], cell.get("service") or None, cell.get("route") or None,
                            cell.get("method") or None, cell["total"], cell["bad"],
                            [(bound, row[i].strip()) for bound, i in self._bounds]))
        return self._emit(records, rej), rej

    def _read_header(self, row: list[str]) -> None:
        names = [c.strip().lower() for c in row]
        bounds = []
        for i, name in enumerate(names):
            if name.startswith("le_") and name[3:] not in ("inf", "+inf"):
                bound = _bound_us(name[3:])
                if bound is None:
                    self._header = None
                    return
                bounds.append((bound, i))
        if not {"ts", "total", "bad"} <= set(names) or len(set(names)) != len(names):
            self._header = None
            return
        self._header = {n: i for i, n in enumerate(names) if n in ("ts", "total", "bad", "service",
                                                                    "route", "method")}
        self._bounds = sorted(bounds)
        self._width = len(names)


class _AggregateLine(msgspec.Struct, gc=False):
    ts: int | float | str | None = None
    total: int | float | None = None
    bad: int | float | None = None
    service: str | None = None
    route: str | None = None
    method: str | None = None
    latency_buckets_ms: dict[str, int | float] | None = None


class AggregatesNdjsonDecoder(_AggregatesBase):
    """JSON lines ``{"ts", "total", "bad"[, "service", "route", "method", "latency_buckets_ms"]}``."""

    def __init__(self, events: EventDecoder) -> None:
        super().__init__(events)
        self._typed = msgspec.json.Decoder(_AggregateLine)
        self._generic = msgspec.json.Decoder()

    def decode(self, data: bytes) -> tuple[EventBatch, Rejections]:
        rej = Rejections()
        records = []
        for line in data.split(b"\n"):
            if not line.strip():
                continue
            try:
                rec = self._typed.decode(line)
            except msgspec.DecodeError:
                try:
                    raw = self._generic.decode(line)
                except msgspec.DecodeError:
                    rej.add("malformed_json")
                    continue
                rej.add("wrong_type" if isinstance(raw, dict) else "not_an_object")
                continue
            buckets = []
            for bound, count in (rec.latency_buckets_ms or {}).items():
                if bound.lower() in ("inf", "+inf"):
                    continue
                bound_us = _bound_us(bound)
                buckets.append((-1.0 if bound_us is None else bound_us, count))
            if any(b < 0 for b, _ in buckets):
                rej.add("bad_histogram")
                continue
            records.append((rec.ts, rec.service, rec.route, rec.method,
                            rec.total, rec.bad, sorted(buckets)))
        return self._emit(records, rej), rej
