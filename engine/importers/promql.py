"""Read the PromQL of other SLO tools and translate the usual SLI patterns into sloburn SLIs.

PromQL cannot run on events, but most SLIs follow a few shapes that can be read back as event
classifications:

- a ratio of two rates of the same counter that differ by status matchers:
  ``sum(rate(http_requests_total{job="api",code=~"5.."}[w])) / sum(rate(http_requests_total{job="api"}[w]))``
  (``code=~"5.."``, ``status=~"5.*"``, ``code!~"2..|3.."``, ``code="500"``, gRPC and Connect code names);
- a latency histogram: the ``le`` bucket against ``_count``, as good events (``bucket``) or as errors
  (``count - bucket``), or VictoriaMetrics' ``1 - histogram_share(le, ...)``.

Matchers on other labels become ``service``, ``route``, ``operation`` or ``match_labels`` where the label
obviously names one of them (``handler="query"`` -> route). What has no event-level equivalent is not
guessed: the translation says so (state ``check`` or ``needs-sli``) with one note per problem.

gRPC and Connect codes are mapped to the HTTP statuses that ``google.rpc.Code`` documents for them
(``Unavailable`` -> 503); where several codes share a status the note says which.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

# ------------------------------------------------------------------------------------- parsing


class PromQLError(ValueError):
    """A query is not PromQL this reader understands; the message says where."""


@dataclass(frozen=True)
class Matcher:
    label: str
    op: str  # one of = != =~ !~
    value: str

    def text(self) -> str:
        v = self.value.replace("\\", "\\\\").replace('"', '\\"')
        return f'{self.label}{self.op}"{v}"'


@dataclass(frozen=True)
class Selector:
    name: str | None
    matchers: tuple[Matcher, ...]
    range: str | None = None

    def text(self) -> str:
        inner = ",".join(m.text() for m in self.matchers)
        return f"{self.name or ''}{{{inner}}}" if inner or not self.name else self.name


@dataclass(frozen=True)
class Call:
    func: str
    args: tuple[Any, ...]
    grouping: tuple[str, ...] | None = None  # aggregations: labels of by/without
    without: bool = False


@dataclass(frozen=True)
class Binary:
    op: str
    lhs: Any
    rhs: Any
    matching: str = ""  # on(...)/ignoring(...) text, kept for recognising `or on() vector(0)`


@dataclass(frozen=True)
class Subquery:
    expr: Any
    range: str


_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<num>(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?|0x[0-9a-fA-F]+|[Ii]nf|NaN)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<op>=~|!~|!=|==|>=|<=|[=<>+\-*/%^,(){}])
  | (?P<range>\[[^\]]*\])
""", re.VERBOSE)
_AGGREGATIONS = {"sum", "avg", "min", "max", "count", "stddev", "stdvar", "group", "topk", "bottomk",
                 "quantile", "count_values"}
_PRECEDENCE = {"or": 1, "and": 2, "unless": 2, "==": 3, "!=": 3, ">": 3, "<": 3, ">=": 3, "<=": 3,
               "+": 4, "-": 4, "*": 5, "/": 5, "%": 5, "atan2": 5, "^": 6}
_WINDOW = re.compile(r"\{\{\s*\.window\s*\}\}")


def _unquote(text: str) -> str:
    if text[0] == "`":
        return text[1:-1]
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), text[1:-1])


class _Parser:
    def __init__(self, text: str) -> None:
        self.toks: list[tuple[str, str]] = []
        pos = 0
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if not m:
                raise PromQLError(f"unexpected {text[pos:pos + 12]!r} at offset {pos}")
            pos = m.end()
            kind = m.lastgroup or ""
            if kind != "ws":
                self.toks.append((kind, m.group()))
        self.i = 0

    def peek(self, k: int = 0) -> tuple[str, str]:
        return self.toks[self.i + k] if self.i + k < len(self.toks) else ("eof", "")

    def take(self, value: str | None = None) -> tuple[str, str]:
        tok = self.peek()
        if value is not None and tok[1] != value:
            raise PromQLError(f"expected {value!r}, got {tok[1] or 'the end'!r}")
        self.i += 1
        return tok

    def parse(self) -> Any:
        node = self.expr(0)
        if self.peek()[0] != "eof":
            raise PromQLError(f"unexpected {self.peek()[1]!r} after a complete expression")
        return node

    def expr(self, min_prec: int) -> Any:
        lhs = self.unary()
        while True:
            kind, val = self.peek()
            op = val.lower() if kind == "ident" else val
            prec = _PRECEDENCE.get(op)
            if prec is None or prec < min_prec or kind not in ("ident", "op"):
                return lhs
            self.take()
            matching = ""
            if self.peek()[1].lower() == "bool":
                self.take()
            while self.peek()[1].lower() in ("on", "ignoring", "group_left", "group_right"):
                word = self.take()[1].lower()
                labels = self.labels() if self.peek()[1] == "(" else ()
                matching += f"{word}({','.join(labels)})"
            rhs = self.expr(prec + (0 if op == "^" else 1))
            lhs = Binary(op, lhs, rhs, matching)

    def unary(self) -> Any:
        if self.peek()[1] in ("-", "+"):
            sign = self.take()[1]
            inner = self.unary()
            return Binary("*", -1.0, inner) if sign == "-" else inner
        return self.postfix(self.primary())

    def postfix(self, node: Any) -> Any:
        while self.peek()[0] == "range":
            text = self.take()[1][1:-1].strip()
            if isinstance(node, Selector) and node.range is None and ":" not in _WINDOW.sub("w", text):
                node = Selector(node.name, node.matchers, text)
            else:
                node = Subquery(node, text)
        while self.peek()[1].lower() == "offset":
            self.take()
            self.take()
        return node

    def labels(self) -> tuple[str, ...]:
        self.take("(")
        out: list[str] = []
        while self.peek()[1] != ")":
            kind, val = self.take()
            if kind not in ("ident", "str"):
                raise PromQLError(f"expected a label name, got {val!r}")
            out.append(_unquote(val) if kind == "str" else val)
            if self.peek()[1] == ",":
                self.take()
        self.take(")")
        return tuple(out)

    def primary(self) -> Any:
        kind, val = self.peek()
        if kind == "num":
            self.take()
            return float(int(val, 16)) if val.startswith("0x") else float(val)
        if kind == "str":
            self.take()
            return _unquote(val)
        if val == "(":
            self.take()
            inner = self.expr(0)
            self.take(")")
            return inner
        if val == "{":
            return Selector(None, self.matchers())
        if kind != "ident":
            raise PromQLError(f"unexpected {val or 'end of query'!r}")
        self.take()
        low = val.lower()
        if low in _AGGREGATIONS:
            grouping, without = None, False
            if self.peek()[1].lower() in ("by", "without"):
                without = self.take()[1].lower() == "without"
                grouping = self.labels()
            args = self.args()
            if self.peek()[1].lower() in ("by", "without"):
                without = self.take()[1].lower() == "without"
                grouping = self.labels()
            return Call(low, args, grouping, without)
        if self.peek()[1] == "(":
            return Call(low, self.args())
        matchers = self.matchers() if self.peek()[1] == "{" else ()
        return Selector(val, matchers)

    def args(self) -> tuple[Any, ...]:
        self.take("(")
        out: list[Any] = []
        while self.peek()[1] != ")":
            out.append(self.expr(0))
            if self.peek()[1] == ",":
                self.take()
        self.take(")")
        return tuple(out)

    def matchers(self) -> tuple[Matcher, ...]:
        self.take("{")
        out: list[Matcher] = []
        while self.peek()[1] != "}":
            kind, label = self.take()
            if kind not in ("ident", "str"):
                raise PromQLError(f"expected a label name in a selector, got {label!r}")
            op = self.take()[1]
            if op not in ("=", "!=", "=~", "!~"):
                raise PromQLError(f"expected a label matcher operator after {label!r}, got {op!r}")
            vkind, value = self.take()
            if vkind != "str":
                raise PromQLError(f"expected a quoted value for {label}{op}, got {value!r}")
            out.append(Matcher(_unquote(label) if kind == "str" else label, op, _unquote(value)))
            if self.peek()[1] == ",":
                self.take()
        self.take("}")
        return tuple(out)


def parse(query: str) -> Any:
    """The syntax tree of ``query`` (Sloth's ``{{.window}}`` allowed in ranges)."""
    return _Parser(query).parse()


def one_line(query: str) -> str:
    """A query on one line, for comments and messages."""
    return " ".join(query.split())


# ------------------------------------------------------------------------------------- statuses

ALL_CODES = frozenset(range(100, 600))
STATUS_LABELS = frozenset({"code", "status", "status_code", "response_code", "http_code", "http_status",
                           "http_status_code", "http_response_status_code", "grpc_code", "grpc_status",
                           "rpc_grpc_status_code"})
# google.rpc.Code and the HTTP status google/rpc/code.proto documents for each.
GRPC_HTTP = {"OK": 200, "CANCELLED": 499, "UNKNOWN": 500, "INVALID_ARGUMENT": 400, "DEADLINE_EXCEEDED": 504,
             "NOT_FOUND": 404, "ALREADY_EXISTS": 409, "PERMISSION_DENIED": 403, "RESOURCE_EXHAUSTED": 429,
             "FAILED_PRECONDITION": 400, "ABORTED": 409, "OUT_OF_RANGE": 400, "UNIMPLEMENTED": 501,
             "INTERNAL": 500, "UNAVAILABLE": 503, "DATA_LOSS": 500, "UNAUTHENTICATED": 401}
GRPC_NUMBER = {name: i for i, name in enumerate(GRPC_HTTP)}  # code.proto order is the numbering


def _grpc_spellings(name: str) -> set[str]:
    """grpc-go (``DeadlineExceeded``), Connect (``deadline_exceeded``), proto (``DEADLINE_EXCEEDED``)."""
    camel = "".join(w.capitalize() for w in name.split("_"))
    out = {name, name.lower(), camel, str(GRPC_NUMBER[name])}
    if name == "OK":
        out.add("OK")
    if name == "CANCELLED":
        out |= {"Canceled", "canceled"}
    return out


_SPELLINGS: list[tuple[str, frozenset[int], str | None]] = (
    [(str(c), frozenset({c}), None) for c in sorted(ALL_CODES)]
    + [(f"{k}{x}", frozenset(range(k * 100, k * 100 + 100)), None) for k in range(1, 6) for x in ("xx", "XX")]
    + [(s, frozenset({code}), name) for name, code in GRPC_HTTP.items()
       for s in sorted(_grpc_spellings(name))]
)


def _alternatives(regex: str) -> list[str]:
    """Top-level ``|`` branches of a regex, outer group and anchors removed."""
    r = regex.strip()
    if r.startswith("^"):
        r = r[1:]
    if r.endswith("$") and not r.endswith("\\$"):
        r = r[:-1]
    while r.startswith("(") and r.endswith(")") and _balanced(r[1:-1]):
        r = r[1:-1]
    out, depth, cur = [], 0, ""
    for ch in r:
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        if ch == "|" and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    return [*out, cur]


def _balanced(text: str) -> bool:
    depth = 0
    for ch in text:
        depth += 1 if ch == "(" else -1 if ch == ")" else 0
        if depth < 0:
            return False
    return depth == 0


@dataclass(frozen=True)
class StatusMatch:
    """HTTP statuses a status matcher selects; ``notes`` say where that is not exact."""

    codes: frozenset[int]
    notes: tuple[str, ...] = ()


def status_match(m: Matcher) -> StatusMatch | None:
    """The statuses ``m`` selects, or None when its values name no HTTP status or gRPC code."""
    if m.op in ("=", "!="):
        def hit(s: str) -> bool:
            return s == m.value
        branches = [m.value]
    else:
        try:
            rx = re.compile(m.value)
        except re.error:
            return None

        def hit(s: str) -> bool:
            return rx.fullmatch(s) is not None
        branches = _alternatives(m.value)
    # gRPC code numbers only on gRPC labels: a `code="0"` elsewhere is not gRPC's OK.
    grpc_label = "grpc" in m.label
    spellings = [(s, codes, g) for s, codes, g in _SPELLINGS
                 if hit(s) and (grpc_label or g is None or not s.isdigit())]
    if not spellings:
        return None
    notes: list[str] = []
    for b in branches:
        try:
            brx = re.compile(b)
        except re.error:
            continue
        if b and not any(brx.fullmatch(s) for s, _, _ in _SPELLINGS):
            notes.append(f"{m.text()}: the value {b!r} names no HTTP status or gRPC code; events "
                         f"cannot carry it, so it is left out")
    http = [codes for _, codes, g in spellings if g is None]
    negate = m.op in ("!=", "!~")
    if http:
        chosen = frozenset().union(*http)
        return StatusMatch(ALL_CODES - chosen if negate else chosen, tuple(notes))
    names = {g for _, _, g in spellings if g is not None}
    if negate:
        names = set(GRPC_HTTP) - names
    mapped = frozenset(GRPC_HTTP[n] for n in names)
    others = {n for n in GRPC_HTTP if n not in names and GRPC_HTTP[n] in mapped}
    codes = mapped if not negate else ALL_CODES - frozenset(GRPC_HTTP[n] for n in GRPC_HTTP if n not in names)
    names_txt = ", ".join(sorted(names))
    notes.append(f"{m.text()}: gRPC codes read as the HTTP statuses google.rpc.Code gives them "
                 f"({names_txt} -> {', '.join(str(s) for s in status_specs(mapped))})")
    if others:
        shared = ", ".join(f"{n} ({GRPC_HTTP[n]})" for n in sorted(others))
        notes.append(f"{m.text()}: {shared} share an HTTP status with the selected codes and are "
                     f"counted the same way")
    return StatusMatch(codes, tuple(notes))


def status_specs(codes: frozenset[int] | set[int]) -> list[str | int]:
    """Codes as sloburn status matchers: whole classes (``5xx``), ranges (``500-504``), codes."""
    out: list[str | int] = []
    for k in range(1, 6):
        in_cls = sorted(c for c in codes if k * 100 <= c < k * 100 + 100)
        if len(in_cls) == 100:
            out.append(f"{k}xx")
            continue
        i = 0
        while i < len(in_cls):
            j = i
            while j + 1 < len(in_cls) and in_cls[j + 1] == in_cls[j] + 1:
                j += 1
            out.append(in_cls[i] if i == j else f"{in_cls[i]}-{in_cls[j]}")
            i = j + 1
    return out


def _digits(ds: list[int]) -> str:
    if len(ds) == 1:
        return str(ds[0])
    parts, i = [], 0
    while i < len(ds):
        j = i
        while j + 1 < len(ds) and ds[j + 1] == ds[j] + 1:
            j += 1
        parts.append(str(ds[i]) if i == j else f"{ds[i]}-{ds[j]}")
        i = j + 1
    return "[" + "".join(parts) + "]"


def codes_regex(codes: frozenset[int] | set[int]) -> str:
    """A compact PromQL regex for a set of 3-digit codes: ``{500..599, 429}`` -> ``429|5..``."""
    out = []
    for h in range(1, 6):
        hund = [c for c in codes if h * 100 <= c < h * 100 + 100]
        if len(hund) == 100:
            out.append(f"{h}..")
            continue
        decades = [sorted(c % 10 for c in hund if (c // 10) % 10 == t) for t in range(10)]
        full = [t for t in range(10) if len(decades[t]) == 10]
        if full:
            out.append(f"{h}{_digits(full)}.")
        out.extend(f"{h}{t}{_digits(d)}" for t, d in enumerate(decades) if 0 < len(d) < 10)
    return "|".join(out)


# ------------------------------------------------------------------------------------- SLIs

SERVICE_LABELS = ("service", "service_name", "app", "application", "app_kubernetes_io_name", "job",
                  "container", "container_name")
ROUTE_LABELS = ("route", "http_route", "handler", "path", "uri", "endpoint", "url_path", "request_path")
METHOD_LABELS = ("method", "http_method", "request_method", "verb")
_UNITS = (("_milliseconds", "threshold_ms", 1.0), ("_ms", "threshold_ms", 1.0),
          ("_microseconds", "threshold_ms", 0.001), ("_us", "threshold_ms", 0.001),
          ("_seconds", "threshold_s", 1.0))
PLACEHOLDER_SLI: dict[str, Any] = {"availability": {"bad_status": ["5xx"]}}


@dataclass
class Translation:
    """A sloburn SLI read from queries, with where it came from and what is not exact.

    ``state`` is ``translated`` (exact), ``check`` (translated, but a matcher or grouping has no exact
    event-level equivalent: see ``notes``) or ``needs-sli`` (``sli`` is a placeholder to fill in).
    """

    sli: dict[str, Any] = field(default_factory=lambda: dict(PLACEHOLDER_SLI))
    state: str = "translated"
    service: str | None = None
    route: str | None = None
    operation: str | None = None
    match_labels: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    mapping: list[str] = field(default_factory=list)

    def check(self, msg: str) -> None:
        if msg not in (n[7:] for n in self.notes):
            self.notes.append(f"CHECK: {msg}")
        if self.state == "translated":
            self.state = "check"

    def fill(self, msg: str) -> None:
        self.notes.append(f"FILL IN: {msg}")
        self.state = "needs-sli"


def _literal(regex: str) -> bool:
    return re.fullmatch(r"[A-Za-z0-9_\-/ :@,]*", regex) is not None


def _strip(node: Any, groupings: list[str]) -> Any:
    """Remove what does not change which events count: sum(), parens, ``or on() vector(0)``."""
    while True:
        if (isinstance(node, Binary) and node.op == "or" and isinstance(node.rhs, Call)
                and node.rhs.func == "vector" and node.rhs.args == (0.0,)):
            node = node.lhs
        elif isinstance(node, Call) and node.func == "sum" and len(node.args) == 1:
            if node.grouping is not None and (node.grouping or node.without):
                word = "without" if node.without else "by"
                text = f"sum {word} ({', '.join(node.grouping)})"
                if text not in groupings:
                    groupings.append(text)
            node = node.args[0]
        else:
            return node


def counter(node: Any, groupings: list[str]) -> Selector | None:
    """The counter selector of ``sum(rate(sel[w]))``, ``increase(...)`` or a bare ``sel``."""
    node = _strip(node, groupings)
    if isinstance(node, Call) and node.func in ("rate", "irate", "increase") and len(node.args) == 1:
        node = node.args[0]
        return node if isinstance(node, Selector) and node.range is not None else None
    return node if isinstance(node, Selector) and node.range is None and node.name else None


def _split(sel: Selector) -> tuple[list[Matcher], list[Matcher], Matcher | None]:
    status, other, le = [], [], None
    for m in sel.matchers:
        if m.label == "le":
            le = m
        elif m.label in STATUS_LABELS:
            status.append(m)
        elif m.label != "__name__":
            other.append(m)
    return status, other, le


def _codes(matchers: list[Matcher], tr: Translation) -> frozenset[int] | None:
    codes = ALL_CODES
    for m in matchers:
        sm = status_match(m)
        if sm is None:
            return None
        for note in sm.notes:
            tr.check(note)
        codes = codes & sm.codes
    return codes


def map_context(matchers: list[Matcher], known_service: str | None, tr: Translation) -> None:
    """Matchers that pick the events: service, route, operation, match_labels, or a CHECK note."""
    eq = {m.label: m.value for m in matchers if m.op == "=" or (m.op == "=~" and _literal(m.value))}
    svc_label = None
    if known_service is None:
        svc_label = next((lab for lab in SERVICE_LABELS if eq.get(lab)), None)
    grpc_route = ("grpc_service" in eq and "grpc_method" in eq)
    for m in matchers:
        value = m.value if m.op == "=" or (m.op == "=~" and _literal(m.value)) else None
        if value is None or value == "":
            what = ("selects series without that label" if value == "" else
                    "excludes values" if m.op in ("!=", "!~") else "matches several values")
            tr.check(f"{m.text()} {what}; sloburn matches labels by exact value, one value per field: "
                     f"not carried, so the SLO takes all such events (split it into one SLO per value, "
                     f"or keep only those events upstream)")
        elif m.label == svc_label:
            tr.service = value
            tr.mapping.append(f"service <- {m.text()}")
        elif known_service is not None and m.label in SERVICE_LABELS and value == known_service:
            tr.mapping.append(f"service <- {m.text()} (the same service)")
        elif grpc_route and m.label in ("grpc_service", "grpc_method"):
            if m.label == "grpc_service":
                tr.route = f"/{eq['grpc_service']}/{eq['grpc_method']}"
                tr.mapping.append(f"route <- grpc_service and grpc_method ({tr.route})")
        elif m.label in ROUTE_LABELS and tr.route is None:
            tr.route = value
            tr.mapping.append(f"route <- {m.text()}")
        elif m.label in METHOD_LABELS and tr.operation is None:
            tr.operation = value
            tr.mapping.append(f"operation <- {m.text()}")
        else:
            tr.match_labels[m.label] = value
            tr.mapping.append(f"match_labels.{m.label} <- {m.text()}")


def _same(a: list[Matcher], b: list[Matcher]) -> bool:
    return sorted(a, key=repr) == sorted(b, key=repr)


def _availability(sel: Selector, total: Selector, *, selects_bad: bool, service: str | None,
                  tr: Translation) -> Translation:
    s_status, s_other, s_le = _split(sel)
    t_status, t_other, t_le = _split(total)
    what = "errors" if selects_bad else "good events"
    if sel.name != total.name:
        tr.fill(f"{what} are counted by another metric ({sel.name}) than the total ({total.name}): "
                f"which events are {'bad' if selects_bad else 'good'} cannot be read from it; write "
                f"the status matchers (or latency threshold) that tell them apart")
        map_context(t_other, service, tr)
        return tr
    missing = [m.text() for m in t_other + t_status if m not in sel.matchers]
    extra = [m.text() for m in s_other if m not in t_other]
    if s_le is not None or t_le is not None:
        extra.append((s_le or t_le).text())  # type: ignore[union-attr]
    if missing or extra:
        tr.fill(f"the {what} selector {sel.text()} differs from the total {total.text()} by "
                f"{', '.join(missing + extra)}, which names no status")
        map_context(t_other, service, tr)
        return tr
    t_codes = _codes(t_status, tr)
    s_codes = _codes(s_status, tr)
    if t_codes is None or s_codes is None:
        bad_m = ", ".join(m.text() for m in s_status + t_status)
        tr.fill(f"{bad_m} names no HTTP status or gRPC code; which events are bad cannot be read from it")
        map_context(t_other, service, tr)
        return tr
    bad = (s_codes & t_codes) if selects_bad else (t_codes - s_codes)
    if not bad or bad == t_codes:
        tr.fill(f"the {what} selector {sel.text()} selects {'no' if not bad else 'every'} counted status")
    else:
        av: dict[str, Any] = {"bad_status": status_specs(bad)}
        if t_codes != ALL_CODES:
            av["exclude_status"] = status_specs(ALL_CODES - t_codes)
        tr.sli = {"availability": av}
        tr.mapping.append(f"sli.availability <- {', '.join(m.text() for m in s_status if m not in t_status)}"
                          + (f" within {', '.join(m.text() for m in t_status)}" if t_status else ""))
    map_context(t_other, service, tr)
    return tr


def _threshold(metric: str, le: float, tr: Translation) -> dict[str, float | int]:
    base = metric.removesuffix("_bucket").removesuffix("_count")
    def num(x: float) -> float | int:
        return int(x) if float(x).is_integer() else round(x, 12)

    for suffix, key, scale in _UNITS:
        if base.endswith(suffix) or f"{suffix}_" in base:
            return {key: num(le * scale)}
    tr.check(f"the unit of {base} is not in its name: its buckets are read as seconds")
    return {"threshold_s": num(le)}


def _latency(bucket: Selector, total: Selector, *, service: str | None, tr: Translation) -> Translation:
    b_status, b_other, b_le = _split(bucket)
    t_status, t_other, t_le = _split(total)
    assert b_le is not None
    base = (bucket.name or "").removesuffix("_bucket")
    try:
        le = float(b_le.value)
    except ValueError:
        le = float("nan")
    if b_le.op not in ("=", "=~") or math.isnan(le) or math.isinf(le):
        tr.fill(f"{b_le.text()} is not one bucket bound: write the latency threshold")
        map_context(t_other, service, tr)
        return tr
    thr = _threshold(base, le, tr)
    tr.sli = {"latency": dict(thr)}
    total_ok = total.name == f"{base}_count" or (
        total.name == f"{base}_bucket" and t_le is not None and t_le.value in ("+Inf", "Inf"))
    if not total_ok:
        tr.fill(f"the total {total.text()} is not the _count of the histogram {base}")
    elif not (_same(b_other, t_other) and _same(b_status, t_status)):
        diff = [m.text() for m in b_other + b_status if m not in total.matchers]
        diff += [m.text() for m in t_other + t_status if m not in bucket.matchers]
        tr.fill(f"the bucket selector and the total differ by {', '.join(diff)}: a latency SLI "
                f"classifies by latency alone (its exclude_status takes statuses out of good and bad "
                f"alike), so it cannot say which of these events are good")
    else:
        codes = _codes(t_status, tr)
        if codes is None:
            tr.fill(f"{', '.join(m.text() for m in t_status)} names no HTTP status or gRPC code")
        elif codes != ALL_CODES:
            tr.sli["latency"]["exclude_status"] = status_specs(ALL_CODES - codes)
        tr.mapping.append(f"sli.latency <- {b_le.text()} of {base}")
    map_context(t_other, service, tr)
    return tr


def _parse_or_fill(query: str, role: str, tr: Translation) -> Any:
    try:
        return parse(query)
    except PromQLError as e:
        tr.fill(f"the {role} query is not PromQL this importer reads ({e})")
        return None


def _unrecognised(role: str, query: str, tr: Translation) -> Translation:
    tr.fill(f"the {role} query {one_line(query)!r} is not a rate of a request counter or histogram "
            f"bucket; write the status matchers or latency threshold that classify each event")
    return tr


def _groupings_note(groupings: list[str], tr: Translation) -> None:
    if groupings:
        tr.check(f"the queries aggregate with {' and '.join(groupings)}, i.e. one ratio per group; "
                 f"sloburn evaluates all the SLO's events together (one SLO per group value would match)")


def translate_events(error_query: str, total_query: str, *, service: str | None = None) -> Translation:
    """SLI of an error query over a total query (Sloth ``events``, OpenSLO ``bad``, Pyrra ``errors``)."""
    tr = Translation()
    err, tot = _parse_or_fill(error_query, "error", tr), _parse_or_fill(total_query, "total", tr)
    if err is None or tot is None:
        return tr
    groupings: list[str] = []
    node = _strip(err, groupings)
    # count - bucket{le}: the slow requests of a histogram.
    if isinstance(node, Binary) and node.op == "-":
        lhs, rhs = counter(node.lhs, groupings), counter(node.rhs, groupings)
        t = counter(tot, groupings)
        if lhs and rhs and t and _split(rhs)[2] is not None:
            if lhs != t:
                tr.fill(f"the error query subtracts from {lhs.text()}, not from the total {t.text()}")
                return tr
            _groupings_note(groupings, tr)
            return _latency(rhs, t, service=service, tr=tr)
        # VictoriaMetrics: 1 - histogram_share(le, sum by (vmrange) (rate(bucket[w]))) over vector(1).
        share = node.rhs
        if (node.lhs == 1.0 and isinstance(share, Call) and share.func == "histogram_share"
                and len(share.args) == 2 and isinstance(share.args[0], float)):
            sel = counter(share.args[1], [])
            if sel is not None and (sel.name or "").endswith("_bucket"):
                thr = _threshold(sel.name or "", share.args[0], tr)
                tr.sli = {"latency": dict(thr)}
                status, other, _ = _split(sel)
                codes = _codes(status, tr)
                if codes is not None and codes != ALL_CODES:
                    tr.sli["latency"]["exclude_status"] = status_specs(ALL_CODES - codes)
                tr.mapping.append(f"sli.latency <- histogram_share({share.args[0]:g}) of {sel.name}")
                map_context(other, service, tr)
                return tr
    e, t = counter(err, groupings), counter(tot, groupings)
    if e is None:
        return _unrecognised("error", error_query, tr)
    if t is None:
        return _unrecognised("total", total_query, tr)
    _groupings_note(groupings, tr)
    if _split(e)[2] is not None and _split(t)[2] is None:
        tr.fill(f"the error query counts the histogram bucket {_split(e)[2].text()}"  # type: ignore[union-attr]
                f" (fast requests) as errors: write the latency threshold")
        return tr
    return _availability(e, t, selects_bad=True, service=service, tr=tr)


def translate_good(good_query: str, total_query: str, *, service: str | None = None) -> Translation:
    """SLI of a good-events query over a total query (OpenSLO ``good``, Pyrra ``success``)."""
    tr = Translation()
    good, tot = _parse_or_fill(good_query, "good", tr), _parse_or_fill(total_query, "total", tr)
    if good is None or tot is None:
        return tr
    groupings: list[str] = []
    g, t = counter(good, groupings), counter(tot, groupings)
    if g is None:
        return _unrecognised("good", good_query, tr)
    if t is None:
        return _unrecognised("total", total_query, tr)
    _groupings_note(groupings, tr)
    if _split(g)[2] is not None:
        return _latency(g, t, service=service, tr=tr)
    return _availability(g, t, selects_bad=False, service=service, tr=tr)


def translate_native_latency(total_query: str, threshold_s: float, *,
                             service: str | None = None) -> Translation:
    """SLI of a native histogram with a latency threshold (Pyrra ``latencyNative``)."""
    tr = Translation()
    tot = _parse_or_fill(total_query, "total", tr)
    t = counter(tot, []) if tot is not None else None
    if t is None:
        return tr if tot is None else _unrecognised("total", total_query, tr)
    status, other, _ = _split(t)
    tr.sli = {"latency": {"threshold_s": threshold_s}}
    codes = _codes(status, tr)
    if codes is None:
        tr.fill(f"{', '.join(m.text() for m in status)} names no HTTP status or gRPC code")
    elif codes != ALL_CODES:
        tr.sli["latency"]["exclude_status"] = status_specs(ALL_CODES - codes)
    tr.mapping.append(f"sli.latency <- native histogram {t.name} at {threshold_s:g} s")
    map_context(other, service, tr)
    return tr
