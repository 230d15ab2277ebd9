"""Request events: NDJSON, JSON and msgpack buffers (or ready-made dicts) into a columnar EventBatch.

One event, with the default field names of :class:`~engine.config.EventsConfig`::

    {"ts": 1700000000.123, "service": "checkout", "route": "/pay", "method": "POST",
     "status": 503, "latency_ms": 41.7, "weight": 3, "labels": {"region": "eu"}}

Only ``ts`` is required, and ``service`` unless ``default_service`` is set; ``null`` means absent.
``status`` is an integer in 100..599 (absent: ``NO_STATUS``), the latency a number >= 0 in
``latency_unit`` (absent: NaN), ``weight`` an integer in 1..``MAX_WEIGHT`` (absent: 1), ``labels`` an
object of strings. Other fields are ignored.

Timestamps
    A number in ``ts_unit``; with ``auto`` the magnitude of each number decides: below 1e11 seconds,
    below 1e14 milliseconds, below 1e17 microseconds, else nanoseconds (so each unit is recognised for
    any time from 1973-03-03 to 2262). Strings are RFC 3339
    (``2023-11-14T22:13:20.123Z``, ``...+05:30``; ``t``, ``z`` and a space for ``T`` are accepted).
    Integers and strings are exact to the nanosecond (fraction digits past the ninth are cut);
    fractional numbers are rounded to the microsecond in s and ms (float64 holds no finer step at
    present-day epochs) and to the nanosecond in us and ns. Times before 1970 or after 2262-04-11
    (the int64 nanosecond range) are rejected as ``bad_ts``.

Rejections, one reason per record (the first that applies)
    ``malformed_json`` / ``malformed_msgpack`` (not parseable; a whole JSON or msgpack document that
    does not parse counts once), ``not_an_object``, ``missing_ts``, ``bad_ts``, ``wrong_type`` (a field
    of the wrong JSON type, e.g. ``"status": "503"``), ``bad_status``, ``bad_latency``, ``bad_weight``,
    ``missing_service``. Blank NDJSON lines carry nothing and are skipped.

Speed
    With plain (undotted) field names, records decode straight into msgspec Structs (one
    ``decode_lines`` call over the whole buffer); the columns come from one C-level pass per field,
    four nested dict lookups per event for the key and vectorised numpy checks (RFC 3339 strings
    included). Once keys have been seen, service, route and method decode as ``Literal`` types of
    the known values, so msgspec returns the very strings held in the key tables (no allocation,
    cached hashes, identity compares); a buffer with a new value is decoded again with plain strings
    and the known values are extended (up to 1,024 per field and 32 rebuilds, after which plain
    strings stay). When msgspec refuses a buffer, it is decoded again in blocks of about 64 KiB and
    each refused block line by line, so that every bad record is counted by reason and the good ones
    keep their order. Dotted field names (``http.status``) and fallbacks go through dicts, about ten
    times slower. Keys are interned before the timestamp and service checks, so a rejected record
    may still add its key to the table (an unused key costs nothing downstream).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from datetime import datetime
from operator import attrgetter
from typing import Annotated, Any, Final, Literal

import msgspec
import numpy as np
import numpy.typing as npt
from msgspec import Meta

from engine.batch import NO_STATUS, EventBatch, EventKey, KeyTable, Rejections
from engine.config import EventsConfig
from engine.errors import ConfigError, DecodeError

FORMATS: Final = ("auto", "ndjson", "json", "msgpack")
MAX_WEIGHT: Final = 1 << 40
"""Largest accepted weight: keeps sums over long windows far from int64 overflow."""

_I64_MAX: Final = (1 << 63) - 1
_UNITS: Final = ("s", "ms", "us", "ns")
_AUTO_BOUNDS = np.array([10**11, 10**14, 10**17], np.int64)  # unit index = searchsorted(bounds, ts)
_UNIT_NS = np.array([10**9, 10**6, 10**3, 1], np.int64)
_FLOAT_STEP_NS = np.array([1000, 1000, 1, 1], np.int64)  # rounding step of fractional numbers per unit
_LATENCY_TO_US: Final = {"us": 1.0, "ms": 1e3, "s": 1e6}
_BLOCK_BYTES: Final = 1 << 16
_LITERAL_MAX: Final = 1024  # distinct values of service, route or method kept as Literal types
_LITERAL_REBUILDS: Final = 32  # after that many new-value rebuilds, keys are decoded as plain str
_FIELDS: Final = ("ts", "service", "route", "method", "status", "latency", "weight", "labels")

_GET_TS, _GET_STATUS, _GET_LATENCY, _GET_WEIGHT = map(attrgetter, ("ts", "status", "latency", "weight"))
_MISSING: Final = object()
_WRONG: Final = object()

Bools = npt.NDArray[np.bool_]
Int64s = npt.NDArray[np.int64]


_ANY_TS: Final[Any] = int | float | str | None


def _event_type(
    rename: dict[str, str] | None, service: Any = str, route: Any = str, method: Any = str, *,
    ts: Any = _ANY_TS,
) -> Any:
    """The Struct records decode into; ``rename`` maps its attributes to the configured field names."""
    return msgspec.defstruct(
        "Event",
        [
            ("ts", ts) if ts is int else ("ts", ts, None),  # int: required, so never None
            ("service", service | None, None),
            ("route", route | None, ""),
            ("method", method | None, ""),
            ("status", Annotated[int, Meta(ge=100, le=599)] | None, None),
            ("latency", Annotated[float, Meta(ge=0)] | None, None),
            ("weight", Annotated[int, Meta(ge=1, le=MAX_WEIGHT)] | None, 1),
            ("labels", dict[str, str] | None, None),
        ],
        rename=rename,
        gc=False,  # no cycles possible; keeps a million decoded records out of the collector
    )


class _Decoders:
    """msgspec decoders into one event Struct type: NDJSON lines, one JSON and one msgpack document."""

    def __init__(self, event_type: Any) -> None:
        one_or_many = event_type | list[event_type]  # type: ignore[valid-type]
        self.lines = msgspec.json.Decoder(event_type)
        self.json = msgspec.json.Decoder(one_or_many)
        self.msgpack = msgspec.msgpack.Decoder(one_or_many)

    def decode(self, data: bytes | memoryview, fmt: str) -> list[Any]:
        if fmt == "ndjson":
            return self.lines.decode_lines(data)
        doc = (self.json if fmt == "json" else self.msgpack).decode(data)
        return doc if isinstance(doc, list) else [doc]


def _freeze(labels: Any) -> Any:
    return tuple(sorted(labels.items())) if isinstance(labels, dict) else labels


class EventDecoder:
    """Decodes buffers of request events into :class:`~engine.batch.EventBatch` columns.

    Parameters
    ----------
    config
        Field names (plain or dotted paths into nested objects), ``ts_unit``, ``latency_unit``,
        the default ``format`` and ``default_service``.
    keys
        The engine's key table: (service, route, method, labels) are interned there, so the ids in
        ``EventBatch.key`` are the engine's.
    """

    def __init__(self, config: EventsConfig, keys: KeyTable) -> None:
        names = (config.ts_field, config.service_field, config.route_field, config.method_field,
                 config.status_field, config.latency_field, config.weight_field, config.labels_field)
        problems = [f"$.events.{attr}: expected a field name or dotted path, got {name!r}"
                    for attr, name in zip(_FIELDS, names, strict=True)
                    if not name or "" in name.split(".")]
        if config.ts_unit != "auto" and config.ts_unit not in _UNITS:
            problems.append(f"$.events.ts_unit: expected auto, s, ms, us or ns, got {config.ts_unit!r}")
        if config.latency_unit not in _LATENCY_TO_US:
            problems.append(f"$.events.latency_unit: expected ms, s or us, got {config.latency_unit!r}")
        if problems:
            raise ConfigError(problems)
        self.config = config
        self.keys = keys
        self._names = names
        self._paths = tuple(tuple(name.split(".")) for name in names)
        # Plain, distinct names decode straight into Structs; anything else goes through dicts.
        self._fast = all("." not in n for n in names) and len(set(names)) == len(names)
        self._rename = dict(zip(_FIELDS, names, strict=True)) if self._fast else None
        self._type = _event_type(self._rename)
        self._any_json = msgspec.json.Decoder()
        self._any_msgpack = msgspec.msgpack.Decoder()
        typed = _Decoders(self._type)
        self._json = typed.json if self._fast else self._any_json
        self._msgpack = typed.msgpack if self._fast else self._any_msgpack
        self._lines = typed.lines if self._fast else self._any_json
        # Decoders whose service/route/method are Literal types of the values seen so far: msgspec then
        # hands back the very str objects held in the key tables (no allocation, cached hashes,
        # identity compares). A new value fails them, and the buffer is decoded again with plain str.
        self._known: _Decoders | None = None
        self._known_sizes = (0, 0, 0)
        # Whether the known decoders take integer timestamps only (then no per-event type check):
        # chosen at each rebuild from the last buffer decoded the slow way.
        self._known_int_ts = False
        self._last_int_ts = False
        self._known_n_raw = 0
        self._rebuilds_left = _LITERAL_REBUILDS
        # service -> route -> method -> labels (as decoded) -> KeyTable id, or -1 when the service is
        # missing. Plain nested dicts: CPython's specialised dict subscript makes four lookups of
        # cached-hash strings cheaper than one lookup of a fresh tuple (or of a dict subclass).
        self._key_ids: dict[Any, Any] = {}
        self._n_raw_keys = 0
        self._labels_seen = False  # once a labels object came, freeze labels right away
        self._ts_unit = -1 if config.ts_unit == "auto" else _UNITS.index(config.ts_unit)
        self._latency_scale = _LATENCY_TO_US[config.latency_unit]
        self._registered: dict[str, Any] = {}  # other format names -> engine.formats.registry decoders
        if config.format not in FORMATS:
            try:
                self._registered_format(config.format)
            except DecodeError as e:
                raise ConfigError([f"$.events.format: {e.detail}"]) from None

    # -- entry points --------------------------------------------------------------------------

    def decode(self, data: bytes | memoryview, fmt: str | None = None) -> tuple[EventBatch, Rejections]:
        """Decode one buffer; bad records are counted in the returned Rejections, never raised.

        Parameters
        ----------
        data
            The buffer: NDJSON lines, one JSON document, or one msgpack document.
        fmt
            ``ndjson``, ``json`` (an object or an array of objects), ``msgpack`` (a map or an array of
            maps) or ``auto`` (see :func:`sniff_format`); defaults to ``config.format``. Other names
            (access logs, OTLP, k6, aggregates, Prometheus, ``detect``) go to the decoders of
            :mod:`engine.formats.registry`.

        Raises
        ------
        DecodeError
            Only for an unknown ``fmt``, never for bad data.
        ConfigError
            When ``fmt`` needs a mapping file (``mapping``, Prometheus) and it is missing or invalid.
        """
        fmt = self.config.format if fmt is None else fmt
        if fmt not in FORMATS:
            return self._registered_format(fmt).decode(bytes(data))
        rej = Rejections()
        if fmt == "auto":
            fmt = sniff_format(data)
        if self._known is not None:
            try:
                return self._columns(self._known.decode(data, fmt), rej, int_ts=self._known_int_ts), rej
            except msgspec.DecodeError:
                pass
        if fmt == "ndjson":
            events = self._ndjson(data, rej)
        elif fmt == "json":
            events = self._document(data, rej, self._json, self._any_json, "malformed_json")
        else:
            events = self._document(data, rej, self._msgpack, self._any_msgpack, "malformed_msgpack")
        batch = self._columns(events, rej)
        if self._fast:
            self._learn_keys()
        return batch, rej

    def _registered_format(self, name: str) -> Any:
        """The decoder of a log, trace or metrics format (:mod:`engine.formats.registry`), made once."""
        found = self._registered.get(name)
        if found is None:
            from engine.formats.registry import make_decoder

            found = self._registered[name] = make_decoder(name, self)
        return found

    def _learn_keys(self) -> None:
        """Rebuild the Literal decoders when the key tables hold new values (up to a limit).

        They are also rebuilt when the kind of timestamps changed: integer-only ``ts`` (the usual
        epoch milliseconds or nanoseconds) skips a per-event type check; a buffer with another kind
        fails that decoder and, decoded again here, turns the rebuilt one back to any kind.
        """
        if self._rebuilds_left <= 0:
            return
        ts_changed = self._known is not None and self._last_int_ts != self._known_int_ts
        if self._n_raw_keys == self._known_n_raw and not ts_changed:
            return
        self._known_n_raw = self._n_raw_keys
        seen: tuple[set[str], set[str], set[str]] = (set(), set(), set())
        for service, routes in self._key_ids.items():
            seen[0].add(service)
            for route, methods in routes.items():
                seen[1].add(route)
                seen[2].update(methods)
        for values in seen:
            values.discard(None)
        sizes = (len(seen[0]), len(seen[1]), len(seen[2]))
        if sizes == self._known_sizes and not ts_changed:  # nothing new: the buffer had bad records
            return
        self._rebuilds_left -= 1
        if max(sizes) > _LITERAL_MAX or self._rebuilds_left == 0:
            self._known, self._rebuilds_left = None, 0  # too many values, or still changing: stay open
            return
        literal: Any = Literal
        types = [literal[tuple(sorted(values))] if values else str for values in seen]
        self._known_int_ts = self._last_int_ts
        self._known = _Decoders(_event_type(self._rename, *types, ts=int if self._known_int_ts else _ANY_TS))
        self._known_sizes = sizes

    def decode_records(self, records: Iterable[Any]) -> tuple[EventBatch, Rejections]:
        """Decode already-parsed records: dicts with the configured field names or paths.

        The checks and rejection reasons are those of :meth:`decode`; a non-dict is ``not_an_object``.
        """
        rej = Rejections()
        return self._columns(self._records(records, rej), rej), rej

    # -- buffers -> records --------------------------------------------------------------------

    def _ndjson(self, data: bytes | memoryview, rej: Rejections) -> list[Any]:
        try:
            items = self._lines.decode_lines(data)
        except msgspec.DecodeError:
            data = bytes(data)  # the slow path needs bytes.find
            view = memoryview(data)
            items = []
            for start, end in _line_blocks(data, _BLOCK_BYTES):
                try:
                    items.extend(self._lines.decode_lines(view[start:end]))
                except msgspec.DecodeError:
                    items.extend(self._ndjson_lines(data[start:end], rej))
        return items if self._fast else self._records(items, rej)

    def _ndjson_lines(self, block: bytes, rej: Rejections) -> list[Any]:
        """One line at a time: bad lines are counted, the rest returned like ``decode_lines`` would."""
        out: list[Any] = []
        for line in block.split(b"\n"):
            if not line.strip():
                continue
            try:
                out.extend(self._lines.decode_lines(line))
                continue
            except msgspec.DecodeError:
                pass
            try:
                items = self._any_json.decode_lines(line)
            except msgspec.DecodeError:
                rej.add("malformed_json")
                continue
            out.extend(self._records(items, rej))  # Structs pass through _records later
        return out

    def _document(
        self, data: bytes | memoryview, rej: Rejections, typed: Any, generic: Any, malformed: str
    ) -> list[Any]:
        try:
            doc = typed.decode(data)
        except msgspec.DecodeError:
            try:
                doc = generic.decode(data)
            except msgspec.DecodeError:
                rej.add(malformed)
                return []
            return self._records(doc if isinstance(doc, list) else [doc], rej)
        items = doc if isinstance(doc, list) else [doc]
        return items if self._fast else self._records(items, rej)

    def _records(self, items: Iterable[Any], rej: Rejections) -> list[Any]:
        out = []
        for item in items:
            if isinstance(item, self._type):
                out.append(item)
                continue
            event = self._record(item)
            if isinstance(event, str):
                rej.add(event)
            else:
                out.append(event)
        return out

    def _record(self, rec: Any) -> Any:
        """One dict -> an event Struct (same checks as the Struct decoder), or a rejection reason."""
        if not isinstance(rec, dict):
            return "not_an_object"
        values = [_lookup(rec, name, path) for name, path in zip(self._names, self._paths, strict=True)]
        ts = values[0]
        if ts is _MISSING or ts is None:
            return "missing_ts"
        if isinstance(ts, datetime):  # msgpack timestamp extension
            ts = ts.isoformat() if ts.tzinfo is not None else None
        if isinstance(ts, bool) or not isinstance(ts, int | float | str):
            return "bad_ts"
        service = _optional(values[1], str, None)
        route = _optional(values[2], str, "")
        method = _optional(values[3], str, "")
        status = _optional(values[4], int, None)
        latency = _optional(values[5], int | float, None)
        weight = _optional(values[6], int, 1)
        labels = _optional(values[7], dict, None)
        if labels is not None and labels is not _WRONG and not all(
            isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
        ):
            labels = _WRONG
        if any(v is _WRONG for v in (service, route, method, status, latency, weight, labels)):
            return "wrong_type"
        if status is not None and not 100 <= status <= 599:
            return "bad_status"
        if latency is not None:
            latency = float(latency)
            if not latency >= 0.0:  # also NaN; infinity is left to the column check
                return "bad_latency"
        if not 1 <= weight <= MAX_WEIGHT:
            return "bad_weight"
        return self._type(ts, service, route, method, status, latency, weight, _freeze(labels))

    # -- records -> columns --------------------------------------------------------------------

    def _columns(self, events: list[Any], rej: Rejections, *, int_ts: bool = False) -> EventBatch:
        """Records -> columns; ``int_ts`` says that every ``ts`` was decoded as an int."""
        n = len(events)
        if n == 0:
            return EventBatch.empty()
        key = self._keys_of(events)
        known = self._int_timestamps(events) if int_ts else None
        ts_ns, missing_ts, bad_ts = known or self._timestamps(list(map(_GET_TS, events)))
        try:
            status = np.fromiter(map(_GET_STATUS, events), np.int16, n)
        except TypeError:  # some are None
            status = np.array([NO_STATUS if e.status is None else e.status for e in events], np.int16)
        latency_us = np.fromiter(map(_GET_LATENCY, events), np.float64, n)  # None -> NaN
        if self._latency_scale != 1.0:
            with np.errstate(over="ignore"):
                latency_us *= self._latency_scale
        try:
            total = sum(map(_GET_WEIGHT, events))
        except TypeError:  # some are None
            total = -1
        # Every weight is >= 1, so a total of n means all ones.
        weight = (np.ones(n, np.int64) if total == n else
                  np.array([1 if e.weight is None else e.weight for e in events], np.int64))
        drop = np.zeros(n, np.bool_)
        for reason, mask in (("missing_ts", missing_ts), ("bad_ts", bad_ts),
                             ("missing_service", key < 0), ("bad_latency", np.isinf(latency_us))):
            rej.add(reason, int(np.count_nonzero(mask & ~drop)))
            drop |= mask
        batch = EventBatch(ts_ns, key, status, latency_us, weight)
        return batch.take(np.flatnonzero(~drop)) if drop.any() else batch

    def _keys_of(self, events: list[Any]) -> npt.NDArray[np.int32]:
        k = self._key_ids
        try:
            if not self._labels_seen:
                return np.array([k[e.service][e.route][e.method][e.labels] for e in events], np.int32)
            return np.array([k[e.service][e.route][e.method][_freeze(e.labels)] for e in events], np.int32)
        except TypeError:  # decoded labels are dicts (unhashable): freeze them from now on
            self._labels_seen = True
            return self._keys_of(events)
        except KeyError:  # a new key: fill the tables for this buffer
            pass
        ids = []
        for e in events:
            raw = (e.service, e.route, e.method, _freeze(e.labels))
            level = k
            for part in raw[:3]:
                level = level.get(part) or level.setdefault(part, {})
            kid = level.get(raw[3])
            if kid is None:
                kid = level[raw[3]] = self._new_key(*raw)
            ids.append(kid)
        return np.array(ids, np.int32)

    def _new_key(self, service: str | None, route: str | None, method: str | None, labels: Any) -> int:
        self._n_raw_keys += 1
        service = service or self.config.default_service
        if not service:
            return -1
        return self.keys.intern(EventKey(service, route or "", method or "", labels or ()))

    def _int_timestamps(self, events: list[Any]) -> tuple[Int64s, Bools, Bools] | None:
        """``ts`` that the known decoder took as ints -> (ns, missing mask, bad mask); None beyond int64."""
        try:
            raw = np.fromiter(map(_GET_TS, events), np.int64, len(events))
        except OverflowError:  # msgspec decodes up to uint64: those take the general way
            return None
        ns, bad = self._scale_int(raw)
        return ns, np.zeros(len(events), np.bool_), bad

    def _timestamps(self, values: list[Any]) -> tuple[Int64s, Bools, Bools]:
        """ts values as decoded -> (ns, missing mask, bad mask)."""
        n = len(values)
        kinds = set(map(type, values))
        self._last_int_ts = kinds == {int}
        if len(kinds) == 1:
            ns, bad = self._ts_of_kind(kinds.pop(), values)
            return ns, np.full(n, values[0] is None), bad
        ns = np.zeros(n, np.int64)
        bad = np.zeros(n, np.bool_)
        missing = np.zeros(n, np.bool_)
        kind_of = list(map(type, values))
        for kind in kinds:
            idx = np.array([i for i, k in enumerate(kind_of) if k is kind], np.intp)
            if kind is type(None):
                missing[idx] = True
            else:
                ns[idx], bad[idx] = self._ts_of_kind(kind, [values[i] for i in idx])
        return ns, missing, bad

    def _ts_of_kind(self, kind: type, values: list[Any]) -> tuple[Int64s, Bools]:
        n = len(values)
        if kind is int:
            return self._int_ns(values)
        if kind is float:
            return self._float_ns(np.array(values, np.float64))
        if kind is str:
            return rfc3339_column_ns(values)
        return np.zeros(n, np.int64), np.full(n, kind is not type(None))

    def _int_ns(self, values: list[int]) -> tuple[Int64s, Bools]:
        try:
            ts = np.array(values, np.int64)
        except OverflowError:  # beyond int64: out of range anyway
            ts = np.array([v if -_I64_MAX <= v <= _I64_MAX else -1 for v in values], np.int64)
        return self._scale_int(ts)

    def _scale_int(self, ts: Int64s) -> tuple[Int64s, Bools]:
        """Integer timestamps in ``ts_unit`` (or auto) -> (ns, out-of-range mask)."""
        unit: Any = self._ts_unit
        if unit < 0:
            lo, hi = np.searchsorted(_AUTO_BOUNDS, (ts.min(), ts.max()), side="right")
            unit = lo if lo == hi else np.searchsorted(_AUTO_BOUNDS, ts, side="right")
        mult = _UNIT_NS[unit]
        if np.ndim(mult) == 0 and ts.min() >= 0 and ts.max() <= _I64_MAX // mult:  # the usual case
            return ts * mult, np.zeros(ts.shape[0], np.bool_)
        bad = (ts < 0) | (ts > _I64_MAX // mult)
        return np.where(bad, 0, ts) * mult, bad

    def _float_ns(self, ts: npt.NDArray[np.float64]) -> tuple[Int64s, Bools]:
        bad = ~np.isfinite(ts) | (ts < 0)
        ts = np.where(bad, 0.0, ts)
        unit = np.searchsorted(_AUTO_BOUNDS, ts, side="right") if self._ts_unit < 0 else self._ts_unit
        mult, step = _UNIT_NS[unit], _FLOAT_STEP_NS[unit]
        whole = np.floor(ts)
        bad |= whole >= _I64_MAX / mult - 1.0
        whole = np.where(bad, 0.0, whole)
        frac = np.where(bad, 0.0, ts - whole)  # exact (Sterbenz): 0 <= ts - floor(ts) < 1
        ns = whole.astype(np.int64) * mult + np.rint(frac * (mult // step)).astype(np.int64) * step
        return ns, bad


def sniff_format(data: bytes | memoryview) -> str:
    """Guess the format of a buffer from its first non-blank byte.

    ``[`` is a JSON array; ``{`` is NDJSON when its first line ends with ``}``, else one (pretty-printed)
    JSON object; a blank buffer is NDJSON (no events); anything else is msgpack.
    """
    data = bytes(data) if isinstance(data, memoryview) else data
    start = re.match(rb"\s*", data).end()  # type: ignore[union-attr]
    if start == len(data):
        return "ndjson"
    first = data[start : start + 1]
    if first == b"[":
        return "json"
    if first == b"{":
        end = data.find(b"\n", start)
        line = data[start:] if end < 0 else data[start:end]
        return "ndjson" if line.rstrip().endswith(b"}") else "json"
    return "msgpack"


def _line_blocks(data: bytes, size: int) -> Iterator[tuple[int, int]]:
    """(start, end) of consecutive blocks of about ``size`` bytes, each ending after a newline."""
    start, n = 0, len(data)
    while start < n:
        end = data.find(b"\n", start + size)
        end = n if end < 0 else end + 1
        yield start, end
        start = end


def _lookup(rec: dict[str, Any], name: str, path: tuple[str, ...]) -> Any:
    """``rec[name]``, else the nested value at ``path`` (a literal dotted key wins over nesting)."""
    found = rec.get(name, _MISSING)
    if found is not _MISSING or len(path) == 1:
        return found
    node: Any = rec
    for part in path:
        if node is None:  # a null object on the way: the field is absent
            return _MISSING
        if not isinstance(node, dict):
            return _WRONG
        node = node.get(part, _MISSING)
        if node is _MISSING:
            break
    return node


def _optional(value: Any, kind: Any, default: Any) -> Any:
    if value is _MISSING or value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, kind):
        return _WRONG
    return value


# ---------------------------------------------------------------------------------------------
# RFC 3339 timestamps, exact to the nanosecond

_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]+))?"
    r"(?:[Zz]|([+-])([0-9]{2}):([0-9]{2}))"
)
_DAYS_IN_MONTH = np.array([31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31], np.int64)
_MAX_FAST_LEN: Final = 35  # 'YYYY-MM-DDTHH:MM:SS' + '.' + 9 digits + '+HH:MM'
_SEC_MAX_FAST: Final = _I64_MAX // 10**9 - 1  # any fraction still fits in int64 below this
_TABLE_YEAR0: Final = 1969  # month tables cover 1969..2262; other years take the slow path


def _days_from_civil(y: Any, m: Any, d: Any) -> Any:
    """Days since 1970-01-01 of a proleptic Gregorian date; scalars or arrays.

    H. Hinnant, "chrono-Compatible Low-Level Date Algorithms", days_from_civil.
    """
    y = y - (m <= 2)
    era = y // 400
    yoe = y - era * 400
    doy = (153 * ((m + 9) % 12) + 2) // 5 + d - 1
    return era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468


def _days_in_month(y: Any, m: Any) -> Any:
    leap = (y % 4 == 0) & ((y % 100 != 0) | (y % 400 == 0))
    return _DAYS_IN_MONTH[np.clip(m, 1, 12) - 1] + ((m == 2) & leap)


_MONTH_START_DAY = np.array(
    [_days_from_civil(y, m, 1) for y in range(_TABLE_YEAR0, 2263) for m in range(1, 13)], np.int64)
_MONTH_DAYS = np.array(
    [_days_in_month(y, m) for y in range(_TABLE_YEAR0, 2263) for m in range(1, 13)], np.int32)


def parse_rfc3339_ns(text: str) -> int | None:
    """Nanoseconds since the epoch of an RFC 3339 time, or None when it is not one or out of range."""
    m = _RFC3339.fullmatch(text)
    if m is None:
        return None
    y, mo, d, h, mi, s = (int(g) for g in m.group(1, 2, 3, 4, 5, 6))
    if not (1 <= mo <= 12 and 1 <= d <= _days_in_month(y, mo) and h <= 23 and mi <= 59 and s <= 59):
        return None
    offset_s = 0
    if m.group(8):
        oh, om = int(m.group(9)), int(m.group(10))
        if oh > 23 or om > 59:
            return None
        offset_s = (oh * 3600 + om * 60) * (1 if m.group(8) == "+" else -1)
    frac_ns = int((m.group(7) or "").ljust(9, "0")[:9])
    ns = (int(_days_from_civil(y, mo, d)) * 86400 + h * 3600 + mi * 60 + s - offset_s) * 10**9 + frac_ns
    return ns if 0 <= ns <= _I64_MAX else None


def rfc3339_column_ns(texts: list[str]) -> tuple[Int64s, Bools]:
    """RFC 3339 strings -> (int64 ns, bad mask), vectorised over the common layouts.

    Strings of the usual shape (up to 9 fraction digits, ``Z`` or ``+HH:MM``) are parsed with numpy
    over a character matrix; the rest go through :func:`parse_rfc3339_ns` one by one.
    """
    n = len(texts)
    ns = np.zeros(n, np.int64)
    ok = np.zeros(n, np.bool_)
    lens = np.fromiter(map(len, texts), np.int64, n)
    idx = np.flatnonzero((lens >= 20) & (lens <= _MAX_FAST_LEN))
    if idx.size:
        sub = texts if idx.size == n else [texts[i] for i in idx]
        ns[idx], ok[idx] = _rfc3339_vector(sub, lens[idx])
    for i in np.flatnonzero(~ok):
        value = parse_rfc3339_ns(texts[i])
        if value is not None:
            ns[i], ok[i] = value, True
    return ns, ~ok


def _rfc3339_vector(texts: list[str], lens: Int64s) -> tuple[Int64s, Bools]:
    n = len(texts)
    try:
        chars = np.array(texts, dtype=bytes)  # ASCII
    except UnicodeEncodeError:  # not RFC 3339: blank those texts out, the slow path rejects them
        chars = np.array([t if t.isascii() else "" for t in texts], dtype=bytes)
    width = chars.dtype.itemsize
    # Column-major characters: c[i] holds character i of every text (contiguous row operations).
    c = np.zeros((_MAX_FAST_LEN + 6, n), np.uint8)
    c[:width] = chars.view(np.uint8).reshape(n, width).T
    d = c - np.uint8(48)  # digit values; anything else wraps around to >= 10
    isd = d < 10

    def num(lo: int, hi: int) -> npt.NDArray[np.int32]:
        value = d[lo].astype(np.int32)
        for i in range(lo + 1, hi):
            value = value * 10 + d[i]
        return value

    ok = isd[[0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18]].all(0)
    ok &= (c[4] == 45) & (c[7] == 45) & (c[13] == 58) & (c[16] == 58)  # - - : :
    ok &= (c[10] == 84) | (c[10] == 116) | (c[10] == 32)  # T t space
    run = c[19] == 46  # a dot
    dot = run.copy()
    digits = np.zeros(n, np.int32)
    frac = np.zeros(n, np.int32)
    for i in range(20, 29):  # up to 9 fraction digits; after the last one, *10 scales to ns
        run &= isd[i]
        digits += run
        frac = frac * 10 + d[i] * run
    ok &= ~dot | (digits > 0)
    zone_at = 19 + dot + digits
    flat = c.reshape(-1)
    at = zone_at * n + np.arange(n)
    zone = flat[at]
    zulu = ((zone == 90) | (zone == 122)) & (lens == zone_at + 1)  # Z z
    tail = [flat[at + k * n] - np.uint8(48) for k in range(1, 6)]  # 'HH:MM' after a sign
    hh = tail[0].astype(np.int32) * 10 + tail[1]
    mm = tail[3].astype(np.int32) * 10 + tail[4]
    offset = ((zone == 43) | (zone == 45)) & (lens == zone_at + 6) & (tail[2] == 10)  # ':' - '0'
    offset &= (tail[0] < 10) & (tail[1] < 10) & (tail[3] < 10) & (tail[4] < 10) & (hh <= 23) & (mm <= 59)
    ok &= zulu | offset
    offset_s = np.where(offset, (hh * 3600 + mm * 60) * np.where(zone == 45, -1, 1), 0)
    mo = num(5, 7)
    month = (num(0, 4) - _TABLE_YEAR0) * 12 + mo - 1  # row of the month tables
    month_ok = (mo >= 1) & (mo <= 12) & (month >= 0) & (month < _MONTH_DAYS.size)
    month = np.where(month_ok, month, 0)
    day = num(8, 10)
    ok &= month_ok & (day >= 1) & (day <= _MONTH_DAYS[month])
    h, mi, s = num(11, 13), num(14, 16), num(17, 19)
    ok &= (h <= 23) & (mi <= 59) & (s <= 59)
    sec = (_MONTH_START_DAY[month] + day - 1) * 86400 + (h * 3600 + mi * 60 + s - offset_s)
    ok &= (sec >= 0) & (sec <= _SEC_MAX_FAST)
    return np.where(ok, sec * 10**9 + frac, 0), ok
