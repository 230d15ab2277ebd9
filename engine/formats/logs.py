"""Access logs: nginx (JSON and combined + ``$request_time``), Apache combined (+ ``%D``), Envoy, ECS.

What each format gives an event
    =================  ==================  ===========  =========================  ================
    format             time                status       latency                    service / route
    =================  ==================  ===========  =========================  ================
    nginx_json         ``msec`` (s), else  ``status``   ``request_time`` (s), else ``host`` /
                       ``time_iso8601``                 the sum of ``upstream_     ``uri``
                                                        response_time`` parts
    nginx_combined     ``$time_local``     ``$status``  appended ``$request_time`` default / path
                                                        (s; optional)
    apache_combined    ``%t``              ``%>s``      appended ``%D`` (us;       default / path
                                                        optional)
    envoy              ``START_TIME``      RESPONSE_    ``DURATION`` (ms)          ``:authority`` /
                                           CODE                                    path
    ecs_json           ``@timestamp``      ``http.      ``event.duration`` (ns)    ``service.name``
                                           response.                               or ``url.domain``
                                           status_code``                           / ``url.path``
    =================  ==================  ===========  =========================  ================

The route is the request path without its query string; the method comes from the request line
(or ``request_method``, ``http.request.method``). Where a log names no service (combined formats,
or no host), ``events.default_service`` is used; without one the record is ``missing_service``.
Times are kept as logged: nginx logs when a request ends, Apache's ``%t`` and Envoy's
``START_TIME`` are when it started; the CLF times have whole seconds.

Rejections, one reason per line
    ``malformed_line`` (a text line that is not of the format, e.g. a quoted field cut short),
    ``malformed_json``, ``not_an_object``, ``wrong_type`` (a JSON field of an unusable type),
    ``missing_ts``, ``bad_ts``, ``missing_status``, ``bad_status``, ``no_response`` (status 0: the
    client went away before a response; the engine has no status to judge it by), ``bad_latency``
    (not a number, negative; a decimal ``%D``), ``missing_service``.

Speed
    Text formats run one compiled regex over the whole buffer (``findall``); a buffer with a line
    that does not match is walked again line by line to count it. Times, statuses and latencies
    are converted as numpy columns (CLF times over a character matrix). JSON formats decode whole
    buffers into msgspec Structs and fall back to plain objects line by line.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Final

import msgspec
import numpy as np

from engine.batch import EventBatch, Rejections
from engine.formats.registry import (
    Bools,
    Int64s,
    KeyInterner,
    convert_records,
    finish_batch,
    json_lines,
    lookup,
    number_column,
    rfc3339_ns,
    seconds_to_ns,
    split_target,
    status_column,
)

if TYPE_CHECKING:
    from engine.events import EventDecoder

def line_pattern(body: bytes) -> re.Pattern[bytes]:
    """Compile a pattern for one whole line: ``body``, or any other non-blank line as a last group.

    ``body`` must not match a newline. :func:`match_columns` counts the lines that fall through to
    the last group; blank lines match nothing and carry nothing.
    """
    return re.compile(rb"^(?:" + body + rb"\r?$|([^\n]*[^ \t\r\n][^\n]*)$)", re.MULTILINE)


_REST: Final = rb'[^"\\\n]*+(?:\\.[^"\\\n]*+)*+'  # a quoted field's text; \" and \\ escapes
_QUOTED: Final = b'"' + _REST + b'"'
_REQUEST: Final = rb'"(?:([A-Za-z]+) ([^ "\\?\n]*+)' + _REST + b"|" + _REST + b')"'
COMBINED: Final = line_pattern(
    rb"[^ \n]+ [^ \n]+ [^ \n]+ \[([^\]\n]*)\] " + _REQUEST + rb" ([^ \n]+) (?:[0-9]+|-) "
    + _QUOTED + b" " + _QUOTED + rb"(?: ([^ \n]+))?")
"""Combined log lines -> (time, method, path, status, appended latency); see :func:`match_columns`."""

ENVOY: Final = line_pattern(
    rb'\[([^\]\n]*)\] "(?:([A-Za-z]+) ([^ "?\n]*+)[^"\n]*+|[^"\n]*+)" ([^ \n]+) [^ \n]+ [^ \n]+ '
    rb'[^ \n]+ ([^ \n]+) [^ \n]+ "[^"\n]*+" "[^"\n]*+" "[^"\n]*+" "([^"\n]*+)" "[^"\n]*+"')
"""Envoy default-format lines -> (start time, method, path, status, duration ms, authority)."""

_MONTHS: Final = (b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct",
                  b"Nov", b"Dec")
_CUM_DAYS: Final = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31], np.int64)


def match_columns(pattern: re.Pattern[bytes], data: bytes, rej: Rejections,
                  reason: str = "malformed_line") -> list[tuple[bytes, ...]]:
    """The groups of ``pattern`` (from :func:`line_pattern`) over every line, as columns.

    One ``findall`` over the whole buffer; lines that do not match count as ``reason``. A group
    that did not take part in a match is ``b""``. Returns one tuple per group, or ``[]``.
    """
    rows = pattern.findall(data)
    if not rows:
        return []
    columns = list(zip(*rows, strict=True))
    n_bad = len(rows) - columns[-1].count(b"")
    if n_bad:
        rej.add(reason, n_bad)
        rows = [r for r in rows if not r[-1]]
        columns = list(zip(*rows, strict=True)) if rows else []
    return columns[:-1]


def clf_time_ns(texts: list[bytes]) -> tuple[Int64s, Bools]:
    """Common Log Format times ``10/Oct/2000:13:55:36 -0700`` -> (ns, bad), vectorised."""
    from engine.events import _days_from_civil

    n = len(texts)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.bool_)
    good_len = np.fromiter(map(len, texts), np.int64, n) == 26
    rows = texts if good_len.all() else [t if len(t) == 26 else b" " * 26 for t in texts]
    c = np.frombuffer(b"".join(rows), np.uint8).reshape(n, 26).astype(np.int64)
    d = c - 48
    ok = good_len & ((d[:, [0, 1, 7, 8, 9, 10, 12, 13, 15, 16, 18, 19, 22, 23, 24, 25]] >= 0)
                     & (d[:, [0, 1, 7, 8, 9, 10, 12, 13, 15, 16, 18, 19, 22, 23, 24, 25]] <= 9)).all(1)
    ok &= (c[:, 2] == 47) & (c[:, 6] == 47) & (c[:, 11] == 58) & (c[:, 14] == 58) & (c[:, 17] == 58)
    ok &= (c[:, 20] == 32) & ((c[:, 21] == 43) | (c[:, 21] == 45))  # ' ' then '+' or '-'
    code = (c[:, 3] << 16) | (c[:, 4] << 8) | c[:, 5]
    month = np.zeros(n, np.int64)
    for i, name in enumerate(_MONTHS):
        month[code == ((name[0] << 16) | (name[1] << 8) | name[2])] = i + 1
    day = d[:, 0] * 10 + d[:, 1]
    year = d[:, 7] * 1000 + d[:, 8] * 100 + d[:, 9] * 10 + d[:, 10]
    h, mi, s = d[:, 12] * 10 + d[:, 13], d[:, 15] * 10 + d[:, 16], d[:, 18] * 10 + d[:, 19]
    oh, om = d[:, 22] * 10 + d[:, 23], d[:, 24] * 10 + d[:, 25]
    leap = (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))
    ok &= month > 0
    mdays = _CUM_DAYS[month] + ((month == 2) & leap)
    ok &= (day >= 1) & (day <= mdays) & (h <= 23) & (mi <= 59) & (s <= 59) & (oh <= 23) & (om <= 59)
    ok &= (year >= 1970) & (year <= 2261)
    sign = np.where(c[:, 21] == 45, -1, 1)
    days = _days_from_civil(year, np.where(ok, month, 1), day)
    sec = days * 86400 + h * 3600 + mi * 60 + s - sign * (oh * 3600 + om * 60)
    ok &= sec >= 0
    return np.where(ok, sec, 0) * 1_000_000_000, ~ok


class _CombinedDecoder:
    """nginx or Apache combined lines; the appended latency field is in ``_latency_unit_us``."""

    _latency_unit_us: float = 1.0
    _integer_latency: bool = False

    def __init__(self, events: EventDecoder) -> None:
        self._interner = KeyInterner(events.keys, events.config.default_service)
        self._service = events.config.default_service

    def decode(self, data: bytes) -> tuple[EventBatch, Rejections]:
        rej = Rejections()
        columns = match_columns(COMBINED, data, rej)
        if not columns:
            return EventBatch.empty(), rej
        times, methods, paths, statuses, latencies = columns
        ts_ns, bad_ts = clf_time_ns(list(times))
        status, _, bad_status = status_column(list(statuses))
        lat, _, bad_lat = number_column(list(latencies))
        if self._integer_latency:
            bad_lat |= np.fromiter((b"." in v for v in latencies), np.bool_, len(latencies))
        keys = self._interner.ids([self._service] * len(times), paths, methods)
        return finish_batch(rej, ts_ns, keys, status, lat * self._latency_unit_us,
                            masks=[("bad_ts", bad_ts), ("bad_status", bad_status),
                                   ("no_response", status == 0), ("bad_latency", bad_lat)]), rej


class NginxCombinedDecoder(_CombinedDecoder):
    """``log_format`` ``combined`` followed by `` $request_time`` (seconds, ms resolution)."""

    _latency_unit_us = 1e6


class ApacheCombinedDecoder(_CombinedDecoder):
    """Apache's ``combined`` LogFormat, optionally followed by `` %D`` (microseconds)."""

    _latency_unit_us = 1.0
    _integer_latency = True


class EnvoyDecoder:
    """Envoy's default access log format (``START_TIME`` RFC 3339 in UTC, ``DURATION`` in ms)."""

    def __init__(self, events: EventDecoder) -> None:
        self._interner = KeyInterner(events.keys, events.config.default_service)

    def decode(self, data: bytes) -> tuple[EventBatch, Rejections]:
        rej = Rejections()
        columns = match_columns(ENVOY, data, rej)
        if not columns:
            return EventBatch.empty(), rej
        times, methods, paths, statuses, durations, authorities = columns
        ts_ns, _, bad_ts = rfc3339_ns([t.decode("ascii", "replace") for t in times])
        status, missing_status, bad_status = status_column(list(statuses))
        lat_ms, _, bad_lat = number_column(list(durations))
        keys = self._interner.ids([None if a == b"-" else a for a in authorities], paths, methods)
        return finish_batch(rej, ts_ns, keys, status, lat_ms * 1e3,
                            masks=[("bad_ts", bad_ts), ("missing_status", missing_status),
                                   ("bad_status", bad_status), ("no_response", status == 0),
                                   ("bad_latency", bad_lat)]), rej


# ---------------------------------------------------------------------------------------------
# nginx JSON


class _NginxLine(msgspec.Struct, gc=False):
    msec: float | str | None = None
    time_iso8601: str | None = None
    status: int | str | None = None
    request_time: float | str | None = None
    upstream_response_time: float | str | None = None
    host: str | None = None
    uri: str | None = None
    request_uri: str | None = None
    request_method: str | None = None
    request: str | None = None


_UPSTREAM_SPLIT: Final = re.compile(r"\s*[,:]\s*")


def _upstream_s(value: Any) -> Any:
    """``$upstream_response_time`` ("0.012, 0.004 : 0.1") -> total seconds, None or "bad"."""
    if value is None or isinstance(value, float | int):
        return value
    parts = [p for p in _UPSTREAM_SPLIT.split(value.strip()) if p and p != "-"]
    try:
        return sum(float(p) for p in parts) if parts else None
    except ValueError:
        return "bad"


class NginxJsonDecoder:
    """``log_format ... escape=json '{"msec":"$msec","status":"$status",...}'``; quoted or bare values."""

    def __init__(self, events: EventDecoder) -> None:
        self._interner = KeyInterner(events.keys, events.config.default_service)
        self._typed = msgspec.json.Decoder(_NginxLine)

    def decode(self, data: bytes) -> tuple[EventBatch, Rejections]:
        rej = Rejections()
        items, mixed = json_lines(data, self._typed, rej)
        if mixed:
            items = convert_records(items, _NginxLine, rej)
        if not items:
            return EventBatch.empty(), rej
        msec = [e.msec for e in items]
        sec, missing_ts, bad_ts = number_column(msec)
        ts_ns, bad_range = seconds_to_ns(sec)
        bad_ts |= bad_range & ~missing_ts
        if missing_ts.any():  # no $msec: $time_iso8601
            idx = np.flatnonzero(missing_ts)
            iso_ns, iso_missing, iso_bad = rfc3339_ns([items[i].time_iso8601 for i in idx])
            ts_ns[idx], missing_ts[idx], bad_ts[idx] = iso_ns, iso_missing, iso_bad
        status, missing_status, bad_status = status_column([e.status for e in items])
        lat_s, missing_lat, bad_lat = number_column([e.request_time for e in items])
        if missing_lat.any():
            idx = np.flatnonzero(missing_lat)
            up = [_upstream_s(items[i].upstream_response_time) for i in idx]
            lat_s[idx], _, bad_lat[idx] = number_column(["x" if u == "bad" else u for u in up])
        routes, methods = [], []
        for e in items:
            route, method = e.uri, e.request_method
            if route is None or method is None:
                parts = (e.request or "").split(" ")
                target = e.request_uri or (parts[1] if len(parts) > 1 else None)
                route = route if route is not None else split_target(target)[1]
                method = method if method is not None else (parts[0] or None)
            routes.append(route)
            methods.append(method)
        keys = self._interner.ids([e.host or None for e in items], routes, methods)
        return finish_batch(rej, np.where(missing_ts | bad_ts, 0, ts_ns), keys, status, lat_s * 1e6,
                            masks=[("missing_ts", missing_ts), ("bad_ts", bad_ts),
                                   ("missing_status", missing_status), ("bad_status", bad_status),
                                   ("no_response", status == 0), ("bad_latency", bad_lat)]), rej


# ---------------------------------------------------------------------------------------------
# Elastic Common Schema


class _EcsResponse(msgspec.Struct, gc=False):
    status_code: int | str | None = None


class _EcsRequest(msgspec.Struct, gc=False):
    method: str | None = None


class _EcsHttp(msgspec.Struct, gc=False):
    request: _EcsRequest | None = None
    response: _EcsResponse | None = None


class _EcsUrl(msgspec.Struct, gc=False):
    path: str | None = None
    original: str | None = None
    domain: str | None = None


class _EcsEvent(msgspec.Struct, gc=False):
    duration: int | float | None = None


class _EcsService(msgspec.Struct, gc=False):
    name: str | None = None


class _EcsDoc(msgspec.Struct, gc=False):
    """Nested objects; the flat dotted spellings go through the plain-object path."""

    timestamp: str | None = msgspec.field(default=None, name="@timestamp")
    http: _EcsHttp | None = None
    url: _EcsUrl | None = None
    event: _EcsEvent | None = None
    service: _EcsService | None = None


_ECS_FIELDS: Final = ("@timestamp", "http.response.status_code", "http.request.method", "url.path",
                      "url.original", "url.domain", "event.duration", "service.name")


def _ecs_complete(doc: _EcsDoc) -> bool:
    """Whether the nested decode found time and status (else the line may use dotted keys)."""
    return (doc.timestamp is not None and doc.http is not None and doc.http.response is not None
            and doc.http.response.status_code is not None)


def _ecs_row(doc: _EcsDoc) -> tuple[Any, ...]:
    http, url, event, service = doc.http, doc.url, doc.event, doc.service
    return (doc.timestamp,
            http.response.status_code if http and http.response else None,
            http.request.method if http and http.request else None,
            url.path if url else None, url.original if url else None, url.domain if url else None,
            event.duration if event else None, service.name if service else None)


class EcsJsonDecoder:
    """ECS documents, one per line, nested (``{"http": {"response": ...}}``) or with dotted keys."""

    def __init__(self, events: EventDecoder) -> None:
        self._interner = KeyInterner(events.keys, events.config.default_service)
        self._typed = msgspec.json.Decoder(_EcsDoc)

    def decode(self, data: bytes) -> tuple[EventBatch, Rejections]:
        rej = Rejections()
        docs, _ = json_lines(data, self._typed, rej, _ecs_complete)
        rows = []
        for rec in docs:
            if isinstance(rec, _EcsDoc):
                rows.append(_ecs_row(rec))
                continue
            if not isinstance(rec, dict):
                rej.add("not_an_object")
                continue
            row = tuple(lookup(rec, f) for f in _ECS_FIELDS)
            if any(v is not None and not isinstance(v, kind) for v, kind in zip(
                    row, (str, int | str, str, str, str, str, int | float, str), strict=True)):
                rej.add("wrong_type")
                continue
            rows.append(row)
        if not rows:
            return EventBatch.empty(), rej
        stamps, statuses, methods, paths, originals, domains, durations, services = map(
            list, zip(*rows, strict=True))
        ts_ns, missing_ts, bad_ts = rfc3339_ns(stamps)
        status, missing_status, bad_status = status_column(statuses)
        dur_ns, _, bad_lat = number_column(durations)
        routes = [p if p is not None else split_target(o)[1] for p, o in zip(paths, originals, strict=True)]
        svc = [s or d or (split_target(o)[0] if o else None)
               for s, d, o in zip(services, domains, originals, strict=True)]
        keys = self._interner.ids(svc, routes, methods)
        return finish_batch(rej, ts_ns, keys, status, dur_ns / 1e3,
                            masks=[("missing_ts", missing_ts), ("bad_ts", bad_ts),
                                   ("missing_status", missing_status), ("bad_status", bad_status),
                                   ("no_response", status == 0), ("bad_latency", bad_lat)]), rej
