"""SLO configuration: YAML decoded into frozen msgspec Structs, then checked across fields.

Every problem is reported, one line each, as ``file: $.path: expected ..., got ...``; unknown fields
are rejected. :func:`load_config` raises :class:`~engine.errors.ConfigError` carrying all of them.

The shapes here are what users write. :mod:`engine.plan` turns a valid :class:`Config` into the
arrays the kernels run on.
"""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path
from typing import Any, Literal

import msgspec
import yaml

from engine.daemon_config import (
    BudgetPolicySection,
    DaemonSection,
    HttpSection,
    SinksSection,
    SourceSection,
)
from engine.durations import parse_duration_s
from engine.errors import ConfigError

Duration = str | int | float
"""A duration as written: ``'5m'``, ``'1h30m'``, or a number of seconds."""

Severity = Literal["page", "ticket"]
PagerDutySeverity = Literal["critical", "error", "warning", "info"]


class _Base(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class AvailabilitySLI(_Base, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Availability: bad events are those whose status matches ``bad_status``.

    ``bad_status`` and ``exclude_status`` take codes (``503``), classes (``"5xx"``) and ranges
    (``"500-504"``). Excluded statuses count neither as good nor as bad (e.g. ``["4xx"]``). Where a
    code is named by both lists, the narrower matcher wins (a code beats a range beats a class; an
    exact tie excludes): ``bad_status: [5xx, 429]`` with ``exclude_status: [4xx]`` keeps 429 bad, and
    ``exclude_status: ["500-501"]`` takes 500 and 501 out of a ``5xx`` bad class.
    """

    bad_status: list[str | int] = msgspec.field(default_factory=lambda: ["5xx"])
    exclude_status: list[str | int] = msgspec.field(default_factory=list)


class LatencySLI(_Base, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Latency: an event is good when its latency is <= the threshold, classified per event.

    Give the threshold as ``threshold_ms`` or ``threshold_s``. ``percentile: 95`` with no SLO
    ``objective`` means "p95 below the threshold", i.e. objective 95 %.
    """

    threshold_ms: float | None = None
    threshold_s: float | None = None
    percentile: float | None = None
    exclude_status: list[str | int] = msgspec.field(default_factory=list)


class SLI(_Base, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Exactly one of ``availability`` or ``latency``; latency may be a sentence like ``p95 below 300ms``."""

    availability: AvailabilitySLI | None = None
    latency: LatencySLI | str | None = None


class TierSpec(_Base, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One multiwindow alert tier: fires when both windows burn faster than the factor.

    Give ``budget_percent`` (the share of the period's error budget spent within ``long_window``;
    factor = budget_percent/100 * period / long_window, SRE Workbook ch. 5) or a fixed ``factor``.
    """

    name: str
    severity: Severity
    long_window: Duration
    short_window: Duration
    budget_percent: float | None = None
    factor: float | None = None
    for_: Duration | None = msgspec.field(default=None, name="for")


class Alerting(_Base, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """How an SLO alerts.

    ``windows`` names a catalog shipped in ``configs/windows`` (``sre-workbook``, ``pyrra``, or any
    catalog file by path) or lists custom tiers. ``min_events`` (default 100) is the low-traffic
    guard: a tier does not fire while its long window holds fewer events. ``keep_firing_for``
    (default 10m) holds a firing alert through short gaps, so that a burst every few minutes pages
    once. Both defaults come from the strategy benchmark (bench/strategies/RESULTS.md).
    ``require_full_windows`` is the warm-up guard: a tier does not fire until the engine has seen
    its whole long window of event time (a window younger than its length burns like a shorter
    window: 4 minutes of data in a 1-day window make a 1-day burn rate out of a 4-minute one).
    """

    windows: str | list[TierSpec] = "sre-workbook"
    min_events: int = 100
    for_: Duration | None = msgspec.field(default=None, name="for")
    keep_firing_for: Duration | None = "10m"
    severities: dict[str, PagerDutySeverity] = msgspec.field(
        default_factory=lambda: {"page": "critical", "ticket": "warning"}
    )
    suppress_ticket_while_paging: bool = True
    require_full_windows: bool = True
    disable: list[Severity] = msgspec.field(default_factory=list)


class SLO(_Base, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One service level objective."""

    name: str
    service: str
    sli: SLI
    route: str | None = None
    operation: str | None = None
    match_labels: dict[str, str] = msgspec.field(default_factory=dict)
    objective: float | None = None
    period: Duration = "30d"
    description: str = ""
    runbook_url: str | None = None
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    alerting: Alerting = msgspec.field(default_factory=Alerting)
    histogram: bool = True


class EventsConfig(_Base, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """How input records map onto events.

    Field names may be dotted paths into nested objects (``http.status``). ``ts_unit: auto`` picks
    s/ms/us/ns from the magnitude of the number; strings are read as RFC 3339.

    ``format`` names sloburn's own event encodings (``auto``, ``ndjson``, ``json``, ``msgpack``;
    the field settings here apply to them) or a format of :mod:`engine.formats.registry`: access
    logs, OTLP spans, k6 output, aggregates, Prometheus samples, ``mapping`` or ``detect``.
    ``mapping_file`` is the YAML file that the ``mapping`` and Prometheus formats read (see
    :mod:`engine.formats.mapping`); a relative path is taken from the working directory.
    """

    format: Literal[
        "auto", "ndjson", "json", "msgpack", "detect", "nginx_json", "nginx_combined",
        "apache_combined", "envoy", "ecs_json", "otlp_json", "k6_json", "aggregates_csv",
        "aggregates_ndjson", "prometheus_json", "prometheus_text", "openmetrics", "mapping",
    ] = "auto"
    ts_field: str = "ts"
    ts_unit: Literal["auto", "s", "ms", "us", "ns"] = "auto"
    service_field: str = "service"
    route_field: str = "route"
    method_field: str = "method"
    status_field: str = "status"
    latency_field: str = "latency_ms"
    latency_unit: Literal["ms", "s", "us"] = "ms"
    weight_field: str = "weight"
    labels_field: str = "labels"
    default_service: str | None = None
    mapping_file: str | None = None


class EngineConfig(_Base, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Evaluation step and event-time rules.

    ``step_s``: evaluation resolution in event time. ``allowed_lateness_s``: the watermark trails the
    newest event by this much; events older than the watermark still count if they are at most
    ``max_late_s`` behind it, and are rejected as ``too_late`` beyond that. Latency histograms are
    kept per SLO in slots of ``histogram_slot_s``; percentiles in alerts cover the last
    ``histogram_window_s`` of event time.
    """

    step_s: int = 1
    allowed_lateness_s: float = 5.0
    max_late_s: float = 300.0
    histogram_slot_s: int = 60
    histogram_window_s: int = 300
    histogram_digits: int = 2
    histogram_max_us: int = 3_600_000_000


class Config(_Base, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A whole sloburn configuration file."""

    slos: list[SLO]
    events: EventsConfig = msgspec.field(default_factory=EventsConfig)
    engine: EngineConfig = msgspec.field(default_factory=EngineConfig)
    # Daemon sections (ignored by the backtester); their shapes live in engine.daemon_config.
    source: SourceSection = msgspec.field(default_factory=SourceSection)
    sinks: SinksSection = msgspec.field(default_factory=SinksSection)
    state_dir: str | None = None
    http: HttpSection = msgspec.field(default_factory=HttpSection)
    tick_s: float = 1.0
    budget_policy: BudgetPolicySection = msgspec.field(default_factory=BudgetPolicySection)
    daemon: DaemonSection = msgspec.field(default_factory=DaemonSection)

    def slo(self, name: str) -> SLO:
        for s in self.slos:
            if s.name == name:
                return s
        raise KeyError(name)


# ---------------------------------------------------------------------------------------------
# Status matchers

_STATUS_CLASS = re.compile(r"^([1-5])xx$", re.IGNORECASE)
_STATUS_RANGE = re.compile(r"^(\d{3})\s*-\s*(\d{3})$")


def status_codes(spec: str | int) -> range:
    """Codes named by one status matcher: ``503``, ``"5xx"``, ``"500-504"``; ValueError otherwise."""
    if isinstance(spec, int) and not isinstance(spec, bool):
        if 100 <= spec <= 599:
            return range(spec, spec + 1)
        raise ValueError(f"expected a status code in 100..599, got {spec}")
    text = str(spec).strip()
    if text.isdigit() and 100 <= int(text) <= 599:
        return range(int(text), int(text) + 1)
    m = _STATUS_CLASS.match(text)
    if m:
        lo = int(m.group(1)) * 100
        return range(lo, lo + 100)
    m = _STATUS_RANGE.match(text)
    if m:
        lo, hi = int(m.group(1)), int(m.group(2))
        if 100 <= lo <= hi <= 599:
            return range(lo, hi + 1)
    raise ValueError(f"expected a status code, class like '5xx' or range like '500-504', got {spec!r}")


def status_verdicts(bad: list[str | int], exclude: list[str | int]) -> dict[int, str]:
    """Code -> ``"bad"`` or ``"excluded"`` for every code the two lists name (narrowest matcher wins)."""
    best: dict[int, tuple[int, int, str]] = {}
    for specs, verdict, rank in ((bad, "bad", 1), (exclude, "excluded", 0)):
        for spec in specs:
            codes = status_codes(spec)
            key = (len(codes), rank)
            for code in codes:
                if code not in best or key < best[code][:2]:
                    best[code] = (len(codes), rank, verdict)
    return {code: v for code, (_, _, v) in best.items()}


# ---------------------------------------------------------------------------------------------
# Latency sentences: "p95 below 300ms", "p99 < 1s", "99% under 250 ms"

_LATENCY_SENTENCE = re.compile(
    r"^\s*(?:p(?P<p>\d+(?:\.\d+)?)|(?P<q>\d+(?:\.\d+)?)\s*%)\s*(?:below|under|<=|<)\s*"
    r"(?P<v>\d+(?:\.\d+)?)\s*(?P<u>ms|s|us)\s*$",
    re.IGNORECASE,
)


def parse_latency_sentence(text: str) -> LatencySLI:
    """``"p95 below 300ms"`` -> ``LatencySLI(threshold_ms=300, percentile=95)``; ValueError otherwise."""
    m = _LATENCY_SENTENCE.match(text)
    if not m:
        raise ValueError(f"expected a sentence like 'p95 below 300ms', got {text!r}")
    pct = float(m.group("p") or m.group("q"))
    value = float(m.group("v"))
    unit = m.group("u").lower()
    ms = value * {"ms": 1.0, "s": 1000.0, "us": 0.001}[unit]
    return LatencySLI(threshold_ms=ms, percentile=pct)


def latency_sli(sli: SLI) -> LatencySLI | None:
    """The latency SLI of ``sli`` with a sentence already parsed, or None for availability."""
    if sli.latency is None:
        return None
    if isinstance(sli.latency, str):
        return parse_latency_sentence(sli.latency)
    return sli.latency


def latency_threshold_ms(lat: LatencySLI) -> float:
    if lat.threshold_ms is not None:
        return lat.threshold_ms
    assert lat.threshold_s is not None
    return lat.threshold_s * 1000.0


def objective_percent(slo: SLO) -> float:
    """The SLO's objective in percent, taking a latency percentile when no objective is written."""
    if slo.objective is not None:
        return slo.objective
    lat = latency_sli(slo.sli)
    assert lat is not None and lat.percentile is not None
    return lat.percentile


def error_budget(slo: SLO) -> float:
    """``B = 1 - O/100`` as a ratio, rounded to kill the float artefact of ``100 - 99.9``."""
    return round(1.0 - objective_percent(slo) / 100.0, 12)


def period_s(slo: SLO) -> int:
    return int(parse_duration_s(slo.period))


# ---------------------------------------------------------------------------------------------
# Loading and checking


def msgspec_problem(source: str, prefix: str, err: msgspec.ValidationError) -> str:
    # msgspec says "Expected `int`, got `str` - at `$.slos[0].objective`"; we say
    # "file: $.slos[0].objective: expected `int`, got `str`" with the path rooted at the document.
    text = str(err)
    where = "$"
    m = re.search(r" - at `(\$[^`]*)`$", text)
    if m:
        where = m.group(1)
        text = text[: m.start()]
    path = prefix + where[1:] if prefix else where
    if text.startswith("Object contains unknown field"):
        field = re.search(r"`([^`]*)`", text)
        name = field.group(1) if field else "?"
        return f"{source}: {path}.{name}: unknown field {name!r}"
    if text.startswith("Object missing required field"):
        field = re.search(r"`([^`]*)`", text)
        name = field.group(1) if field else "?"
        return f"{source}: {path}.{name}: required field is missing"
    return f"{source}: {path}: {text[:1].lower()}{text[1:]}"


def _check_duration(problems: list[str], where: str, value: Duration | None, *, positive: bool) -> float:
    if value is None:
        return 0.0
    try:
        s = parse_duration_s(value)
    except ValueError as e:
        problems.append(f"{where}: {e}")
        return math.nan
    if positive and s <= 0:
        problems.append(f"{where}: expected a duration > 0, got {value!r}")
    return s


def _check_slo(problems: list[str], where: str, slo: SLO, step_s: int) -> None:
    from engine.windows import CatalogError, resolve_tiers

    if not slo.name.strip():
        problems.append(f"{where}.name: expected a non-empty name, got {slo.name!r}")
    if (slo.sli.availability is None) == (slo.sli.latency is None):
        problems.append(f"{where}.sli: expected exactly one of 'availability' or 'latency', got "
                        f"{'both' if slo.sli.availability is not None else 'neither'}")
    lat: LatencySLI | None = None
    if slo.sli.latency is not None:
        try:
            lat = latency_sli(slo.sli)
        except ValueError as e:
            problems.append(f"{where}.sli.latency: {e}")
    if lat is not None:
        n_thr = (lat.threshold_ms is not None) + (lat.threshold_s is not None)
        if n_thr != 1:
            problems.append(f"{where}.sli.latency: expected exactly one of 'threshold_ms' or "
                            f"'threshold_s', got {n_thr}")
        elif latency_threshold_ms(lat) <= 0:
            problems.append(f"{where}.sli.latency: expected a threshold > 0, got "
                            f"{latency_threshold_ms(lat)} ms")
        if lat.percentile is not None and not 0 < lat.percentile < 100:
            problems.append(f"{where}.sli.latency.percentile: expected a percentile in (0, 100), "
                            f"got {lat.percentile}")
        if (slo.objective is not None and lat.percentile is not None
                and abs(slo.objective - lat.percentile) > 1e-12):
            problems.append(f"{where}.objective: expected the latency percentile {lat.percentile} "
                            f"or no objective, got {slo.objective}")
    for field_name, specs in (
        ("sli.availability.bad_status", slo.sli.availability.bad_status if slo.sli.availability else []),
        ("sli.availability.exclude_status",
         slo.sli.availability.exclude_status if slo.sli.availability else []),
        ("sli.latency.exclude_status", lat.exclude_status if lat else []),
    ):
        for i, spec in enumerate(specs):
            try:
                status_codes(spec)
            except ValueError as e:
                problems.append(f"{where}.{field_name}[{i}]: {e}")
    if slo.objective is None and (lat is None or lat.percentile is None):
        problems.append(f"{where}.objective: required field is missing")
    elif slo.objective is not None and not 0 < slo.objective < 100:
        problems.append(f"{where}.objective: expected a percentage in (0, 100), got {slo.objective}")
    period = _check_duration(problems, f"{where}.period", slo.period, positive=True)
    if period == period and period > 0 and period % 86400 != 0:
        problems.append(f"{where}.period: expected a whole number of days, got {slo.period!r}")
    a = slo.alerting
    if a.min_events < 0:
        problems.append(f"{where}.alerting.min_events: expected an integer >= 0, got {a.min_events}")
    _check_duration(problems, f"{where}.alerting.for", a.for_, positive=False)
    _check_duration(problems, f"{where}.alerting.keep_firing_for", a.keep_firing_for, positive=False)
    for sev in a.severities:
        if sev not in ("page", "ticket"):
            problems.append(f"{where}.alerting.severities.{sev}: expected 'page' or 'ticket', got {sev!r}")
    if period == period and period > 0 and period % 86400 == 0:
        try:
            resolve_tiers(a, int(period), step_s=step_s, where=f"{where}.alerting.windows")
        except CatalogError as e:
            problems.extend(e.problems)


def check_config(cfg: Config, source: str) -> list[str]:
    """Cross-field problems of a decoded config, each prefixed with ``source: $.path``."""
    problems: list[str] = []
    if not cfg.slos:
        problems.append(f"{source}: $.slos: expected at least one SLO, got none")
    seen: dict[str, int] = {}
    step = cfg.engine.step_s
    if step <= 0:
        problems.append(f"{source}: $.engine.step_s: expected an integer >= 1, got {step}")
        step = 1
    for i, slo in enumerate(cfg.slos):
        where = f"{source}: $.slos[{i}]"
        if slo.name in seen:
            problems.append(f"{where}.name: expected a unique name, got {slo.name!r} "
                            f"(also $.slos[{seen[slo.name]}])")
        seen.setdefault(slo.name, i)
        _check_slo(problems, where, slo, step)
    e = cfg.engine
    if e.allowed_lateness_s < 0:
        problems.append(f"{source}: $.engine.allowed_lateness_s: expected a number >= 0, "
                        f"got {e.allowed_lateness_s}")
    if e.max_late_s < 0:
        problems.append(f"{source}: $.engine.max_late_s: expected a number >= 0, got {e.max_late_s}")
    if e.histogram_slot_s <= 0 or e.histogram_slot_s % step:
        problems.append(f"{source}: $.engine.histogram_slot_s: expected a positive multiple of "
                        f"step_s ({step}), got {e.histogram_slot_s}")
    if e.histogram_window_s < e.histogram_slot_s or e.histogram_window_s % e.histogram_slot_s:
        problems.append(f"{source}: $.engine.histogram_window_s: expected a multiple of "
                        f"histogram_slot_s ({e.histogram_slot_s}), got {e.histogram_window_s}")
    if not 1 <= e.histogram_digits <= 5:
        problems.append(f"{source}: $.engine.histogram_digits: expected 1..5, got {e.histogram_digits}")
    if cfg.tick_s <= 0:
        problems.append(f"{source}: $.tick_s: expected a number > 0, got {cfg.tick_s}")
    return problems


def parse_config(data: Any, source: str = "<config>") -> Config:
    """Decode and check an already-parsed YAML/JSON document; raise ConfigError with every problem."""
    problems: list[str] = []
    if not isinstance(data, dict):
        raise ConfigError([f"{source}: $: expected a mapping with 'slos', got {type(data).__name__}"])
    # Decode each SLO on its own so that one bad SLO does not hide the problems of the others.
    raw_slos = data.get("slos")
    slos: list[SLO] = []
    if isinstance(raw_slos, list):
        for i, item in enumerate(raw_slos):
            try:
                slos.append(msgspec.convert(item, SLO))
            except msgspec.ValidationError as e:
                problems.append(msgspec_problem(source, f"$.slos[{i}]", e))
        rest = {k: v for k, v in data.items() if k != "slos"}
        rest["slos"] = []
    else:
        rest = dict(data)
    cfg: Config | None = None
    try:
        cfg = msgspec.convert(rest, Config)
    except msgspec.ValidationError as e:
        problems.append(msgspec_problem(source, "", e))
    if cfg is not None and not problems:
        cfg = msgspec.structs.replace(cfg, slos=slos)
        problems.extend(check_config(cfg, source))
    if problems or cfg is None:
        raise ConfigError(problems)
    return cfg


class TextLoader(yaml.SafeLoader):
    """Safe YAML without implicit timestamps: ``2024-01-01`` stays text.

    PyYAML would turn unquoted dates into date objects, or raise a bare ValueError on ``2024-13-01``.
    """


TextLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file safely; raise ConfigError with the file, line and column on failure."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError([f"{p}: cannot read: {getattr(e, 'strerror', None) or e}"]) from None
    try:
        return yaml.load(text, Loader=TextLoader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError([f"{p}: $: expected valid YAML, got a syntax error{where}: {problem}"]) from None


def load_config(path: str | Path) -> Config:
    """Read, decode and check a YAML config file."""
    return parse_config(read_yaml(path), str(path))


def slo_fingerprint(slo: SLO, engine: EngineConfig) -> str:
    """Hash of everything that shapes an SLO's state; a checkpoint keeps state only when it matches."""
    doc = msgspec.json.encode({"slo": msgspec.to_builtins(slo), "engine": msgspec.to_builtins(engine)})
    return hashlib.sha256(doc).hexdigest()


def config_hash(cfg: Config) -> str:
    return hashlib.sha256(msgspec.json.encode(msgspec.to_builtins(cfg))).hexdigest()
