"""Nezha OnlineBoutique converters: the real files, known rows, and counted bad rows."""

from __future__ import annotations

import csv
import statistics
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from engine.batch import EventBatch, KeyTable
from engine.config import EventsConfig
from engine.errors import DecodeError
from engine.events import EventDecoder
from engine.formats.nezha import (
    MINUTE_COLUMNS,
    infer_request_count,
    load_fault_list,
    nezha_minutes_to_ndjson,
    nezha_requests_to_ndjson,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "nezha-onlineboutique"
# From data/README.md: 1,209 and 721 minutes, 389 requests; 49.5868 % = 60/121 at 04:03 on 08-22.
MINUTES = {"front_service_2022-08-22.csv": 1209, "front_service_2022-08-23.csv": 721}
TS_4_03 = 1661140999


def decode(data: bytes) -> tuple[EventDecoder, EventBatch, Counter[str]]:
    dec = EventDecoder(EventsConfig(), KeyTable())
    batch, rej = dec.decode(data, "ndjson")
    return dec, batch, Counter(rej)


@pytest.mark.parametrize(("success_pct", "n"), [
    (49.586776859504134, 121),  # 60/121
    (100.0, 100),
    (0.0, 100),
    (98.4375, 128),  # 63/64: the first multiple of 64 in range
    (50.0, 100),
    (100 * 149 / 157, 157),
    (33.3333, None),  # rounded to 4 digits: no n fits within 1e-6
])
def test_infer_request_count(success_pct: float, n: int | None) -> None:
    assert infer_request_count(success_pct) == n


@pytest.mark.parametrize(("name", "n_rows"), MINUTES.items())
def test_every_minute_converts(name: str, n_rows: int) -> None:
    counts: Counter[str] = Counter()
    data = nezha_minutes_to_ndjson(DATA / name, counts=counts)
    with open(DATA / name, newline="") as f:
        rates = [float(row["SuccessRate(%)"]) for row in csv.DictReader(f)]
    assert len(rates) == n_rows
    clean = sum(r in (0.0, 100.0) for r in rates)  # one event; the others have a good and a bad one
    assert counts == Counter(rows=n_rows, events=clean + 2 * (n_rows - clean))
    dec, batch, rej = decode(data)
    assert rej == Counter()
    assert len(batch) == counts["events"]
    assert {k.service for k in dec.keys.keys} == {"frontend"}


def test_known_minute_60_of_121() -> None:
    data = nezha_minutes_to_ndjson(DATA / "front_service_2022-08-22.csv")
    _, batch, _ = decode(data)
    at = np.flatnonzero(batch.ts_ns == TS_4_03 * 10**9)
    got = sorted((int(batch.status[i]), int(batch.weight[i])) for i in at)
    assert got == [(200, 60), (500, 61)]
    good = at[batch.status[at] == 200]
    assert batch.latency_us[good][0] == pytest.approx(0.00045652173913043474 * 1e6)
    assert np.isnan(batch.latency_us[at[batch.status[at] == 500]]).all()


def test_minutes_without_latency() -> None:
    data = nezha_minutes_to_ndjson(DATA / "front_service_2022-08-23.csv", latency=False)
    _, batch, _ = decode(data)
    assert np.isnan(batch.latency_us).all()


def test_outage_minutes_drop_success() -> None:
    """data/README.md: an unlabelled outage at 06:28-06:30 on 08-22 with 16-24 % success."""
    _, batch, _ = decode(nezha_minutes_to_ndjson(DATA / "front_service_2022-08-22.csv"))
    start = 1661149680  # 2022-08-22T06:28:00Z
    inside = (batch.ts_ns >= start * 10**9) & (batch.ts_ns < (start + 180) * 10**9)
    bad = batch.weight[inside & (batch.status == 500)].sum()
    total = batch.weight[inside].sum()
    assert 0.16 <= 1 - bad / total <= 0.24


def test_all_389_requests_convert() -> None:
    counts: Counter[str] = Counter()
    data = nezha_requests_to_ndjson(DATA / "frontend_requests_during_cpu_contention.csv", counts=counts)
    assert counts == Counter(rows=389, events=389)
    dec, batch, rej = decode(data)
    assert rej == Counter() and len(batch) == 389
    assert int(batch.ts_ns[0]) == 1661145500_863159504  # 05:18:20.863159504Z
    assert {int(s) for s in batch.status} == {200, 302}
    routes = {k.route for k in dec.keys.keys}
    assert {"/", "/cart", "/setCurrency"} <= routes
    # README: a real latency incident, p50 about 5.7 s.
    assert 4e6 < statistics.median(batch.latency_us) < 8e6


def test_fault_list() -> None:
    counts: Counter[str] = Counter()
    faults = load_fault_list(DATA / "fault_list_2022-08-22.json", counts=counts)
    assert counts == Counter(faults=24)
    assert faults == sorted(faults)
    assert faults[0] == (1661140434, "frontend-579b9bff58-t2dbm", "cpu_contention")
    assert (1661140927, "frontend-579b9bff58-t2dbm", "return") in faults  # 04:02:07, per the README
    assert {t for _, _, t in faults} <= {"cpu_contention", "cpu_consumed", "network_delay", "exception",
                                         "return"}


# ---------------------------------------------------------------------------------------------
# Bad rows, on small files written here


def write_minutes(tmp_path: Path, rows: list[str]) -> Path:
    path = tmp_path / "minutes.csv"
    path.write_text(",".join(MINUTE_COLUMNS) + "\n" + "\n".join(rows) + "\n")
    return path


def test_bad_minute_rows_are_counted(tmp_path: Path) -> None:
    ok = "t,1661140999,Frontend,{rate},0.5,1,1,1"
    path = write_minutes(tmp_path, [
        ok.format(rate=100),
        ok.format(rate=33.3333),  # no n fits: 120 by default, counted
        "t,not-a-time,Frontend,100,0.5,1,1,1",
        ok.format(rate=101),
        ok.format(rate="NaN"),
        "t,1661140999,Frontend,100,-0.5,1,1,1",
        "t,1661140999,Frontend,100",
        "",
    ])
    counts: Counter[str] = Counter()
    data = nezha_minutes_to_ndjson(path, counts=counts)
    assert counts == Counter(rows=7, events=3, count_inferred_default=1, bad_timestamp=1,
                             bad_success_rate=2, bad_latency=1, bad_row=1)
    _, batch, rej = decode(data)
    assert rej == Counter()
    assert sorted(zip(batch.status.tolist(), batch.weight.tolist(), strict=True)) == [
        (200, 40), (200, 120), (500, 80)]  # 100 %: 120 by default; 33.3333 % of 120 rounds to 40 good


def test_bad_request_rows_are_counted(tmp_path: Path) -> None:
    header = "timestamp,pod,trace_id,method,path,status,latency_ms,bytes,source_file"
    good = "2022-08-22T05:18:20.5Z,p,t,GET,/,200,12,1,f"
    path = tmp_path / "requests.csv"
    path.write_text("\n".join([
        header, good,
        "yesterday,p,t,GET,/,200,12,1,f",
        "2022-08-22T05:18:20Z,p,t,,/,200,12,1,f",
        "2022-08-22T05:18:20Z,p,t,GET,/,9,12,1,f",
        "2022-08-22T05:18:20Z,p,t,GET,/,200,fast,1,f",
        "2022-08-22T05:18:20Z,p",
    ]) + "\n")
    counts: Counter[str] = Counter()
    data = nezha_requests_to_ndjson(path, counts=counts)
    assert counts == Counter(rows=6, events=1, bad_timestamp=1, missing_field=1, bad_status=1, bad_latency=1,
                             bad_row=1)
    _, batch, _ = decode(data)
    assert batch.ts_ns.tolist() == [1661145500_500000000]


def test_wrong_header_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "other.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(DecodeError, match=r"bad_header: .*other\.csv: expected the columns Time, TimeStamp, "
                                          r".*, got a, b"):
        nezha_minutes_to_ndjson(path)


def test_bad_fault_entries_are_counted(tmp_path: Path) -> None:
    path = tmp_path / "faults.json"
    path.write_text('{"03": [{"inject_timestamp": "5", "inject_pod": "p", "inject_type": "return"},'
                    ' {"inject_pod": "p", "inject_type": "x"}, {"inject_timestamp": "x", "inject_pod": "p",'
                    ' "inject_type": "x"}], "04": [{"inject_timestamp": 3, "inject_pod": "q",'
                    ' "inject_type": "exception"}]}')
    counts: Counter[str] = Counter()
    assert load_fault_list(path, counts=counts) == [(3, "q", "exception"), (5, "p", "return")]
    assert counts == Counter(faults=4, bad_fault=2)
