"""Per-interval aggregates, Prometheus counter history (a real range query) and mapping files."""

from __future__ import annotations

import csv
import itertools
import json
import math
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine.batch import NO_STATUS, EventKey, KeyTable
from engine.config import EventsConfig, parse_config
from engine.errors import ConfigError
from engine.events import EventDecoder, parse_rfc3339_ns

DATA = Path(__file__).resolve().parents[1] / "data"
AGGREGATES = DATA / "formats" / "aggregates.csv"
PROM = DATA / "prometheus"
RANGE = PROM / "query_range.json"
MAPPING = PROM / "mapping.yaml"


def decoder(**cfg: Any) -> EventDecoder:
    return EventDecoder(EventsConfig(**cfg), KeyTable())


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def weights(dec: EventDecoder, batch: Any) -> Counter[tuple[Any, ...]]:
    """Total weight by (ts, key, status, latency_us or None)."""
    out: Counter[tuple[Any, ...]] = Counter()
    columns = (batch.ts_ns, batch.key, batch.status, batch.latency_us, batch.weight)
    for t, k, s, lat, w in zip(*columns, strict=True):
        out[(int(t), dec.keys.keys[k], int(s), None if math.isnan(lat) else float(lat))] += int(w)
    return out


# ---------------------------------------------------------------------------------------------
# Per-interval aggregates


def test_aggregates_csv_become_weighted_events() -> None:
    dec = decoder()
    batch, rej = dec.decode(AGGREGATES.read_bytes(), "aggregates_csv")
    assert rej == {}
    got = weights(dec, batch)
    with AGGREGATES.open() as f:
        table = list(csv.DictReader(f))
    assert len(table) == 120
    for row in table:
        ts, key = parse_rfc3339_ns(row["ts"]), EventKey(row["service"])
        total, bad = int(row["total"]), int(row["bad"])
        assert got[(ts, key, 200, None)] == total - bad
        assert got[(ts, key, 500, None)] == bad
        # Latency-only events: the requests at or under each bound add up to the bucket's count.
        lat = {lat: w for (t, k, s, lat), w in got.items() if t == ts and k == key and s == NO_STATUS}
        assert sum(lat.values()) == total
        for bound_ms in (100, 300, 1000):
            assert sum(w for v, w in lat.items() if v <= bound_ms * 1e3) == int(row[f"le_{bound_ms}"])
    assert batch.weight.min() >= 1


def test_aggregates_ndjson_equal_the_csv() -> None:
    with AGGREGATES.open() as f:
        lines = [json.dumps({"ts": r["ts"], "service": r["service"], "total": int(r["total"]),
                             "bad": int(r["bad"]), "latency_buckets_ms": {
                                 b: int(r[f"le_{b}"]) for b in ("1000", "100", "300")}}).encode()
                 for r in csv.DictReader(f)]
    a, b = decoder(), decoder()
    from_csv, _ = a.decode(AGGREGATES.read_bytes(), "aggregates_csv")
    from_json, rej = b.decode(b"\n".join(lines), "aggregates_ndjson")
    assert rej == {}
    assert weights(a, from_csv) == weights(b, from_json)


def test_aggregates_rejections_by_reason() -> None:
    text = "\n".join([
        "1700000060,a,10,1,5",       # before any header
        "ts,service,total,bad,le_100",
        "1700000060,a,10,1,5",
        "1700000120,a,10,11,5",      # bad > total
        "1700000180,a,ten,1,5",      # not a count
        "1700000240,a,10,1,12",      # bucket above total
        "1700000300,a,10,1",         # short row
        "yesterday,a,10,1,5",
        ",a,10,1,5",
        "1700000360,,10,1,5",        # no service
        "1700000420,a,0,0,0",        # an empty interval emits nothing
        "ts,service,total,bad,le_100,le_50",  # a second file: new header
        "1700000480,a,10,1,5,6",     # decreasing buckets
    ])
    dec = decoder(ts_unit="s")
    batch, rej = dec.decode(text.encode(), "aggregates_csv")
    assert rej == {"bad_header": 1, "bad_count": 2, "bad_histogram": 2, "malformed_line": 1, "bad_ts": 1,
                   "missing_ts": 1, "missing_service": 1}
    got = weights(dec, batch)
    t = 1_700_000_060 * 10**9
    assert got == {(t, EventKey("a"), 200, None): 9, (t, EventKey("a"), 500, None): 1,
                   (t, EventKey("a"), NO_STATUS, 100_000.0): 5,
                   (t, EventKey("a"), NO_STATUS, math.nextafter(100_000.0, math.inf)): 5}
    bad_bound = decoder().decode(b"ts,total,bad,le_fast\n1700000060,1,0,1\n", "aggregates_csv")[1]
    assert bad_bound == {"bad_header": 1}


# ---------------------------------------------------------------------------------------------
# Prometheus: a range query answered by a real Prometheus 2.42 (counter reset included)


def prometheus_reference() -> tuple[Counter[tuple[Any, ...]], int]:
    """Increases per (ms, handler, status or latency) computed here, and the samples no selector takes."""
    doc = json.loads(RANGE.read_text())
    requests: Counter[tuple[Any, ...]] = Counter()
    buckets: dict[tuple[Any, ...], dict[str, float]] = defaultdict(dict)
    unmapped = 0
    for series in doc["data"]["result"]:
        m, values = series["metric"], series["values"]
        if m["__name__"].endswith("_bucket") and m["le"] not in ("0.3", "+Inf"):
            unmapped += len(values)
            continue
        for (_, prev), (ts, value) in itertools.pairwise(values):
            inc = float(value) - float(prev) if float(value) >= float(prev) else float(value)
            t_ms = round(ts * 1000)
            if m["__name__"] == "http_requests_total":
                requests[(t_ms, m["handler"], 500 if m["code"].startswith("5") else 200)] += int(inc)
            else:
                buckets[(t_ms, m["handler"])][m["le"]] = inc
    for (t_ms, handler), b in buckets.items():
        requests[(t_ms, handler, "fast")] += int(b["0.3"])
        requests[(t_ms, handler, "slow")] += int(b["+Inf"] - b["0.3"])
    return +requests, unmapped


def decoded_prometheus(dec: EventDecoder, batch: Any) -> Counter[tuple[Any, ...]]:
    out: Counter[tuple[Any, ...]] = Counter()
    for (t, key, status, lat), w in weights(dec, batch).items():
        assert key.service == "shop" and t % 10**6 == 0
        kind = status if status != NO_STATUS else "fast" if lat == 300_000.0 else "slow"
        if kind == "slow":
            assert lat == math.nextafter(300_000.0, math.inf)
        out[(t // 10**6, key.route, kind)] += w
    return out


def test_range_query_increases_with_a_counter_reset() -> None:
    doc = json.loads(RANGE.read_text())
    drops = [s for s in doc["data"]["result"]
             if any(float(b[1]) < float(a[1]) for a, b in itertools.pairwise(s["values"]))]
    assert len(drops) == len(doc["data"]["result"])  # the exporter restarted mid-way
    expected, unmapped = prometheus_reference()
    dec = decoder(mapping_file=str(MAPPING))
    batch, rej = dec.decode(RANGE.read_bytes(), "prometheus_json")
    assert decoded_prometheus(dec, batch) == expected
    assert rej == {"unmapped_series": unmapped}
    totals = Counter({k[2]: 0 for k in expected})
    for key, w in expected.items():
        totals[key[2]] += w
    assert totals["fast"] + totals["slow"] == totals[200] + totals[500]  # +Inf counts every request


@pytest.mark.parametrize(("name", "fmt"), [("exposition.prom", "prometheus_text"),
                                           ("openmetrics.txt", "openmetrics")])
def test_exposition_copies_give_the_same_events(name: str, fmt: str) -> None:
    a, b = decoder(mapping_file=str(MAPPING)), decoder(mapping_file=str(MAPPING))
    from_json, rej_json = a.decode(RANGE.read_bytes(), "prometheus_json")
    from_text, rej_text = b.decode((PROM / name).read_bytes(), fmt)
    assert weights(a, from_json) == weights(b, from_text)
    assert rej_json == rej_text


def test_exposition_split_anywhere_pairs_buckets_across_buffers() -> None:
    data = (PROM / "exposition.prom").read_bytes()
    whole_dec = decoder(mapping_file=str(MAPPING))
    whole, whole_rej = whole_dec.decode(data, "prometheus_text")
    dec = decoder(mapping_file=str(MAPPING))
    lines = data.split(b"\n")
    total: Counter[tuple[Any, ...]] = Counter()
    rej: Counter[str] = Counter()
    for start in range(0, len(lines), 37):  # 37 lines: scrapes of 12 series are cut in the middle
        batch, r = dec.decode(b"\n".join(lines[start:start + 37]), "prometheus_text")
        total += weights(dec, batch)
        rej += r
    assert total == weights(whole_dec, whole)
    assert rej == whole_rej


def test_counter_resets_and_sample_rejections(tmp_path: Path) -> None:
    mapping = write(tmp_path, "m.yaml", "prometheus:\n  total: req_total\n  errors: req_total{code=~'5..'}\n"
                                        "  service_label: job\n")
    text = "\n".join([
        "# TYPE req_total counter",
        'req_total{job="a",code="200"} 10 1000',
        'req_total{job="a",code="200"} 15 2000',
        'req_total{job="a",code="200"} 3 3000',     # reset: 3 new requests
        'req_total{job="a",code="200"} 8 4000',
        'req_total{job="a",code="200"} 9 4000',     # same time again
        'req_total{job="a",code="200"} NaN 5000',
        'req_total{job="a",code="200"} 9.5 6000',   # half a request
        'req_total{job="a",code="500"} 1 1000',
        'req_total{job="a",code="500"} 4 3000',
        'req_total{job="a",code="500"} 6',          # no timestamp
        'req_total{job="a" 7 7000',
        'other_total{job="a"} 1 1000',
        'req_total{code="200"} 1 1000',             # no job label, no default service
    ])
    dec = decoder(mapping_file=mapping)
    batch, rej = dec.decode(text.encode(), "prometheus_text")
    a = EventKey("a")
    assert weights(dec, batch) == {(2 * 10**9, a, 200, None): 5, (3 * 10**9, a, 200, None): 3,
                                   (4 * 10**9, a, 200, None): 5, (3 * 10**9, a, 500, None): 3}
    assert rej == {"out_of_order_sample": 1, "bad_value": 1, "non_integer_increase": 1, "missing_ts": 1,
                   "malformed_line": 1, "unmapped_series": 1, "missing_service": 1}


def test_good_selector_and_series_outside_total(tmp_path: Path) -> None:
    mapping = write(tmp_path, "m.yaml", "prometheus:\n  total: req_total{job='a'}\n"
                                        "  good: '{__name__=~\"req_total|ok_total\", code!~\"5..\"}'\n"
                                        "  service: a\n")
    text = ('req_total{job="a",code="200"} 1 1000\nreq_total{job="a",code="200"} 4 2000\n'
            'req_total{job="a",code="503"} 1 1000\nreq_total{job="a",code="503"} 2 2000\n'
            'ok_total{job="a",code="200"} 1 1000\n')
    dec = decoder(mapping_file=mapping)
    batch, rej = dec.decode(text.encode(), "prometheus_text")
    assert weights(dec, batch) == {(2 * 10**9, EventKey("a"), 200, None): 3,
                                   (2 * 10**9, EventKey("a"), 500, None): 1}
    assert rej == {"not_in_total": 1}


def test_unpaired_buckets_are_counted(tmp_path: Path) -> None:
    mapping = write(tmp_path, "m.yaml", "prometheus:\n  service: a\n  latency:\n    buckets: lat_bucket\n"
                                        "    threshold_le: '0.25'\n")
    text = "\n".join([
        'lat_bucket{le="0.25"} 1 1000', 'lat_bucket{le="+Inf"} 2 1000',
        'lat_bucket{le="0.25"} 3 2000',                                  # its +Inf sample is missing
        'lat_bucket{le="0.25"} 4 3000', 'lat_bucket{le="+Inf"} 9 3000',
        'lat_bucket{le="0.25"} 9 4000', 'lat_bucket{le="+Inf"} 10 4000',  # 5 fast of 1: impossible
    ])
    dec = decoder(mapping_file=mapping)
    batch, rej = dec.decode(text.encode(), "prometheus_text")
    slow = math.nextafter(250_000.0, math.inf)
    assert weights(dec, batch) == {(3 * 10**9, EventKey("a"), NO_STATUS, 250_000.0): 1,
                                   (3 * 10**9, EventKey("a"), NO_STATUS, slow): 6}
    assert rej == {"unpaired_bucket": 1, "bad_histogram": 1}


def test_prometheus_backtest_counts_what_the_reference_counts() -> None:
    from engine.backtest import run_backtest

    cfg = parse_config({
        "slos": [{"name": "pay", "service": "shop", "route": "/api/pay", "objective": 99.0,
                  "sli": {"availability": {}}},
                 {"name": "pay-latency", "service": "shop", "route": "/api/pay",
                  "sli": {"latency": "p90 below 300ms"}}],
        "events": {"format": "prometheus_json", "mapping_file": str(MAPPING)},
    })
    result = run_backtest(cfg, [str(RANGE)])
    expected, _ = prometheus_reference()
    pay = {kind: sum(w for (_, route, k), w in expected.items() if route == "/api/pay" and k == kind)
           for kind in (200, 500, "fast", "slow")}
    by_name = {s.slo: s.totals for s in result.series}
    assert by_name["pay"] == {"events": pay[200] + pay[500], "bad": pay[500]}
    assert by_name["pay-latency"] == {"events": pay["fast"] + pay["slow"], "bad": pay["slow"]}


# ---------------------------------------------------------------------------------------------
# Mapping files


def test_mapping_problems_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\$\.events\.mapping_file: required by this format"):
        decoder(format="prometheus_json")
    path = write(tmp_path, "m.yaml", "records:\n  fields: {ts: t}\n")
    with pytest.raises(ConfigError, match=r"m\.yaml: \$\.prometheus: required by this format"):
        decoder(format="openmetrics", mapping_file=path)
    path = write(tmp_path, "m.yaml", "prometheus:\n  total: 'req_total{code=~\"5..'\n  errors: x\n")
    with pytest.raises(ConfigError, match=r"\$\.prometheus\.total: expected a series selector"):
        decoder(format="prometheus_text", mapping_file=path)
    path = write(tmp_path, "m.yaml", "prometheus:\n  total: a\n")
    with pytest.raises(ConfigError, match=r"expected exactly one of 'errors' or 'good' with 'total', got n"):
        decoder(format="prometheus_text", mapping_file=path)
    path = write(tmp_path, "m.yaml", "records:\n  regex: '(?P<when>\\d+)'\n  ts_format: weekly\n")
    with pytest.raises(ConfigError) as info:
        decoder(format="mapping", mapping_file=path)
    assert [p.split(": $.")[1] for p in info.value.problems] == [
        "records: expected event fields among ts, status, latency, service, route, method, weight, got when",
        "records: expected a 'ts' field or named group, got none",
        "records.ts_format: expected auto, s, ms, us, ns, rfc3339, clf or a strptime format, got 'weekly'"]
    path = write(tmp_path, "m.yaml", "records:\n  fields: {ts: t}\n  colour: red\n")
    with pytest.raises(ConfigError, match=r"\$\.records\.colour: unknown field"):
        decoder(format="mapping", mapping_file=path)


def test_mapping_json_fields_and_extraction(tmp_path: Path) -> None:
    path = write(tmp_path, "m.yaml", "\n".join([
        "records:",
        "  fields: {ts: '@t', status: Properties.StatusCode, latency: Properties.Elapsed,",
        "           route: Properties.RequestPath, method: Properties.RequestMethod}",
        "  extract: {route: '^(?:https?://[^/]+)?([^?]*)'}",
        "  ts_format: rfc3339",
        "  service: web",
    ]))
    first = {"StatusCode": 200, "Elapsed": 12.5, "RequestPath": "http://h/a?b=1", "RequestMethod": "GET"}
    recs = [{"@t": "2024-05-09T12:00:00.5Z", "Properties": first},
            {"@t": "2024-05-09T12:00:01Z", "Properties": {"StatusCode": "503", "Elapsed": 3}},
            {"@t": "2024-05-09T12:00:02Z", "Properties": {"Elapsed": 3}},
            {"@t": "2024-05-09T12:00:03Z", "Properties": {"StatusCode": 200, "Elapsed": "slow"}},
            {"@t": 5, "Properties": {"StatusCode": 200}}, [1]]
    dec = decoder(format="mapping", mapping_file=path)
    batch, rej = dec.decode(b"\n".join(json.dumps(r).encode() for r in recs) + b"\n{oops\n")
    assert rej == {"missing_status": 1, "bad_latency": 1, "bad_ts": 1, "not_an_object": 1,
                   "malformed_json": 1}
    t = parse_rfc3339_ns("2024-05-09T12:00:00Z")
    assert weights(dec, batch) == {(t + 5 * 10**8, EventKey("web", "/a", "GET"), 200, 12_500.0): 1,
                                   (t + 10**9, EventKey("web"), 503, 3000.0): 1}


def test_mapping_regex_lines_with_strptime_and_weights(tmp_path: Path) -> None:
    path = write(tmp_path, "m.yaml", "\n".join([
        "records:",
        r"  regex: '(?P<ts>\d\d/\d\d/\d{4} \d\d:\d\d:\d\d) (?P<service>\w+) (?P<status>\d+) "
        r"(?P<latency>[\d.]+)s x(?P<weight>\d+)'",
        "  ts_format: '%d/%m/%Y %H:%M:%S'",
        "  latency_unit: s",
    ]))
    lines = b"09/05/2024 12:00:00 api 200 0.25s x3\n09/05/2024 12:00:01 api 500 1.5s x1\r\n" \
            b"31/02/2024 12:00:00 api 200 0.25s x1\nnot a line\n09/05/2024 12:00:02 api 200 0.1s x0\n"
    dec = decoder(format="mapping", mapping_file=path)
    batch, rej = dec.decode(lines)
    assert rej == {"bad_ts": 1, "malformed_line": 1, "bad_weight": 1}
    t = parse_rfc3339_ns("2024-05-09T12:00:00Z")
    assert weights(dec, batch) == {(t, EventKey("api"), 200, 250_000.0): 3,
                                   (t + 10**9, EventKey("api"), 500, 1_500_000.0): 1}
    assert np.array_equal(batch.weight, [3, 1])
