"""PromQL, the subset that SLO rules use, evaluated as Prometheus 2.42 evaluates it.

The Prometheus emulation (:mod:`bench.strategies.prometheus`) replays rule files through this module,
so that its burn rates can be compared with ``promtool test rules`` digit for digit. Every operation
follows the Go code of Prometheus v2.42.0 in the same order of float operations:

- range selection ``[t - range, t]`` closed at both ends, stale markers skipped
  (promql/engine.go ``matrixIterSlice``); instant selection takes the newest sample at or before
  ``t`` if it is not older than the 5 min lookback delta and not a stale marker
  (engine.go ``vectorSelectorSingle``);
- ``rate``/``increase``/``delta``: promql/functions.go ``extrapolatedRate`` (see
  :func:`extrapolated_rate`);
- ``*_over_time``: functions.go ``aggrOverTime`` with Kahan-Neumaier sums (``kahanSumInc``) for
  ``sum_over_time`` and the incremental mean for ``avg_over_time``;
- aggregations: engine.go ``aggregation`` (plain running sum for ``sum``, no Kahan before v2.53);
- binary operators: engine.go ``VectorBinop``, ``VectorscalarBinop``, ``VectorAnd/Or/Unless``,
  ``resultMetric`` (arithmetic drops ``__name__``, comparisons keep it unless ``bool``).

Anything else (subqueries, ``label_replace``, ``histogram_quantile``, ``topk`` ...) raises
:class:`UnsupportedError` naming the construct, so callers can say why a rule is not replayed.
"""

from __future__ import annotations

import bisect
import math
import operator
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

Labels = tuple[tuple[str, str], ...]
"""A label set: (name, value) pairs sorted by name (Prometheus' ``labels.Labels`` order)."""

METRIC_NAME = "__name__"
LOOKBACK_DELTA_MS = 300_000  # promql.defaultLookbackDelta, 5 min


class PromQLError(ValueError):
    """Malformed PromQL, or an evaluation error Prometheus would report as well."""


class UnsupportedError(PromQLError):
    """Valid PromQL outside the emulated subset; the message names the construct."""


def labels_of(mapping: dict[str, str]) -> Labels:
    """Sorted label set from a dict, dropping empty values as Prometheus' label builder does."""
    return tuple(sorted((k, v) for k, v in mapping.items() if v != ""))


def format_labels(lbls: Labels) -> str:
    """``name{a="x", b="y"}`` as Prometheus prints a series."""
    d = dict(lbls)
    name = d.pop(METRIC_NAME, "")
    inner = ", ".join(f'{k}="{_escape(v)}"' for k, v in sorted(d.items()))
    return f"{name}{{{inner}}}"


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


# ---------------------------------------------------------------------------------------------- lexer

_DURATION_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000,
                      "w": 604_800_000, "y": 31_536_000_000}
_TOKEN_RE = re.compile(r"""
    (?P<ws>\s+|\#[^\n]*)
  | (?P<dur>(?:\d+(?:ms|[smhdwy]))+)(?![\w.])
  | (?P<num>0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|(?i:inf|nan)(?![\w:]))
  | (?P<id>[a-zA-Z_:][a-zA-Z0-9_:]*)
  | (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<op>=~|!~|==|!=|<=|>=|[-+*/%^<>=(){}\[\],:@])
""", re.VERBOSE)
_ESCAPES = {"\\": "\\", '"': '"', "'": "'", "n": "\n", "t": "\t", "r": "\r", "a": "\a", "b": "\b",
            "f": "\f", "v": "\v"}


def parse_duration_ms(text: str) -> int:
    """``1h30m`` -> 5,400,000 (PromQL duration syntax, ``ms`` ... ``y``)."""
    parts = re.findall(r"(\d+)(ms|[smhdwy])", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise PromQLError(f"expected a duration like 5m or 1h30m, got {text!r}")
    return sum(int(n) * _DURATION_UNITS_MS[u] for n, u in parts)


def _unquote(tok: str) -> str:
    if tok[0] == "`":
        return tok[1:-1]
    out, i, body = [], 0, tok[1:-1]
    while i < len(body):
        ch = body[i]
        if ch == "\\":
            nxt = body[i + 1]
            if nxt not in _ESCAPES:
                raise PromQLError(f"unknown escape sequence \\{nxt} in string {tok}")
            out.append(_ESCAPES[nxt])
            i += 2
            continue
        out.append(ch)
        i += 1
    return "".join(out)


@dataclass(frozen=True, slots=True)
class _Tok:
    kind: str  # dur, num, id, str, op, eof
    text: str
    pos: int


def _tokenize(src: str) -> list[_Tok]:
    toks, pos = [], 0
    while pos < len(src):
        m = _TOKEN_RE.match(src, pos)
        if m is None:
            raise PromQLError(f"unexpected character {src[pos]!r} at position {pos} in {src!r}")
        kind = m.lastgroup or ""
        if kind != "ws":
            toks.append(_Tok(kind, m.group(), pos))
        pos = m.end()
    toks.append(_Tok("eof", "", pos))
    return toks


# ------------------------------------------------------------------------------------------------ AST

@dataclass(frozen=True, slots=True)
class Matcher:
    """One label matcher; regexes are anchored at both ends as in Prometheus."""

    name: str
    op: str  # = != =~ !~
    value: str
    regex: re.Pattern[str] | None = None

    def matches(self, v: str) -> bool:
        """Whether label value ``v`` (empty when absent) satisfies the matcher."""
        if self.op == "=":
            return v == self.value
        if self.op == "!=":
            return v != self.value
        hit = self.regex is not None and self.regex.fullmatch(v) is not None
        return hit if self.op == "=~" else not hit


@dataclass(frozen=True, slots=True)
class NumberLiteral:
    value: float


@dataclass(frozen=True, slots=True)
class StringLiteral:
    value: str


@dataclass(frozen=True, slots=True)
class VectorSelector:
    matchers: tuple[Matcher, ...]
    offset_ms: int = 0


@dataclass(frozen=True, slots=True)
class MatrixSelector:
    vs: VectorSelector
    range_ms: int


@dataclass(frozen=True, slots=True)
class Call:
    func: str
    args: tuple[Expr, ...]


@dataclass(frozen=True, slots=True)
class Aggregate:
    op: str
    expr: Expr
    grouping: tuple[str, ...]
    without: bool


@dataclass(frozen=True, slots=True)
class Unary:
    op: str
    expr: Expr


@dataclass(frozen=True, slots=True)
class Matching:
    card: str  # one-to-one, many-to-one, one-to-many, many-to-many
    on: bool
    labels: tuple[str, ...]
    include: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Binary:
    op: str
    lhs: Expr
    rhs: Expr
    return_bool: bool
    matching: Matching


Expr = NumberLiteral | StringLiteral | VectorSelector | MatrixSelector | Call | Aggregate | Unary | Binary

_PREC = {"or": 1, "and": 2, "unless": 2, "==": 3, "!=": 3, "<=": 3, "<": 3, ">=": 3, ">": 3,
         "+": 4, "-": 4, "*": 5, "/": 5, "%": 5, "atan2": 5, "^": 6}
_COMPARISONS = frozenset({"==", "!=", "<=", "<", ">=", ">"})
_SET_OPS = frozenset({"and", "or", "unless"})
_AGGREGATIONS = frozenset({"sum", "min", "max", "avg", "count", "group", "stddev", "stdvar", "topk",
                           "bottomk", "quantile", "count_values"})
_SUPPORTED_AGGREGATIONS = frozenset({"sum", "min", "max", "avg", "count", "group"})


class _Parser:
    def __init__(self, src: str) -> None:
        self.src = src
        self.toks = _tokenize(src)
        self.i = 0

    def peek(self, k: int = 0) -> _Tok:
        return self.toks[min(self.i + k, len(self.toks) - 1)]

    def next(self) -> _Tok:
        tok = self.toks[self.i]
        self.i = min(self.i + 1, len(self.toks) - 1)
        return tok

    def expect(self, text: str) -> _Tok:
        tok = self.next()
        if tok.text != text:
            self.fail(f"expected {text!r}", tok)
        return tok

    def fail(self, what: str, tok: _Tok | None = None) -> None:
        tok = tok or self.peek()
        raise PromQLError(f"{what}, got {tok.text or 'end of input'!r} at position {tok.pos} in {self.src!r}")

    def parse(self) -> Expr:
        expr = self.expr(0)
        if self.peek().kind != "eof":
            self.fail("expected end of expression")
        return expr

    def _binop_at(self) -> str | None:
        tok = self.peek()
        if tok.kind == "op" and tok.text in _PREC:
            return tok.text
        if tok.kind == "id" and tok.text.lower() in ("and", "or", "unless", "atan2"):
            return tok.text.lower()
        return None

    def expr(self, min_prec: int) -> Expr:
        lhs = self.unary()
        while (op := self._binop_at()) is not None and _PREC[op] >= min_prec:
            self.next()
            return_bool = False
            if op in _COMPARISONS and self.peek().text == "bool":
                self.next()
                return_bool = True
            matching = self.matching(op)
            rhs = self.expr(_PREC[op] if op == "^" else _PREC[op] + 1)  # ^ is right-associative
            lhs = _make_binary(op, lhs, rhs, return_bool, matching)
        return lhs

    def matching(self, op: str) -> Matching:
        card = "many-to-many" if op in _SET_OPS else "one-to-one"
        on = False
        names: tuple[str, ...] = ()
        include: tuple[str, ...] = ()
        if self.peek().text in ("on", "ignoring"):
            on = self.next().text == "on"
            names = self.label_list()
            if self.peek().text in ("group_left", "group_right"):
                if op in _SET_OPS:
                    self.fail(f"no grouping allowed for {op!r} operation")
                card = "many-to-one" if self.next().text == "group_left" else "one-to-many"
                if self.peek().text == "(":
                    include = self.label_list()
        return Matching(card, on, names, include)

    def label_list(self) -> tuple[str, ...]:
        self.expect("(")
        names: list[str] = []
        while self.peek().text != ")":
            tok = self.next()
            if tok.kind != "id":
                self.fail("expected a label name", tok)
            names.append(tok.text)
            if self.peek().text == ",":
                self.next()
        self.expect(")")
        return tuple(names)

    def unary(self) -> Expr:
        if self.peek().text in ("-", "+"):
            op = self.next().text
            operand = self.expr(_PREC["^"])
            if op == "+":
                return operand
            if isinstance(operand, NumberLiteral):
                return NumberLiteral(-operand.value)
            return Unary("-", operand)
        return self.postfix(self.primary())

    def primary(self) -> Expr:
        tok = self.peek()
        if tok.kind == "num":
            self.next()
            text = tok.text.lower()
            return NumberLiteral(float(int(text, 16)) if text.startswith("0x") else float(text))
        if tok.kind == "dur" and re.fullmatch(r"\d+", tok.text) is None:
            self.fail("unexpected duration")
        if tok.kind == "str":
            self.next()
            return StringLiteral(_unquote(tok.text))
        if tok.text == "(":
            self.next()
            inner = self.expr(0)
            self.expect(")")
            return inner
        if tok.text == "{":
            return self.selector(None)
        if tok.kind == "id":
            name = tok.text
            nxt = self.peek(1).text
            if name in _AGGREGATIONS and nxt in ("(", "by", "without"):
                return self.aggregate()
            if nxt == "(":
                return self.call()
            return self.selector(self.next().text)
        self.fail("expected an expression")
        raise AssertionError  # unreachable: fail() raises

    def aggregate(self) -> Expr:
        op = self.next().text
        if op not in _SUPPORTED_AGGREGATIONS:
            raise UnsupportedError(f"aggregation {op}() is not emulated")
        grouping: tuple[str, ...] = ()
        without = False
        if self.peek().text in ("by", "without"):
            without = self.next().text == "without"
            grouping = self.label_list()
        self.expect("(")
        inner = self.expr(0)
        if self.peek().text == ",":
            self.fail(f"{op}() takes one argument")
        self.expect(")")
        if self.peek().text in ("by", "without"):
            without = self.next().text == "without"
            grouping = self.label_list()
        return Aggregate(op, inner, grouping, without)

    def call(self) -> Expr:
        name = self.next().text
        if name not in _FUNCTIONS:
            raise UnsupportedError(f"function {name}() is not emulated")
        self.expect("(")
        args: list[Expr] = []
        while self.peek().text != ")":
            args.append(self.expr(0))
            if self.peek().text == ",":
                self.next()
            elif self.peek().text != ")":
                self.fail("expected ',' or ')' in function call")
        self.expect(")")
        kinds = _FUNCTIONS[name][0]
        if len(args) != len(kinds):
            raise PromQLError(f"{name}() expects {len(kinds)} argument(s), got {len(args)}")
        for kind, arg in zip(kinds, args, strict=True):
            if kind == "matrix" and not isinstance(arg, MatrixSelector):
                if isinstance(arg, VectorSelector):
                    raise PromQLError(f"{name}() expects a range vector, got an instant vector")
                raise UnsupportedError(f"{name}() over a subquery or expression is not emulated")
        return Call(name, tuple(args))

    def selector(self, name: str | None) -> Expr:
        matchers: list[Matcher] = []
        if name is not None:
            matchers.append(Matcher(METRIC_NAME, "=", name))
        if self.peek().text == "{":
            self.next()
            while self.peek().text != "}":
                lname = self.next()
                if lname.kind != "id":
                    self.fail("expected a label name", lname)
                op = self.next()
                if op.text not in ("=", "!=", "=~", "!~"):
                    self.fail("expected a label matching operator", op)
                val = self.next()
                if val.kind != "str":
                    self.fail("expected a quoted label value", val)
                matchers.append(_matcher(lname.text, op.text, _unquote(val.text)))
                if self.peek().text == ",":
                    self.next()
                elif self.peek().text != "}":
                    self.fail("expected ',' or '}' in label matchers")
            self.next()
        if not any(not m.matches("") for m in matchers):
            raise PromQLError(f"vector selector must contain at least one non-empty matcher in {self.src!r}")
        return VectorSelector(tuple(matchers))

    def postfix(self, expr: Expr) -> Expr:
        while True:
            if self.peek().text == "[":
                self.next()
                dur = self.next()
                if self.peek().text.startswith(":"):  # ':1m' lexes as an identifier
                    raise UnsupportedError("subqueries are not emulated")
                if dur.kind != "dur":
                    self.fail("expected a duration in range selector", dur)
                self.expect("]")
                if not isinstance(expr, VectorSelector):
                    raise PromQLError("ranges are only allowed for vector selectors")
                expr = MatrixSelector(expr, parse_duration_ms(dur.text))
            elif self.peek().text == "offset":
                self.next()
                neg = self.peek().text == "-"
                if neg:
                    self.next()
                dur = self.next()
                off = parse_duration_ms(dur.text) * (-1 if neg else 1)
                if isinstance(expr, VectorSelector):
                    expr = VectorSelector(expr.matchers, off)
                elif isinstance(expr, MatrixSelector):
                    expr = MatrixSelector(VectorSelector(expr.vs.matchers, off), expr.range_ms)
                else:
                    raise PromQLError("offset modifier must be preceded by a selector")
            elif self.peek().text == "@":
                raise UnsupportedError("the @ modifier is not emulated")
            else:
                return expr


def _matcher(name: str, op: str, value: str) -> Matcher:
    if op in ("=~", "!~"):
        try:
            return Matcher(name, op, value, re.compile(value))
        except re.error as e:
            raise PromQLError(f"invalid regular expression {value!r}: {e}") from e
    return Matcher(name, op, value)


def _make_binary(op: str, lhs: Expr, rhs: Expr, return_bool: bool, matching: Matching) -> Expr:
    l_scalar, r_scalar = _is_scalar(lhs), _is_scalar(rhs)
    if op in _SET_OPS and (l_scalar or r_scalar):
        raise PromQLError(f"set operator {op!r} not allowed in binary scalar expression")
    if op in _COMPARISONS and l_scalar and r_scalar and not return_bool:
        raise PromQLError("comparisons between scalars must use BOOL modifier")
    return Binary(op, lhs, rhs, return_bool, matching)


def _is_scalar(e: Expr) -> bool:
    if isinstance(e, NumberLiteral):
        return True
    if isinstance(e, Unary):
        return _is_scalar(e.expr)
    if isinstance(e, Binary):
        return _is_scalar(e.lhs) and _is_scalar(e.rhs)
    return isinstance(e, Call) and _FUNCTIONS[e.func][1] == "scalar"


def parse(src: str) -> Expr:
    """Parse a PromQL expression of the emulated subset.

    Raises
    ------
    UnsupportedError
        The expression is PromQL but uses a construct this module does not emulate.
    PromQLError
        The expression is not valid PromQL.
    """
    return _Parser(src).parse()


# -------------------------------------------------------------------------------------------- storage

@dataclass(slots=True)
class _Series:
    ts_ms: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    stale: list[bool] = field(default_factory=list)


class SeriesStore:
    """Samples by series, appended in time order (what the TSDB head holds for a rule evaluation)."""

    def __init__(self) -> None:
        self._series: dict[Labels, _Series] = {}
        self._by_name: dict[str, list[Labels]] = {}

    def append(self, lbls: Labels, ts_ms: int, value: float, *, stale: bool = False) -> None:
        """Add one sample; a stale marker ends the series until its next sample (lookups skip it).

        As the TSDB head (tsdb/head_append.go ``memSeries.appendable``): an exact duplicate of the
        last sample is accepted and ignored; a different value at the same or an earlier time is an
        error, except for a stale marker, which the rule manager then drops silently (another rule
        still exposes the series).
        """
        s = self._series.get(lbls)
        if s is None:
            s = self._series[lbls] = _Series()
            self._by_name.setdefault(dict(lbls).get(METRIC_NAME, ""), []).append(lbls)
        if s.ts_ms and ts_ms <= s.ts_ms[-1]:
            last = s.values[-1]
            both_nan = math.isnan(last) and math.isnan(value)
            same = stale == s.stale[-1] and (stale or last == value or both_nan)
            if stale or (ts_ms == s.ts_ms[-1] and same):
                return
            what = "duplicate sample" if ts_ms == s.ts_ms[-1] else "out-of-order sample"
            raise PromQLError(f"{what} for {format_labels(lbls)} at {ts_ms} ms")
        s.ts_ms.append(int(ts_ms))
        s.values.append(float(value))
        s.stale.append(stale)

    def series(self) -> dict[Labels, _Series]:
        """Every series by label set (read-only view)."""
        return self._series

    def select(self, matchers: Sequence[Matcher]) -> list[tuple[Labels, _Series]]:
        """Series matching all matchers, sorted by label set (the order the TSDB returns)."""
        name = next((m.value for m in matchers if m.name == METRIC_NAME and m.op == "="), None)
        candidates = self._by_name.get(name, []) if name is not None else list(self._series)
        out = []
        for lbls in candidates:
            d = dict(lbls)
            if all(m.matches(d.get(m.name, "")) for m in matchers):
                out.append((lbls, self._series[lbls]))
        out.sort(key=operator.itemgetter(0))
        return out


# ------------------------------------------------------------------------------------------ functions

def extrapolated_rate(ts_ms: Sequence[int], values: Sequence[float], range_start_ms: int, range_end_ms: int,
                      range_s: float, *, is_counter: bool, is_rate: bool) -> float | None:
    """``rate``/``increase``/``delta`` of the samples of one series in ``[range_start, range_end]``.

    promql/functions.go ``extrapolatedRate`` as of v2.42.0, float operation for float operation:
    a drop of a counter is a reset (the value before it is added back); the result is extrapolated
    to each window edge when the first/last sample lies within 1.1 x the average sample interval of
    it, and by half an interval otherwise; a counter is not extrapolated below zero (its zero point
    ``sampled * first / delta`` bounds the start extrapolation). The factor is applied as
    ``result * ((sampled + to_start + to_end) / sampled / range_s)``. None (no output) with fewer
    than two samples.
    """
    n = len(values)
    if n < 2:
        return None
    result = values[-1] - values[0]
    if is_counter:
        prev = values[0]
        for v in values[1:]:
            if v < prev:
                result += prev
            prev = v
    duration_to_start = (ts_ms[0] - range_start_ms) / 1000
    duration_to_end = (range_end_ms - ts_ms[-1]) / 1000
    sampled = (ts_ms[-1] - ts_ms[0]) / 1000
    average = sampled / (n - 1)
    if is_counter and result > 0 and values[0] >= 0:
        duration_to_zero = sampled * (values[0] / result)
        duration_to_start = min(duration_to_start, duration_to_zero)
    threshold = average * 1.1
    extrapolate_to = sampled
    extrapolate_to += duration_to_start if duration_to_start < threshold else average / 2
    extrapolate_to += duration_to_end if duration_to_end < threshold else average / 2
    factor = extrapolate_to / sampled
    if is_rate:
        factor /= range_s
    return result * factor


def _kahan_inc(inc: float, total: float, c: float) -> tuple[float, float]:
    """functions.go ``kahanSumInc`` (Neumaier's variant)."""
    t = total + inc
    if abs(total) >= abs(inc):
        c += (total - t) + inc
    else:
        c += (inc - t) + total
    return t, c


def _sum_over_time(vals: Sequence[float]) -> float:
    total = c = 0.0
    for v in vals:
        total, c = _kahan_inc(v, total, c)
    return total if math.isinf(total) else total + c


def _avg_over_time(vals: Sequence[float]) -> float:
    mean = count = c = 0.0
    for v in vals:
        count += 1
        if math.isinf(mean):
            if math.isinf(v) and (mean > 0) == (v > 0):
                continue
            if not math.isinf(v) and not math.isnan(v):
                continue
        mean, c = _kahan_inc(v / count - mean / count, mean, c)
    return mean if math.isinf(mean) else mean + c


def _max_over_time(vals: Sequence[float]) -> float:
    best = vals[0]
    for v in vals:
        if v > best or math.isnan(best):
            best = v
    return best


def _min_over_time(vals: Sequence[float]) -> float:
    best = vals[0]
    for v in vals:
        if v < best or math.isnan(best):
            best = v
    return best


_OVER_TIME: dict[str, Callable[[Sequence[float]], float]] = {
    "sum_over_time": _sum_over_time, "avg_over_time": _avg_over_time,
    "max_over_time": _max_over_time, "min_over_time": _min_over_time,
    "count_over_time": lambda vals: float(len(vals)), "last_over_time": lambda vals: vals[-1],
}
_FUNCTIONS: dict[str, tuple[tuple[str, ...], str]] = {
    "rate": (("matrix",), "vector"), "increase": (("matrix",), "vector"), "delta": (("matrix",), "vector"),
    "absent": (("vector",), "vector"), "absent_over_time": (("matrix",), "vector"),
    "vector": (("scalar",), "vector"), "scalar": (("vector",), "scalar"), "time": ((), "scalar"),
    **dict.fromkeys(_OVER_TIME, (("matrix",), "vector")),
}


# ------------------------------------------------------------------------------------------ evaluator

Sample = tuple[Labels, float]
Vector = list[Sample]
Value = float | Vector | str


def _drop_name(lbls: Labels) -> Labels:
    return tuple(p for p in lbls if p[0] != METRIC_NAME)


def _signature(lbls: Labels, on: bool, names: tuple[str, ...]) -> Labels:
    if on:
        return tuple(p for p in lbls if p[0] in names)
    return tuple(p for p in lbls if p[0] != METRIC_NAME and p[0] not in names)


def _arith(op: str, a: float, b: float) -> float:
    """IEEE-754 float64 arithmetic as Go does it (division by zero gives Inf/NaN, never an error)."""
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if op == "/":
        if b == 0:
            if a == 0 or math.isnan(a):
                return math.nan
            return math.copysign(math.inf, a) * math.copysign(1.0, b)
        return a / b
    if op == "%":
        return math.fmod(a, b) if b != 0 and not math.isinf(a) else math.nan
    if op == "^":
        try:
            return math.pow(a, b)
        except OverflowError:
            return math.inf
        except ValueError:
            return math.nan
    if op == "atan2":
        return math.atan2(a, b)
    raise UnsupportedError(f"operator {op} is not emulated")


_CMP: dict[str, Callable[[float, float], bool]] = {
    "==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt,
    ">=": operator.ge}


def _elem_binop(op: str, a: float, b: float) -> tuple[float, bool]:
    """engine.go ``vectorElemBinop``: comparisons keep the left value when true."""
    if op in _CMP:
        return a, _CMP[op](a, b)
    return _arith(op, a, b), True


class Evaluator:
    """Instant-query evaluation of parsed expressions against a :class:`SeriesStore`.

    Parameters
    ----------
    store
        The samples (input series and rule outputs).
    lookback_delta_ms
        How far back an instant selector looks for a sample (Prometheus' default 5 min).
    """

    def __init__(self, store: SeriesStore, lookback_delta_ms: int = LOOKBACK_DELTA_MS) -> None:
        self.store = store
        self.lookback_delta_ms = lookback_delta_ms

    def instant(self, expr: Expr, ts_ms: int) -> Value:
        """Value of ``expr`` at ``ts_ms``: a float (scalar), a list of samples, or a string."""
        return self._eval(expr, int(ts_ms))

    def vector(self, expr: Expr, ts_ms: int) -> Vector:
        """Like :meth:`instant` but a scalar becomes a one-sample vector (as a rule result does)."""
        out = self._eval(expr, int(ts_ms))
        if isinstance(out, float):
            return [((), out)]
        if isinstance(out, str):
            raise PromQLError("a rule expression must return a vector or a scalar, got a string")
        return out

    # ---------------------------------------------------------------------------- selectors

    def _select_instant(self, vs: VectorSelector, ts_ms: int) -> Vector:
        ref = ts_ms - vs.offset_ms
        out: Vector = []
        for lbls, s in self.store.select(vs.matchers):
            i = bisect.bisect_right(s.ts_ms, ref) - 1
            if i < 0 or s.ts_ms[i] < ref - self.lookback_delta_ms or s.stale[i]:
                continue
            out.append((lbls, s.values[i]))
        return out

    def select_range(self, ms: MatrixSelector, ts_ms: int) -> list[tuple[Labels, list[int], list[float]]]:
        """Samples of each matching series in ``[t - offset - range, t - offset]`` (stale markers skipped)."""
        maxt = ts_ms - ms.vs.offset_ms
        mint = maxt - ms.range_ms
        out = []
        for lbls, s in self.store.select(ms.vs.matchers):
            lo = bisect.bisect_left(s.ts_ms, mint)
            hi = bisect.bisect_right(s.ts_ms, maxt)
            ts = [s.ts_ms[i] for i in range(lo, hi) if not s.stale[i]]
            if ts:
                vals = [s.values[i] for i in range(lo, hi) if not s.stale[i]]
                out.append((lbls, ts, vals))
        return out

    # ---------------------------------------------------------------------------- dispatch

    def _eval(self, e: Expr, ts: int) -> Value:
        if isinstance(e, NumberLiteral):
            return e.value
        if isinstance(e, StringLiteral):
            return e.value
        if isinstance(e, VectorSelector):
            return self._select_instant(e, ts)
        if isinstance(e, MatrixSelector):
            raise UnsupportedError("a range vector as a query result is not emulated")
        if isinstance(e, Unary):
            inner = self._eval(e.expr, ts)
            if isinstance(inner, float):
                return -inner
            if isinstance(inner, str):
                raise PromQLError("unary minus on a string")
            return [(_drop_name(lb), -v) for lb, v in inner]
        if isinstance(e, Call):
            return self._call(e, ts)
        if isinstance(e, Aggregate):
            return self._aggregate(e, ts)
        return self._binary(e, ts)

    def _call(self, e: Call, ts: int) -> Value:
        f = e.func
        if f == "time":
            return ts / 1000
        if f == "vector":
            v = self._eval(e.args[0], ts)
            return [((), float(v))] if isinstance(v, float) else _type_error(f, "scalar")
        if f == "scalar":
            v = self._eval(e.args[0], ts)
            if not isinstance(v, list):
                return _type_error(f, "instant vector")
            return v[0][1] if len(v) == 1 else math.nan
        if f == "absent":
            v = self._eval(e.args[0], ts)
            if not isinstance(v, list):
                return _type_error(f, "instant vector")
            return [] if v else [(_absent_labels(e.args[0]), 1.0)]
        arg = e.args[0]
        assert isinstance(arg, MatrixSelector)  # checked by the parser
        matrix = self.select_range(arg, ts)
        if f == "absent_over_time":
            return [] if matrix else [(_absent_labels(arg), 1.0)]
        out: Vector = []
        for lbls, t_list, v_list in matrix:
            if f in _OVER_TIME:
                val: float | None = _OVER_TIME[f](v_list)
                keep_name = f == "last_over_time"
            else:
                end = ts - arg.vs.offset_ms
                val = extrapolated_rate(t_list, v_list, end - arg.range_ms, end, arg.range_ms / 1000,
                                        is_counter=f != "delta", is_rate=f == "rate")
                keep_name = False
            if val is not None:
                out.append((lbls if keep_name else _drop_name(lbls), val))
        return out

    def _aggregate(self, e: Aggregate, ts: int) -> Vector:
        vec = self._eval(e.expr, ts)
        if not isinstance(vec, list):
            raise PromQLError(f"expected an instant vector in aggregation {e.op}()")
        groups: dict[Labels, list[float]] = {}  # insertion order = first appearance, as orderedResult
        for lbls, v in vec:
            if e.without:
                key = tuple(p for p in lbls if p[0] != METRIC_NAME and p[0] not in e.grouping)
            else:
                key = tuple(p for p in lbls if p[0] in e.grouping)
            g = groups.get(key)
            if g is None:
                groups[key] = [v, v, 1.0]  # value, mean, count (engine.go groupedAggregation)
                continue
            g[2] += 1
            if e.op == "sum":
                g[0] += v
            elif e.op == "avg":
                # engine.go: incremental mean, each side of the '-' divided to avoid overflow
                if math.isinf(g[1]) and ((math.isinf(v) and (g[1] > 0) == (v > 0)) or
                                         (not math.isinf(v) and not math.isnan(v))):
                    continue
                g[1] += v / g[2] - g[1] / g[2]
            elif e.op == "max":
                if g[0] < v or math.isnan(g[0]):
                    g[0] = v
            elif e.op == "min" and (g[0] > v or math.isnan(g[0])):
                g[0] = v
        pick = {"avg": 1, "count": 2}.get(e.op, 0)
        return [(key, 1.0 if e.op == "group" else g[pick]) for key, g in groups.items()]

    def _binary(self, e: Binary, ts: int) -> Value:
        lhs = self._eval(e.lhs, ts)
        rhs = self._eval(e.rhs, ts)
        if isinstance(lhs, str) or isinstance(rhs, str):
            raise PromQLError(f"operator {e.op} on a string")
        if isinstance(lhs, float) and isinstance(rhs, float):
            value, keep = _elem_binop(e.op, lhs, rhs)
            return (1.0 if keep else 0.0) if e.op in _COMPARISONS else value
        if isinstance(lhs, list) and isinstance(rhs, list):
            if e.op in _SET_OPS:
                return _set_op(e.op, lhs, rhs, e.matching)
            return _vector_binop(e, lhs, rhs)
        swap = isinstance(lhs, float)
        vec, scalar = (rhs, lhs) if swap else (lhs, rhs)
        assert isinstance(vec, list) and isinstance(scalar, float)
        return _vector_scalar(e, vec, scalar, swap)


def _type_error(func: str, expected: str) -> Vector:
    raise PromQLError(f"{func}() expects an {expected}")


def _absent_labels(arg: Expr) -> Labels:
    """functions.go ``createLabelsForAbsentFunction``: equality matchers named once, minus the rest."""
    vs = arg.vs if isinstance(arg, MatrixSelector) else arg
    if not isinstance(vs, VectorSelector):
        return ()
    found: dict[str, str] = {}
    empty: list[str] = []
    for m in vs.matchers:
        if m.name == METRIC_NAME:
            continue
        if m.op == "=" and m.name not in found:
            found[m.name] = m.value
        else:
            empty.append(m.name)
    for name in empty:
        found.pop(name, None)
    return labels_of(found)


def _vector_scalar(e: Binary, vec: Vector, scalar: float, swap: bool) -> Vector:
    """engine.go ``VectorscalarBinop``."""
    out: Vector = []
    comparison = e.op in _COMPARISONS
    for lbls, v in vec:
        lv, rv = (scalar, v) if swap else (v, scalar)
        value, keep = _elem_binop(e.op, lv, rv)
        if comparison and swap:
            value = rv  # the vector element keeps its own value
        if e.return_bool:
            value, keep = (1.0 if keep else 0.0), True
        if keep:
            out.append((_drop_name(lbls) if not comparison or e.return_bool else lbls, value))
    return out


def _result_metric(lhs: Labels, rhs: Labels, e: Binary) -> Labels:
    """engine.go ``resultMetric``."""
    m = e.matching
    d = dict(lhs)
    if e.op not in _COMPARISONS:
        d.pop(METRIC_NAME, None)
    if m.card == "one-to-one":
        if m.on:
            d = {k: v for k, v in d.items() if k in m.labels}
        else:
            for name in m.labels:
                d.pop(name, None)
    if m.include:
        r = dict(rhs)
        for name in m.include:
            if r.get(name, ""):
                d[name] = r[name]
            else:
                d.pop(name, None)
    return labels_of(d)


def _vector_binop(e: Binary, lhs: Vector, rhs: Vector) -> Vector:
    """engine.go ``VectorBinop`` (one-to-one and many-to-one/one-to-many arithmetic and comparisons)."""
    m = e.matching
    if m.card == "one-to-many":
        lhs, rhs = rhs, lhs
    right: dict[Labels, Sample] = {}
    for s in rhs:
        sig = _signature(s[0], m.on, m.labels)
        if sig in right:
            side = "left" if m.card == "one-to-many" else "right"
            raise PromQLError(f"found duplicate series for the match group {dict(sig)} on the {side} "
                              "hand-side of the operation; many-to-many matching not allowed")
        right[sig] = s
    matched: dict[Labels, set[Labels]] = {}
    out: Vector = []
    for ls in lhs:
        sig = _signature(ls[0], m.on, m.labels)
        rs = right.get(sig)
        if rs is None:
            continue
        vl, vr = (rs[1], ls[1]) if m.card == "one-to-many" else (ls[1], rs[1])
        value, keep = _elem_binop(e.op, vl, vr)
        if e.return_bool:
            value, keep = (1.0 if keep else 0.0), True
        if not keep:
            continue
        metric = _result_metric(ls[0], rs[0], e)
        if e.return_bool:
            metric = _drop_name(metric)
        seen = matched.get(sig)
        if m.card == "one-to-one":
            if seen is not None:
                raise PromQLError("multiple matches for labels: many-to-one matching must be explicit "
                                  "(group_left/group_right)")
            matched[sig] = set()
        else:
            if seen is None:
                seen = matched[sig] = set()
            elif metric in seen:
                raise PromQLError("multiple matches for labels: grouping labels must ensure unique matches")
            seen.add(metric)
        out.append((metric, value))
    return out


def _set_op(op: str, lhs: Vector, rhs: Vector, m: Matching) -> Vector:
    """engine.go ``VectorAnd``, ``VectorOr``, ``VectorUnless``."""
    def sig(s: Sample) -> Labels:
        return _signature(s[0], m.on, m.labels)

    if op == "and":
        if not lhs or not rhs:
            return []
        right = {sig(s) for s in rhs}
        return [s for s in lhs if sig(s) in right]
    if op == "or":
        left = {sig(s) for s in lhs}
        return list(lhs) + [s for s in rhs if sig(s) not in left]
    right = {sig(s) for s in rhs}
    return [s for s in lhs if sig(s) not in right]


def check_unique(vec: Iterable[Sample]) -> None:
    """Prometheus refuses a result with two samples of one label set."""
    seen: set[Labels] = set()
    for lbls, _ in vec:
        if lbls in seen:
            raise PromQLError(f"vector cannot contain metrics with the same labelset {format_labels(lbls)}")
        seen.add(lbls)


# ------------------------------------------------------------------------- promtool series notation

_NUMBER = r"[\d.]+(?:[eE][-+]?\d+)?"
_SERIES_ITEM_RE = re.compile(rf"([-+]?(?:{_NUMBER}|Inf|NaN))(?:([-+]{_NUMBER})?x(\d+))?")


def expand_series_values(text: str) -> list[float | str | None]:
    """Expand promtool's ``values:`` notation: ``1+2x3 _ 5 stale 0x2`` -> floats, None (gap), 'stale'.

    ``a+bxn`` yields ``n + 1`` values, each the previous plus ``b`` (a running float sum, as the
    PromQL series-description parser computes it); ``axn`` repeats ``a``; ``_xn`` leaves ``n`` gaps.
    """
    out: list[float | str | None] = []
    for item in str(text).split():
        if item == "stale":
            out.append("stale")
            continue
        m = re.fullmatch(r"_(?:x(\d+))?", item)
        if m:
            out.extend([None] * (int(m.group(1)) if m.group(1) else 1))
            continue
        m = _SERIES_ITEM_RE.fullmatch(item)
        if not m:
            raise PromQLError(f"cannot read series value {item!r} in {text!r}")
        value = float(m.group(1))
        if m.group(3) is None:
            out.append(value)
            continue
        step = float(m.group(2)) if m.group(2) else 0.0
        for _ in range(int(m.group(3)) + 1):
            out.append(value)
            value += step
    return out


def parse_series(text: str) -> Labels:
    """``name{a="x"}`` as written in a promtool ``input_series`` entry -> label set."""
    e = parse(text)
    if not isinstance(e, VectorSelector) or e.offset_ms or any(m.op != "=" for m in e.matchers):
        raise PromQLError(f"expected a series like name{{label=\"value\"}}, got {text!r}")
    return labels_of({m.name: m.value for m in e.matchers})
