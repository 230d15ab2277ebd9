"""Prometheus counter history as weighted events: a new policy backtested on existing history.

Formats ``prometheus_json``, ``prometheus_text`` and ``openmetrics`` read counter samples from
``/api/v1/query_range`` (``resultType: matrix``), or from the text exposition format with timestamps
(ms in Prometheus' format, s in OpenMetrics'). The ``prometheus`` section of the mapping file
(:mod:`engine.formats.mapping`) names the series: ``total`` (every request), ``errors`` or ``good``
(a subset of the total series, e.g. ``http_requests_total{code=~"5.."}``), and optionally the
histogram ``buckets`` with the ``threshold_le`` of the latency SLO. Selectors take PromQL's matchers
``= != =~ !~`` (regexes fully anchored). Each series becomes increases between consecutive samples:
a value below the previous one is a counter reset and the increase is the new value, as Prometheus'
``increase()`` counts it; the first sample of a series is its baseline (Prometheus does not count it
either).

Events: per sample time and key, the increase of a ``total`` series in ``errors`` (or not in
``good``) as status 500, of the others as status 200, without latency; and latency-only events
(``NO_STATUS``) for the histogram: the threshold bucket's increase at the threshold latency, the
rest of the ``+Inf`` bucket's increase just above it (the next float), so that a latency SLO with
that threshold classifies every request exactly. The ``buckets`` selector must not fix ``le``.

Rejections (samples or lines)
    ``malformed_json``, ``not_a_matrix`` (an API answer that is not a successful range query),
    ``malformed_line`` (an exposition line that is not a sample), ``missing_ts`` (a sample
    without timestamp: history needs one), ``bad_ts``, ``unmapped_series`` (samples of series no
    selector takes), ``not_in_total`` (a series of ``errors``/``good`` outside ``total``),
    ``bad_value`` (NaN, infinite or unreadable samples), ``non_integer_increase``,
    ``out_of_order_sample`` (a sample not after the previous one of its series),
    ``unpaired_bucket`` (the threshold bucket's increase without the ``+Inf`` one at the same time,
    or the other way round, once a later sample shows the partner will not come),
    ``bad_histogram`` (more requests under the threshold than in all), ``missing_service``.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any, Final

import msgspec

from engine.batch import NO_STATUS, EventBatch, Rejections
from engine.errors import ConfigError
from engine.formats.aggregates import BAD_STATUS, GOOD_STATUS, Rows
from engine.formats.mapping import load_mapping
from engine.formats.registry import KeyInterner

if TYPE_CHECKING:
    from engine.events import EventDecoder

_INT_TOLERANCE: Final = 1e-6
_IDENT_CACHE: Final = 1 << 16
_I64_MAX: Final = (1 << 63) - 1
_DECIMAL = re.compile(r"([0-9]+)(?:\.([0-9]*))?")

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_MATCHER = re.compile(r"""\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"""
                      r"""(?:"((?:[^"\\]|\\.)*)"|'((?:[^'\\]|\\.)*)')\s*(?:,|$)""")
_SELECTOR = re.compile(rf"\s*({_NAME})?\s*(?:\{{(.*)\}})?\s*")


class Selector:
    """A PromQL series selector: a metric name and label matchers (``= != =~ !~``)."""

    def __init__(self, text: str, where: str) -> None:
        m = _SELECTOR.fullmatch(text)
        problem = (f"{where}: expected a series selector like http_requests_total{{code=~\"5..\"}}, "
                   f"got {text!r}")
        if m is None or not (m.group(1) or m.group(2)):
            raise ConfigError([problem])
        self.text = text
        self.matchers: list[tuple[str, str, Any]] = []
        if m.group(1):
            self.matchers.append(("__name__", "=", m.group(1)))
        body = (m.group(2) or "").strip()
        pos = 0
        while pos < len(body):
            mm = _MATCHER.match(body, pos)
            if mm is None or mm.end() == pos:
                raise ConfigError([problem])
            label, op = mm.group(1), mm.group(2)
            value = _unescape(mm.group(3) if mm.group(3) is not None else mm.group(4))
            want: Any = value
            if op in ("=~", "!~"):
                try:
                    want = re.compile(value)
                except re.error as e:
                    raise ConfigError([f"{where}: expected a regular expression in {label}{op}, "
                                       f"got {value!r}: {e}"]) from None
            self.matchers.append((label, op, want))
            pos = mm.end()

    def matches(self, labels: dict[str, str]) -> bool:
        for label, op, want in self.matchers:
            have = labels.get(label, "")
            if (op == "=" and have != want) or (op == "!=" and have == want):
                return False
            if op in ("=~", "!~") and (want.fullmatch(have) is None) == (op == "=~"):
                return False
        return True


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "\\": "\\", '"': '"', "'": "'"}.get(m.group(1), m.group(0)),
                  text)


class _Series:
    """What one series is for, and its last sample."""

    __slots__ = ("group", "key", "last_ts", "last_value", "role", "status")

    def __init__(self, role: str, key: int = -1, status: int = 0, group: Any = None) -> None:
        self.role = role  # "requests", "bucket_le", "bucket_inf", or a rejection reason
        self.key = key
        self.status = status
        self.group = group
        self.last_ts: int | None = None
        self.last_value = 0.0


class _PrometheusBase:
    """Series -> increases -> weighted events; the sample readers are in the subclasses."""

    def __init__(self, events: EventDecoder) -> None:
        path = events.config.mapping_file
        mapping = load_mapping(path, "prometheus")
        assert mapping.prometheus is not None
        self.spec = spec = mapping.prometheus
        where = f"{path}: $.prometheus"
        problems = []
        if spec.total is None and spec.latency is None:
            problems.append(f"{where}: expected 'total' (with 'errors' or 'good') or 'latency', got neither")
        if spec.total is not None and (spec.errors is None) == (spec.good is None):
            problems.append(f"{where}: expected exactly one of 'errors' or 'good' with 'total', got "
                            f"{'both' if spec.errors is not None else 'neither'}")
        if spec.service is not None and spec.service_label is not None:
            problems.append(f"{where}: expected one of 'service' or 'service_label', got both")
        if problems:
            raise ConfigError(problems)
        self._total = Selector(spec.total, f"{where}.total") if spec.total else None
        self._errors = Selector(spec.errors, f"{where}.errors") if spec.errors else None
        self._good = Selector(spec.good, f"{where}.good") if spec.good else None
        self._buckets = self._threshold_us = self._threshold_le = None
        if spec.latency is not None:
            self._buckets = Selector(spec.latency.buckets, f"{where}.latency.buckets")
            try:
                self._threshold_le = float(spec.latency.threshold_le)
            except ValueError:
                raise ConfigError([f"{where}.latency.threshold_le: expected a bucket bound, got "
                                   f"{spec.latency.threshold_le!r}"]) from None
            self._threshold_us = self._threshold_le * (1e6 if spec.latency.le_unit == "s" else 1e3)
        self._interner = KeyInterner(events.keys, spec.service or events.config.default_service)
        self._series: dict[tuple[tuple[str, str], ...], _Series] = {}
        self._pending: dict[tuple[Any, int], list[int | None]] = {}

    def _classify(self, labels: dict[str, str]) -> _Series:
        """The role of a series (rejection reason for those that serve none) and its key."""
        role, status, group = self._role(labels)
        if role not in ("requests", "bucket_le", "bucket_inf"):
            return _Series(role)
        spec = self.spec
        key = int(self._interner.ids([labels.get(spec.service_label) if spec.service_label else None],
                                     [labels.get(spec.route_label) if spec.route_label else None],
                                     [labels.get(spec.method_label) if spec.method_label else None])[0])
        if group is not None:
            group = (key, group)
        return _Series(role, key, status, group)

    def _role(self, labels: dict[str, str]) -> tuple[str, int, Any]:
        if self._buckets is not None and "le" in labels and self._buckets.matches(labels):
            try:
                le = float(labels["le"])
            except ValueError:
                return "unmapped_series", 0, None
            group = tuple(sorted((k, v) for k, v in labels.items() if k != "le"))
            if le == math.inf:
                return "bucket_inf", 0, group
            if le == self._threshold_le:
                return "bucket_le", 0, group
            return "unmapped_series", 0, None
        in_total = self._total is not None and self._total.matches(labels)
        for selector, status in ((self._errors, BAD_STATUS), (self._good, GOOD_STATUS)):
            if selector is not None and selector.matches(labels):
                return ("requests", status, None) if in_total else ("not_in_total", 0, None)
        if in_total:
            return "requests", GOOD_STATUS if self._errors is not None else BAD_STATUS, None
        return "unmapped_series", 0, None

    def _feed(self, labels: dict[str, str], samples: list[tuple[int, float]], rows: Rows,
              rej: Rejections) -> None:
        """One series' samples (ns, value) in the order read."""
        ident = tuple(sorted(labels.items()))
        series = self._series.get(ident)
        if series is None:
            series = self._series[ident] = self._classify(labels)
        if series.role not in ("requests", "bucket_le", "bucket_inf"):
            rej.add(series.role, len(samples))
            return
        if series.key < 0:
            rej.add("missing_service", len(samples))
            return
        for ts, value in samples:
            if not math.isfinite(value):
                rej.add("bad_value")
                continue
            if series.last_ts is not None and ts <= series.last_ts:
                rej.add("out_of_order_sample")
                continue
            first = series.last_ts is None
            increase = value if value < series.last_value else value - series.last_value
            series.last_ts, series.last_value = ts, value
            if first:
                continue  # the baseline
            whole = round(increase)
            if abs(increase - whole) > _INT_TOLERANCE * max(1.0, abs(increase)):
                rej.add("non_integer_increase")
                continue
            if series.role == "requests":
                rows.add(ts, series.key, series.status, math.nan, whole)
            else:
                self._pair(series, ts, whole, rows, rej)

    def _pair(self, series: _Series, ts: int, count: int, rows: Rows, rej: Rejections) -> None:
        slot = self._pending.setdefault((series.group, ts), [None, None])
        slot[0 if series.role == "bucket_le" else 1] = count
        fast, total = slot
        if fast is None or total is None:
            return
        del self._pending[(series.group, ts)]
        assert self._threshold_us is not None
        if fast > total:
            rej.add("bad_histogram")
            return
        rows.add(ts, series.key, NO_STATUS, self._threshold_us, fast)
        rows.add(ts, series.key, NO_STATUS, math.nextafter(self._threshold_us, math.inf), total - fast)

    def _finish(self, rows: Rows, rej: Rejections) -> EventBatch:
        """Count the bucket increases whose partner will not come: a later sample of the group exists."""
        if self._pending:
            newest: dict[Any, int] = {}
            for s in self._series.values():
                if s.group is not None and s.last_ts is not None:
                    newest[s.group] = max(newest.get(s.group, s.last_ts), s.last_ts)
            for group, ts in [k for k in self._pending if k[1] < newest.get(k[0], k[1])]:
                del self._pending[(group, ts)]
                rej.add("unpaired_bucket")
        return rows.batch(rej)


class _MatrixValue(msgspec.Struct, array_like=True, gc=False):
    ts: float
    value: str


class _MatrixSeries(msgspec.Struct, gc=False):
    metric: dict[str, str]
    values: list[_MatrixValue] = []


class _MatrixData(msgspec.Struct, gc=False):
    resultType: str  # noqa: N815 - the API's name
    result: list[_MatrixSeries]


class _QueryRange(msgspec.Struct, gc=False):
    status: str
    data: _MatrixData | None = None


class PrometheusJsonDecoder(_PrometheusBase):
    """``/api/v1/query_range`` answers (one JSON document per line or per buffer)."""

    def __init__(self, events: EventDecoder) -> None:
        super().__init__(events)
        self._typed = msgspec.json.Decoder(_QueryRange)

    def decode(self, data: bytes) -> tuple[EventBatch, Rejections]:
        rej = Rejections()
        rows = Rows()
        docs = []
        if data.strip():
            try:
                docs = [self._typed.decode(data)]
            except msgspec.DecodeError:
                for line in data.split(b"\n"):
                    if line.strip():
                        try:
                            docs.append(self._typed.decode(line))
                        except msgspec.DecodeError:
                            rej.add("malformed_json")
        for doc in docs:
            if doc.status != "success" or doc.data is None or doc.data.resultType != "matrix":
                rej.add("not_a_matrix")
                continue
            for series in doc.data.result:
                samples = []
                for v in series.values:
                    try:
                        value = float(v.value)
                    except ValueError:
                        rej.add("bad_value")
                        continue
                    samples.append((round(v.ts * 1000) * 1_000_000, value))  # Prometheus keeps ms
                self._feed(series.metric, samples, rows, rej)
        return self._finish(rows, rej), rej


_SAMPLE = re.compile(
    rf'({_NAME})(?:\{{((?:[^"}}]|"(?:[^"\\]|\\.)*")*)\}})?[ \t]+([^ \t#]+)(?:[ \t]+([^ \t#]+))?'
    r"(?:[ \t]*#.*)?[ \t]*")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')


class PrometheusTextDecoder(_PrometheusBase):
    """Prometheus text exposition with a timestamp on every sample (milliseconds)."""

    _ts_unit_ns = 1_000_000

    def __init__(self, events: EventDecoder) -> None:
        super().__init__(events)
        # Each scrape repeats the label sets: parse each once (up to a bound, then parse again).
        self._idents: dict[tuple[str, str | None], tuple[tuple[str, str], ...] | None] = {}

    def _ident(self, name: str, body: str | None) -> tuple[tuple[str, str], ...] | None:
        found = self._idents.get((name, body), ())
        if found == ():
            labels = _labels(name, body)
            found = None if labels is None else tuple(sorted(labels.items()))
            if len(self._idents) < _IDENT_CACHE:
                self._idents[(name, body)] = found
        return found

    def decode(self, data: bytes) -> tuple[EventBatch, Rejections]:
        rej = Rejections()
        rows = Rows()
        batch: dict[tuple[tuple[str, str], ...], list[tuple[int, float]]] = {}
        for raw in data.decode("utf-8", "replace").split("\n"):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue  # comments: HELP, TYPE, UNIT, EOF
            m = _SAMPLE.fullmatch(line)
            ident = self._ident(m.group(1), m.group(2)) if m else None
            if m is None or ident is None:
                rej.add("malformed_line")
                continue
            try:
                value = float(m.group(3))
            except ValueError:
                rej.add("bad_value")
                continue
            if m.group(4) is None:
                rej.add("missing_ts")
                continue
            ts_ns = _timestamp_ns(m.group(4), self._ts_unit_ns)
            if ts_ns is None:
                rej.add("bad_ts")
                continue
            batch.setdefault(ident, []).append((ts_ns, value))
        for ident, samples in batch.items():
            self._feed(dict(ident), samples, rows, rej)
        return self._finish(rows, rej), rej


class OpenMetricsDecoder(PrometheusTextDecoder):
    """OpenMetrics text (timestamps in seconds, ``# EOF`` at the end)."""

    _ts_unit_ns = 1_000_000_000


def _timestamp_ns(text: str, unit_ns: int) -> int | None:
    """A sample timestamp in ``unit_ns`` (ms or s) -> ns, exact for plain decimals; None if bad."""
    m = _DECIMAL.fullmatch(text)
    if m is not None:
        digits = len(str(unit_ns)) - 1
        frac = (m.group(2) or "")[:digits].ljust(digits, "0")
        ns = int(m.group(1)) * unit_ns + int(frac or 0) * (unit_ns // 10**digits)
    else:
        try:
            value = float(text)
        except ValueError:
            return None
        if not 0 <= value < _I64_MAX / unit_ns:
            return None
        ns = round(value * unit_ns / 1000) * 1000  # exponent notation: to the microsecond
    return ns if 0 <= ns <= _I64_MAX else None


def _labels(name: str, body: str | None) -> dict[str, str] | None:
    labels = {"__name__": name}
    pos = 0
    body = body or ""
    while pos < len(body):
        m = _LABEL.match(body, pos)
        if m is None or m.end() == pos:
            return None if body[pos:].strip() else labels
        labels[m.group(1)] = _unescape(m.group(2))
        pos = m.end()
    return labels

