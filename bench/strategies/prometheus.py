"""Prometheus, emulated: scraped counters, ``rate()`` with extrapolation, rules every evaluation interval.

Two layers, both following Prometheus v2.42.0 (the Debian ``prometheus`` package whose ``promtool``
the integration tests drive):

:class:`RuleEngine`
    Rule groups (recording and alerting rules, ``for``, ``keep_firing_for``, staleness markers)
    evaluated over a :class:`~bench.strategies.promql.SeriesStore` with the PromQL subset of
    :mod:`bench.strategies.promql`. :func:`replay_promtool_file` runs a ``promtool test rules`` file
    through it, so the emulation can be held to promtool's own expectations.

:class:`PrometheusWindows`
    The benchmark strategy: the bad and total requests of one SLO become two counters, scraped every
    ``scrape_interval_s``; at every rule evaluation (every ``eval_interval_s``) each window answers
    ``increase(counter[w])`` of both counters exactly as :func:`~bench.strategies.promql.extrapolated_rate`
    computes it. The ratio ``bad / total`` is Sloth's SLI ``sum(rate(errors[w])) / sum(rate(total[w]))``
    (the common ``1 / w`` cancels). Vectorised with numpy; bit-identical to the scalar function.

Rules reproduced, with their source (prometheus/prometheus @ v2.42.0):

- ``rules/alerting.go`` ``AlertingRule.Eval``: an alert becomes *pending* at the first evaluation
  whose result holds its label set, turns *firing* at the first evaluation ``ts`` with
  ``ts - activeAt >= for``; when the label set is missing from a result a pending alert is dropped
  and a firing one resolves, unless ``keep_firing_for`` still holds it (``ts - keepFiringSince <
  keep_firing_for``); resolved alerts are kept 15 min (``resolvedRetention``).
- ``rules/manager.go`` ``Group.Eval``: rules run in file order, each rule's output is appended at
  ``ts`` before the next rule runs (a later rule of the same group sees it, an earlier one sees the
  previous evaluation through the 5 min lookback); series a rule stops returning get a stale marker.
- ``rules/recording.go``: ``__name__`` set to the record name, rule labels override.
- ``cmd/promtool/unittest.go``: input series start at 0 and step by ``interval``; every group is
  evaluated at ``0, eval_interval, ...`` up to the largest ``eval_time``; an alert test at
  ``eval_time`` reads the firing alerts of the last evaluation at or before it; groups run in
  ``group_eval_order`` (promtool runs them in map order otherwise; this emulation uses file order).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from bench.strategies.base import F64, I64, NS, WindowAnswers, WindowStrategy
from bench.strategies.promql import (
    METRIC_NAME,
    Evaluator,
    Expr,
    Labels,
    PromQLError,
    SeriesStore,
    UnsupportedError,
    VectorSelector,
    check_unique,
    expand_series_values,
    labels_of,
    parse,
    parse_duration_ms,
    parse_series,
)

RESOLVED_RETENTION_MS = 15 * 60_000  # rules/alerting.go resolvedRetention
HORIZON_NS = 400 * 86_400 * NS  # rows further ahead of the last evaluation are rejected (too_far_ahead)
_TEMPLATE_RE = re.compile(r"\{\{-?\s*(.*?)\s*-?\}\}")
_TEMPLATE_VAR_RE = re.compile(r"\$(labels|externalLabels)\.([a-zA-Z_][a-zA-Z0-9_]*)|\.Labels\.([a-zA-Z_]\w*)")


def go_float(v: float) -> str:
    """A float64 as Go's ``fmt`` prints it with ``%v`` (what ``{{ $value }}`` expands to)."""
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if v == 0:
        return "-0" if math.copysign(1.0, v) < 0 else "0"
    sign, digit_tuple, exp = Decimal(repr(v)).normalize().as_tuple()  # shortest round-trip digits
    assert isinstance(exp, int)
    digits = "".join(map(str, digit_tuple))
    dp = len(digits) + exp  # position of the decimal point
    neg = "-" if sign else ""
    x = dp - 1
    if x < -4 or x >= 6:  # strconv 'g' with the shortest precision decides at 6 digits
        mant = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{neg}{mant}e{'-' if x < 0 else '+'}{abs(x):02d}"
    if dp <= 0:
        return f"{neg}0.{'0' * -dp}{digits}"
    if dp >= len(digits):
        return neg + digits + "0" * (dp - len(digits))
    return f"{neg}{digits[:dp]}.{digits[dp:]}"


def check_template(text: str) -> None:
    """Raise :class:`UnsupportedError` if ``text`` uses template actions other than labels and value."""
    for m in _TEMPLATE_RE.finditer(text):
        inner = m.group(1)
        if inner not in ("$value", ".Value") and not _TEMPLATE_VAR_RE.fullmatch(inner):
            raise UnsupportedError(f"template action {{{{ {inner} }}}} is not emulated")


def expand_template(text: str, lbls: Mapping[str, str], value: float,
                    external_labels: Mapping[str, str] | None = None) -> str:
    """Expand ``{{ $labels.x }}``, ``{{ $externalLabels.x }}`` and ``{{ $value }}`` (missing labels -> '')."""
    ext = external_labels or {}

    def sub(m: re.Match[str]) -> str:
        inner = m.group(1)
        if inner in ("$value", ".Value"):
            return go_float(value)
        v = _TEMPLATE_VAR_RE.fullmatch(inner)
        if v is None:
            raise UnsupportedError(f"template action {{{{ {inner} }}}} is not emulated")
        if v.group(1) == "externalLabels":
            return ext.get(v.group(2), "")
        return lbls.get(v.group(2) or v.group(3), "")

    return _TEMPLATE_RE.sub(sub, text)


# ---------------------------------------------------------------------------------------------- rules

@dataclass(slots=True)
class Alert:
    """One alert instance of an alerting rule (rules/alerting.go ``Alert``); times in ms."""

    labels: Labels
    annotations: Labels
    value: float
    active_at_ms: int
    state: str = "pending"  # pending, firing, inactive
    fired_at_ms: int | None = None
    resolved_at_ms: int | None = None
    keep_firing_since_ms: int | None = None


@dataclass(slots=True)
class Rule:
    """A recording rule (``record`` set) or an alerting rule (``alert`` set) of a rule group."""

    expr_text: str
    record: str | None = None
    alert: str | None = None
    for_ms: int = 0
    keep_firing_for_ms: int = 0
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    expr: Expr | None = None
    unsupported: str | None = None  # why this emulation cannot evaluate the rule
    active: dict[Labels, Alert] = field(default_factory=dict)
    previous_series: set[Labels] = field(default_factory=set)

    @property
    def name(self) -> str:
        """Record or alert name."""
        return self.record or self.alert or ""


@dataclass(slots=True)
class RuleGroup:
    """A named list of rules evaluated in order."""

    name: str
    rules: list[Rule]


def _duration_ms(value: Any, where: str) -> int:
    if value in (None, "", 0):
        return 0
    try:
        return parse_duration_ms(str(value))
    except PromQLError as e:
        raise PromQLError(f"{where}: {e}") from e


def load_rule_groups(doc: Mapping[str, Any], source: str = "<rules>") -> list[RuleGroup]:
    """Rule groups from a parsed Prometheus rule file (``{"groups": [...]}``).

    A rule whose expression or templates use constructs this emulation does not have is kept with
    :attr:`Rule.unsupported` set to the reason; malformed rules raise :class:`PromQLError`.
    """
    groups = []
    for gi, g in enumerate(doc.get("groups") or []):
        rules = []
        for ri, r in enumerate(g.get("rules") or []):
            where = f"{source}: groups[{gi}].rules[{ri}]"
            if ("record" in r) == ("alert" in r):
                raise PromQLError(f"{where}: expected exactly one of 'record' and 'alert'")
            rule = Rule(expr_text=str(r.get("expr", "")), record=r.get("record"), alert=r.get("alert"),
                        for_ms=_duration_ms(r.get("for"), where),
                        keep_firing_for_ms=_duration_ms(r.get("keep_firing_for"), where),
                        labels=_str_map(r.get("labels")), annotations=_str_map(r.get("annotations")))
            templates = [*rule.annotations.values(), *rule.labels.values()] if rule.alert else []
            try:
                rule.expr = parse(rule.expr_text)
                for text in templates:
                    check_template(text)
            except UnsupportedError as e:
                rule.unsupported = str(e)
            except PromQLError as e:
                raise PromQLError(f"{where}: {e}") from e
            rules.append(rule)
        groups.append(RuleGroup(str(g.get("name", f"group{gi}")), rules))
    return groups


def referenced_metrics(expr: Expr) -> set[str]:
    """Metric names an expression selects by ``__name__=...``."""
    out: set[str] = set()
    stack: list[Any] = [expr]
    while stack:
        e = stack.pop()
        if isinstance(e, VectorSelector):
            out.update(m.value for m in e.matchers if m.name == METRIC_NAME and m.op == "=")
        elif dataclasses.is_dataclass(e):
            for f in dataclasses.fields(e):
                child = getattr(e, f.name)
                stack.extend(child if isinstance(child, tuple) else [child])
    return out


class RuleEngine:
    """Rule groups evaluated one instant at a time, as Prometheus' rule manager does.

    Parameters
    ----------
    groups
        Rule groups, evaluated in this order at every instant.
    store
        Input series and rule outputs (a new empty store by default).
    external_labels
        Available to templates as ``$externalLabels``.
    """

    def __init__(self, groups: Sequence[RuleGroup], store: SeriesStore | None = None,
                 external_labels: Mapping[str, str] | None = None) -> None:
        self.groups = list(groups)
        self.store = store if store is not None else SeriesStore()
        self.evaluator = Evaluator(self.store)
        self.external_labels = dict(external_labels or {})
        self.unsupported = self._unsupported_names()

    def _unsupported_names(self) -> dict[str, str]:
        """Rule names that cannot be emulated (directly, or through a series such a rule records)."""
        out: dict[str, str] = {}
        rules = [r for g in self.groups for r in g.rules]
        changed = True
        while changed:
            changed = False
            for r in rules:
                if r.name in out:
                    continue
                reason = r.unsupported
                if reason is None and r.expr is not None:
                    tainted = sorted(referenced_metrics(r.expr) & out.keys())
                    if tainted:
                        reason = f"depends on {tainted[0]} ({out[tainted[0]]})"
                if reason is not None:
                    out[r.name] = reason
                    changed = True
        return out

    def evaluate(self, ts_ms: int) -> None:
        """Evaluate every supported rule of every group at ``ts_ms`` and store the outputs."""
        for g in self.groups:
            for rule in g.rules:
                if rule.expr is None or rule.name in self.unsupported:
                    continue
                try:
                    out = self._eval_alert(rule, ts_ms) if rule.alert else self._eval_record(rule, ts_ms)
                    returned = set()
                    for lbls, v in out:
                        self.store.append(lbls, ts_ms, v)
                        returned.add(lbls)
                except PromQLError as e:  # promtool stops the test at the first rule error
                    raise PromQLError(f"rule {rule.name!r} at {ts_ms // 1000} s: {e}") from e
                for gone in rule.previous_series - returned:
                    self.store.append(gone, ts_ms, math.nan, stale=True)
                rule.previous_series = returned

    def _eval_record(self, rule: Rule, ts_ms: int) -> list[tuple[Labels, float]]:
        assert rule.expr is not None and rule.record is not None
        out = []
        for lbls, v in self.evaluator.vector(rule.expr, ts_ms):
            d = dict(lbls)
            d[METRIC_NAME] = rule.record
            d.update(rule.labels)
            out.append((labels_of(d), v))
        check_unique(out)
        return out

    def _eval_alert(self, rule: Rule, ts: int) -> list[tuple[Labels, float]]:
        assert rule.expr is not None and rule.alert is not None
        found: dict[Labels, Alert] = {}
        for lbls, v in self.evaluator.vector(rule.expr, ts):
            tmpl_labels = dict(lbls)
            d = {k: x for k, x in lbls if k != METRIC_NAME}
            for k, text in rule.labels.items():
                d[k] = expand_template(text, tmpl_labels, v, self.external_labels)
            d["alertname"] = rule.alert
            key = labels_of(d)
            if key in found:
                raise PromQLError(f"{rule.alert}: vector contains metrics with the same labelset after "
                                  "applying alert labels")
            ann = tuple(sorted((k, expand_template(t, tmpl_labels, v, self.external_labels))
                               for k, t in rule.annotations.items()))
            found[key] = Alert(key, ann, v, ts)
        for key, a in found.items():
            cur = rule.active.get(key)
            if cur is not None and cur.state != "inactive":
                cur.value, cur.annotations = a.value, a.annotations
                continue
            rule.active[key] = a
        out = []
        for key, a in list(rule.active.items()):
            if key not in found:
                keep = False
                if a.state == "firing" and rule.keep_firing_for_ms > 0:
                    if a.keep_firing_since_ms is None:
                        a.keep_firing_since_ms = ts
                    keep = ts - a.keep_firing_since_ms < rule.keep_firing_for_ms
                if a.state == "pending" or (a.resolved_at_ms is not None
                                            and ts - a.resolved_at_ms > RESOLVED_RETENTION_MS):
                    del rule.active[key]
                if a.state != "inactive" and not keep:
                    a.state, a.resolved_at_ms = "inactive", ts
                if not keep:
                    continue
            else:
                a.keep_firing_since_ms = None
            if a.state == "pending" and ts - a.active_at_ms >= rule.for_ms:
                a.state, a.fired_at_ms = "firing", ts
            out.append((labels_of({**dict(a.labels), METRIC_NAME: "ALERTS", "alertstate": a.state}), 1.0))
        return out

    def firing(self, alertname: str | None = None) -> list[Alert]:
        """Firing alerts (of one alert name, or all), sorted by labels."""
        out = [a for g in self.groups for r in g.rules
               if r.alert and (alertname is None or r.alert == alertname)
               for a in r.active.values() if a.state == "firing"]
        return sorted(out, key=lambda a: (a.labels, a.annotations))


# ----------------------------------------------------------------------------------- promtool replay

@dataclass
class ReplayCase:
    """One ``tests:`` entry of a promtool test file, replayed through a :class:`RuleEngine`."""

    spec: dict[str, Any]
    engine: RuleEngine
    eval_interval_ms: int
    end_ms: int
    firing_at: dict[int, list[Alert]] = field(default_factory=dict)

    def alerts_at(self, eval_ms: int, alertname: str) -> list[tuple[Labels, Labels]]:
        """(labels, annotations) of the alerts firing at the last evaluation at or before ``eval_ms``."""
        step = eval_ms - eval_ms % self.eval_interval_ms
        return sorted((a.labels, a.annotations) for a in self.firing_at.get(step, [])
                      if dict(a.labels)["alertname"] == alertname)

    def query(self, expr_text: str, eval_ms: int) -> list[tuple[Labels, float]]:
        """An instant query after all evaluations (promtool's ``promql_expr_test``)."""
        return self.engine.evaluator.vector(parse(expr_text), eval_ms)

    def check(self, tol: float = 1e-9) -> tuple[list[str], list[str]]:
        """Compare with the case's own expectations: (mismatches, reasons for what was not compared)."""
        bad: list[str] = []
        skipped: list[str] = []
        for t in self.spec.get("alert_rule_test") or []:
            name, at = t["alertname"], parse_duration_ms(str(t["eval_time"]))
            if name in self.engine.unsupported:
                skipped.append(f"alert {name!r}: {self.engine.unsupported[name]}")
                continue
            want = sorted((labels_of({**_str_map(a.get("exp_labels")), "alertname": name}),
                           tuple(sorted(_str_map(a.get("exp_annotations")).items())))
                          for a in t.get("exp_alerts") or [])
            have = self.alerts_at(at, name)
            if have != want:
                bad.append(f"alert {name!r} at {t['eval_time']}: expected {want}, emulation has {have}")
        for t in self.spec.get("promql_expr_test") or []:
            at = parse_duration_ms(str(t["eval_time"]))
            try:
                expr = parse(t["expr"])
            except UnsupportedError as e:
                skipped.append(f"expr {t['expr']!r}: {e}")
                continue
            why = sorted(referenced_metrics(expr) & self.engine.unsupported.keys())
            if why:
                skipped.append(f"expr {t['expr']!r}: {why[0]} {self.engine.unsupported[why[0]]}")
                continue
            got = dict(self.engine.evaluator.vector(expr, at))
            exp = {parse_series(s["labels"]): float(s["value"]) for s in t.get("exp_samples") or []}
            if got.keys() != exp.keys() or any(not math.isclose(got[k], exp[k], rel_tol=tol, abs_tol=tol)
                                               for k in exp):
                bad.append(f"expr {t['expr']!r} at {t['eval_time']}: expected {exp}, emulation has {got}")
        return bad, skipped


def _str_map(m: Mapping[Any, Any] | None) -> dict[str, str]:
    return {str(k): str(v) for k, v in (m or {}).items()}


def replay_promtool_file(path: str | Path, until_ms: int | None = None) -> list[ReplayCase]:
    """Replay every test case of a ``promtool test rules`` file (rule files resolved next to it).

    Parameters
    ----------
    path
        The test file.
    until_ms
        Evaluate at least up to this time (ms after the series start), beyond the largest ``eval_time``.
    """
    path = Path(path)
    doc = yaml.safe_load(path.read_text())
    eval_ms = parse_duration_ms(str(doc.get("evaluation_interval", "1m")))
    order = list(doc.get("group_eval_order") or [])
    cases = []
    for spec in doc.get("tests") or []:
        groups: list[RuleGroup] = []
        for rf in doc.get("rule_files") or []:
            rpath = path.parent / rf
            groups += load_rule_groups(yaml.safe_load(rpath.read_text()), str(rpath))
        if order:
            rank = {n: i for i, n in enumerate(order)}
            groups.sort(key=lambda g: rank.get(g.name, len(rank)))
        store = SeriesStore()
        step_ms = parse_duration_ms(str(spec.get("interval") or doc.get("evaluation_interval", "1m")))
        for s in spec.get("input_series") or []:
            lbls = parse_series(s["series"])
            for i, v in enumerate(expand_series_values(s.get("values", ""))):
                if v is not None:
                    stale = v == "stale"
                    store.append(lbls, i * step_ms, math.nan if stale else float(v), stale=stale)
        times = [parse_duration_ms(str(t["eval_time"]))
                 for key in ("alert_rule_test", "promql_expr_test") for t in spec.get(key) or []]
        end = max([*times, until_ms or 0, 0])
        engine = RuleEngine(groups, store, _str_map(spec.get("external_labels")))
        case = ReplayCase(spec, engine, eval_ms, end)
        for ts in range(0, end + 1, eval_ms):
            engine.evaluate(ts)
            case.firing_at[ts] = [Alert(a.labels, a.annotations, a.value, a.active_at_ms, a.state)
                                  for a in engine.firing()]
        cases.append(case)
    return cases


# ------------------------------------------------------------------------------------- Sloth's rules

@dataclass(frozen=True, slots=True)
class BurnTier:
    """One multiwindow alert condition: both windows' error ratio above ``factor * B``."""

    long_window: str
    short_window: str
    factor: float
    severity: str  # page or ticket


SLOTH_30D_TIERS = (BurnTier("1h", "5m", 14.4, "page"), BurnTier("6h", "30m", 6.0, "page"),
                   BurnTier("1d", "2h", 3.0, "ticket"), BurnTier("3d", "6h", 1.0, "ticket"))
"""Sloth's google-30d catalog (SRE Workbook table 5-8 plus the 1d/2h ticket pair)."""


def sloth_rules(errors_selector: str, total_selector: str, objective_percent: float,
                tiers: Sequence[BurnTier] = SLOTH_30D_TIERS, slo_id: str = "svc-slo") -> dict[str, Any]:
    """A rule file shaped like Sloth's output for one SLO (recordings group, then alerts group).

    The SLI of window ``w`` is ``(sum(rate(errors[w]))) / (sum(rate(total[w])))``; an alert per
    severity ORs its tiers, each ``max(sli_short > (factor * B)) without (sloth_window) and`` the same
    for the long window, with ``B = (100 - objective) / 100`` printed as Sloth prints it.
    """
    budget = (100 - objective_percent) / 100
    windows = sorted({w for t in tiers for w in (t.long_window, t.short_window)}, key=parse_duration_ms)
    ids = {"sloth_id": slo_id, "sloth_service": slo_id.split("-", maxsplit=1)[0], "sloth_slo": slo_id}
    sel = ", ".join(f'{k}="{v}"' for k, v in ids.items())
    records = [{"record": f"slo:sli_error:ratio_rate{w}",
                "expr": f"(sum(rate({errors_selector}[{w}])))\n/\n(sum(rate({total_selector}[{w}])))\n",
                "labels": {**ids, "sloth_window": w}} for w in windows]

    def cond(t: BurnTier) -> str:
        thr = f"({t.factor!r} * {budget!r})"
        return (f"max(slo:sli_error:ratio_rate{t.short_window}{{{sel}}} > {thr}) without (sloth_window)\n"
                f"and\nmax(slo:sli_error:ratio_rate{t.long_window}{{{sel}}} > {thr}) without (sloth_window)")

    alerts = []
    for sev in ("page", "ticket"):
        mine = [t for t in tiers if t.severity == sev]
        if mine:
            alerts.append({"alert": f"SLOErrorBudgetBurn{sev.capitalize()}",
                           "expr": "\nor\n".join(f"(\n{cond(t)}\n)" for t in mine),
                           "labels": {"sloth_severity": sev}})
    return {"groups": [{"name": f"sloth-slo-sli-recordings-{slo_id}", "rules": records},
                       {"name": f"sloth-slo-alerts-{slo_id}", "rules": alerts}]}


# ------------------------------------------------------------------------------- benchmark strategy

def increase_regular(first_ms: F64, last_ms: F64, first: F64, last: F64, n: F64, range_start_ms: F64,
                     range_end_ms: F64) -> F64:
    """``increase()`` of reset-free counters, vectorised: same float operations as ``extrapolatedRate``.

    All arguments are float64 arrays of one shape: timestamps (ms) and values of the first and last
    sample in the range, the sample count ``n`` (>= 2) and the range edges (ms).
    """
    result = last - first
    to_start = (first_ms - range_start_ms) / 1000
    to_end = (range_end_ms - last_ms) / 1000
    sampled = (last_ms - first_ms) / 1000
    average = sampled / (n - 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        to_zero = sampled * (first / result)
    to_start = np.where((result > 0) & (first >= 0) & (to_zero < to_start), to_zero, to_start)
    threshold = average * 1.1
    extrapolate_to = sampled + np.where(to_start < threshold, to_start, average / 2)
    extrapolate_to = extrapolate_to + np.where(to_end < threshold, to_end, average / 2)
    return result * (extrapolate_to / sampled)


class PrometheusWindows(WindowStrategy):
    """Counters scraped every ``scrape_interval_s``, windows answered by ``increase()`` at each evaluation.

    Parameters
    ----------
    windows_s, origin_ns, step_s
        See :class:`~bench.strategies.base.WindowStrategy`; ``step_s`` is ignored, instants come every
        ``eval_interval_s``.
    scrape_interval_s
        Scrape interval (s). Scrape ``k`` happens at ``origin + scrape_offset_s + k * scrape_interval_s``
        and reads every request with an earlier event time.
    eval_interval_s
        Rule evaluation interval (s), the strategy's :attr:`eval_step_s`.
    scrape_offset_s
        Phase of the scrapes after the origin (``0 <= offset < scrape_interval_s``); Prometheus spreads
        targets over the interval.
    rule_lag_evals
        Evaluations between the recording rule and the alert reading it: 0 when both share a group
        (or promtool runs the recording group first), 1 for Sloth's separate alert group in a live
        Prometheus whose group phases put the alerts first.

    Late rows (event time before the last evaluated instant) land in the next scrape that has not
    been read yet, as a live counter would count them when they arrive. Rows more than 400 days
    after the last evaluated instant (or the origin) are rejected as ``too_far_ahead``.
    """

    def __init__(self, windows_s: Sequence[int], origin_ns: int, step_s: int = 60, *,
                 scrape_interval_s: int = 60, eval_interval_s: int = 60, scrape_offset_s: int = 0,
                 rule_lag_evals: int = 0) -> None:
        super().__init__(windows_s, origin_ns, step_s)
        if scrape_interval_s < 1 or eval_interval_s < 1:
            raise ValueError(f"expected scrape and evaluation intervals >= 1 s, got {scrape_interval_s}, "
                             f"{eval_interval_s}")
        if not 0 <= scrape_offset_s < scrape_interval_s:
            raise ValueError(f"expected 0 <= scrape_offset_s < {scrape_interval_s}, got {scrape_offset_s}")
        if rule_lag_evals < 0:
            raise ValueError(f"expected rule_lag_evals >= 0, got {rule_lag_evals}")
        self.name = f"prometheus-{scrape_interval_s}s"
        self.eval_step_s = eval_interval_s
        self.scrape_ns = scrape_interval_s * NS
        self.offset_ns = scrape_offset_s * NS
        self.rule_lag_evals = rule_lag_evals
        self.error_bound = (f"windows read scrapes every {scrape_interval_s} s at rule evaluations every "
                            f"{eval_interval_s} s and extrapolate to the window edges (Prometheus 2.42 "
                            "increase()); a window is short by up to one scrape of traffic at each edge "
                            "and shows no data until it holds two scrapes")
        self._inc = np.zeros((2, 1024), np.int64)  # (bad, total) requests first read by scrape k
        self._cum = np.zeros((2, 1024), np.int64)  # running sums of _inc; columns < _cum_n are final
        self._cum_n = 0

    def _grow(self, need: int) -> None:
        if need > self._inc.shape[1]:
            size = max(need, 2 * self._inc.shape[1])
            pad = np.zeros((2, size - self._inc.shape[1]), np.int64)
            self._inc = np.concatenate([self._inc, pad], axis=1)
            self._cum = np.concatenate([self._cum, pad], axis=1)

    def _ingest(self, ts_ns: I64, bad: I64, total: I64) -> None:
        k = (ts_ns - self.origin_ns - self.offset_ns) // self.scrape_ns + 1  # first scrape after the event
        now_ns = self.origin_ns if self.last_instant_ns is None else self.last_instant_ns
        ahead = ts_ns > now_ns + HORIZON_NS
        if ahead.any():  # bounded state: a stray timestamp years ahead must not allocate years of scrapes
            self.rejections.add("too_far_ahead", int(total[ahead].sum()))
            k, bad, total = k[~ahead], bad[~ahead], total[~ahead]
            if k.size == 0:
                return
        if self.last_instant_ns is not None:
            frozen = (self.last_instant_ns - self.origin_ns - self.offset_ns) // self.scrape_ns + 1
            k = np.maximum(k, frozen)  # late rows reach the counter before the next unread scrape
        self._grow(int(k.max()) + 1)
        np.add.at(self._inc[0], k, bad)
        np.add.at(self._inc[1], k, total)

    def _cumulative(self, need: int) -> I64:
        """Counter values (bad, total) of scrapes ``0 .. need - 1``; they never change once read."""
        have = self._cum_n
        if need > have:
            self._grow(need)
            start = self._cum[:, have - 1:have] if have else np.zeros((2, 1), np.int64)
            self._cum[:, have:need] = np.cumsum(self._inc[:, have:need], axis=1) + start
            self._cum_n = need
        return self._cum

    def _evaluate(self, instants_ns: I64) -> WindowAnswers:
        t_ns = instants_ns - self.rule_lag_evals * self.eval_step_s * NS
        n_inst, nw = t_ns.size, len(self.windows_s)
        w_ns = np.asarray(self.windows_s, np.int64) * NS
        t2 = np.repeat(t_ns[:, None], nw, axis=1)
        start_ns = t2 - w_ns[None, :]
        base = self.origin_ns + self.offset_ns
        k_hi = np.floor_divide(t2 - base, self.scrape_ns)  # last scrape <= t
        k_lo = np.maximum(-np.floor_divide(-(start_ns - base), self.scrape_ns), 0)  # first scrape >= start
        n = k_hi - k_lo + 1
        ok = (n >= 2) & (k_hi >= 0)
        cum = self._cumulative(max(int(k_hi.max()) + 1, 1))
        lo, hi = np.where(ok, k_lo, 0), np.where(ok, k_hi, 0)
        first, last = cum[:, lo].astype(np.float64), cum[:, hi].astype(np.float64)  # (bad, total) values
        to_ms = 1_000_000
        first_ms = ((base + lo * self.scrape_ns - self.origin_ns) // to_ms).astype(np.float64)
        last_ms = ((base + hi * self.scrape_ns - self.origin_ns) // to_ms).astype(np.float64)
        rs_ms = ((start_ns - self.origin_ns) // to_ms).astype(np.float64)
        re_ms = ((t2 - self.origin_ns) // to_ms).astype(np.float64)
        nf = np.where(ok, n, 2).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            bad = increase_regular(first_ms, last_ms, first[0], last[0], nf, rs_ms, re_ms)
            total = increase_regular(first_ms, last_ms, first[1], last[1], nf, rs_ms, re_ms)
        bad = np.where(ok, bad, np.nan).reshape(n_inst, nw)
        total = np.where(ok, total, np.nan).reshape(n_inst, nw)
        return WindowAnswers(bad, total)

    def memory_bytes(self) -> int:
        """Two series of (timestamp, value) samples covering the longest window, 16 bytes a sample."""
        samples = -(-max(self.windows_s) * NS // self.scrape_ns) + 1
        return 2 * samples * 16


def _factory(scrape_s: int, eval_s: int) -> Any:
    def make(windows_s: Sequence[int], origin_ns: int, step_s: int) -> WindowStrategy:
        return PrometheusWindows(windows_s, origin_ns, step_s, scrape_interval_s=scrape_s,
                                 eval_interval_s=eval_s)
    return make


STRATEGIES = {
    "prometheus-15s": _factory(15, 15),  # the scrape/evaluation intervals of Prometheus' example config
    "prometheus-60s": _factory(60, 60),  # Prometheus' built-in defaults (1m / 1m)
}
