"""k6's JSON output (``k6 run --out json=FILE``): ``http_req_duration`` points into events.

k6 writes one JSON object per line: a ``Metric`` declaration the first time a metric is seen, then
a ``Point`` per sample::

    {"type":"Point","metric":"http_req_duration","data":{"time":"2024-05-09T14:34:45.239531+02:00",
     "value":459.86,"tags":{"method":"GET","status":"200","name":"http://test.k6.io/news.php",
     "url":"http://test.k6.io/news.php","expected_response":"true","scenario":"default"}}}

Each ``http_req_duration`` point is one request: time = ``data.time`` (RFC 3339, to the ns),
latency = ``data.value`` (ms), status = the ``status`` tag, method = the ``method`` tag, service =
the host of the ``url`` tag (else ``events.default_service``), route = the path of the ``name``
tag (k6 sets it to the URL unless the script names the request; a name that is not a URL is the
route as it is), without the query string.

Rejections
    ``other_metric`` (declarations and points of every other metric: k6 writes a dozen per request;
    counted so that every line is accounted for), ``malformed_json``, ``not_an_object``,
    ``wrong_type``, ``missing_ts``, ``bad_ts``, ``missing_status``, ``bad_status``, ``no_response``
    (status ``0``: k6 got no response, e.g. a connection error or timeout; the engine has no status
    to judge it by, so count these apart), ``bad_latency``, ``missing_service``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

import msgspec

from engine.batch import EventBatch, Rejections
from engine.formats.registry import (
    KeyInterner,
    convert_records,
    finish_batch,
    json_lines,
    number_column,
    rfc3339_ns,
    split_target,
    status_column,
)

if TYPE_CHECKING:
    from engine.events import EventDecoder

METRIC: Final = "http_req_duration"


class _Data(msgspec.Struct, gc=False):
    time: str | None = None
    value: float | None = None
    tags: dict[str, str] | None = None


class _Line(msgspec.Struct, gc=False):
    type: str | None = None
    metric: str | None = None
    data: _Data | None = None


def _is_request(line: _Line) -> bool:
    return line.type == "Point" and line.metric == METRIC


class K6JsonDecoder:
    """``http_req_duration`` points of k6 JSON output -> one event per request."""

    def __init__(self, events: EventDecoder) -> None:
        self._interner = KeyInterner(events.keys, events.config.default_service)
        self._typed = msgspec.json.Decoder(_Line)
        self._targets: dict[tuple[str | None, str | None], tuple[Any, Any]] = {}

    def decode(self, data: bytes) -> tuple[EventBatch, Rejections]:
        rej = Rejections()
        lines, mixed = json_lines(data, self._typed, rej)
        if mixed:
            lines = convert_records(lines, _Line, rej)
        points = [p for p in lines if _is_request(p)]
        rej.add("other_metric", len(lines) - len(points))
        if not points:
            return EventBatch.empty(), rej
        empty: dict[str, str] = {}
        datas = [p.data or _Data() for p in points]
        tags = [d.tags or empty for d in datas]
        ts_ns, missing_ts, bad_ts = rfc3339_ns([d.time for d in datas])
        status, missing_status, bad_status = status_column([t.get("status") for t in tags])
        latency_ms, _, bad_lat = number_column([d.value for d in datas])
        services, routes = zip(*(self._target(t.get("url"), t.get("name")) for t in tags), strict=True)
        keys = self._interner.ids(services, routes, [t.get("method") for t in tags])
        return finish_batch(rej, ts_ns, keys, status, latency_ms * 1e3,
                            masks=[("missing_ts", missing_ts), ("bad_ts", bad_ts),
                                   ("missing_status", missing_status), ("bad_status", bad_status),
                                   ("no_response", ~missing_status & (status == 0)),
                                   ("bad_latency", bad_lat)]), rej

    def _target(self, url: str | None, name: str | None) -> tuple[Any, Any]:
        """(service, route) of a request, cached per distinct (url, name)."""
        found = self._targets.get((url, name))
        if found is None:
            host = split_target(url)[0] if url else None
            target = name if name is not None else url
            route = split_target(target)[1] if target and ("://" in target or target.startswith("/")) \
                else target
            found = self._targets[(url, name)] = (host, route)
        return found
