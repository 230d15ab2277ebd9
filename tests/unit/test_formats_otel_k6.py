"""OTLP JSON spans and k6 JSON output into events, checked against a plain walk of the same files."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from engine.batch import NO_STATUS, EventKey, KeyTable
from engine.config import EventsConfig
from engine.events import EventDecoder, parse_rfc3339_ns

DATA = Path(__file__).resolve().parents[1] / "data" / "formats"
OTLP_LINES = DATA / "otlp.jsonl"
OTLP_PRETTY = DATA / "otlp-pretty.json"
K6 = DATA / "k6.json"


def decoder(**cfg: Any) -> EventDecoder:
    return EventDecoder(EventsConfig(**cfg), KeyTable())


def rows(dec: EventDecoder, batch: Any) -> list[tuple[Any, ...]]:
    return [(int(t), dec.keys.keys[k], int(s), None if math.isnan(lat) else round(float(lat), 3), int(w))
            for t, k, s, lat, w in zip(batch.ts_ns, batch.key, batch.status, batch.latency_us, batch.weight,
                                       strict=True)]


# ---------------------------------------------------------------------------------------------
# OTLP


def attrs(items: list[dict[str, Any]]) -> dict[str, Any]:
    out = {}
    for kv in items:
        value = kv["value"]
        out[kv["key"]] = value.get("stringValue", value.get("intValue"))
    return out


def otlp_reference(doc: dict[str, Any]) -> tuple[list[tuple[Any, ...]], int]:
    """(expected events, spans that are not entry spans) of one OTLP document."""
    events, skipped = [], 0
    for rs in doc["resourceSpans"]:
        service = attrs(rs["resource"]["attributes"])["service.name"]
        for scope in rs["scopeSpans"]:
            for span in scope["spans"]:
                if span["kind"] not in (0, 2, 5):
                    skipped += 1
                    continue
                a = attrs(span.get("attributes", []))
                end, start = int(span["endTimeUnixNano"]), int(span["startTimeUnixNano"])
                failed = span.get("status", {}).get("code") == 2
                status = int(a.get("http.response.status_code", 500 if failed else 200))
                key = EventKey(service, a.get("http.route", ""), a.get("http.request.method", ""))
                events.append((end, key, status, round((end - start) / 1e3, 3), 1))
    return events, skipped


def test_otlp_json_lines_match_a_plain_walk() -> None:
    expected, skipped = [], 0
    for line in OTLP_LINES.read_text().splitlines():
        e, s = otlp_reference(json.loads(line))
        expected += e
        skipped += s
    dec = decoder()
    batch, rej = dec.decode(OTLP_LINES.read_bytes(), "otlp_json")
    assert rows(dec, batch) == expected
    assert skipped > 0 and rej == {"not_entry_span": skipped}
    statuses = Counter(s for _, _, s, _, _ in expected)
    assert statuses[500] > 0 and statuses[200] > 0
    # The consumer span without an HTTP status failed: its 500 comes from the span status.
    assert any(k.route == "" and s == 500 for _, k, s, _, _ in expected)


def test_otlp_pretty_document_as_the_specification_shows_it() -> None:
    doc = json.loads(OTLP_PRETTY.read_text())
    assert OTLP_PRETTY.read_text().count("\n") > 100  # pretty-printed
    expected, skipped = otlp_reference(doc)
    dec = decoder()
    batch, rej = dec.decode(OTLP_PRETTY.read_bytes(), "otlp_json")
    assert rows(dec, batch) == expected
    assert rej == {"not_entry_span": skipped}


def span(**overrides: Any) -> dict[str, Any]:
    base = {"name": "GET /a", "kind": 2, "startTimeUnixNano": "1700000000000000000",
            "endTimeUnixNano": "1700000000250000000",
            "attributes": [{"key": "http.route", "value": {"stringValue": "/a"}},
                           {"key": "http.method", "value": {"stringValue": "GET"}},
                           {"key": "http.status_code", "value": {"intValue": 404}}]}
    base.update(overrides)
    return base


def document(*spans: dict[str, Any], service: Any = "svc") -> bytes:
    return json.dumps({"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]},
        "instrumentationLibrarySpans": [{"spans": list(spans)}]}]}).encode()


def test_otlp_older_keys_numbers_and_enum_names() -> None:
    dec = decoder()
    data = document(span(), span(kind="SPAN_KIND_CLIENT"), span(kind="SPAN_KIND_SERVER",
                                                                  endTimeUnixNano=1700000000500000000))
    batch, rej = dec.decode(data, "otlp_json")
    assert rej == {"not_entry_span": 1}
    key = EventKey("svc", "/a", "GET")
    assert rows(dec, batch) == [(1700000000250000000, key, 404, 250_000.0, 1),
                                (1700000000500000000, key, 404, 500_000.0, 1)]


def test_otlp_rejections_by_reason() -> None:
    bad_status = {"key": "http.response.status_code", "value": {"stringValue": "teapot"}}
    good = document(
        span(),
        span(endTimeUnixNano=None),
        span(endTimeUnixNano="later"),
        span(startTimeUnixNano="1700000001000000000"),  # ends before it starts
        span(attributes=[bad_status]),
        span(startTimeUnixNano={"nanos": 1}),  # a field of the wrong type: this span only
        span(kind=1),
    )
    lines = b"\n".join([good, b'{"resourceSpans": [', document(span(), service=None)])
    dec = decoder()
    batch, rej = dec.decode(lines, "otlp_json")
    assert rej == {"missing_ts": 1, "bad_ts": 1, "bad_latency": 1, "bad_status": 1, "wrong_type": 1,
                   "not_entry_span": 1, "malformed_json": 1, "missing_service": 1}
    assert len(batch) == 1
    with_default = decoder(default_service="edge")
    batch, rej = with_default.decode(document(span(), service=None), "otlp_json")
    assert rej == {} and with_default.keys.keys[int(batch.key[0])].service == "edge"


# ---------------------------------------------------------------------------------------------
# k6


def k6_reference() -> tuple[list[tuple[Any, ...]], int, int]:
    """(expected events, lines of other metrics, requests without a response)."""
    expected, other, no_response = [], 0, 0
    for line in K6.read_text().splitlines():
        rec = json.loads(line)
        if rec["type"] != "Point" or rec["metric"] != "http_req_duration":
            other += 1
            continue
        data = rec["data"]
        tags = data["tags"]
        if tags["status"] == "0":
            no_response += 1
            continue
        name = tags["name"]
        route = urlsplit(name).path if "://" in name else name
        expected.append((parse_rfc3339_ns(data["time"]),
                         EventKey(urlsplit(tags["url"]).netloc, route, tags["method"]),
                         int(tags["status"]), round(data["value"] * 1e3, 3), 1))
    return expected, other, no_response


def test_k6_points_match_a_plain_walk() -> None:
    expected, other, no_response = k6_reference()
    dec = decoder()
    batch, rej = dec.decode(K6.read_bytes(), "k6_json")
    assert rows(dec, batch) == expected
    assert no_response >= 1 and other > len(expected)
    assert rej == {"other_metric": other, "no_response": no_response}
    routes = {k.route for _, k, _, _, _ in expected}
    assert "flip_coin" in routes and "/public/crocodiles/${id}/" in routes  # names given by the script
    assert {s for _, _, s, _, _ in expected} == {200, 503}


def test_k6_time_keeps_nanoseconds_and_offsets() -> None:
    line = {"type": "Point", "metric": "http_req_duration",
            "data": {"time": "2017-05-09T14:34:45.625742514+02:00", "value": 459.865729,
                     "tags": {"method": "GET", "status": "200", "url": "http://httpbin.org/get?x=1"}}}
    dec = decoder()
    batch, rej = dec.decode(json.dumps(line).encode(), "k6_json")
    assert rej == {}
    assert rows(dec, batch) == [(1494333285625742514, EventKey("httpbin.org", "/get", "GET"), 200,
                                 459865.729, 1)]


def test_k6_rejections_by_reason() -> None:
    point = {"type": "Point", "metric": "http_req_duration",
             "data": {"time": "2024-05-09T14:34:45Z", "value": 12.5,
                      "tags": {"method": "GET", "status": "200", "name": "/a"}}}

    def variant(**data: Any) -> bytes:
        return json.dumps({**point, "data": {**point["data"], **data}}).encode()

    lines = [
        variant(), variant(time=None), variant(time="noon"),
        variant(tags={"method": "GET", "name": "/a"}), variant(tags={"status": "abc", "name": "/a"}),
        variant(tags={"status": "0", "name": "/a"}), variant(value=-1.0),
        json.dumps({**point, "data": {"value": "fast"}}).encode(),
        b'{"type": "Point"', b"42",
        json.dumps({"type": "Point", "metric": "vus", "data": {"value": 1}}).encode(),
    ]
    dec = decoder(default_service="k6")
    batch, rej = dec.decode(b"\n".join(lines), "k6_json")
    assert rej == {"missing_ts": 1, "bad_ts": 1, "missing_status": 1, "bad_status": 1, "no_response": 1,
                   "bad_latency": 1, "wrong_type": 1, "malformed_json": 1, "not_an_object": 1,
                   "other_metric": 1}
    assert rows(dec, batch) == [(1715265285 * 10**9, EventKey("k6", "/a", "GET"), 200, 12500.0, 1)]
    assert NO_STATUS not in {int(s) for s in batch.status}
    # Without a url tag or a default service, a request names no service.
    assert decoder().decode(lines[0], "k6_json")[1] == {"missing_service": 1}
