"""OpenTelemetry spans as OTLP JSON (``TracesData`` / ``ExportTraceServiceRequest``) into events.

The layout is that of the OTLP specification's JSON encoding (opentelemetry-proto
``examples/trace.json``)::

    {"resourceSpans": [{"resource": {"attributes": [{"key": "service.name",
                                                     "value": {"stringValue": "checkout"}}]},
                        "scopeSpans": [{"scope": {...}, "spans": [
                            {"name": "GET /pay", "kind": 2,
                             "startTimeUnixNano": "1544712660000000000",
                             "endTimeUnixNano": "1544712661000000000",
                             "attributes": [{"key": "http.route", "value": {"stringValue": "/pay"}},
                                            {"key": "http.response.status_code",
                                             "value": {"intValue": "503"}}],
                             "status": {"code": 2}}]}]}]}

A buffer holds one document or one document per line (the collector's file exporter); the older
``instrumentationLibrarySpans`` key is read like ``scopeSpans``. 64-bit integers may be JSON
strings or numbers, enums numbers or their names (``SPAN_KIND_SERVER``).

One event per span that serves a request: kinds SERVER, CONSUMER and UNSPECIFIED. INTERNAL,
CLIENT and PRODUCER spans describe work inside or on behalf of a request already counted at its
entry span; they are counted as ``not_entry_span`` (every span is accounted for).

Event fields
    time = ``endTimeUnixNano`` (when the outcome is known), latency = end - start (absent without a
    start), service = the resource's ``service.name``, route = ``http.route``, method =
    ``http.request.method`` (or the older ``http.method``), status = ``http.response.status_code``
    (or ``http.status_code``); a span without an HTTP status gets 500 when its status code is
    ERROR and 200 otherwise (UNSET, OK), so that an availability SLO with the default ``5xx``
    counts failed RPCs.

Rejections
    ``malformed_json``, ``wrong_type`` (a span or resource whose fields have the wrong JSON types,
    counted per span where the document is readable), ``not_entry_span``, ``missing_ts``,
    ``bad_ts``, ``bad_status``, ``bad_latency`` (end before start), ``missing_service``.
    A pretty-printed document must fit in one read buffer (8 MiB by default); compact documents
    are one line and come whole.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

import msgspec
import numpy as np

from engine.batch import EventBatch, Rejections
from engine.formats.registry import KeyInterner, finish_batch

if TYPE_CHECKING:
    from engine.events import EventDecoder

_ENTRY_KINDS: Final = frozenset({0, 2, 5, "SPAN_KIND_UNSPECIFIED", "SPAN_KIND_SERVER", "SPAN_KIND_CONSUMER"})
_ERROR: Final = frozenset({2, "STATUS_CODE_ERROR"})
_I64_MAX: Final = (1 << 63) - 1


class _AnyValue(msgspec.Struct, gc=False):
    stringValue: str | None = None  # noqa: N815 - OTLP's JSON names
    intValue: int | str | None = None  # noqa: N815
    doubleValue: float | None = None  # noqa: N815


class _KeyValue(msgspec.Struct, gc=False):
    key: str
    value: _AnyValue | None = None


class _Status(msgspec.Struct, gc=False):
    code: int | str | None = None


class _Span(msgspec.Struct, gc=False):
    name: str = ""
    kind: int | str | None = None
    startTimeUnixNano: int | str | None = None  # noqa: N815
    endTimeUnixNano: int | str | None = None  # noqa: N815
    attributes: list[_KeyValue] = []
    status: _Status | None = None


class _ScopeSpans(msgspec.Struct, gc=False):
    spans: list[_Span] = []


class _Resource(msgspec.Struct, gc=False):
    attributes: list[_KeyValue] = []


class _ResourceSpans(msgspec.Struct, gc=False):
    resource: _Resource | None = None
    scopeSpans: list[_ScopeSpans] = []  # noqa: N815
    instrumentationLibrarySpans: list[_ScopeSpans] = []  # noqa: N815


class _TracesData(msgspec.Struct, gc=False):
    resourceSpans: list[_ResourceSpans] = []  # noqa: N815


def _value(v: _AnyValue | None) -> Any:
    if v is None:
        return None
    if v.stringValue is not None:
        return v.stringValue
    if v.intValue is not None:
        return v.intValue
    return v.doubleValue


def _nanos(v: Any) -> int | None:
    """A uint64 of OTLP JSON (number or decimal string) -> int; None when it is not one."""
    if isinstance(v, bool):
        return None
    if isinstance(v, str):
        return int(v) if v.isdigit() else None
    return v if isinstance(v, int) else None


def _http_status(v: Any) -> int:
    """An HTTP status attribute -> 100..599, or -1 (``bad_status``) when it is not one."""
    if isinstance(v, str) and v.isdigit():
        v = int(v)
    if isinstance(v, int) and not isinstance(v, bool) and 100 <= v <= 599:
        return v
    return -1


class OtlpJsonDecoder:
    """Spans of OTLP JSON documents -> one event per entry span."""

    def __init__(self, events: EventDecoder) -> None:
        self._interner = KeyInterner(events.keys, events.config.default_service)
        self._typed = msgspec.json.Decoder(_TracesData)
        self._generic = msgspec.json.Decoder()

    def decode(self, data: bytes) -> tuple[EventBatch, Rejections]:
        rej = Rejections()
        rows: list[tuple[Any, ...]] = []
        for doc in self._documents(data, rej):
            for rs in doc.resourceSpans:
                service = None
                for kv in rs.resource.attributes if rs.resource else ():
                    if kv.key == "service.name":
                        service = _value(kv.value)
                for scope in (*rs.scopeSpans, *rs.instrumentationLibrarySpans):
                    for span in scope.spans:
                        self._row(span, service, rows, rej)
        return self._batch(rows, rej), rej

    def _documents(self, data: bytes, rej: Rejections) -> list[_TracesData]:
        if not data.strip():
            return []
        try:
            return [self._typed.decode(data)]
        except msgspec.DecodeError:
            pass
        docs = []
        for line in data.split(b"\n"):
            if not line.strip():
                continue
            try:
                docs.append(self._typed.decode(line))
                continue
            except msgspec.DecodeError:
                pass
            try:
                raw = self._generic.decode(line)
            except msgspec.DecodeError:
                rej.add("malformed_json")
                continue
            docs.append(self._salvage(raw, rej))
        return docs

    def _salvage(self, raw: Any, rej: Rejections) -> _TracesData:
        """A readable document with badly typed parts: keep what fits, count each part that does not."""
        out = []
        for rs in raw.get("resourceSpans", []) if isinstance(raw, dict) else [raw]:
            try:
                resource = msgspec.convert(rs.get("resource") or {}, _Resource)
                lists = [rs.get("scopeSpans") or [], rs.get("instrumentationLibrarySpans") or []]
                spans_raw = [s for scopes in lists for scope in scopes for s in scope.get("spans") or []]
            except (msgspec.ValidationError, AttributeError, TypeError):
                rej.add("wrong_type")
                continue
            spans = []
            for s in spans_raw:
                try:
                    spans.append(msgspec.convert(s, _Span))
                except msgspec.ValidationError:
                    rej.add("wrong_type")
            out.append(_ResourceSpans(resource=resource, scopeSpans=[_ScopeSpans(spans=spans)]))
        return _TracesData(resourceSpans=out)

    def _row(self, span: _Span, service: Any, rows: list[tuple[Any, ...]], rej: Rejections) -> None:
        if span.kind is not None and span.kind not in _ENTRY_KINDS:
            rej.add("not_entry_span")
            return
        if span.endTimeUnixNano is None:
            rej.add("missing_ts")
            return
        end = _nanos(span.endTimeUnixNano)
        if end is None or not 0 < end <= _I64_MAX:
            rej.add("bad_ts")
            return
        start = _nanos(span.startTimeUnixNano)
        latency_us = np.nan if not start else (end - start) / 1e3
        status = route = method = None
        for kv in span.attributes:
            key = kv.key
            if key == "http.response.status_code" or (key == "http.status_code" and status is None):
                status = _http_status(_value(kv.value))
            elif key == "http.route":
                route = _value(kv.value)
            elif key == "http.request.method" or (key == "http.method" and method is None):
                method = _value(kv.value)
        if status is None:
            status = 500 if span.status is not None and span.status.code in _ERROR else 200
        rows.append((end, service, route, method, status, latency_us))

    def _batch(self, rows: list[tuple[Any, ...]], rej: Rejections) -> EventBatch:
        if not rows:
            return EventBatch.empty()
        ts, services, routes, methods, statuses, latencies = zip(*rows, strict=True)
        keys = self._interner.ids(services, routes, methods)
        lat = np.array(latencies, np.float64)
        return finish_batch(rej, np.array(ts, np.int64), keys, np.array(statuses, np.int64), lat,
                            masks=[("bad_latency", lat < 0)])
