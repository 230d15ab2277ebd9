"""EventDecoder: formats, timestamps, field mapping, rejections, key interning, weights, units."""

from __future__ import annotations

import calendar
import json
import math
from datetime import UTC, datetime
from typing import Any

import msgspec
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.batch import NO_STATUS, EventKey, KeyTable
from engine.config import EventsConfig
from engine.errors import ConfigError, DecodeError
from engine.events import (
    MAX_WEIGHT,
    EventDecoder,
    _rfc3339_vector,
    parse_rfc3339_ns,
    rfc3339_column_ns,
    sniff_format,
)

T0_S = 1_700_000_000  # 2023-11-14T22:13:20Z
T0_NS = T0_S * 10**9
FULL = {"ts": T0_S, "service": "checkout", "route": "/pay", "method": "POST", "status": 503,
        "latency_ms": 41.7, "weight": 3, "labels": {"region": "eu"}}
PROPERTY = settings(max_examples=150, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


def decoder(table: KeyTable | None = None, **cfg: Any) -> EventDecoder:
    return EventDecoder(EventsConfig(**cfg), table if table is not None else KeyTable())


def ndjson(*records: Any) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in records)


def rows(dec: EventDecoder, batch: Any) -> list[tuple[Any, ...]]:
    """Batch rows as plain tuples with the key spelled out (NaN latency as None)."""
    return [
        (int(t), dec.keys.keys[k], int(s), None if math.isnan(lat) else float(lat), int(w))
        for t, k, s, lat, w in zip(batch.ts_ns, batch.key, batch.status, batch.latency_us, batch.weight,
                                   strict=True)
    ]


# ---------------------------------------------------------------------------------------------
# Formats


def test_full_event_decodes_every_field() -> None:
    dec = decoder()
    batch, rej = dec.decode(ndjson(FULL), "ndjson")
    assert rej == {}
    assert rows(dec, batch) == [
        (T0_NS, EventKey("checkout", "/pay", "POST", (("region", "eu"),)), 503, 41700.0, 3)
    ]
    assert batch.ts_ns.dtype == np.int64 and batch.key.dtype == np.int32
    assert batch.status.dtype == np.int16 and batch.latency_us.dtype == np.float64
    assert batch.weight.dtype == np.int64


def test_minimal_event_gets_defaults() -> None:
    dec = decoder()
    batch, rej = dec.decode(b'{"ts": 1700000000, "service": "a"}', "ndjson")
    assert rej == {}
    assert rows(dec, batch) == [(T0_NS, EventKey("a"), NO_STATUS, None, 1)]


@pytest.mark.parametrize("fmt", ["ndjson", "json", "msgpack", "auto"])
@pytest.mark.parametrize("shape", ["one", "many"])
def test_every_format_gives_the_same_batch(fmt: str, shape: str) -> None:
    records = [dict(FULL, ts=T0_S + i, status=200 + i) for i in range(3 if shape == "many" else 1)]
    if fmt == "ndjson":
        data = ndjson(*records)
    elif fmt == "msgpack":
        data = msgspec.msgpack.encode(records if shape == "many" else records[0])
    else:
        data = json.dumps(records if shape == "many" else records[0]).encode()
    dec = decoder()
    batch, rej = dec.decode(data, fmt)
    assert rej == {}
    assert [int(t) for t in batch.ts_ns] == [(T0_S + i) * 10**9 for i in range(len(records))]
    assert [int(s) for s in batch.status] == [200 + i for i in range(len(records))]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b'{"ts": 1}\n{"ts": 2}\n', "ndjson"),
        (b'  \n {"ts": 1}', "ndjson"),
        (b'[{"ts": 1}]', "json"),
        (b'{\n  "ts": 1\n}\n', "json"),
        (msgspec.msgpack.encode({"ts": 1}), "msgpack"),
        (msgspec.msgpack.encode([{"ts": 1}]), "msgpack"),
        (b"   \n", "ndjson"),
        (b"", "ndjson"),
    ],
)
def test_sniff_format(data: bytes, expected: str) -> None:
    assert sniff_format(data) == expected


def test_auto_reads_a_pretty_printed_object() -> None:
    dec = decoder()
    batch, rej = dec.decode(json.dumps(FULL, indent=2).encode(), "auto")
    assert rej == {} and len(batch) == 1 and int(batch.weight[0]) == 3


def test_config_format_is_the_default() -> None:
    dec = decoder(format="msgpack")
    batch, rej = dec.decode(msgspec.msgpack.encode([FULL, FULL]))
    assert rej == {} and len(batch) == 2


def test_blank_lines_and_crlf_are_fine() -> None:
    dec = decoder()
    data = b'\n{"ts": 1700000000, "service": "a"}\r\n\r\n   \n{"ts": 1700000001, "service": "a"}'
    batch, rej = dec.decode(data, "ndjson")
    assert rej == {}
    assert list(batch.ts_ns) == [T0_NS, T0_NS + 10**9]


def test_empty_buffers() -> None:
    dec = decoder()
    for fmt in ("ndjson", "auto"):
        batch, rej = dec.decode(b"", fmt)
        assert len(batch) == 0 and rej == {}
    batch, rej = dec.decode(b"[]", "json")
    assert len(batch) == 0 and rej == {}


def test_unknown_format_is_a_programming_error() -> None:
    with pytest.raises(DecodeError, match=r"unknown_format: expected one of auto, ndjson, json, msgpack, "
                                          r"got 'yaml'"):
        decoder().decode(b"{}", "yaml")


def test_bad_field_names_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"\$\.events\.status: expected a field name or dotted path, "
                                          r"got 'http\.\.status'"):
        decoder(status_field="http..status")


def test_msgpack_timestamp_extension() -> None:
    dec = decoder()
    when = datetime(2023, 11, 14, 22, 13, 20, 123456, tzinfo=UTC)
    batch, rej = dec.decode(msgspec.msgpack.encode([{"ts": when, "service": "a"}]), "msgpack")
    assert rej == {}
    assert list(batch.ts_ns) == [T0_NS + 123_456_000]


# ---------------------------------------------------------------------------------------------
# Timestamps


@pytest.mark.parametrize(
    ("ts", "expected_ns"),
    [
        (T0_S, T0_NS),
        (T0_S * 1000 + 123, T0_NS + 123_000_000),
        (T0_S * 10**6 + 123_456, T0_NS + 123_456_000),
        (T0_NS + 123_456_789, T0_NS + 123_456_789),
        (1700000000.123, T0_NS + 123_000_000),
        (1700000000.000001, T0_NS + 1_000),
        (1700000000.999_9996, T0_NS + 10**9),  # rounds up to the next second
        (1700000000123.456, T0_NS + 123_456_000),
        (1700000000123456.5, T0_NS + 123_456_500),
        (99_999_999_999, 99_999_999_999 * 10**9),  # largest seconds value: 5138, beyond int64 ns
        (100_000_000_000, 100_000_000_000 * 10**6),  # smallest milliseconds value (1973-03-03)
        (10**14, 10**14 * 1000),
        (10**17, 10**17),
        (0, 0),
        ("2023-11-14T22:13:20Z", T0_NS),
        ("2023-11-14T22:13:20.1Z", T0_NS + 100_000_000),
        ("2023-11-14T22:13:20.123Z", T0_NS + 123_000_000),
        ("2023-11-14T22:13:20.123456Z", T0_NS + 123_456_000),
        ("2023-11-14T22:13:20.123456789Z", T0_NS + 123_456_789),
        ("2023-11-14T22:13:20.1234567891234Z", T0_NS + 123_456_789),
        ("2023-11-15T03:43:20.5+05:30", T0_NS + 500_000_000),
        ("2023-11-14T14:13:20-08:00", T0_NS),
        ("2023-11-14t22:13:20z", T0_NS),
        ("2023-11-14 22:13:20Z", T0_NS),
        ("2024-02-29T00:00:00Z", calendar.timegm((2024, 2, 29, 0, 0, 0)) * 10**9),
        ("1969-12-31T23:30:00-01:00", 30 * 60 * 10**9),
        ("2262-04-11T23:47:16.854775807Z", 2**63 - 1),
    ],
)
def test_timestamp_forms_give_exact_ns(ts: Any, expected_ns: int) -> None:
    dec = decoder()
    batch, rej = dec.decode(ndjson({"ts": ts, "service": "a"}), "ndjson")
    if expected_ns >= 2**63:
        assert rej == {"bad_ts": 1}
        return
    assert rej == {}
    assert int(batch.ts_ns[0]) == expected_ns


@pytest.mark.parametrize(
    "ts",
    [-1, -0.5, 2**63, 2**64 + 5, 10**30, 1e300, 10_000_000_000, True, [1], {"s": 1}, "yesterday",
     "2023-11-14T22:13:20", "2023-11-14T22:13:20.Z", "2023-02-29T00:00:00Z", "2023-13-01T00:00:00Z",
     "2023-11-14T24:00:00Z", "2023-11-14T22:60:00Z", "2023-11-14T22:13:60Z", "2023-11-14T22:13:20+24:00",
     "2023-11-14T22:13:20+01", " 2023-11-14T22:13:20Z", "2023-11-14T22:13:20Z ", "2023-11-14T22:13:20Z\u0000",
     "２023-11-14T22:13:20Z", "1969-12-31T23:59:59Z", "2262-04-11T23:47:16.854775808Z", ""],
)
def test_bad_timestamps_are_rejected(ts: Any) -> None:
    dec = decoder()
    batch, rej = dec.decode(ndjson({"ts": ts, "service": "a"}, {"ts": T0_S, "service": "a"}), "ndjson")
    assert rej == {"bad_ts": 1}
    assert list(batch.ts_ns) == [T0_NS]


@pytest.mark.parametrize(("unit", "value", "expected_ns"),
                         [("s", 5, 5 * 10**9), ("ms", 5, 5 * 10**6), ("us", 5, 5000), ("ns", 5, 5),
                          ("ms", T0_S, T0_S * 10**6), ("s", 1.5, 1_500_000_000)])
def test_fixed_ts_unit(unit: str, value: Any, expected_ns: int) -> None:
    dec = decoder(ts_unit=unit)
    batch, rej = dec.decode(ndjson({"ts": value, "service": "a"}), "ndjson")
    assert rej == {}
    assert int(batch.ts_ns[0]) == expected_ns


def test_mixed_timestamp_kinds_in_one_buffer() -> None:
    dec = decoder()
    data = ndjson({"ts": T0_S, "service": "a"}, {"ts": "2023-11-14T22:13:21Z", "service": "a"},
                  {"ts": 1700000002.5, "service": "a"}, {"service": "a"}, {"ts": T0_NS + 3 * 10**9,
                                                                           "service": "a"})
    batch, rej = dec.decode(data, "ndjson")
    assert rej == {"missing_ts": 1}
    assert list(batch.ts_ns) == [T0_NS, T0_NS + 10**9, T0_NS + 2_500_000_000, T0_NS + 3 * 10**9]


@st.composite
def rfc3339_texts(draw: st.DrawFn) -> tuple[str, int]:
    """A valid RFC 3339 time and its ns, computed with calendar.timegm (independent of the decoder)."""
    y = draw(st.integers(1970, 2261))
    mo = draw(st.integers(1, 12))
    d = draw(st.integers(1, calendar.monthrange(y, mo)[1]))
    h, mi, s = draw(st.integers(0, 23)), draw(st.integers(0, 59)), draw(st.integers(0, 59))
    frac = draw(st.text("0123456789", min_size=0, max_size=12))
    zone_min = draw(st.sampled_from([None, 0, 330, -480, 59, -(23 * 60 + 59), 23 * 60]))
    zone = "Z" if zone_min is None else f"{'+' if zone_min >= 0 else '-'}{abs(zone_min) // 60:02d}:" \
                                       f"{abs(zone_min) % 60:02d}"
    sep = draw(st.sampled_from("Tt "))
    text = f"{y:04d}-{mo:02d}-{d:02d}{sep}{h:02d}:{mi:02d}:{s:02d}{'.' + frac if frac else ''}{zone}"
    seconds = calendar.timegm((y, mo, d, h, mi, s)) - 60 * (zone_min or 0)
    return text, seconds * 10**9 + int((frac + "0" * 9)[:9])


@PROPERTY
@given(st.lists(rfc3339_texts(), min_size=1, max_size=20))
def test_rfc3339_against_calendar(cases: list[tuple[str, int]]) -> None:
    texts = [t for t, _ in cases]
    expected = [ns if 0 <= ns < 2**63 else None for _, ns in cases]
    assert [parse_rfc3339_ns(t) for t in texts] == expected
    ns, bad = rfc3339_column_ns(texts)
    assert [None if b else int(v) for v, b in zip(ns, bad, strict=True)] == expected


@PROPERTY
@given(rfc3339_texts(), st.data())
def test_rfc3339_vector_agrees_with_scalar_on_damaged_texts(
    case: tuple[str, int], data: st.DataObject
) -> None:
    text = case[0]
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(text)))
        repl = data.draw(st.sampled_from(["", "0", "9", "3", ":", "-", "T", "Z", "+", ".", " ", "x", "é",
                                          "1", "00", "\x00"]))
        text = text[:at] + repl + text[at + data.draw(st.integers(0, 2)):]
    scalar = parse_rfc3339_ns(text)
    if 20 <= len(text) <= 35:
        ns, ok = _rfc3339_vector([text], np.array([len(text)]))
        if ok[0]:  # the vector path may defer to the scalar one, never disagree with it
            assert int(ns[0]) == scalar
    col_ns, col_bad = rfc3339_column_ns([text])
    assert (None if col_bad[0] else int(col_ns[0])) == scalar


# ---------------------------------------------------------------------------------------------
# Field mapping


def test_field_mapping_with_nested_paths() -> None:
    dec = decoder(ts_field="time", service_field="resource.service", route_field="http.route",
                  method_field="http.method", status_field="http.status_code",
                  latency_field="http.duration_s", latency_unit="s", weight_field="n", labels_field="attrs")
    rec = {"time": "2023-11-14T22:13:20Z", "resource": {"service": "cart"},
           "http": {"route": "/c", "method": "GET", "status_code": 404, "duration_s": 0.25},
           "n": 2, "attrs": {"az": "b", "region": "eu"}, "ts": "ignored"}
    flat = {"time": T0_S, "resource.service": "cart", "http.status_code": 200}  # literal dotted keys win
    batch, rej = dec.decode(ndjson(rec, flat), "ndjson")
    assert rej == {}
    assert rows(dec, batch) == [
        (T0_NS, EventKey("cart", "/c", "GET", (("az", "b"), ("region", "eu"))), 404, 250_000.0, 2),
        (T0_NS, EventKey("cart"), 200, None, 1),
    ]


def test_renamed_plain_fields_take_the_struct_path() -> None:
    dec = decoder(ts_field="@timestamp", service_field="svc", status_field="code", latency_field="dur_us",
                  latency_unit="us")
    batch, rej = dec.decode(ndjson({"@timestamp": T0_S, "svc": "a", "code": 201, "dur_us": 7}), "ndjson")
    assert rej == {}
    assert rows(dec, batch) == [(T0_NS, EventKey("a"), 201, 7.0, 1)]


def test_nested_path_through_a_non_object_or_null() -> None:
    dec = decoder(status_field="http.status")
    batch, rej = dec.decode(ndjson({"ts": T0_S, "service": "a", "http": 5},
                                   {"ts": T0_S, "service": "a", "http": {}},
                                   {"ts": T0_S, "service": "a", "http": None}), "ndjson")
    assert rej == {"wrong_type": 1}
    assert list(batch.status) == [NO_STATUS, NO_STATUS]


def test_default_service() -> None:
    dec = decoder(default_service="frontend")
    batch, rej = dec.decode(ndjson({"ts": T0_S}, {"ts": T0_S, "service": "cart"},
                                   {"ts": T0_S, "service": None}), "ndjson")
    assert rej == {}
    assert [dec.keys.keys[k].service for k in batch.key] == ["frontend", "cart", "frontend"]


# ---------------------------------------------------------------------------------------------
# Rejections


BAD_LINES: list[tuple[bytes, str]] = [
    (b'{"ts": 1700000000, "service": "a"', "malformed_json"),
    (b"this is not json", "malformed_json"),
    (b'{"ts": 1700000000, "service": "a"} trailing', "malformed_json"),
    (b"[1, 2]", "not_an_object"),
    (b'"just a string"', "not_an_object"),
    (b"42", "not_an_object"),
    (b'{"service": "a"}', "missing_ts"),
    (b'{"ts": null, "service": "a"}', "missing_ts"),
    (b'{"ts": "nope", "service": "a"}', "bad_ts"),
    (b'{"ts": -5, "service": "a"}', "bad_ts"),
    (b'{"ts": true, "service": "a"}', "bad_ts"),
    (b'{"ts": 1700000000}', "missing_service"),
    (b'{"ts": 1700000000, "service": ""}', "missing_service"),
    (b'{"ts": 1700000000, "service": 7}', "wrong_type"),
    (b'{"ts": 1700000000, "service": "a", "status": "503"}', "wrong_type"),
    (b'{"ts": 1700000000, "service": "a", "status": 503.0}', "wrong_type"),
    (b'{"ts": 1700000000, "service": "a", "latency_ms": "fast"}', "wrong_type"),
    (b'{"ts": 1700000000, "service": "a", "weight": 1.5}', "wrong_type"),
    (b'{"ts": 1700000000, "service": "a", "labels": ["x"]}', "wrong_type"),
    (b'{"ts": 1700000000, "service": "a", "labels": {"x": 1}}', "wrong_type"),
    (b'{"ts": 1700000000, "service": "a", "route": false}', "wrong_type"),
    (b'{"ts": 1700000000, "service": "a", "status": 99}', "bad_status"),
    (b'{"ts": 1700000000, "service": "a", "status": 600}', "bad_status"),
    (b'{"ts": 1700000000, "service": "a", "status": 0}', "bad_status"),
    (b'{"ts": 1700000000, "service": "a", "latency_ms": -0.1}', "bad_latency"),
    (b'{"ts": 1700000000, "service": "a", "weight": 0}', "bad_weight"),
    (b'{"ts": 1700000000, "service": "a", "weight": -2}', "bad_weight"),
    (b'{"ts": 1700000000, "service": "a", "weight": 1099511627777}', "bad_weight"),
]


def test_every_rejection_reason_is_counted_and_good_lines_survive() -> None:
    good = [ndjson({"ts": T0_S + i, "service": "a", "status": 200}).rstrip()
            for i in range(len(BAD_LINES) + 1)]
    lines = [x for pair in zip(good, [bad for bad, _ in BAD_LINES], strict=False) for x in pair] + [good[-1]]
    dec = decoder()
    batch, rej = dec.decode(b"\n".join(lines) + b"\n", "ndjson")
    expected: dict[str, int] = {}
    for _, reason in BAD_LINES:
        expected[reason] = expected.get(reason, 0) + 1
    assert rej == expected
    assert list(batch.ts_ns) == [(T0_S + i) * 10**9 for i in range(len(good))]


@pytest.mark.parametrize(("line", "reason"), BAD_LINES)
def test_each_bad_record_alone(line: bytes, reason: str) -> None:
    batch, rej = decoder().decode(line, "ndjson")
    assert rej == {reason: 1} and len(batch) == 0


@pytest.mark.parametrize(("line", "reason"), [(b, r) for b, r in BAD_LINES if not r.startswith("malformed")])
def test_bad_records_in_json_arrays_and_msgpack(line: bytes, reason: str) -> None:
    bad = json.loads(line)
    good = {"ts": T0_S, "service": "a"}
    dec = decoder()
    for fmt, data in (("json", json.dumps([good, bad, good]).encode()),
                      ("msgpack", msgspec.msgpack.encode([good, bad, good]))):
        batch, rej = dec.decode(data, fmt)
        assert rej == {reason: 1}, fmt
        assert list(batch.ts_ns) == [T0_NS, T0_NS], fmt
    batch, rej = dec.decode_records([good, bad])
    assert rej == {reason: 1} and len(batch) == 1


def test_truncated_documents_count_once() -> None:
    dec = decoder()
    _, rej = dec.decode(b'[{"ts": 1700000000, "service": "a"}, {"ts": 17', "json")
    assert rej == {"malformed_json": 1}
    _, rej = dec.decode(msgspec.msgpack.encode([{"ts": T0_S, "service": "a"}])[:-3], "msgpack")
    assert rej == {"malformed_msgpack": 1}
    _, rej = dec.decode(b'"text"', "json")
    assert rej == {"not_an_object": 1}


def test_nan_and_infinite_latency_from_msgpack() -> None:
    dec = decoder()
    data = msgspec.msgpack.encode([{"ts": T0_S, "service": "a", "latency_ms": math.nan},
                                   {"ts": T0_S, "service": "a", "latency_ms": math.inf},
                                   {"ts": T0_S, "service": "a", "latency_ms": 1e308},
                                   {"ts": math.nan, "service": "a"},
                                   {"ts": T0_S, "service": "a", "latency_ms": 2.5}])
    batch, rej = dec.decode(data, "msgpack")
    assert rej == {"bad_latency": 3, "bad_ts": 1}  # 1e308 ms overflows to infinity in microseconds
    assert list(batch.latency_us) == [2500.0]


def test_truncated_last_line_is_counted() -> None:
    full = ndjson(*({"ts": T0_S + i, "service": "a"} for i in range(50)))
    dec = decoder()
    batch, rej = dec.decode(full[:-7], "ndjson")
    assert rej == {"malformed_json": 1}
    assert len(batch) == 49


def test_one_bad_line_in_a_large_buffer() -> None:
    records = [{"ts": T0_S + i, "service": f"s{i % 3}"} for i in range(20_000)]
    data = bytearray(ndjson(*records))
    at = len(data) // 2
    at = data.index(b"\n", at) + 1
    data[at:at + 1] = b"#"  # spoil the first byte of one line
    dec = decoder()
    batch, rej = dec.decode(bytes(data), "ndjson")
    assert rej == {"malformed_json": 1}
    assert len(batch) == 19_999
    assert np.all(np.diff(batch.ts_ns) > 0)  # order kept across the block fallback


# ---------------------------------------------------------------------------------------------
# Keys, weights, latency units


def test_keys_are_interned_in_the_shared_table() -> None:
    table = KeyTable()
    pre = table.intern(EventKey("cart", "/c", "GET"))
    a, b = decoder(table), decoder(table, format="msgpack")
    batch_a, _ = a.decode(ndjson({"ts": T0_S, "service": "x"}, {"ts": T0_S, "service": "cart", "route": "/c",
                                                                "method": "GET"}), "ndjson")
    batch_b, _ = b.decode(msgspec.msgpack.encode([{"ts": T0_S, "service": "cart", "route": "/c",
                                                   "method": "GET"}, {"ts": T0_S, "service": "x"}]))
    x = table.intern(EventKey("x"))
    assert list(batch_a.key) == [x, pre]
    assert list(batch_b.key) == [pre, x]
    assert len(table) == 2


def test_labels_order_and_null_fields_share_a_key() -> None:
    dec = decoder()
    batch, rej = dec.decode(ndjson(
        {"ts": T0_S, "service": "a", "labels": {"b": "2", "a": "1"}},
        {"ts": T0_S, "service": "a", "labels": {"a": "1", "b": "2"}},
        {"ts": T0_S, "service": "a", "route": None, "labels": {}},
        {"ts": T0_S, "service": "a", "route": ""},
    ), "ndjson")
    assert rej == {}
    assert batch.key[0] == batch.key[1] != batch.key[2] == batch.key[3]
    assert dec.keys.keys[batch.key[0]] == EventKey("a", "", "", (("a", "1"), ("b", "2")))


def test_new_keys_after_warm_up_match_a_fresh_decoder() -> None:
    """Known values decode through Literal types; new ones must still come out right."""
    warm = decoder()
    buffers = [ndjson(*({"ts": T0_S + i, "service": f"s{(i * b) % (b + 1)}", "route": f"/r{i % (b + 2)}",
                         "method": "GET" if i % 2 else None} for i in range(40))) for b in range(8)]
    buffers.append(ndjson({"ts": T0_S, "service": "s1", "status": 700}, {"ts": T0_S, "service": "new"}))
    for data in buffers:
        got, rej = warm.decode(data, "ndjson")
        fresh = decoder()
        want, want_rej = fresh.decode(data, "ndjson")
        assert rows(warm, got) == rows(fresh, want)
        assert rej == want_rej


def test_learned_integer_timestamps_give_way_to_other_kinds() -> None:
    """After buffers of integer ``ts`` the known decoder takes ints only; other kinds still decode right."""
    warm = decoder()
    ints = ndjson(*({"ts": T0_S + i, "service": "a"} for i in range(20)))

    def same_as_fresh(data: bytes) -> None:
        got, rej = warm.decode(data, "ndjson")
        fresh = decoder()
        want, want_rej = fresh.decode(data, "ndjson")
        assert rows(warm, got) == rows(fresh, want), data
        assert rej == want_rej, data

    for _ in range(3):
        same_as_fresh(ints)
    assert warm._known_int_ts  # the int-only decoder is in use
    same_as_fresh(ndjson({"ts": T0_S * 10**9 + 7, "service": "a"}, {"ts": T0_S * 1000 + 7, "service": "a"}))
    assert warm._known_int_ts  # still: every unit is an int
    # Ints beyond int64 pass msgspec's int (up to uint64) and go the general way for this buffer.
    same_as_fresh(ndjson({"ts": 2**63, "service": "a"}, {"ts": 2**64 - 1, "service": "a"},
                         {"ts": -5, "service": "a"}))
    buffers = [
        ndjson({"ts": T0_S + 0.25, "service": "a"}, {"ts": T0_S, "service": "a"}),
        ndjson({"ts": "2023-11-14T22:13:20.5Z", "service": "a"}),
        ndjson({"ts": None, "service": "a"}, {"service": "a"}, {"ts": True, "service": "a"}),
        ints,
    ]
    for data in buffers:
        same_as_fresh(data)


def test_many_distinct_routes_stay_correct(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("engine.events._LITERAL_MAX", 5)
    dec = decoder()
    for b in range(4):
        data = ndjson(*({"ts": T0_S, "service": "a", "route": f"/p/{b}/{i}"} for i in range(4)))
        batch, rej = dec.decode(data, "ndjson")
        assert rej == {}
        assert [dec.keys.keys[k].route for k in batch.key] == [f"/p/{b}/{i}" for i in range(4)]


def test_weights() -> None:
    dec = decoder()
    batch, rej = dec.decode(ndjson({"ts": T0_S, "service": "a"}, {"ts": T0_S, "service": "a", "weight": 7},
                                   {"ts": T0_S, "service": "a", "weight": None},
                                   {"ts": T0_S, "service": "a", "weight": MAX_WEIGHT}), "ndjson")
    assert rej == {}
    assert list(batch.weight) == [1, 7, 1, MAX_WEIGHT]


@pytest.mark.parametrize(("unit", "value", "expected_us"),
                         [("ms", 41.7, 41700.0), ("ms", 3, 3000.0), ("s", 0.25, 250_000.0), ("s", 2, 2e6),
                          ("us", 17.5, 17.5), ("ms", 0, 0.0)])
def test_latency_units(unit: str, value: float, expected_us: float) -> None:
    dec = decoder(latency_unit=unit)
    batch, rej = dec.decode(ndjson({"ts": T0_S, "service": "a", "latency_ms": value},
                                   {"ts": T0_S, "service": "a", "latency_ms": None}), "ndjson")
    assert rej == {}
    assert batch.latency_us[0] == pytest.approx(expected_us, rel=1e-15)
    assert math.isnan(batch.latency_us[1])


# ---------------------------------------------------------------------------------------------
# The Struct path and the dict path agree


FIELD_VALUES = {
    "ts": st.one_of(st.integers(-5, 2**64), st.floats(allow_nan=False, allow_infinity=False), st.sampled_from(
        ["2023-11-14T22:13:20.5Z", "2023-11-14T22:13:20+01:00", "bad", "2023-02-30T00:00:00Z"]), st.none()),
    "service": st.one_of(st.sampled_from(["a", "b", ""]), st.none(), st.integers(0, 3)),
    "route": st.one_of(st.sampled_from(["/x", "/y"]), st.none(), st.just(1)),
    "method": st.one_of(st.sampled_from(["GET", "POST"]), st.none()),
    "status": st.one_of(st.integers(0, 700), st.none(), st.just("200")),
    "latency_ms": st.one_of(st.floats(-1, 1e6, allow_nan=False), st.integers(-3, 5000), st.none()),
    "weight": st.one_of(st.integers(-1, 10), st.none(), st.just(2.0)),
    "labels": st.one_of(st.none(), st.dictionaries(st.sampled_from("xyz"), st.sampled_from(["1", "2"]),
                                                   max_size=2), st.just({"x": 1})),
}
RECORDS = st.lists(st.fixed_dictionaries({}, optional=FIELD_VALUES), max_size=25)


@PROPERTY
@given(RECORDS)
def test_struct_path_equals_dict_path(records: list[dict[str, Any]]) -> None:
    fast, generic = decoder(), decoder()
    b1, r1 = fast.decode(ndjson(*records), "ndjson")
    b2, r2 = generic.decode_records(records)
    assert r1 == r2
    assert rows(fast, b1) == rows(generic, b2)
    assert sum(r1.values()) + len(b1) == len(records)  # nothing lost silently


@PROPERTY
@given(RECORDS, st.integers(1, 5))
def test_whole_buffer_equals_parts(records: list[dict[str, Any]], parts: int) -> None:
    whole = decoder()
    b1, r1 = whole.decode(ndjson(*records), "ndjson")
    split = decoder()
    got: list[Any] = []
    total: dict[str, int] = {}
    for i in range(parts):
        b, r = split.decode(ndjson(*records[i::parts]), "ndjson")
        got.extend(rows(split, b))
        for k, v in r.items():
            total[k] = total.get(k, 0) + v
    assert r1 == total
    assert sorted(got, key=repr) == sorted(rows(whole, b1), key=repr)
