"""Input formats by name: access logs, traces, load-test output, aggregates and Prometheus history.

:class:`~engine.events.EventDecoder` decodes sloburn's own events (``ndjson``, ``json``, ``msgpack``,
``auto``) itself and hands every other format name to :func:`make_decoder`, which builds the
decoder of that format once per :class:`~engine.events.EventDecoder`:

=====================  ====================================================================
``nginx_json``         nginx JSON access log (``$msec``, ``$status``, ``$request_time`` ...)
``nginx_combined``     nginx ``combined`` with ``$request_time`` (seconds) appended
``apache_combined``    Apache combined, with or without ``%D`` (microseconds) appended
``envoy``              Envoy's default access log format
``ecs_json``           Elastic Common Schema JSON lines
``otlp_json``          OpenTelemetry spans as OTLP JSON
``k6_json``            k6's ``--out json`` output (``http_req_duration`` points)
``aggregates_csv``     per-interval ``ts, total, bad[, le_<ms>...]`` rows
``aggregates_ndjson``  the same as JSON lines
``prometheus_json``    counter samples from ``/api/v1/query_range`` (needs a mapping file)
``prometheus_text``    text exposition with timestamps in ms (needs a mapping file)
``openmetrics``        OpenMetrics text with timestamps in s (needs a mapping file)
``mapping``            other schemas, described by a mapping file (:mod:`engine.formats.mapping`)
``detect``             the format :func:`detect` recognises in the first buffer, kept after it
=====================  ====================================================================

Every decoder has ``decode(data: bytes) -> (EventBatch, Rejections)``: bad records are counted by
reason (``malformed_line``, ``malformed_json``, ``missing_ts``, ``bad_ts``, ``missing_status``,
``bad_status``, ``no_response``, ``bad_latency``, ``missing_service`` and per-format reasons listed
in each module), never raised and never dropped silently. The helpers below build the columns and
apply the checks every format shares.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final, Protocol

import msgspec
import numpy as np
import numpy.typing as npt

from engine.batch import NO_STATUS, EventBatch, EventKey, KeyTable, Rejections
from engine.errors import DecodeError

if TYPE_CHECKING:
    from engine.events import EventDecoder

BASE_FORMATS: Final = ("auto", "ndjson", "json", "msgpack")
"""Formats :class:`~engine.events.EventDecoder` decodes itself (sloburn's own event schema)."""

_FACTORIES: Final = {
    "nginx_json": "engine.formats.logs:NginxJsonDecoder",
    "nginx_combined": "engine.formats.logs:NginxCombinedDecoder",
    "apache_combined": "engine.formats.logs:ApacheCombinedDecoder",
    "envoy": "engine.formats.logs:EnvoyDecoder",
    "ecs_json": "engine.formats.logs:EcsJsonDecoder",
    "otlp_json": "engine.formats.otel:OtlpJsonDecoder",
    "k6_json": "engine.formats.k6:K6JsonDecoder",
    "aggregates_csv": "engine.formats.aggregates:AggregatesCsvDecoder",
    "aggregates_ndjson": "engine.formats.aggregates:AggregatesNdjsonDecoder",
    "prometheus_json": "engine.formats.prometheus:PrometheusJsonDecoder",
    "prometheus_text": "engine.formats.prometheus:PrometheusTextDecoder",
    "openmetrics": "engine.formats.prometheus:OpenMetricsDecoder",
    "mapping": "engine.formats.mapping:MappingDecoder",
}
FORMAT_NAMES: Final = (*_FACTORIES, "detect")
"""Every format name this registry builds a decoder for."""

ALL_FORMATS: Final = (*BASE_FORMATS, *FORMAT_NAMES)

_I64_MAX: Final = (1 << 63) - 1
_MAX_WEIGHT: Final = 1 << 40  # engine.events.MAX_WEIGHT (not imported: events imports this module lazily)
_SNIFF_BYTES: Final = 1 << 16
_ABSENT: Final = frozenset({"", "-", b"", b"-"})  # how logs write a number they do not have
_UNIT_NS: Final = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}

Bools = npt.NDArray[np.bool_]
Int64s = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float64]


class FormatDecoder(Protocol):
    """What :func:`make_decoder` returns."""

    def decode(self, data: bytes) -> tuple[EventBatch, Rejections]: ...


def make_decoder(name: str, events: EventDecoder) -> FormatDecoder:
    """The decoder of format ``name``, reading its settings from ``events.config``.

    Raises
    ------
    DecodeError
        ``unknown_format`` when no format has that name.
    ConfigError
        When the format needs a mapping file and it is missing or invalid.
    """
    if name == "detect":
        return DetectingDecoder(events)
    target = _FACTORIES.get(name)
    if target is None:
        raise DecodeError("unknown_format", f"expected one of {', '.join(BASE_FORMATS)}, got {name!r} "
                                            f"(also accepted: {', '.join(FORMAT_NAMES)})")
    module, cls = target.split(":")
    factory: Any = getattr(importlib.import_module(module), cls)
    decoder: FormatDecoder = factory(events)
    return decoder


# ---------------------------------------------------------------------------------------------
# Detection

_COMBINED_HEAD = re.compile(
    rb'[^ \n]+ [^ \n]+ [^ \n]+ \[[^\]\n]+\] "(?:[^"\\\n]|\\.)*" [0-9]{3} (?:[0-9]+|-) '
    rb'"(?:[^"\\\n]|\\.)*" "(?:[^"\\\n]|\\.)*"(?P<tail> [0-9.]+)?\r?')
_ENVOY_HEAD = re.compile(rb'\[[0-9]{4}-[0-9]{2}-[0-9]{2}T[^\]\n]*\] "[^"\n]*" [0-9-]+ [^ \n]+ ')
_EXPOSITION_SAMPLE = re.compile(rb"[a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^\n]*\})? [^ \n]+ [0-9.eE+-]+\r?")
_NGINX_KEYS: Final = frozenset({"msec", "request_time", "upstream_response_time", "time_local",
                                "time_iso8601"})


def detect(sample: bytes) -> str:
    """Name of the format of ``sample`` (the start of an input), from its first line.

    JSON objects are told apart by their keys (``resourceSpans``: OTLP; ``type`` Point/Metric with
    ``metric``: k6; ``data.resultType``: Prometheus API; ``@timestamp``: ECS; ``msec`` or
    ``request_time``: nginx; ``total`` and ``bad``: aggregates; anything else: sloburn events).
    Text lines are matched against the combined, Envoy and exposition layouts, a CSV header against
    the aggregates columns.

    Raises
    ------
    DecodeError
        ``unrecognised_format`` when no format fits.
    """
    from engine.events import sniff_format

    sample = sample[:_SNIFF_BYTES]
    start = len(sample) - len(sample.lstrip())
    if start == len(sample):
        return "ndjson"
    end = sample.find(b"\n", start)
    line = sample[start:] if end < 0 else sample[start:end]
    first = line[:1]
    if first == b"{":
        return _detect_json(sample, line) or sniff_format(sample)
    if first == b"[":
        return "envoy" if _ENVOY_HEAD.match(line) else "json"
    if first == b"#":
        return "openmetrics" if re.search(rb"^# EOF\r?$", sample, re.MULTILINE) else "prometheus_text"
    m = _COMBINED_HEAD.fullmatch(line)
    if m:
        tail = m.group("tail")
        return "nginx_combined" if tail and b"." in tail else "apache_combined"
    header = [c.strip().lower() for c in line.decode("utf-8", "replace").split(",")]
    if {"ts", "total", "bad"} <= set(header):
        return "aggregates_csv"
    if _EXPOSITION_SAMPLE.fullmatch(line):
        return "prometheus_text"
    if sniff_format(sample) == "msgpack" and not line.isascii():
        return "msgpack"
    raise DecodeError("unrecognised_format",
                      f"expected a line of a registered format, got {line[:80]!r}")


def _detect_json(sample: bytes, line: bytes) -> str | None:
    try:
        doc = msgspec.json.decode(line)
    except msgspec.DecodeError:
        head = sample[:4096]  # a pretty-printed document: look for the distinctive keys
        if b'"resourceSpans"' in head:
            return "otlp_json"
        if b'"resultType"' in head:
            return "prometheus_json"
        return None
    if not isinstance(doc, dict):
        return None
    if "resourceSpans" in doc:
        return "otlp_json"
    if doc.get("type") in ("Point", "Metric") and "metric" in doc:
        return "k6_json"
    if isinstance(doc.get("data"), dict) and "resultType" in doc["data"]:
        return "prometheus_json"
    if "@timestamp" in doc:
        return "ecs_json"
    if "status" in doc and _NGINX_KEYS & doc.keys():
        return "nginx_json"
    if "total" in doc and "bad" in doc:
        return "aggregates_ndjson"
    return None


class DetectingDecoder:
    """Decodes with the format :func:`detect` finds in the first buffer that is not blank.

    The choice is kept for the following buffers (one input is one format). A buffer in which no
    format is recognised counts each of its non-blank lines as ``unrecognised_format``.
    """

    def __init__(self, events: EventDecoder) -> None:
        self.events = events
        self.name: str | None = None

    def decode(self, data: bytes) -> tuple[EventBatch, Rejections]:
        if self.name is None:
            if not data.strip():
                return EventBatch.empty(), Rejections()
            try:
                self.name = detect(data)
            except DecodeError as e:
                rej = Rejections()
                rej.add(e.reason, sum(1 for line in data.split(b"\n") if line.strip()))
                return EventBatch.empty(), rej
        return self.events.decode(data, self.name)


# ---------------------------------------------------------------------------------------------
# Shared column helpers


class KeyInterner:
    """(service, route, method) -> the engine's key id, cached; -1 when there is no service.

    Parts are str, or bytes as a regex found them (decoded once per distinct key, ASCII with
    backslash escapes for other bytes); anything else counts as absent. A missing or empty service
    takes ``default_service``; without one the record is rejected as ``missing_service`` by
    :func:`finish_batch`.
    """

    def __init__(self, keys: KeyTable, default_service: str | None) -> None:
        self.keys = keys
        self.default_service = default_service or None
        self._ids: dict[tuple[Any, Any, Any], int] = {}

    def ids(self, services: Iterable[Any], routes: Iterable[Any], methods: Iterable[Any]
            ) -> npt.NDArray[np.int32]:
        cache = self._ids
        triples = list(zip(services, routes, methods, strict=True))
        try:
            return np.array([cache[t] for t in triples], np.int32)
        except KeyError:
            pass
        out = np.empty(len(triples), np.int32)
        for i, t in enumerate(triples):
            kid = cache.get(t)
            if kid is None:
                kid = cache[t] = self._new(*t)
            out[i] = kid
        return out

    def _new(self, service: Any, route: Any, method: Any) -> int:
        service, route, method = (_str(v) for v in (service, route, method))
        service = service or self.default_service
        if service is None:
            return -1
        return self.keys.intern(EventKey(service, route or "", method or ""))


def _str(value: Any) -> str | None:
    if isinstance(value, bytes):
        return value.decode("ascii", "backslashreplace")
    return value if isinstance(value, str) else None


def finish_batch(
    rej: Rejections,
    ts_ns: Int64s,
    key: npt.NDArray[np.int32],
    status: npt.ArrayLike,
    latency_us: Floats,
    weight: Int64s | None = None,
    masks: Sequence[tuple[str, Bools]] = (),
) -> EventBatch:
    """Apply the shared checks and keep the rows that pass; one reason per rejected row.

    ``masks`` (reason, rows) come first, in order; then ``missing_service`` (key -1), ``bad_status``
    (not ``NO_STATUS`` and outside 100..599), ``bad_latency`` (negative or infinite; NaN means
    absent) and ``bad_weight`` (outside 1..2**40).
    """
    n = ts_ns.shape[0]
    status_i = np.asarray(status, np.int64)
    w = np.ones(n, np.int64) if weight is None else weight
    checks = [*masks, ("missing_service", key < 0),
              ("bad_status", (status_i != NO_STATUS) & ((status_i < 100) | (status_i > 599))),
              ("bad_latency", (latency_us < 0) | np.isinf(latency_us)),
              ("bad_weight", (w < 1) | (w > _MAX_WEIGHT))]
    drop = np.zeros(n, np.bool_)
    for reason, mask in checks:
        rej.add(reason, int(np.count_nonzero(mask & ~drop)))
        drop |= mask
    batch = EventBatch(np.ascontiguousarray(ts_ns, np.int64), np.ascontiguousarray(key, np.int32),
                       np.where(drop, 0, status_i).astype(np.int16), np.ascontiguousarray(latency_us),
                       np.ascontiguousarray(w, np.int64))
    return batch.take(np.flatnonzero(~drop)) if drop.any() else batch


def number_column(values: list[Any]) -> tuple[Floats, Bools, Bools]:
    """Numbers, numeric strings, ``None``/``""``/``"-"`` (absent) -> (float64, missing, bad).

    Absent and bad values are NaN in the array; booleans and non-numeric strings are bad.
    """
    n = len(values)
    missing = np.fromiter((v is None or v in _ABSENT for v in values), np.bool_, n)
    if missing.all():
        return np.full(n, np.nan), missing, np.zeros(n, np.bool_)
    try:
        if missing.any() or any(isinstance(v, bool) for v in values):
            raise ValueError
        out = np.array(values, np.float64)
    except (ValueError, TypeError, OverflowError):
        out = np.full(n, np.nan)
        bad = np.zeros(n, np.bool_)
        for i, v in enumerate(values):
            if missing[i]:
                continue
            if isinstance(v, bool) or not isinstance(v, int | float | str | bytes):
                bad[i] = True
                continue
            try:
                out[i] = float(v)
            except (ValueError, OverflowError):
                bad[i] = True
        return out, missing, bad | (np.isnan(out) & ~missing)
    return out, missing, np.isnan(out)


def seconds_to_ns(seconds: Floats) -> tuple[Int64s, Bools]:
    """Float seconds since the epoch -> ns rounded to the microsecond, and a bad mask.

    Float64 holds present-day seconds to about 0.2 us, so the microsecond is the finest exact step.
    NaN, negative and out-of-range (after 2262) values are bad.
    """
    bad = ~np.isfinite(seconds) | (seconds < 0) | (seconds >= _I64_MAX / 1e9 - 1)
    us = np.rint(np.where(bad, 0.0, seconds) * 1e6).astype(np.int64)
    return us * 1000, bad


def status_column(values: list[Any]) -> tuple[Int64s, Bools, Bools]:
    """HTTP statuses as ints or numeric strings -> (int64, missing, bad); bad = not an integer."""
    nums, missing, bad = number_column(values)
    bad |= ~missing & ~bad & (nums != np.floor(nums))
    return np.where(missing | bad, 0, nums).astype(np.int64), missing, bad


def rfc3339_ns(texts: list[Any]) -> tuple[Int64s, Bools, Bools]:
    """RFC 3339 strings (None: absent) -> (ns, missing, bad)."""
    from engine.events import rfc3339_column_ns

    n = len(texts)
    missing = np.fromiter((t is None for t in texts), np.bool_, n)
    strings = [t if isinstance(t, str) else "" for t in texts]
    ns, bad = rfc3339_column_ns(strings) if n else (np.zeros(0, np.int64), np.zeros(0, np.bool_))
    return ns, missing, bad & ~missing


def epoch_ns(values: list[Any], unit: str) -> tuple[Int64s, Bools, Bools]:
    """Epoch numbers (``unit`` s/ms/us/ns, or ``auto``), numeric strings or RFC 3339 strings -> ns.

    Returns (ns, missing, bad); None and ``""`` are missing. ``auto`` reads numbers below 1e11 as
    seconds, below 1e14 as milliseconds, below 1e17 as microseconds, else nanoseconds (the rule of
    :mod:`engine.events`). Integers are exact; fractional numbers are rounded to the microsecond.
    One value at a time: aggregate rows and mapped records are few next to request events.
    """
    from engine.events import parse_rfc3339_ns

    n = len(values)
    ns = np.zeros(n, np.int64)
    missing = np.zeros(n, np.bool_)
    bad = np.zeros(n, np.bool_)
    for i, value in enumerate(values):
        if value is None or value == "":
            missing[i] = True
            continue
        v = value
        if isinstance(value, str):
            try:
                v = int(value) if value.strip().isdigit() else float(value)
            except ValueError:
                parsed = parse_rfc3339_ns(value.strip())
                if parsed is None:
                    bad[i] = True
                else:
                    ns[i] = parsed
                continue
        found = _number_ns(v, unit)
        if found is None:
            bad[i] = True
        else:
            ns[i] = found
    return ns, missing, bad


def _number_ns(v: Any, unit: str) -> int | None:
    if isinstance(v, bool) or not isinstance(v, int | float) or not v >= 0 or v == float("inf"):
        return None
    if unit == "auto":
        unit = "s" if v < 1e11 else "ms" if v < 1e14 else "us" if v < 1e17 else "ns"
    mult = _UNIT_NS[unit]
    if isinstance(v, int):
        ns = v * mult
    else:
        whole = int(v)
        ns = whole * mult + round((v - whole) * mult / 1000) * 1000 if mult >= 1000 else round(v * mult)
    return ns if 0 <= ns <= _I64_MAX else None

# ---------------------------------------------------------------------------------------------
# JSON lines


def json_lines(data: bytes, typed: msgspec.json.Decoder, rej: Rejections, check: Any = None
               ) -> tuple[list[Any], bool]:
    """Decode JSON lines into typed Structs, falling back to plain values where the type does not fit.

    Returns (items, mixed): the lines in order, as Structs where the typed decoder takes them (and
    ``check(struct)`` accepts them, when given) and as plain JSON values (for the format's slow
    path) otherwise; ``mixed`` says whether any plain value is among them. Lines that are not JSON
    count as ``malformed_json``; blank lines carry nothing. The whole buffer goes through one
    ``decode_lines`` call unless a line does not fit.
    """
    try:
        items = typed.decode_lines(data)
    except msgspec.DecodeError:
        items = None
    if items is not None and (check is None or all(map(check, items))):
        return items, False
    out: list[Any] = []
    mixed = False
    generic = msgspec.json.Decoder()
    for line in data.split(b"\n"):
        if not line.strip():
            continue
        try:
            item = typed.decode(line)
            if check is None or check(item):
                out.append(item)
                continue
        except msgspec.DecodeError:
            pass
        try:
            out.append(generic.decode(line))
            mixed = True
        except msgspec.DecodeError:
            rej.add("malformed_json")
    return out, mixed


def convert_records(items: list[Any], kind: type, rej: Rejections) -> list[Any]:
    """Plain JSON values among ``items`` -> ``kind`` Structs; ``not_an_object`` / ``wrong_type`` otherwise."""
    out = []
    for item in items:
        if isinstance(item, kind):
            out.append(item)
        elif not isinstance(item, dict):
            rej.add("not_an_object")
        else:
            try:
                out.append(msgspec.convert(item, kind))
            except msgspec.ValidationError:
                rej.add("wrong_type")
    return out


def lookup(rec: Any, path: str) -> Any:
    """The value at a dotted ``path`` in nested objects, also where keys themselves hold dots.

    ``{"http.response.status_code": 200}``, ``{"http": {"response": {"status_code": 200}}}`` and
    ``{"http.response": {"status_code": 200}}`` all give 200 for ``http.response.status_code``.
    Returns None when absent.
    """
    if not isinstance(rec, dict):
        return None
    if path in rec:
        return rec[path]
    parts = path.split(".")
    for i in range(len(parts) - 1, 0, -1):
        head = ".".join(parts[:i])
        if head in rec:
            found = lookup(rec[head], ".".join(parts[i:]))
            if found is not None:
                return found
    return None


def split_target(target: Any) -> tuple[Any, Any]:
    """A request target or URL -> (host or None, path without the query string).

    ``/a/b?x=1`` -> (None, ``/a/b``); ``http://h:8080/a?x`` -> (``h:8080``, ``/a``). Anything else
    (``-``, ``*``) is returned as the path.
    """
    if not isinstance(target, str):
        return None, target
    host = None
    if "://" in target:
        rest = target.split("://", 1)[1]
        slash = rest.find("/")
        host, target = (rest, "/") if slash < 0 else (rest[:slash], rest[slash:])
    q = target.find("?")
    return host, target if q < 0 else target[:q]


def lines_of(data: bytes) -> int:
    """Number of non-blank lines of a buffer."""
    return sum(1 for line in data.split(b"\n") if line.strip())

