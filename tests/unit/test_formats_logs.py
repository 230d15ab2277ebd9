"""Access log formats on real samples: Apache (elastic/examples), nginx (written by nginx), Envoy, ECS."""

from __future__ import annotations

import json
import math
import re
import typing
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine.batch import EventKey, KeyTable
from engine.config import EventsConfig, parse_config
from engine.errors import ConfigError, DecodeError
from engine.events import EventDecoder
from engine.formats.registry import ALL_FORMATS, detect
from engine.io.files import FileSource

DATA = Path(__file__).resolve().parents[1] / "data"
APACHE = DATA / "elastic-apache-logs" / "apache_logs"
NGINX_JSON = DATA / "nginx" / "access.json.log"
NGINX_COMBINED = DATA / "nginx" / "access.combined.log"
ENVOY = DATA / "formats" / "envoy.log"
ECS = DATA / "formats" / "ecs.ndjson"
APACHE_CUT_LINE = 8899  # 1-based: its User-Agent ends without the closing quote


def decoder(table: KeyTable | None = None, **cfg: Any) -> EventDecoder:
    cfg.setdefault("default_service", "site")
    return EventDecoder(EventsConfig(**cfg), table if table is not None else KeyTable())


def rows(dec: EventDecoder, batch: Any) -> list[tuple[Any, ...]]:
    """(ts_ns, key, status, latency_us or None, weight) per event."""
    return [(int(t), dec.keys.keys[k], int(s), None if math.isnan(lat) else round(float(lat), 3), int(w))
            for t, k, s, lat, w in zip(batch.ts_ns, batch.key, batch.status, batch.latency_us, batch.weight,
                                       strict=True)]


def clf_ns(text: str) -> int:
    return int(datetime.strptime(text, "%d/%b/%Y:%H:%M:%S %z").timestamp()) * 10**9


# ---------------------------------------------------------------------------------------------
# Apache combined: the real log


def apache_reference() -> list[tuple[int, str, str, int]]:
    """(ts_ns, method, path, status) of each complete line, parsed with str.split and strptime."""
    out = []
    for line in APACHE.read_text(encoding="latin-1").splitlines():
        if line.count('"') % 2:  # an unbalanced quote: the line is cut
            continue
        head, request, rest = line.split('"', 2)
        stamp = head[head.index("[") + 1 : head.index("]")]
        method, target = request.split(" ")[:2]
        out.append((clf_ns(stamp), method, target.split("?")[0], int(rest.split()[0])))
    return out


def test_apache_real_log_parses_every_complete_line() -> None:
    lines = APACHE.read_bytes().split(b"\n")
    assert len([x for x in lines if x]) == 10_000
    assert lines[APACHE_CUT_LINE - 1].endswith(b"google.com/bot.html")  # the cut line
    dec = decoder()
    batch, rej = dec.decode(APACHE.read_bytes(), "apache_combined")
    assert len(batch) == 9_999
    assert rej == {"malformed_line": 1}
    got = [(t, k.method, k.route, s) for t, k, s, _, _ in rows(dec, batch)]
    assert got == apache_reference()
    assert np.isnan(batch.latency_us).all()  # no %D in this log
    assert all(k.service == "site" for k in dec.keys.keys)


def test_apache_timestamps_are_out_of_order_within_a_minute() -> None:
    dec = decoder()
    batch, _ = dec.decode(APACHE.read_bytes(), "apache_combined")
    steps = np.diff(batch.ts_ns)
    assert (steps < 0).sum() > 1000  # kept in file order, not sorted
    assert -steps.min() < 60 * 10**9


def test_apache_in_small_chunks_equals_one_buffer() -> None:
    whole, rej_whole = decoder().decode(APACHE.read_bytes(), "apache_combined")
    dec = decoder()
    parts = [dec.decode(chunk, "apache_combined") for chunk in FileSource(APACHE, chunk_bytes=50_000)]
    assert len(parts) > 20
    assert sum(len(b) for b, _ in parts) == len(whole)
    assert sum((r for _, r in parts), Counter()) == rej_whole
    assert np.array_equal(np.concatenate([b.ts_ns for b, _ in parts]), whole.ts_ns)


def test_apache_backtest_availability() -> None:
    from engine.backtest import run_backtest

    cfg = parse_config({
        "slos": [{"name": "site-availability", "service": "site", "objective": 99.0,
                  "sli": {"availability": {"bad_status": ["5xx"]}}}],
        "events": {"format": "apache_combined", "default_service": "site"},
        "engine": {"step_s": 60, "allowed_lateness_s": 60, "max_late_s": 600},
    })
    result = run_backtest(cfg, [str(APACHE)], sample_s=6 * 3600)
    (series,) = result.series
    reference = apache_reference()
    n_5xx = sum(1 for r in reference if r[3] >= 500)
    assert n_5xx == 3
    assert series.totals == {"events": 9_999, "bad": n_5xx}
    assert result.rejections == {"malformed_line": 1}
    availability = 1 - series.totals["bad"] / series.totals["events"]
    assert availability == pytest.approx(0.9997, abs=1e-4)
    assert not [a for a in series.events if a.severity == "page"]  # 3 errors in 4 days: no page


def test_apache_percent_d_is_microseconds_and_must_be_an_integer() -> None:
    base = b'10.0.0.1 - - [17/May/2015:10:05:03 +0000] "GET /a?x=1 HTTP/1.1" 200 12 "-" "ua"'
    dec = decoder()
    batch, rej = dec.decode(base + b" 1534\n" + base + b" 15.5\n" + base + b"\n", "apache_combined")
    assert rej == {"bad_latency": 1}
    assert [r[3] for r in rows(dec, batch)] == [1534.0, None]
    assert rows(dec, batch)[0][1] == EventKey("site", "/a", "GET")


# ---------------------------------------------------------------------------------------------
# nginx: a JSON and a combined log written by real nginx for the same 300 requests


def nginx_json_reference() -> list[dict[str, Any]]:
    return [json.loads(line) for line in NGINX_JSON.read_text().splitlines()]


def test_nginx_json_real_log() -> None:
    ref = nginx_json_reference()
    dec = decoder()
    batch, rej = dec.decode(NGINX_JSON.read_bytes(), "nginx_json")
    assert rej == {}
    got = rows(dec, batch)
    assert len(got) == len(ref) == 300
    for r, (ts, key, status, lat_us, weight) in zip(ref, got, strict=True):
        sec, ms = r["msec"].split(".")
        assert ts == int(sec) * 10**9 + int(ms) * 10**6
        assert key == EventKey(r["host"], r["uri"], r["request_method"])
        assert status == int(r["status"])
        assert lat_us == pytest.approx(float(r["request_time"]) * 1e6)
        assert weight == 1
    statuses = Counter(int(r["status"]) for r in ref)
    assert set(statuses) >= {200, 404, 500, 503}  # the sample has failures on purpose


def test_nginx_combined_agrees_with_the_json_log_of_the_same_requests() -> None:
    ref = nginx_json_reference()
    dec = decoder()
    batch, rej = dec.decode(NGINX_COMBINED.read_bytes(), "nginx_combined")
    assert rej == {}
    got = rows(dec, batch)
    assert [(k.route, k.method, s, lat) for _, k, s, lat, _ in got] == [
        (r["uri"], r["request_method"], int(r["status"]), round(float(r["request_time"]) * 1e6, 3))
        for r in ref]
    # $time_local is $msec cut to the second (both are taken when the request is logged)
    assert [t for t, *_ in got] == [int(r["msec"].split(".")[0]) * 10**9 for r in ref]


def test_nginx_json_quoted_bare_and_fallback_fields() -> None:
    lines = [
        {"msec": 1700000000.5, "status": 200, "request_time": 0.25, "host": "a", "uri": "/x"},
        {"msec": "1700000001.000", "status": "502", "request_time": "", "upstream_response_time":
         "0.100, 0.020 : 0.003", "host": "a", "request": "PUT /y?z=1 HTTP/1.1"},
        {"time_iso8601": "2023-11-14T22:13:22+00:00", "status": "200", "host": "a", "uri": "/x",
         "upstream_response_time": "-"},
    ]
    dec = decoder()
    batch, rej = dec.decode(b"".join(json.dumps(x).encode() + b"\n" for x in lines), "nginx_json")
    assert rej == {}
    assert rows(dec, batch) == [
        (1_700_000_000_500_000_000, EventKey("a", "/x", ""), 200, 250_000.0, 1),
        (1_700_000_001_000_000_000, EventKey("a", "/y", "PUT"), 502, 123_000.0, 1),
        (1_700_000_002_000_000_000, EventKey("a", "/x", ""), 200, None, 1),
    ]


def test_nginx_json_rejections_by_reason() -> None:
    good = {"msec": "1700000000.000", "status": "200", "request_time": "0.001", "host": "a", "uri": "/"}
    bad = [
        b'{"msec": "1700000000.000", "status": "200"',  # cut
        b"[1, 2]",
        b'{"msec": {"s": 1}, "status": "200"}',
        json.dumps(dict(good, msec=None)).encode(),
        json.dumps(dict(good, msec="soon")).encode(),
        json.dumps(dict(good, status=None)).encode(),
        json.dumps(dict(good, status="2xx")).encode(),
        json.dumps(dict(good, status="0")).encode(),
        json.dumps(dict(good, status="700")).encode(),
        json.dumps(dict(good, request_time="-1")).encode(),
        json.dumps(dict(good, request_time=None, upstream_response_time="0.1, x")).encode(),
        json.dumps(dict(good, host=None)).encode(),
    ]
    data = b"\n".join([json.dumps(good).encode(), *bad, json.dumps(good).encode()]) + b"\n"
    batch, rej = decoder(default_service=None).decode(data, "nginx_json")
    assert len(batch) == 2
    assert rej == {"malformed_json": 1, "not_an_object": 1, "wrong_type": 1, "missing_ts": 1, "bad_ts": 1,
                   "missing_status": 1, "bad_status": 2, "no_response": 1, "bad_latency": 2,
                   "missing_service": 1}


def test_combined_rejections_by_reason() -> None:
    ok = b'1.2.3.4 - - [17/May/2015:10:05:03 +0000] "GET / HTTP/1.1" 200 5 "-" "ua" 0.010'
    lines = [
        ok,
        ok.replace(b"17/May/2015", b"17/Mai/2015"),
        ok.replace(b"17/May/2015", b"31/Apr/2015"),
        ok.replace(b" 200 ", b" 2x0 "),
        ok.replace(b" 200 ", b" 000 "),
        ok.replace(b" 0.010", b" 1e"),
        ok[:-14],  # cut inside the User-Agent
        b"not a log line",
        b"   ",
        # no request line: still an event
        b'1.2.3.4 - - [17/May/2015:10:05:04 +0000] "-" 408 0 "-" "-" 0.000',
    ]
    dec = decoder()
    batch, rej = dec.decode(b"\r\n".join(lines) + b"\r\n", "nginx_combined")
    assert rej == {"bad_ts": 2, "bad_status": 1, "no_response": 1, "bad_latency": 1, "malformed_line": 2}
    got = [(k.route, k.method, s) for _, k, s, _, _ in rows(dec, batch)]
    assert got == [("/", "GET", 200), ("", "", 408)]


def test_clf_time_zones_and_escaped_quotes() -> None:
    line = (b'h - u [01/Mar/2024:00:30:00 +0130] "GET /q\\"x HTTP/1.1" 200 1 "-" "say \\"hi\\"" 0.5\n'
            b'h - u [29/Feb/2024:23:59:59 -0800] "POST /p HTTP/1.1" 201 1 "r" "ua" 0.5\n')
    dec = decoder()
    batch, rej = dec.decode(line, "nginx_combined")
    assert rej == {}
    assert [r[0] for r in rows(dec, batch)] == [clf_ns("01/Mar/2024:00:30:00 +0130"),
                                                clf_ns("29/Feb/2024:23:59:59 -0800")]
    assert dec.keys.keys[int(batch.key[0])].route == "/q"  # the path stops at the escape


# ---------------------------------------------------------------------------------------------
# Envoy


ENVOY_LINE = re.compile(r'^\[(\S+)\] "(\S+) (\S+) \S+" (\d+) (\S+) \d+ \d+ (\d+) \S+ "[^"]*" "[^"]*" "[^"]*" '
                        r'"([^"]*)" "[^"]*"$')


def test_envoy_default_format() -> None:
    from engine.events import parse_rfc3339_ns

    expected, no_response = [], 0
    for line in ENVOY.read_text().splitlines():
        m = ENVOY_LINE.match(line)
        assert m, line
        stamp, method, target, code, _flags, duration, authority = m.groups()
        if code == "0":
            no_response += 1
            continue
        key = EventKey(authority, target.split("?")[0], method)
        expected.append((parse_rfc3339_ns(stamp), key, int(code), float(duration) * 1e3, 1))
    dec = decoder()
    batch, rej = dec.decode(ENVOY.read_bytes(), "envoy")
    assert rows(dec, batch) == expected
    assert no_response > 0 and rej == {"no_response": no_response}
    assert {s for _, _, s, _, _ in expected} >= {200, 503, 504}


def test_envoy_rejections_by_reason() -> None:
    ok = (b'[2016-04-15T20:17:00.310Z] "POST /api/v1/locations HTTP/2" 204 - 154 0 226 100 "10.0.35.28" '
          b'"nsq2http" "cc21d9b0-cf5c-432b-8c7e-98aeb7988cd2" "locations" "tcp://10.0.2.1:80"')
    data = b"\n".join([ok, ok.replace(b"20:17:00", b"25:17:00"), ok.replace(b" 204 ", b" - "),
                       ok.replace(b" 226 ", b" -3 "), ok[:-20], ok.replace(b'"locations"', b'"-"')])
    dec = decoder(default_service=None)
    batch, rej = dec.decode(data, "envoy")
    assert rej == {"bad_ts": 1, "missing_status": 1, "bad_latency": 1, "malformed_line": 1,
                   "missing_service": 1}
    assert rows(dec, batch) == [(1460751420310 * 10**6, EventKey("locations", "/api/v1/locations", "POST"),
                                 204, 226_000.0, 1)]


# ---------------------------------------------------------------------------------------------
# ECS


def test_ecs_nested_and_dotted_documents() -> None:
    from engine.events import parse_rfc3339_ns
    from engine.formats.registry import lookup

    docs = [json.loads(line) for line in ECS.read_text().splitlines()]
    assert {"http.response.status_code" in d for d in docs} == {True, False}  # both spellings
    dec = decoder()
    batch, rej = dec.decode(ECS.read_bytes(), "ecs_json")
    assert rej == {}
    assert rows(dec, batch) == [
        (parse_rfc3339_ns(d["@timestamp"]), EventKey(lookup(d, "service.name"), lookup(d, "url.path"),
                                                     lookup(d, "http.request.method")),
         lookup(d, "http.response.status_code"), lookup(d, "event.duration") / 1e3, 1)
        for d in docs]


def test_ecs_rejections_and_mixed_keys() -> None:
    lines = [
        {"@timestamp": "2024-05-09T12:00:00Z", "http.response": {"status_code": 200},
         "url": {"original": "https://shop.example/cart?id=1"}},
        {"@timestamp": "2024-05-09T12:00:00Z", "service": {"name": "a"}},
        {"@timestamp": "yesterday", "http": {"response": {"status_code": 200}}, "service.name": "a"},
        {"http": {"response": {"status_code": 200}}, "service.name": "a"},
        {"@timestamp": "2024-05-09T12:00:00Z", "http": {"response": {"status_code": [200]}}},
    ]
    dec = decoder(default_service=None)
    batch, rej = dec.decode(b"\n".join(json.dumps(x).encode() for x in lines), "ecs_json")
    assert rej == {"missing_status": 1, "bad_ts": 1, "missing_ts": 1, "wrong_type": 1}
    assert [r[1:3] for r in rows(dec, batch)] == [(EventKey("shop.example", "/cart", ""), 200)]


# ---------------------------------------------------------------------------------------------
# Registry, detection, configuration


@pytest.mark.parametrize(("path", "name"), [
    (APACHE, "apache_combined"), (NGINX_JSON, "nginx_json"), (NGINX_COMBINED, "nginx_combined"),
    (ENVOY, "envoy"), (ECS, "ecs_json"),
    (DATA / "formats" / "k6.json", "k6_json"), (DATA / "formats" / "otlp.jsonl", "otlp_json"),
    (DATA / "formats" / "otlp-pretty.json", "otlp_json"),
    (DATA / "formats" / "aggregates.csv", "aggregates_csv"),
    (DATA / "prometheus" / "query_range.json", "prometheus_json"),
    (DATA / "prometheus" / "exposition.prom", "prometheus_text"),
    (DATA / "prometheus" / "openmetrics.txt", "openmetrics"),
])
def test_detect_recognises_every_sample(path: Path, name: str) -> None:
    assert detect(path.read_bytes()) == name


def test_detect_falls_back_to_sloburn_events_and_refuses_unknown_text() -> None:
    assert detect(b'{"ts": 1700000000, "service": "a"}\n') == "ndjson"
    assert detect(b'{"total": 3, "bad": 1, "ts": 1}\n') == "aggregates_ndjson"
    with pytest.raises(DecodeError, match=r"unrecognised_format: expected a line of a registered format"):
        detect(b"hello world\n")


def test_detect_format_decodes_and_keeps_its_choice() -> None:
    dec = decoder(format="detect")
    data = APACHE.read_bytes()
    first, rej1 = dec.decode(data[:100_000].rsplit(b"\n", 1)[0] + b"\n")
    assert len(first) > 300 and rej1 == {}
    junk, rej2 = dec.decode(b"hello world\n")  # decided: apache_combined from now on
    assert len(junk) == 0 and rej2 == {"malformed_line": 1}
    fresh = decoder(format="detect")
    assert fresh.decode(b"hello\n\nworld\n")[1] == {"unrecognised_format": 2}


def test_every_format_name_is_accepted_everywhere() -> None:
    from engine.cli import build_parser

    literal = typing.get_args(typing.get_type_hints(EventsConfig)["format"])
    assert set(literal) == set(ALL_FORMATS)
    backtest = build_parser()._subparsers._group_actions[0].choices["backtest"]  # type: ignore[union-attr]
    (fmt,) = [a for a in backtest._actions if a.dest == "format"]
    assert set(fmt.choices) == set(ALL_FORMATS)  # type: ignore[arg-type]


def test_config_format_is_used_and_unknown_names_are_refused() -> None:
    dec = decoder(format="apache_combined")
    batch, _ = dec.decode(APACHE.read_bytes()[:5000].rsplit(b"\n", 1)[0])
    assert len(batch) > 10
    with pytest.raises(DecodeError, match=r"unknown_format: expected one of auto, ndjson, json, msgpack, "
                                          r"got 'syslog' \(also accepted: .*nginx_json"):
        dec.decode(b"x", "syslog")
    with pytest.raises(ConfigError, match=r"\$\.events\.format: expected one of .* got 'syslog'"):
        decoder(format="syslog")
