"""Synthetic traffic: determinism, statistics against the spec, incident placement, output format."""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import math
import os
import stat
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zstandard

from engine import generate as g
from engine.errors import ConfigError

START_S = 1_704_067_200  # 2024-01-01T00:00:00Z, written out by hand


def _plan(**over: Any) -> g.ScenarioPlan:
    doc: dict[str, Any] = {
        "start": "2024-01-01T00:00:00Z", "duration": "30m", "rate": 100, "error_ratio": 0.01,
        "latency_median_ms": 40, "latency_sigma": 0.5,
        "services": [{"name": "api", "routes": [{"route": "/a", "share": 3}, {"route": "/b"}]}],
    }
    doc.update(over)
    return g.compile_scenario(g.parse_scenario(doc, "test"), "test")


def _within(observed: float, expected: float, sd: float, k: float = 5.0) -> bool:
    return abs(observed - expected) <= k * sd


@pytest.mark.parametrize("seed", [1, 7])
def test_same_seed_same_bytes_other_seed_other_bytes(seed: int) -> None:
    plan = _plan(duration="5m")
    first = g.format_ndjson(g.generate_events(plan, seed), plan.channels)
    again = g.format_ndjson(g.generate_events(plan, seed), plan.channels)
    other = g.format_ndjson(g.generate_events(plan, seed + 1), plan.channels)
    assert first == again
    assert first != other
    assert first.count(b"\n") > 0


@pytest.mark.parametrize("seed", [3, 11])
def test_rate_error_ratio_and_latency_match_the_spec(seed: int) -> None:
    plan = _plan(error_ratio=0.1)
    cols = g.generate_events(plan, seed)
    n = len(cols)
    expected_n = 100 * 1800
    assert _within(n, expected_n, math.sqrt(expected_n)), (seed, n)
    bad = int(np.count_nonzero(cols.status == 500))
    assert _within(bad, 0.1 * n, math.sqrt(n * 0.1 * 0.9), k=4), (seed, bad)
    assert set(np.unique(cols.status).tolist()) == {200, 500}
    # Route /a has 3 times the share of /b.
    share_a = np.count_nonzero(cols.channel == plan.channels.index(("api", "/a", "GET"))) / n
    assert _within(share_a, 0.75, math.sqrt(0.75 * 0.25 / n)), (seed, share_a)
    # Lognormal(median 40 ms, sigma 0.5): P(x <= median) = 1/2, P(x <= median * e^sigma) = Phi(1).
    lat_ms = cols.latency_us / 1000
    for q, bound in ((0.5, 40.0), (0.841344746, 40.0 * math.exp(0.5))):
        frac = np.count_nonzero(lat_ms <= bound) / n
        assert _within(frac, q, math.sqrt(q * (1 - q) / n)), (seed, q, frac)
    ts_s = cols.ts_ms / 1000
    assert ts_s.min() >= START_S and ts_s.max() < START_S + 1800
    assert np.all(np.diff(cols.ts_ms) >= 0), "events are in time order"


def test_low_traffic_rate_is_per_minute() -> None:
    plan = g.compile_scenario(g.preset("low-traffic"), "preset")
    assert plan.rate_per_s == pytest.approx(1 / 60)
    n = len(g.generate_events(plan, 5))
    expected = 2 * 24 * 60  # two days at one request a minute
    assert _within(n, expected, math.sqrt(expected)), n


INCIDENT_SCENARIO: dict[str, Any] = {
    "duration": "2h", "rate": 40, "error_ratio": 0.002, "error_status": 500,
    "services": [
        {"name": "api", "routes": [{"route": "/x"}, {"route": "/y", "method": "POST"}]},
        {"name": "web", "routes": [{"route": "/"}]},
    ],
    "incidents": [
        {"kind": "error_ratio", "start": "10m", "duration": "15m", "service": "api", "route": "/x",
         "error_ratio": 0.3, "status": 503},
        {"kind": "latency", "start": "20m", "duration": "10m", "service": "api", "route": "/y",
         "latency_add_ms": 1000},
        {"kind": "outage", "start": "1h", "duration": "5m", "service": "web", "status": 502},
        {"kind": "spikes", "start": "80m", "duration": "30m", "every": "10m", "burst": "1m",
         "status": 429},
    ],
}


def test_incidents_are_where_the_truth_says(tmp_path: Path) -> None:
    seed = 21
    plan = g.compile_scenario(g.parse_scenario(INCIDENT_SCENARIO, "inc"), "inc")
    truth = g.ground_truth(plan)
    # Absolute times worked out by hand from the offsets.
    assert [(t.kind, t.start_s, t.end_s) for t in truth] == [
        ("error_ratio", START_S + 600, START_S + 1500), ("latency", START_S + 1200, START_S + 1800),
        ("outage", START_S + 3600, START_S + 3900), ("spikes", START_S + 4800, START_S + 6600)]
    assert truth[0].start == "2024-01-01T00:10:00.000Z" and truth[2].service == "web"
    cols = g.generate_events(plan, seed)
    t = cols.ts_ms / 1000
    svc = np.array([c[0] for c in plan.channels])[cols.channel]
    route = np.array([c[1] for c in plan.channels])[cols.channel]

    def inside(row: g.IncidentTruth) -> np.ndarray:
        return (t >= row.start_s) & (t < row.end_s)

    x_in = inside(truth[0]) & (svc == "api") & (route == "/x")
    s503 = cols.status == 503
    assert not np.any(s503 & ~x_in), "503 only from the error_ratio incident"
    ratio = np.count_nonzero(s503 & x_in) / np.count_nonzero(x_in)
    assert _within(ratio, 0.3, math.sqrt(0.3 * 0.7 / np.count_nonzero(x_in))), ratio

    slow = cols.latency_us >= 1_000_000
    y_in = inside(truth[1]) & (route == "/y")
    assert np.all(slow[y_in]) and not np.any(slow & ~y_in)

    web_out = inside(truth[2]) & (svc == "web")
    assert np.count_nonzero(web_out) > 100
    assert np.all(cols.status[web_out] == 502) and not np.any((cols.status == 502) & ~web_out)

    sp = truth[3]
    in_burst = inside(sp) & ((t - sp.start_s) % 600 < 60)
    assert np.all(cols.status[in_burst] == 429) and not np.any((cols.status == 429) & ~in_burst)
    assert np.count_nonzero(in_burst) > 400  # 3 bursts of a minute at 40/s

    csv_path, json_path = tmp_path / "truth.csv", tmp_path / "truth.json"
    g.write_truth(truth, csv_path)
    g.write_truth(truth, json_path)
    with csv_path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["kind"], float(r["start_s"]), float(r["end_s"]), r["service"]) for r in rows] == [
        (x.kind, x.start_s, x.end_s, x.service) for x in truth]
    assert json.loads(json_path.read_text())[3]["every_s"] == 600


def test_diurnal_load_follows_the_sinusoid() -> None:
    seed = 4
    plan = _plan(duration="1d", rate=5, error_ratio=0.0, diurnal={"amplitude": 0.8, "peak": "6h"})
    cols = g.generate_events(plan, seed)
    hour = (cols.ts_ms // 1000 - START_S) // 3600
    counts = np.bincount(hour, minlength=24)
    # Expected requests in each hour: integral of 5 * (1 + 0.8 cos(2 pi (t - 6h) / 1d)) over it.
    w = 2 * math.pi / 86400
    expected = np.array([5 * 3600 + 5 * 0.8 / w * (math.sin(w * (3600 * (h + 1) - 21600))
                                                    - math.sin(w * (3600 * h - 21600))) for h in range(24)])
    assert np.all(np.abs(counts - expected) <= 5 * np.sqrt(expected)), (seed, counts, expected)
    assert int(np.argmax(counts)) in (5, 6) and int(np.argmin(counts)) in (17, 18)
    assert counts.max() > 5 * counts.min()


def test_chunked_output_equals_one_shot(tmp_path: Path) -> None:
    seed = 9
    plan = _plan(duration="25m", rate=5)  # 3 blocks of event time, the last one partial
    one_shot = g.format_ndjson(g.generate_events(plan, seed), plan.channels)
    for chunk in (2, 997, 10**7):
        buf = io.BytesIO()
        lines = g.write_events(plan, seed, buf, chunk_events=chunk)
        assert buf.getvalue() == one_shot
        assert lines == one_shot.count(b"\n")
    for suffix, read in ((".gz", gzip.decompress),
                         (".zst", lambda b: zstandard.ZstdDecompressor().decompressobj().decompress(b))):
        path = tmp_path / f"out.ndjson{suffix}"
        with g.open_output(str(path)) as out:
            g.write_events(plan, seed, out, chunk_events=123)
        assert read(path.read_bytes()) == one_shot
        assert not path.with_name(path.name + ".part").exists()


def test_lines_are_json_with_the_documented_fields() -> None:
    plan = _plan(duration="2m", services=[{"name": 'sv "q"', "routes": [{"route": "/é"}]}])
    cols = g.generate_events(plan, 2)
    lines = g.format_ndjson(cols, plan.channels).decode().splitlines()
    assert len(lines) == len(cols) > 1000
    for i in range(0, len(lines), 37):
        obj = json.loads(lines[i])
        assert list(obj) == ["ts", "service", "route", "method", "status", "latency_ms"]
        assert lines[i].startswith(f'{{"ts":{cols.ts_ms[i] // 1000}.{cols.ts_ms[i] % 1000:03d},')
        assert (obj["service"], obj["route"], obj["method"]) == ('sv "q"', "/é", "GET")
        assert obj["status"] == cols.status[i]
        assert round(obj["latency_ms"] * 1000) == cols.latency_us[i]


def test_aggregate_keeps_counts_and_whole_ms_threshold_classes() -> None:
    seed = 13
    raw_plan = _plan(duration="20m", rate=50)
    agg_plan = _plan(duration="20m", rate=50, aggregate="1m")
    raw, agg = g.generate_events(raw_plan, seed), g.generate_events(agg_plan, seed)
    assert agg.weight is not None and len(agg) < len(raw) / 3
    assert int(agg.weight.sum()) == len(raw)
    for threshold_ms in (40, 100, 300):
        good_raw = np.count_nonzero(raw.latency_us <= threshold_ms * 1000)
        good_agg = int(agg.weight[agg.latency_us <= threshold_ms * 1000].sum())
        assert good_raw == good_agg, threshold_ms
    assert int(agg.weight[agg.status == 500].sum()) == np.count_nonzero(raw.status == 500)
    assert np.all(agg.ts_ms % 60_000 == 0)
    line = json.loads(g.format_ndjson(agg.slice(0, 1), agg_plan.channels))
    assert line["weight"] == agg.weight[0] >= 1


@pytest.mark.parametrize("name", sorted(g.PRESETS))
def test_presets_compile_with_incidents_inside(name: str) -> None:
    plan = g.compile_scenario(g.preset(name), f"preset {name}")
    assert plan.incidents
    for t in g.ground_truth(plan):
        assert plan.start_ms / 1000 <= t.start_s < t.end_s <= plan.start_ms / 1000 + plan.duration_s


BAD = [
    ("services: [{name: a, colour: red}]", r"bad\.yaml: \$\.services\[0\]\.colour: unknown field"),
    ("services: [{name: a}]\nrate: lots", r"\$\.rate: expected a rate like 50.*got 'lots'"),
    ("services: [{name: a}]\nerror_ratio: 1.5", r"\$\.error_ratio: expected a ratio in \[0, 1\], got 1\.5"),
    ("services: [{name: a}]\nstart: 2024-13-01", r"\$\.start: expected"),
    ("services: [{name: a}]\nduration: 1h\nincidents: [{kind: outage, start: 50m, duration: 20m}]",
     r"\$\.incidents\[0\]: expected to end within the scenario \(1h\), got start 50m \+ duration 20m"),
    ("services: [{name: a}]\nincidents: [{kind: error_ratio, start: 0, duration: 1m}]",
     r"\$\.incidents\[0\]\.error_ratio: required field is missing"),
    ("services: [{name: a}]\nincidents: [{kind: outage, start: 0, duration: 1m, service: b}]",
     r"\$\.incidents\[0\]: expected service/route of the scenario, got service 'b'"),
    ("services: [{name: a}]\nincidents: [{kind: spikes, start: 0, duration: 1h, every: 1m, burst: 2m}]",
     r"\$\.incidents\[0\]\.burst: expected shorter than every \(1m\), got 2m"),
    ("services: [{name: a}]\nincidents: [{kind: latency, start: 0, duration: 1m}]",
     r"\$\.incidents\[0\]: expected latency_multiplier != 1 or latency_add_ms > 0"),
    ("services: [{name: a}]\nincidents: [{kind: outage, start: 0, duration: 1m, status: 200}]",
     r"\$\.incidents\[0\]\.status: expected a status in 400\.\.599, got 200"),
    ("services: {name: a}", r"\$\.services: expected `array`, got `object`"),
    ("- 1", r"\$: expected a mapping with 'services', got list"),
    ("services: [{name: a\n", r"\$: expected valid YAML, got a syntax error \(line 2"),
]


@pytest.mark.parametrize(("text", "message"), BAD)
def test_bad_scenario_gets_a_clear_message(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        g.compile_scenario(g.load_scenario(path), str(path))


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="sloburn")
    g.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["generate", *argv])
    return int(args.func(args))


def test_cli_bad_scenario_exits_2_with_one_line_per_problem(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("services: [{name: a, routes: [{route: /, share: 0}]}]\nlatency_sigma: 9\n")
    assert _cli(["--scenario", str(path), "--out", str(tmp_path / "o.ndjson")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [f"{path}: $.services[0].routes[0].share: expected a number > 0, got 0.0",
                   f"{path}: $.latency_sigma: expected a number in [0, 3], got 9.0"]
    assert not (tmp_path / "o.ndjson").exists()
    assert _cli(["--rate", "fast", "--duration", "1h", "--preset", "outage"]) == 2
    assert "--rate: expected a rate" in capsys.readouterr().err
    assert _cli(["--duration", "1h"]) == 2  # the demo's incidents start later
    assert "expected to end within the scenario (1h)" in capsys.readouterr().err


def test_cli_writes_events_and_truth(tmp_path: Path) -> None:
    out, truth = tmp_path / "o.ndjson.gz", tmp_path / "t.csv"
    rc = _cli(["--preset", "outage", "--duration", "3h", "--rate", "5", "--seed", "3",
               "--start", "1700000000", "--out", str(out), "--truth", str(truth), "--quiet"])
    assert rc == 0
    lines = gzip.decompress(out.read_bytes()).splitlines()
    assert _within(len(lines), 5 * 10800, math.sqrt(5 * 10800))
    first, last = json.loads(lines[0]), json.loads(lines[-1])
    assert 1_700_000_000 <= first["ts"] <= last["ts"] < 1_700_000_000 + 10800
    with truth.open(newline="") as f:
        (row,) = csv.DictReader(f)
    assert (row["kind"], float(row["start_s"]), float(row["end_s"])) == (
        "outage", 1_700_000_000 + 7200, 1_700_000_000 + 8100)
    during = [json.loads(x) for x in lines if 1_700_007_200 <= json.loads(x)["ts"] < 1_700_008_100]
    assert during and all(e["status"] == 503 for e in during)


def test_output_to_a_symlink_or_fifo_is_written_in_place(tmp_path: Path) -> None:
    plan = _plan(duration="1m", rate=5)
    expected = g.format_ndjson(g.generate_events(plan, 1), plan.channels)
    target = tmp_path / "real.ndjson"
    target.write_bytes(b"old")
    link = tmp_path / "link.ndjson"
    link.symlink_to(target)
    with g.open_output(str(link)) as out:
        g.write_events(plan, 1, out)
    assert link.is_symlink() and target.read_bytes() == expected

    fifo = tmp_path / "pipe.ndjson"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    with g.open_output(str(fifo)) as out:
        g.write_events(plan, 1, out)
    reader.join(timeout=10)
    assert got == [expected]
    assert stat.S_ISFIFO(fifo.stat().st_mode), "the FIFO was replaced by a regular file"
