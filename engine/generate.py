"""Seeded synthetic request traffic with incidents, as NDJSON, and its ground truth.

A :class:`Scenario` (YAML or a preset) describes services and routes, a mean request rate with an
optional diurnal sinusoid, a baseline error ratio and lognormal latency, and a list of incidents
(``error_ratio``, ``latency``, ``outage``, ``spikes``). :func:`compile_scenario` checks it and turns
it into a :class:`ScenarioPlan`; :func:`generate_blocks` draws the events with numpy, one fixed block
of event time at a time:

- arrivals: Poisson per second and per (service, route, method) channel, at
  ``rate * share * (1 + amplitude * cos(2 pi (time_of_day - peak) / period))``;
- errors: one uniform draw per event against the cell's error probabilities, i.e. binomial per
  second and channel; overlapping incidents combine as independent causes;
- latency: ``median * exp(sigma * N(0, 1)) * multiplier + added_ms``.

Each block draws from its own generator seeded with ``(seed, block index)``, so that the output
depends on the seed and the scenario only, never on how it is chunked for writing. Lines are
formatted by numpy into one byte buffer per chunk (:func:`format_ndjson`): about 10 M events take a
few seconds. With ``aggregate`` set, events with the same bucket, channel, status and latency rounded
up to a whole millisecond become one line with a ``weight`` (rounding up keeps every whole-millisecond
threshold's good/bad classification exact).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as dt
import gzip
import math
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal, cast

import msgspec
import numpy as np
import numpy.typing as npt
import zstandard
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from engine.config import Duration, msgspec_problem, read_yaml
from engine.durations import format_duration, parse_duration_s
from engine.errors import ConfigError

I64 = npt.NDArray[np.int64]
EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
DEFAULT_CHUNK_EVENTS = 1 << 18
_MAX_LATENCY_MS = 60_000.0  # bounds below keep latency_us far inside int64 even at z = 8
_MAX_MULTIPLIER = 100.0
_MAX_ADD_MS = 600_000.0


class _Base(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class RouteSpec(_Base, frozen=True):
    """One route of a service; ``share`` is its relative weight within the service's traffic."""

    route: str
    method: str = "GET"
    share: float = 1.0
    latency_median_ms: float | None = None
    latency_sigma: float | None = None


class ServiceSpec(_Base, frozen=True):
    """One service; ``share`` is its relative weight within the scenario's total rate."""

    name: str
    routes: list[RouteSpec] = msgspec.field(default_factory=lambda: [RouteSpec(route="/")])
    share: float = 1.0


class Diurnal(_Base, frozen=True):
    """Daily load: ``1 + amplitude * cos(2 pi (t - peak) / period)``, t the UTC time of day."""

    amplitude: float = 0.0
    peak: Duration = "14h"
    period: Duration = "1d"


class Incident(_Base, frozen=True):
    """A fault injected from ``start`` (offset from the scenario start) for ``duration``.

    ``error_ratio``: that share of requests fail with ``status`` (default 500; 4xx such as 429 allowed).
    ``outage``: every request fails (``status`` default 503). ``latency``: latencies are multiplied by
    ``latency_multiplier`` then ``latency_add_ms`` is added. ``spikes``: bursts of ``burst`` length every
    ``every``, failing at ``error_ratio`` (default 1). ``service``/``route`` narrow it (default: all).
    """

    kind: Literal["error_ratio", "latency", "outage", "spikes"]
    start: Duration
    duration: Duration
    name: str = ""
    service: str | None = None
    route: str | None = None
    error_ratio: float | None = None
    status: int | None = None
    latency_multiplier: float = 1.0
    latency_add_ms: float = 0.0
    every: Duration | None = None
    burst: Duration = "1m"


class Scenario(_Base, frozen=True):
    """A whole synthetic traffic scenario.

    ``rate`` is the mean over a diurnal period, requests/s as a number or text like ``"1/min"``.
    ``start`` is RFC 3339 (``2024-01-01T00:00:00Z``) or epoch seconds.
    """

    services: list[ServiceSpec]
    name: str = "custom"
    description: str = ""
    start: str | float = "2024-01-01T00:00:00Z"
    duration: Duration = "6h"
    rate: float | str = 50.0
    diurnal: Diurnal = msgspec.field(default_factory=Diurnal)
    error_ratio: float = 0.0005
    error_status: int = 500
    client_error_ratio: float = 0.0
    client_error_status: int = 404
    latency_median_ms: float = 40.0
    latency_sigma: float = 0.5
    incidents: list[Incident] = msgspec.field(default_factory=list)
    aggregate: Duration | None = None


_CHECKOUT = {"name": "checkout", "routes": [
    {"route": "/api/checkout", "method": "POST", "share": 0.2, "latency_median_ms": 80},
    {"route": "/api/cart", "method": "GET", "share": 0.4},
    {"route": "/api/products", "method": "GET", "share": 0.4, "latency_median_ms": 25},
]}

PRESETS: dict[str, dict[str, Any]] = {
    # 5 % errors on a 99.9 % SLO burn at 50x: the 1h/5m page fires after about 17 min of the 20.
    # +300 ms on /api/cart (40 % of traffic) burns a 99 % "300 ms" latency SLO at about 40x.
    "demo": {"name": "demo", "description": "checkout at 50 req/s for 6 h: 5 % errors for 20 min at 3h, "
             "slow cart route at 1h", "duration": "6h", "rate": 50, "error_ratio": 0.0005,
             "services": [_CHECKOUT], "incidents": [
                 {"name": "checkout errors", "kind": "error_ratio", "start": "3h", "duration": "20m",
                  "service": "checkout", "error_ratio": 0.05, "status": 503},
                 {"name": "slow cart", "kind": "latency", "start": "1h", "duration": "45m",
                  "service": "checkout", "route": "/api/cart", "latency_add_ms": 300}]},
    "outage": {"name": "outage", "description": "checkout at 50 req/s for 6 h, total outage 15 min at 2h",
               "duration": "6h", "rate": 50, "services": [_CHECKOUT], "incidents": [
                   {"name": "outage", "kind": "outage", "start": "2h", "duration": "15m"}]},
    # 0.3 % errors burn a 99.9 % SLO at about 3.5x with the baseline: tickets, never a page.
    "slow-burn": {"name": "slow-burn", "description": "3 days at 10 req/s with a diurnal swing, "
                  "0.3 % errors for 36 h from 12h", "duration": "3d", "rate": 10,
                  "diurnal": {"amplitude": 0.5, "peak": "14h"}, "services": [_CHECKOUT], "incidents": [
                      {"name": "slow burn", "kind": "error_ratio", "start": "12h", "duration": "36h",
                       "error_ratio": 0.003}]},
    # Under 70 requests per hour a single failure trips the 1h tier of a 99.9 % SLO.
    "low-traffic": {"name": "low-traffic", "description": "one request a minute for 2 days, "
                    "10-minute outage at 1d", "duration": "2d", "rate": "1/min", "error_ratio": 0.001,
                    "services": [{"name": "batch-api", "routes": [{"route": "/jobs", "method": "POST"}]}],
                    "incidents": [{"name": "outage", "kind": "outage", "start": "1d", "duration": "10m"}]},
    "spikes": {"name": "spikes", "description": "checkout at 50 req/s for 6 h, 1-minute bursts of 25 % "
               "errors every 10 min for 4 h from 1h", "duration": "6h", "rate": 50,
               "services": [_CHECKOUT], "incidents": [
                   {"name": "spikes", "kind": "spikes", "start": "1h", "duration": "4h", "every": "10m",
                    "burst": "1m", "error_ratio": 0.25}]},
}


# ---------------------------------------------------------------------------------------------
# Checking: Scenario -> ScenarioPlan


@dataclass(frozen=True)
class PlannedIncident:
    """An incident resolved to whole seconds from the scenario start and channel indices."""

    index: int
    name: str
    kind: str
    start_s: int
    end_s: int
    service: str
    route: str
    channels: npt.NDArray[np.intp]
    error_ratio: float
    status: int
    latency_multiplier: float
    latency_add_ms: float
    every_s: int
    burst_s: int


@dataclass(frozen=True)
class ScenarioPlan:
    """A checked scenario in numbers: what :func:`generate_blocks` draws from."""

    name: str
    start_ms: int
    duration_s: int
    rate_per_s: float
    channels: list[tuple[str, str, str]]
    share: npt.NDArray[np.float64]
    median_ms: npt.NDArray[np.float64]
    sigma: npt.NDArray[np.float64]
    amplitude: float
    peak_s: float
    diurnal_period_s: float
    error_ratio: float
    error_status: int
    client_error_ratio: float
    client_error_status: int
    incidents: list[PlannedIncident]
    aggregate_s: int
    block_s: int


_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?(?:e[-+]?\d+)?)\s*(?:/\s*(s|sec|min|m|h))?\s*$", re.IGNORECASE)


def parse_rate_per_s(value: float | str) -> float:
    """Requests per second from ``50``, ``"50/s"``, ``"1/min"`` or ``"30/h"``; ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"expected a rate like 50 or '1/min', got {value!r}")
    if isinstance(value, int | float):
        rate = float(value)
    else:
        m = _RATE.match(value)
        if not m:
            raise ValueError(f"expected a rate like 50, '50/s' or '1/min', got {value!r}")
        rate = float(m.group(1)) / {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}[
            (m.group(2) or "s").lower()]
    if not (rate > 0 and math.isfinite(rate)):
        raise ValueError(f"expected a rate > 0 requests/s, got {value!r}")
    return rate


def parse_start_s(value: str | float) -> float:
    """Epoch seconds from RFC 3339 text with an offset, or from a number of epoch seconds."""
    if isinstance(value, bool):
        raise ValueError(f"expected an RFC 3339 time or epoch seconds, got {value!r}")
    if isinstance(value, str):
        text = value.strip()
        try:
            number = float(text)
        except ValueError:
            number = None
        if number is not None:
            return parse_start_s(number)
        try:
            t = dt.datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"expected an RFC 3339 time like 2024-01-01T00:00:00Z or epoch "
                             f"seconds, got {value!r}") from None
        if t.tzinfo is None:
            raise ValueError(f"expected an RFC 3339 time with an offset (Z or +hh:mm), got {value!r}")
        if t.timestamp() < 0:
            raise ValueError(f"expected a time from 1970-01-01T00:00:00Z on, got {value!r}")
        return t.timestamp()
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"expected epoch seconds >= 0, got {value!r}")
    return float(value)


def _whole_s(problems: list[str], where: str, value: Duration, *, positive: bool) -> int:
    try:
        s = parse_duration_s(value)
    except ValueError as e:
        problems.append(f"{where}: {e}")
        return -1
    if s != int(s):
        problems.append(f"{where}: expected a whole number of seconds, got {value!r}")
        return -1
    if positive and s <= 0:
        problems.append(f"{where}: expected a duration > 0, got {value!r}")
        return -1
    return int(s)


def _ratio(problems: list[str], where: str, value: float, lo_open: bool = False) -> None:
    ok = (0 < value <= 1) if lo_open else (0 <= value <= 1)
    if not ok:
        problems.append(f"{where}: expected a ratio in {'(0' if lo_open else '[0'}, 1], got {value}")


def _status(problems: list[str], where: str, value: int, lo: int) -> None:
    if not lo <= value <= 599:
        problems.append(f"{where}: expected a status in {lo}..599, got {value}")


def _positive(problems: list[str], where: str, value: float, hi: float = math.inf) -> None:
    if not 0 < value <= hi:
        bound = "> 0" if hi == math.inf else f"in (0, {hi:g}]"
        problems.append(f"{where}: expected a number {bound}, got {value}")


def _plan_incident(problems: list[str], where: str, i: int, inc: Incident, *, duration_s: int,
                   channels: list[tuple[str, str, str]]) -> PlannedIncident | None:
    n0 = len(problems)
    start_s = _whole_s(problems, f"{where}.start", inc.start, positive=False)
    length_s = _whole_s(problems, f"{where}.duration", inc.duration, positive=True)
    if start_s >= 0 and length_s > 0 and duration_s > 0 and start_s + length_s > duration_s:
        problems.append(f"{where}: expected to end within the scenario ({format_duration(duration_s)}), "
                        f"got start {format_duration(start_s)} + duration {format_duration(length_s)}")
    chans = [c for c, (svc, route, _m) in enumerate(channels)
             if inc.service in (None, svc) and inc.route in (None, route)]
    if not chans:
        problems.append(f"{where}: expected service/route of the scenario, got service "
                        f"{inc.service!r} route {inc.route!r}")
    ratio, every_s, burst_s = 0.0, 0, 0
    status = inc.status if inc.status is not None else (503 if inc.kind == "outage" else 500)
    if inc.kind == "latency":
        _positive(problems, f"{where}.latency_multiplier", inc.latency_multiplier, _MAX_MULTIPLIER)
        if not 0 <= inc.latency_add_ms <= _MAX_ADD_MS:
            problems.append(f"{where}.latency_add_ms: expected a number in [0, {_MAX_ADD_MS:g}], "
                            f"got {inc.latency_add_ms}")
        if inc.latency_multiplier == 1.0 and inc.latency_add_ms == 0.0:
            problems.append(f"{where}: expected latency_multiplier != 1 or latency_add_ms > 0 "
                            f"for a latency incident, got neither")
    else:
        _status(problems, f"{where}.status", status, 400)
        if inc.kind == "error_ratio" and inc.error_ratio is None:
            problems.append(f"{where}.error_ratio: required field is missing")
        ratio = 1.0 if inc.kind == "outage" or inc.error_ratio is None else inc.error_ratio
        if inc.kind == "outage" and inc.error_ratio not in (None, 1.0):
            problems.append(f"{where}.error_ratio: expected none for an outage (always 1), "
                            f"got {inc.error_ratio}")
        _ratio(problems, f"{where}.error_ratio", ratio, lo_open=True)
    if inc.kind == "spikes":
        if inc.every is None:
            problems.append(f"{where}.every: required field is missing")
        else:
            every_s = _whole_s(problems, f"{where}.every", inc.every, positive=True)
        burst_s = _whole_s(problems, f"{where}.burst", inc.burst, positive=True)
        if 0 < every_s <= burst_s:
            problems.append(f"{where}.burst: expected shorter than every ({format_duration(every_s)}), "
                            f"got {format_duration(burst_s)}")
    elif inc.every is not None:
        problems.append(f"{where}.every: expected only for kind 'spikes', got kind {inc.kind!r}")
    if len(problems) > n0:
        return None
    return PlannedIncident(i, inc.name or f"{inc.kind}-{i}", inc.kind, start_s, start_s + length_s,
                           inc.service or "*", inc.route or "*", np.array(chans, np.intp), ratio,
                           status, inc.latency_multiplier, inc.latency_add_ms, every_s, burst_s)


def compile_scenario(scn: Scenario, source: str = "<scenario>") -> ScenarioPlan:
    """Check ``scn`` across fields and resolve it to numbers.

    Raises :class:`~engine.errors.ConfigError` with one line per problem,
    ``source: $.path: expected ..., got ...``.
    """
    problems: list[str] = []
    at = f"{source}: $"
    start_ms = 0
    try:
        start_ms = round(parse_start_s(scn.start) * 1000)
    except ValueError as e:
        problems.append(f"{at}.start: {e}")
    duration_s = _whole_s(problems, f"{at}.duration", scn.duration, positive=True)
    rate = 0.0
    try:
        rate = parse_rate_per_s(scn.rate)
    except ValueError as e:
        problems.append(f"{at}.rate: {e}")
    if not scn.services:
        problems.append(f"{at}.services: expected at least one service, got none")
    channels: list[tuple[str, str, str]] = []
    share: list[float] = []
    median: list[float] = []
    sigma: list[float] = []
    names: set[str] = set()
    for i, svc in enumerate(scn.services):
        w = f"{at}.services[{i}]"
        if not svc.name or svc.name in names:
            problems.append(f"{w}.name: expected a unique non-empty name, got {svc.name!r}")
        names.add(svc.name)
        _positive(problems, f"{w}.share", svc.share)
        if not svc.routes:
            problems.append(f"{w}.routes: expected at least one route, got none")
        seen: set[tuple[str, str]] = set()
        route_total = sum(r.share for r in svc.routes if r.share > 0) or 1.0
        for j, r in enumerate(svc.routes):
            wr = f"{w}.routes[{j}]"
            if (r.route, r.method) in seen:
                problems.append(f"{wr}: expected a unique route and method, got {r.method} {r.route}")
            seen.add((r.route, r.method))
            _positive(problems, f"{wr}.share", r.share)
            med = r.latency_median_ms if r.latency_median_ms is not None else scn.latency_median_ms
            sig = r.latency_sigma if r.latency_sigma is not None else scn.latency_sigma
            if r.latency_median_ms is not None:
                _positive(problems, f"{wr}.latency_median_ms", med, _MAX_LATENCY_MS)
            if r.latency_sigma is not None and not 0 <= sig <= 3:
                problems.append(f"{wr}.latency_sigma: expected a number in [0, 3], got {sig}")
            channels.append((svc.name, r.route, r.method))
            share.append(svc.share * r.share / route_total)
            median.append(med)
            sigma.append(sig)
    _positive(problems, f"{at}.latency_median_ms", scn.latency_median_ms, _MAX_LATENCY_MS)
    if not 0 <= scn.latency_sigma <= 3:
        problems.append(f"{at}.latency_sigma: expected a number in [0, 3], got {scn.latency_sigma}")
    _ratio(problems, f"{at}.error_ratio", scn.error_ratio)
    _ratio(problems, f"{at}.client_error_ratio", scn.client_error_ratio)
    _status(problems, f"{at}.error_status", scn.error_status, 400)
    _status(problems, f"{at}.client_error_status", scn.client_error_status, 400)
    d = scn.diurnal
    if not 0 <= d.amplitude <= 1:
        problems.append(f"{at}.diurnal.amplitude: expected a number in [0, 1], got {d.amplitude}")
    peak_s = _whole_s(problems, f"{at}.diurnal.peak", d.peak, positive=False)
    period_s = _whole_s(problems, f"{at}.diurnal.period", d.period, positive=True)
    aggregate_s = 0
    if scn.aggregate is not None:
        aggregate_s = _whole_s(problems, f"{at}.aggregate", scn.aggregate, positive=True)
    incidents = [p for i, inc in enumerate(scn.incidents)
                 if (p := _plan_incident(problems, f"{at}.incidents[{i}]", i, inc,
                                                 duration_s=duration_s, channels=channels))]
    if problems:
        raise ConfigError(problems)
    shares = np.array(share, np.float64)
    # At most about 500 k events per block (10 min at up to ~800 req/s at the diurnal peak); blocks
    # hold whole aggregation buckets. The block size depends on the scenario only, never on chunking.
    base_block_s = max(1, min(600, int(500_000 / (rate * (1 + d.amplitude)))))
    block_s = aggregate_s * max(1, base_block_s // aggregate_s) if aggregate_s else base_block_s
    return ScenarioPlan(scn.name, start_ms, duration_s, rate, channels, shares / shares.sum(),
                        np.array(median, np.float64), np.array(sigma, np.float64), d.amplitude,
                        float(peak_s), float(period_s), scn.error_ratio, scn.error_status,
                        scn.client_error_ratio, scn.client_error_status, incidents, aggregate_s, block_s)


def parse_scenario(data: Any, source: str = "<scenario>") -> Scenario:
    """Decode an already-parsed YAML/JSON document into a :class:`Scenario` (ConfigError if bad)."""
    if not isinstance(data, dict):
        raise ConfigError([f"{source}: $: expected a mapping with 'services', got {type(data).__name__}"])
    try:
        return msgspec.convert(data, Scenario)
    except msgspec.ValidationError as e:
        raise ConfigError([msgspec_problem(source, "", e)]) from None


def load_scenario(path: str | Path) -> Scenario:
    """Read and decode a scenario YAML file."""
    data = read_yaml(path)
    return parse_scenario(data, str(path))


def preset(name: str) -> Scenario:
    """The named preset scenario (``demo``, ``outage``, ``slow-burn``, ``low-traffic``, ``spikes``)."""
    if name not in PRESETS:
        raise ConfigError([f"--preset: expected one of {', '.join(sorted(PRESETS))}, got {name!r}"])
    return parse_scenario(PRESETS[name], f"preset {name}")


# ---------------------------------------------------------------------------------------------
# Ground truth


class IncidentTruth(msgspec.Struct, frozen=True, kw_only=True):
    """Where an incident really was: epoch seconds ``[start_s, end_s)`` and what it did."""

    id: int
    name: str
    kind: str
    service: str
    route: str
    start_s: float
    end_s: float
    start: str
    end: str
    error_ratio: float | None
    status: int | None
    latency_multiplier: float | None
    latency_add_ms: float | None
    every_s: int | None
    burst_s: int | None


def _rfc3339(epoch_ms: int) -> str:
    t = dt.datetime.fromtimestamp(epoch_ms / 1000, dt.UTC)
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def ground_truth(plan: ScenarioPlan) -> list[IncidentTruth]:
    """One row per incident of ``plan``, with absolute times."""
    rows = []
    for p in plan.incidents:
        errors = p.kind != "latency"
        a_ms, b_ms = plan.start_ms + p.start_s * 1000, plan.start_ms + p.end_s * 1000
        rows.append(IncidentTruth(
            id=p.index, name=p.name, kind=p.kind, service=p.service, route=p.route,
            start_s=a_ms / 1000, end_s=b_ms / 1000, start=_rfc3339(a_ms), end=_rfc3339(b_ms),
            error_ratio=p.error_ratio if errors else None, status=p.status if errors else None,
            latency_multiplier=None if errors else p.latency_multiplier,
            latency_add_ms=None if errors else p.latency_add_ms,
            every_s=p.every_s or None, burst_s=p.burst_s or None))
    return rows


def write_truth(rows: list[IncidentTruth], path: str | Path) -> None:
    """Write the ground truth as CSV (``.csv``) or as a JSON array (any other suffix)."""
    p = Path(path)
    if p.suffix.lower() == ".csv":
        fields = list(IncidentTruth.__struct_fields__)
        with p.open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(fields)
            for r in rows:
                w.writerow(["" if (v := getattr(r, k)) is None else v for k in fields])
    else:
        p.write_bytes(msgspec.json.format(msgspec.json.encode(rows)) + b"\n")


# ---------------------------------------------------------------------------------------------
# Drawing events


@dataclass(frozen=True)
class EventColumns:
    """Generated events, columnar: epoch ms, channel index, status, latency in whole microseconds."""

    ts_ms: I64
    channel: npt.NDArray[np.int32]
    status: npt.NDArray[np.int16]
    latency_us: I64
    weight: I64 | None = None

    def __len__(self) -> int:
        return int(self.ts_ms.shape[0])

    def slice(self, a: int, b: int) -> EventColumns:
        """Rows ``a`` to ``b`` (views, no copy)."""
        w = None if self.weight is None else self.weight[a:b]
        return EventColumns(self.ts_ms[a:b], self.channel[a:b], self.status[a:b], self.latency_us[a:b], w)

    @staticmethod
    def concat(parts: list[EventColumns]) -> EventColumns:
        """All rows of ``parts`` in order (an empty batch for no parts)."""
        if not parts:
            return EventColumns(np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros(0, np.int16),
                                np.zeros(0, np.int64))
        w = None if parts[0].weight is None else np.concatenate([p.weight for p in parts
                                                                  if p.weight is not None])
        return EventColumns(np.concatenate([p.ts_ms for p in parts]),
                            np.concatenate([p.channel for p in parts]),
                            np.concatenate([p.status for p in parts]),
                            np.concatenate([p.latency_us for p in parts]), w)


def expected_rate_per_s(plan: ScenarioPlan, offset_s: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Expected requests/s of the whole scenario at ``offset_s`` seconds from its start."""
    tod = (plan.start_ms / 1000 + offset_s) % plan.diurnal_period_s
    return plan.rate_per_s * (1 + plan.amplitude * np.cos(2 * np.pi * (tod - plan.peak_s)
                                                          / plan.diurnal_period_s))


def _incident_cells(plan: ScenarioPlan, b0: int, n_s: int) -> tuple[np.ndarray, ...] | None:
    """Per (second, channel) cell of the block: incident error probability, status, latency terms."""
    hits = [p for p in plan.incidents if p.start_s < b0 + n_s and p.end_s > b0]
    if not hits:
        return None
    shape = (n_s, len(plan.channels))
    p_err, status = np.zeros(shape), np.zeros(shape, np.int16)
    mult, add = np.ones(shape), np.zeros(shape)
    for p in hits:
        rows = np.arange(max(p.start_s, b0), min(p.end_s, b0 + n_s))
        if p.kind == "spikes":
            rows = rows[(rows - p.start_s) % p.every_s < p.burst_s]
        ix = np.ix_(rows - b0, p.channels)
        if p.kind == "latency":
            mult[ix] *= p.latency_multiplier
            add[ix] = add[ix] * p.latency_multiplier + p.latency_add_ms
        else:
            # Independent causes: P(fail) = 1 - prod(1 - p_i); a later incident's status wins.
            p_err[ix] = 1 - (1 - p_err[ix]) * (1 - p.error_ratio)
            status[ix] = p.status
    return p_err.ravel(), status.ravel(), mult.ravel(), add.ravel()


def _draw_block(plan: ScenarioPlan, seed: int, k: int) -> EventColumns:
    b0 = k * plan.block_s
    n_s = min(plan.block_s, plan.duration_s - b0)
    rng = np.random.default_rng(np.random.SeedSequence([seed, k]))
    n_c = len(plan.channels)
    mid_s = np.arange(b0, b0 + n_s, dtype=np.float64) + 0.5
    lam = expected_rate_per_s(plan, mid_s)[:, None] * plan.share[None, :]
    counts = rng.poisson(lam).ravel()  # second-major: cell = (second - b0) * n_c + channel
    cell = np.repeat(np.arange(counts.size), counts)
    m = cell.size
    sec = cell // n_c + b0
    ch = (cell % n_c).astype(np.int32)
    ts_local = sec * 1000 + rng.integers(0, 1000, m)
    u = rng.random(m)
    z = rng.standard_normal(m)
    lat_ms = plan.median_ms[ch] * np.exp(plan.sigma[ch] * z)
    status = np.full(m, 200, np.int16)
    cells = _incident_cells(plan, b0, n_s)
    p_inc = np.zeros(m) if cells is None else cells[0][cell]
    base_edge = p_inc + (1 - p_inc) * plan.error_ratio
    client = u < base_edge + (1 - base_edge) * plan.client_error_ratio
    status[client] = plan.client_error_status
    status[u < base_edge] = plan.error_status
    if cells is not None:
        inc = u < p_inc
        status[inc] = cells[1][cell[inc]]
        lat_ms = lat_ms * cells[2][cell] + cells[3][cell]
    lat_us = np.rint(lat_ms * 1000).astype(np.int64)
    if plan.aggregate_s:
        return _aggregate(plan, b0, sec=sec, ch=ch, status=status, lat_us=lat_us)
    order = np.argsort(ts_local, kind="stable")
    return EventColumns(ts_local[order] + plan.start_ms, ch[order], status[order], lat_us[order])


def _aggregate(plan: ScenarioPlan, b0: int, *, sec: I64, ch: npt.NDArray[np.int32],
               status: npt.NDArray[np.int16], lat_us: I64) -> EventColumns:
    bucket = (sec - b0) // plan.aggregate_s
    lat_ms = -(-lat_us // 1000)  # round up: x <= T ms  <=>  ceil(x) <= T for whole-ms T
    order = np.lexsort((lat_ms, status, ch, bucket))
    keys = np.stack([bucket[order], ch[order], status[order], lat_ms[order]])
    new = np.ones(order.size, bool)
    new[1:] = np.any(keys[:, 1:] != keys[:, :-1], axis=0)
    first = np.flatnonzero(new)
    weight = np.diff(np.append(first, order.size)).astype(np.int64)
    k = keys[:, first]
    ts = plan.start_ms + (b0 + k[0] * plan.aggregate_s) * 1000
    return EventColumns(ts.astype(np.int64), k[1].astype(np.int32), k[2].astype(np.int16),
                        k[3].astype(np.int64) * 1000, weight)


def generate_blocks(plan: ScenarioPlan, seed: int) -> Iterator[tuple[int, EventColumns]]:
    """Yield ``(end offset in seconds, events)`` for each block of event time, in time order."""
    n_blocks = -(-plan.duration_s // plan.block_s)
    for k in range(n_blocks):
        yield min((k + 1) * plan.block_s, plan.duration_s), _draw_block(plan, seed, k)


def generate_events(plan: ScenarioPlan, seed: int) -> EventColumns:
    """All events of ``plan`` at once (for tests and small scenarios)."""
    return EventColumns.concat([cols for _, cols in generate_blocks(plan, seed)])


# ---------------------------------------------------------------------------------------------
# NDJSON formatting: fixed-width rows of bytes, NUL-padded, then the NULs deleted.


def _put_int(buf: npt.NDArray[np.uint8], col: int, v: I64, width: int, pad: bool) -> None:
    """Write ``v`` right-aligned into ``width`` columns; leading zeros become NUL unless ``pad``."""
    if not v.size:
        return
    lo, hi = int(v.min()), int(v.max())
    if hi < 2**31:
        v = v.astype(np.int32)  # 32-bit division is about twice as fast
    pad = pad or lo >= 10 ** (width - 1)
    for k in range(width):
        p = 10 ** (width - 1 - k)
        if not pad and hi < p and k < width - 1:
            continue  # a leading zero in every row: stays NUL
        if lo // p == hi // p and (pad or lo >= p or k == width - 1):
            buf[:, col + k] = 48 + lo // p % 10  # a digit shared by every row (timestamps' prefix)
            continue
        digit = v // v.dtype.type(p)
        digit %= 10
        digit += 48
        if pad or k == width - 1:
            buf[:, col + k] = digit
        else:
            buf[:, col + k] = np.where(v >= p, digit, 0)


def _width(v: I64) -> int:
    return len(str(int(v.max()))) if v.size else 1


def format_ndjson(cols: EventColumns, channels: list[tuple[str, str, str]]) -> bytes:
    """NDJSON lines for ``cols``: ``{"ts","service","route","method","status","latency_ms"[,"weight"]}``.

    ``ts`` is epoch seconds with 3 decimals, ``latency_ms`` has 3 decimals (whole microseconds).
    """
    n = len(cols)
    if n == 0:
        return b""
    if int(cols.ts_ms.min()) < 0 or int(cols.latency_us.min()) < 0:
        raise ValueError("expected ts_ms >= 0 and latency_us >= 0")
    middles = [(f',"service":{_json(s)},"route":{_json(r)},"method":{_json(m)},"status":').encode()
               for s, r, m in channels]
    mid_w = max(len(b) for b in middles)
    table = np.zeros((len(middles), mid_w), np.uint8)
    for i, b in enumerate(middles):
        table[i, : len(b)] = np.frombuffer(b, np.uint8)
    ts_s, ts_frac = np.divmod(cols.ts_ms, 1000)
    lat_i, lat_frac = np.divmod(cols.latency_us, 1000)
    pieces: list[bytes | tuple[I64, int, bool] | None] = [
        b'{"ts":', (ts_s, _width(ts_s), False), b".", (ts_frac, 3, True), None,
        (cols.status.astype(np.int64), 3, True), b',"latency_ms":', (lat_i, _width(lat_i), False), b".",
        (lat_frac, 3, True)]
    if cols.weight is not None:
        pieces += [b',"weight":', (cols.weight, _width(cols.weight), False)]
    pieces.append(b"}\n")
    width = sum(mid_w if p is None else len(p) if isinstance(p, bytes) else p[1] for p in pieces)
    buf = np.zeros((n, width), np.uint8)
    col = 0
    for p in pieces:
        if p is None:
            buf[:, col: col + mid_w] = table[cols.channel]
            col += mid_w
        elif isinstance(p, bytes):
            buf[:, col: col + len(p)] = np.frombuffer(p, np.uint8)
            col += len(p)
        else:
            _put_int(buf, col, *p)
            col += p[1]
    return buf.tobytes().translate(None, b"\0")


def _json(s: str) -> str:
    return msgspec.json.encode(s).decode()


def write_events(plan: ScenarioPlan, seed: int, out: IO[bytes], *,
                 chunk_events: int = DEFAULT_CHUNK_EVENTS,
                 on_progress: Callable[[int, int], None] | None = None) -> int:
    """Generate and write every event of ``plan`` as NDJSON to ``out``; returns the line count.

    Lines are formatted ``chunk_events`` at a time; ``on_progress(seconds done, lines so far)`` is
    called after each block of event time.
    """
    if chunk_events < 1:
        raise ValueError(f"expected chunk_events >= 1, got {chunk_events}")
    lines = 0
    for done_s, cols in generate_blocks(plan, seed):
        for a in range(0, len(cols), chunk_events):
            out.write(format_ndjson(cols.slice(a, a + chunk_events), plan.channels))
        lines += len(cols)
        if on_progress is not None:
            on_progress(done_s, lines)
    return lines


@contextlib.contextmanager
def open_output(path: str | None) -> Iterator[IO[bytes]]:
    """Binary output: stdout for None or ``-``, else a file compressed by suffix (``.gz``, ``.zst``).

    A regular file is written under a ``.part`` name and renamed when complete; anything else that
    exists at ``path`` (``/dev/null``, a FIFO, a symlink) is written in place, never replaced.
    """
    if path in (None, "-"):
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    final = Path(path)
    in_place = final.is_symlink() or (final.exists() and not final.is_file())
    target = final if in_place else final.with_name(final.name + ".part")
    try:
        with contextlib.ExitStack() as stack:
            raw = stack.enter_context(target.open("wb"))
            out: IO[bytes] = raw
            if final.suffix == ".gz":
                # Level 1: several times faster than the default 9 on NDJSON, for ~20 % more bytes.
                gz = gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=1, mtime=0)
                out = cast(IO[bytes], stack.enter_context(gz))
            elif final.suffix == ".zst":
                out = stack.enter_context(zstandard.ZstdCompressor(level=3).stream_writer(
                    raw, closefd=False))
            yield out
        if not in_place:
            os.replace(target, final)
    finally:
        if not in_place:
            target.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# Command line


def register(subparsers: Any) -> None:
    """Add the ``generate`` sub-command to an argparse sub-parser collection."""
    p = subparsers.add_parser(
        "generate", help="write seeded synthetic traffic with incidents as NDJSON",
        description="Write seeded synthetic request events (NDJSON) for a preset or scenario file. "
                    f"Presets: {', '.join(PRESETS)}.")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--preset", choices=list(PRESETS), help="built-in scenario (default: demo)")
    src.add_argument("--scenario", metavar="FILE", help="scenario YAML file")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--out", "-o", metavar="FILE", help="output file (.gz/.zst compress; default stdout)")
    p.add_argument("--start", help="start time, RFC 3339 or epoch seconds (overrides the scenario)")
    p.add_argument("--duration", help="length of traffic, e.g. 6h (overrides the scenario)")
    p.add_argument("--rate", help="mean requests/s, e.g. 50 or 1/min (overrides the scenario)")
    p.add_argument("--truth", metavar="FILE", help="write the incident ground truth (.csv or .json)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar or summary")
    p.set_defaults(func=run)


def _scenario_from_args(args: argparse.Namespace) -> tuple[Scenario, str]:
    if args.scenario:
        scn, source = load_scenario(args.scenario), str(args.scenario)
    else:
        name = args.preset or "demo"
        scn, source = preset(name), f"preset {name}"
    problems: list[str] = []
    changes: dict[str, Any] = {}
    for flag, field, check in (("--start", "start", parse_start_s), ("--rate", "rate", parse_rate_per_s),
                               ("--duration", "duration", parse_duration_s)):
        value = getattr(args, field)
        if value is None:
            continue
        try:
            check(value)
        except ValueError as e:
            problems.append(f"{flag}: {e}")
        changes[field] = value
    if args.seed < 0:
        problems.append(f"--seed: expected an integer >= 0, got {args.seed}")
    if problems:
        raise ConfigError(problems)
    if changes:
        scn = msgspec.structs.replace(scn, **changes)
        source += " with " + " ".join(f"--{k} {v}" for k, v in changes.items())
    return scn, source


def run(args: argparse.Namespace) -> int:
    """Run ``sloburn generate``; 0 on success, 2 on a bad scenario or flag, 1 on an I/O failure."""
    try:
        scn, source = _scenario_from_args(args)
        plan = compile_scenario(scn, source)
    except ConfigError as e:
        for line in e.problems:
            print(line, file=sys.stderr)
        return EXIT_USAGE
    to_file = args.out not in (None, "-")
    t0 = time.perf_counter()
    try:
        if args.truth:
            write_truth(ground_truth(plan), args.truth)
        with open_output(args.out) as out:
            if to_file and not args.quiet:
                lines = _write_with_progress(plan, args.seed, out)
            else:
                lines = write_events(plan, args.seed, out)
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): stop quietly, and keep Python from complaining at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAIL
    except OSError as e:
        target = e.filename if args.truth and e.filename == args.truth else args.out
        print(f"sloburn generate: cannot write {target}: {e.strerror or e}", file=sys.stderr)
        return EXIT_FAIL
    if to_file and not args.quiet:
        wall_s = time.perf_counter() - t0
        print(f"wrote {lines:,} events ({format_duration(plan.duration_s)} of {plan.name}, seed "
              f"{args.seed}) to {args.out} in {wall_s:.1f} s", file=sys.stderr)
    return EXIT_OK


def _write_with_progress(plan: ScenarioPlan, seed: int, out: IO[bytes]) -> int:
    with Progress(TextColumn("[bold]generate"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                  TextColumn("{task.fields[lines]:,} events"), TimeElapsedColumn(), TimeRemainingColumn(),
                  console=Console(stderr=True), transient=True) as prog:
        task = prog.add_task("generate", total=plan.duration_s, lines=0)

        def progress(done_s: int, lines: int) -> None:
            prog.update(task, completed=done_s, lines=lines)

        return write_events(plan, seed, out, on_progress=progress)
