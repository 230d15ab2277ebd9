"""Mapping files: how records of other schemas, and Prometheus series, become events.

A mapping file is YAML, named by ``events.mapping_file``. Its ``records`` section serves the
``mapping`` format; its ``prometheus`` section the ``prometheus_json``, ``prometheus_text`` and
``openmetrics`` formats (see :mod:`engine.formats.aggregates`)::

    records:
      # JSON lines: an event field -> a dotted path in the record ...
      fields: {ts: "@t", status: "props.StatusCode", latency: "props.Elapsed",
               service: "props.App", route: "props.RequestPath", method: "props.Method"}
      # ... or text lines: one regex whose named groups are event fields
      # regex: '^(?P<ts>\\S+) (?P<method>[A-Z]+) (?P<route>\\S+) (?P<status>\\d+) (?P<latency>[\\d.]+)ms$'
      extract: {route: '^(?:https?://[^/]+)?([^?]*)'}   # optional: a regex on a field's text;
                                                         # its group 1 (or the group named like
                                                         # the field) is kept
      ts_format: auto      # auto | s | ms | us | ns | rfc3339 | clf | a strptime format ("%d/%m/%Y %H:%M:%S")
      latency_unit: ms     # ms | s | us | ns
      service: shop        # the service of records that name none
    prometheus:
      total: http_requests_total{job="shop"}
      errors: http_requests_total{job="shop", code=~"5.."}     # or good: ...
      service_label: job   # or service: shop
      route_label: handler
      latency: {buckets: http_request_duration_seconds_bucket{job="shop"}, threshold_le: 0.3}

Event fields of ``records``: ``ts`` (required), ``status``, ``latency``, ``service``, ``route``,
``method``, ``weight``. A strptime format without a zone (``%z``) is read as UTC. Rejections of
the ``mapping`` format: ``malformed_line`` (a text line the regex does not match),
``malformed_json``, ``not_an_object``, ``missing_ts``, ``bad_ts``, ``missing_status`` (a status
field is mapped but absent), ``bad_status``, ``bad_latency``, ``bad_weight``, ``wrong_type`` (a
service, route or method that is not text), ``missing_service``.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

import msgspec
import numpy as np

from engine.batch import NO_STATUS, EventBatch, Rejections
from engine.errors import ConfigError
from engine.formats.registry import (
    KeyInterner,
    epoch_ns,
    finish_batch,
    lookup,
    number_column,
    rfc3339_ns,
    status_column,
)

if TYPE_CHECKING:
    from engine.events import EventDecoder

EVENT_FIELDS: Final = ("ts", "status", "latency", "service", "route", "method", "weight")
_LATENCY_US: Final = {"ms": 1e3, "s": 1e6, "us": 1.0, "ns": 1e-3}


class _Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class RecordsMapping(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The ``records`` section: JSON ``fields`` or a text ``regex``, exactly one."""

    fields: dict[str, str] | None = None
    regex: str | None = None
    extract: dict[str, str] = msgspec.field(default_factory=dict)
    ts_format: str = "auto"
    latency_unit: Literal["ms", "s", "us", "ns"] = "ms"
    service: str | None = None


class PrometheusLatency(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Histogram buckets: the ``le`` of ``threshold_le`` counts the requests fast enough."""

    buckets: str
    threshold_le: float | str
    le_unit: Literal["s", "ms"] = "s"


class PrometheusMapping(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The ``prometheus`` section: which series count requests, which of them failed."""

    total: str | None = None
    errors: str | None = None
    good: str | None = None
    service: str | None = None
    service_label: str | None = None
    route_label: str | None = None
    method_label: str | None = None
    latency: PrometheusLatency | None = None


class MappingFile(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    records: RecordsMapping | None = None
    prometheus: PrometheusMapping | None = None


def load_mapping(path: str | None, section: str) -> MappingFile:
    """Read and check a mapping file that must have ``section``; ConfigError lists every problem."""
    from engine.config import msgspec_problem, read_yaml

    if not path:
        raise ConfigError([f"$.events.mapping_file: required by this format (a YAML file with a "
                           f"'{section}' section), got none"])
    raw = read_yaml(Path(path))
    try:
        mapping = msgspec.convert(raw, MappingFile)
    except msgspec.ValidationError as e:
        raise ConfigError([msgspec_problem(path, "", e)]) from None
    if getattr(mapping, section) is None:
        raise ConfigError([f"{path}: $.{section}: required by this format, got no such section"])
    problems: list[str] = []
    if mapping.records is not None:
        _check_records(problems, path, mapping.records)
    if problems:
        raise ConfigError(problems)
    return mapping


def _check_records(problems: list[str], path: str, rec: RecordsMapping) -> None:
    where = f"{path}: $.records"
    if (rec.fields is None) == (rec.regex is None):
        problems.append(f"{where}: expected exactly one of 'fields' or 'regex', got "
                        f"{'both' if rec.fields is not None else 'neither'}")
        return
    names = set(rec.fields or {})
    if rec.regex is not None:
        try:
            names = set(re.compile(rec.regex).groupindex)
        except re.error as e:
            problems.append(f"{where}.regex: expected a regular expression, got {rec.regex!r}: {e}")
            return
    unknown = sorted(names - set(EVENT_FIELDS))
    if unknown:
        problems.append(f"{where}: expected event fields among {', '.join(EVENT_FIELDS)}, got "
                        f"{', '.join(unknown)}")
    if "ts" not in names:
        problems.append(f"{where}: expected a 'ts' field or named group, got none")
    for name, pattern in rec.extract.items():
        if name not in EVENT_FIELDS:
            problems.append(f"{where}.extract.{name}: expected an event field, got {name!r}")
        try:
            re.compile(pattern)
        except re.error as e:
            problems.append(f"{where}.extract.{name}: expected a regular expression, got {pattern!r}: {e}")
    fmt = rec.ts_format
    if fmt not in ("auto", "s", "ms", "us", "ns", "rfc3339", "clf") and "%" not in fmt:
        problems.append(f"{where}.ts_format: expected auto, s, ms, us, ns, rfc3339, clf or a strptime "
                        f"format, got {fmt!r}")


class MappingDecoder:
    """Records of another schema (JSON lines or text lines), mapped by the ``records`` section."""

    def __init__(self, events: EventDecoder) -> None:
        mapping = load_mapping(events.config.mapping_file, "records")
        assert mapping.records is not None
        self.spec = spec = mapping.records
        self._interner = KeyInterner(events.keys, spec.service or events.config.default_service)
        self._regex = re.compile(spec.regex) if spec.regex is not None else None
        self._extract = {k: re.compile(v) for k, v in spec.extract.items()}
        self._mapped = set(spec.fields or {}) | set(self._regex.groupindex if self._regex else ())
        self._generic = msgspec.json.Decoder()
        self._strptime_cache: dict[str, int | None] = {}

    def decode(self, data: bytes) -> tuple[EventBatch, Rejections]:
        rej = Rejections()
        records = self._text_records(data, rej) if self._regex is not None else self._json_records(data, rej)
        if not records:
            return EventBatch.empty(), rej
        cols = {f: [r.get(f) for r in records] for f in EVENT_FIELDS}
        for name, pattern in self._extract.items():
            cols[name] = [_extract(pattern, name, v) for v in cols[name]]
        ts_ns, missing_ts, bad_ts = self._times(cols["ts"])
        status, missing_status, bad_status = status_column(cols["status"])
        if "status" not in self._mapped:
            status[:] = NO_STATUS
        lat, _, bad_lat = number_column(cols["latency"])
        weight_f, missing_w, bad_w = number_column(cols["weight"])
        bad_w |= ~missing_w & ~bad_w & (weight_f != np.floor(weight_f))
        weight = np.where(missing_w | bad_w, 1, weight_f).astype(np.int64)
        wrong = np.fromiter((any(v is not None and not isinstance(v, str) for v in triple) for triple in
                             zip(cols["service"], cols["route"], cols["method"], strict=True)),
                            np.bool_, len(records))
        keys = self._interner.ids(*(_texts(cols[f]) for f in ("service", "route", "method")))
        masks = [("missing_ts", missing_ts), ("bad_ts", bad_ts), ("wrong_type", wrong),
                 ("bad_status", bad_status), ("bad_latency", bad_lat), ("bad_weight", bad_w)]
        if "status" in self._mapped:
            masks.insert(3, ("missing_status", missing_status))
        return finish_batch(rej, ts_ns, keys, status, lat * _LATENCY_US[self.spec.latency_unit],
                            weight, masks=masks), rej

    def _text_records(self, data: bytes, rej: Rejections) -> list[dict[str, Any]]:
        assert self._regex is not None
        out = []
        for raw in data.decode("utf-8", "replace").split("\n"):
            line = raw.rstrip("\r")
            if not line.strip():
                continue
            m = self._regex.fullmatch(line)
            if m is None:
                rej.add("malformed_line")
            else:
                out.append(m.groupdict())
        return out

    def _json_records(self, data: bytes, rej: Rejections) -> list[dict[str, Any]]:
        fields = self.spec.fields or {}
        out = []
        for line in data.split(b"\n"):
            if not line.strip():
                continue
            try:
                rec = self._generic.decode(line)
            except msgspec.DecodeError:
                rej.add("malformed_json")
                continue
            if not isinstance(rec, dict):
                rej.add("not_an_object")
                continue
            out.append({name: lookup(rec, path) for name, path in fields.items()})
        return out

    def _times(self, values: list[Any]) -> tuple[Any, Any, Any]:
        fmt = self.spec.ts_format
        if fmt == "rfc3339":
            return rfc3339_ns([v if isinstance(v, str) else None if v is None else "" for v in values])
        if fmt == "clf":
            from engine.formats.logs import clf_time_ns

            missing = np.fromiter((v is None for v in values), np.bool_, len(values))
            ns, bad = clf_time_ns([v.encode() if isinstance(v, str) else b"" for v in values])
            return ns, missing, bad & ~missing
        if "%" in fmt:
            parsed = [None if v is None else self._strptime(v) for v in values]
            missing = np.fromiter((v is None for v in values), np.bool_, len(values))
            bad = np.fromiter((p is None for p in parsed), np.bool_, len(values)) & ~missing
            return np.array([p or 0 for p in parsed], np.int64), missing, bad
        return epoch_ns(values, fmt)

    def _strptime(self, value: Any) -> int | None:
        """ns of a time written with the strptime format, cached per distinct text."""
        if not isinstance(value, str):
            return None
        if value not in self._strptime_cache:
            try:
                t = datetime.strptime(value, self.spec.ts_format)
            except ValueError:
                self._strptime_cache[value] = None
            else:
                t = t if t.tzinfo is not None else t.replace(tzinfo=UTC)
                delta = t - datetime(1970, 1, 1, tzinfo=UTC)
                ns = (delta.days * 86400 + delta.seconds) * 10**9 + delta.microseconds * 1000
                self._strptime_cache[value] = ns if ns >= 0 else None
        return self._strptime_cache[value]


def _extract(pattern: re.Pattern[str], name: str, value: Any) -> Any:
    if not isinstance(value, str):
        return value
    m = pattern.search(value)
    if m is None:
        return None
    if name in pattern.groupindex:
        return m.group(name)
    return m.group(1) if pattern.groups else m.group(0)


def _texts(values: list[Any]) -> list[Any]:
    return [v if isinstance(v, str) else None for v in values]
