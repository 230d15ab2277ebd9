"""Prometheus recording and alerting rules equivalent to a sloburn config, with Sloth's names.

For teams that run sloburn next to Prometheus: the rules compute the same error ratios, budgets and
multiwindow, multi-burn-rate alerts from counters, in the layout Sloth writes (so its dashboards work).
Per SLO, three rule groups:

- ``sloth-slo-sli-recordings-<id>``: ``slo:sli_error:ratio_rate<w>`` for every window of the SLO's tiers,
  and for the period (the mean of the shortest window's ratio, as Sloth does);
- ``sloth-slo-meta-recordings-<id>``: ``slo:objective:ratio``, ``slo:error_budget:ratio`` (the budget
  ``B = 1 - O/100`` computed once, without the float artefact of ``1 - 0.999``), ``slo:time_period:days``,
  ``slo:current_burn_rate:ratio``, ``slo:period_burn_rate:ratio``,
  ``slo:period_error_budget_remaining:ratio`` and ``sloth_slo_info``;
- ``sloth-slo-alerts-<id>``: one alert per severity (page, ticket) that fires when any of its tiers
  holds: ``error_ratio(short) > factor * B and error_ratio(long) > factor * B`` (SRE Workbook ch. 5),
  with each tier's factor as sloburn computes it. Tiers of one severity with different ``for`` become one
  alert rule each (told apart by a ``sloburn_tier`` label); ``keep_firing_for`` is kept; ``min_events``
  adds ``and on() total(long) * long_s >= N`` (the total query must be a per-second rate).

``<id>`` is ``<service>-<name>`` (Sloth's ``sloth_id``), or the name when it already starts with the
service. Where the metrics come from is not part of a sloburn config: ``--metrics FILE`` maps SLO names to
queries (:class:`MetricsFile`; ``sloburn import --metrics-out`` writes one with the original PromQL), and
SLOs it does not name read ``http_requests_total`` / ``http_request_duration_seconds`` with the SLO's
service, route, operation, labels and statuses as matchers. Ticket suppression while the page fires
(``suppress_ticket_while_paging``) is Alertmanager's job: the file's header gives the inhibit rule.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
import yaml

from engine.config import (
    SLO,
    Config,
    error_budget,
    latency_sli,
    latency_threshold_ms,
    msgspec_problem,
    objective_percent,
    period_s,
    read_yaml,
    status_verdicts,
)
from engine.durations import format_duration, parse_duration_s
from engine.errors import ConfigError
from engine.importers import IMPORT_LABEL
from engine.importers.promql import codes_regex
from engine.windows import AlertTier, resolve_tiers

WINDOW = re.compile(r"\{\{\s*\.window\s*\}\}")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_SLOTH_LABELS = ("sloth_id", "sloth_service", "sloth_slo", "sloth_window", "sloth_severity", "sloburn_tier")


class QueryEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Where one SLO's events come from in Prometheus; ``{{.window}}`` stands for the window.

    One of: ``error_query`` + ``total_query`` (Sloth ``events``); ``good_query`` + ``total_query``;
    ``error_ratio_query`` (Sloth ``raw``); or counter selectors ``errors`` (or ``good``) + ``total``,
    which are read as ``sum(rate(SELECTOR[{{.window}}]))`` (Pyrra's form).
    """

    error_query: str | None = None
    good_query: str | None = None
    total_query: str | None = None
    error_ratio_query: str | None = None
    errors: str | None = None
    good: str | None = None
    total: str | None = None


class MetricDefaults(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Metric and label names of the queries made for SLOs that the metrics file does not name."""

    requests_metric: str = "http_requests_total"
    duration_metric: str = "http_request_duration_seconds"
    service_label: str = "service"
    route_label: str = "route"
    operation_label: str = "method"
    status_label: str = "code"


class MetricsFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``--metrics`` file: ``defaults`` and ``slos: {<slo name>: QueryEntry}``."""

    defaults: MetricDefaults = msgspec.field(default_factory=MetricDefaults)
    slos: dict[str, QueryEntry] = msgspec.field(default_factory=dict)


def load_metrics(path: str, cfg: Config) -> MetricsFile:
    """Read and check a metrics file against ``cfg``; ConfigError lists every problem."""
    data = read_yaml(path)
    try:
        mf = msgspec.convert(data if data is not None else {}, MetricsFile)
    except msgspec.ValidationError as e:
        raise ConfigError([msgspec_problem(path, "", e)]) from None
    problems = []
    names = {s.name for s in cfg.slos}
    for name, q in mf.slos.items():
        at = f"{path}: $.slos.{name}"
        if name not in names:
            problems.append(f"{at}: expected the name of an SLO of the config, got {name!r}")
        forms = [bool(q.error_query and q.total_query), bool(q.good_query and q.total_query),
                 bool(q.error_ratio_query), bool((q.errors or q.good) and q.total)]
        given = [k for k in msgspec.structs.asdict(q) if getattr(q, k)]
        if sum(forms) != 1 or (q.errors and q.good) or len(given) != (1 if q.error_ratio_query else 2):
            problems.append(f"{at}: expected error_query + total_query, good_query + total_query, "
                            f"error_ratio_query, or errors (or good) + total, got "
                            f"{', '.join(given) or 'none'}")
    if problems:
        raise ConfigError(problems)
    return mf


# ------------------------------------------------------------------------------------- queries


def _q(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _rate(selector: str) -> str:
    return f"sum(rate({selector.strip()}[{{{{.window}}}}]))"


def _default_queries(slo: SLO, d: MetricDefaults) -> QueryEntry:
    """The queries of an SLO the metrics file does not name: requests counter or duration histogram."""
    sel = [f"{d.service_label}={_q(slo.service)}"]
    if slo.route is not None:
        sel.append(f"{d.route_label}={_q(slo.route)}")
    if slo.operation is not None:
        sel.append(f"{d.operation_label}={_q(slo.operation)}")
    sel += [f"{k}={_q(v)}" for k, v in slo.match_labels.items()]
    lat = latency_sli(slo.sli)
    if lat is None:
        av = slo.sli.availability
        assert av is not None
        verdicts = status_verdicts(av.bad_status, av.exclude_status)
        bad = {c for c, v in verdicts.items() if v == "bad"}
        excluded = {c for c, v in verdicts.items() if v == "excluded"}
        total = sel + ([f"{d.status_label}!~{_q(codes_regex(excluded))}"] if excluded else [])
        errors = [*total, f"{d.status_label}=~{_q(codes_regex(bad))}"]
        return QueryEntry(errors=f"{d.requests_metric}{{{','.join(errors)}}}",
                          total=f"{d.requests_metric}{{{','.join(total)}}}")
    excluded = set()
    for spec in lat.exclude_status:
        excluded |= set(status_verdicts([], [spec]))
    total = sel + ([f"{d.status_label}!~{_q(codes_regex(excluded))}"] if excluded else [])
    le_s = latency_threshold_ms(lat) / 1000.0
    le = _num(le_s)
    # Prometheus 3 writes integral bucket bounds as "1.0", Prometheus 2 as "1": match both.
    le_m = f'le=~"{le}(\\\\.0)?"' if float(le_s).is_integer() else f"le={_q(le)}"
    base = d.duration_metric
    return QueryEntry(good=f"{base}_bucket{{{','.join([*total, le_m])}}}",
                      total=f"{base}_count{{{','.join(total)}}}")


def _templates(entry: QueryEntry) -> tuple[str, str | None]:
    """(error ratio template, total template or None), both with ``{{.window}}``."""
    if entry.error_ratio_query:
        return f"({entry.error_ratio_query.strip()})\n", None
    total = entry.total_query or _rate(entry.total or "")
    if entry.error_query or entry.errors:
        errors = entry.error_query or _rate(entry.errors or "")
        return f"({errors.strip()})\n/\n({total.strip()})\n", total.strip()
    good = entry.good_query or _rate(entry.good or "")
    return f"(\n  1 - (\n    ({good.strip()})\n    /\n    ({total.strip()})\n  )\n)\n", total.strip()


# ------------------------------------------------------------------------------------- rules


def _num(x: float) -> str:
    """Shortest exact text of a number, as Go's %g writes it (14.4, 6, 0.001)."""
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(float(x))


def sloth_ids(slo: SLO) -> tuple[str, str]:
    """(sloth_id, sloth_slo) of an SLO."""
    if slo.name.startswith(f"{slo.service}-") and len(slo.name) > len(slo.service) + 1:
        return slo.name, slo.name[len(slo.service) + 1:]
    return f"{slo.service}-{slo.name}", slo.name


def _labels(slo: SLO, notes: list[str]) -> dict[str, dict[str, str]]:
    """SLO labels sorted into where they go: rules, alerts, page/ticket, annotations, info."""
    out: dict[str, dict[str, str]] = {k: {} for k in ("rule", "alert", "page", "ticket", "annotation",
                                                       "page.annotation", "ticket.annotation", "info")}
    for key, value in slo.labels.items():
        if key in (IMPORT_LABEL, "alertname"):
            continue
        scope, name = "rule", key
        for prefix in ("page.annotation.", "ticket.annotation.", "annotation.", "alert.", "page.", "ticket.",
                       "info."):
            if key.startswith(prefix):
                scope, name = prefix[:-1], key[len(prefix):]
                break
        if name in _SLOTH_LABELS:
            notes.append(f"SLO {slo.name}: label {key!r} would overwrite Sloth's {name}: left out")
            continue
        if not _LABEL_NAME.match(name):
            fixed = re.sub(r"[^a-zA-Z0-9_]", "_", name)
            fixed = fixed if _LABEL_NAME.match(fixed) else f"_{fixed}"
            notes.append(f"SLO {slo.name}: label {key!r} is not a Prometheus label name: written as "
                         f"{fixed!r}")
            name = fixed
        out[scope][name] = value
    return out


def _alert_name(slo: SLO, sloth_id: str, notes: list[str]) -> str:
    name = slo.labels.get("alertname")
    if not name:
        words = re.split(r"[^A-Za-z0-9]+", sloth_id)
        return "".join(p[:1].upper() + p[1:] for p in words) + "ErrorBudgetBurn"
    if not _METRIC_NAME.match(name):
        fixed = re.sub(r"[^a-zA-Z0-9_:]", "_", name)
        fixed = fixed if _METRIC_NAME.match(fixed) else f"_{fixed}"
        notes.append(f"SLO {slo.name}: alert name {name!r} is not valid in Prometheus: written as {fixed!r}")
        return fixed
    return name


def _unique_ids(cfg: Config, notes: list[str]) -> dict[str, tuple[str, str]]:
    """SLO name -> (sloth_id, sloth_slo), distinct: rule group names must not repeat."""
    out: dict[str, tuple[str, str]] = {}
    taken: set[str] = set()
    for slo in cfg.slos:
        sid, sslo = sloth_ids(slo)
        if sid in taken:
            sid, sslo, k = f"{slo.service}-{slo.name}", slo.name, 2
            while sid in taken:
                sid, sslo, k = f"{slo.service}-{slo.name}-{k}", f"{slo.name}-{k}", k + 1
            notes.append(f"SLO {slo.name}: its Sloth id is taken by another SLO: written as {sid}")
        taken.add(sid)
        out[slo.name] = (sid, sslo)
    return out


def _slo_groups(slo: SLO, cfg: Config, metrics: MetricsFile, ids_: tuple[str, str],
                notes: list[str]) -> list[dict[str, Any]]:
    sloth_id, sloth_slo = ids_
    entry = metrics.slos.get(slo.name)
    if entry is None:
        entry = _default_queries(slo, metrics.defaults)
        if slo.labels.get(IMPORT_LABEL):
            notes.append(f"SLO {slo.name} is marked {IMPORT_LABEL}: {slo.labels[IMPORT_LABEL]} and has no "
                         f"--metrics entry: its rules read {entry.errors or entry.good}")
    ratio_tpl, total_tpl = _templates(entry)
    p_s = period_s(slo)
    step = cfg.engine.step_s
    all_tiers = resolve_tiers(msgspec.structs.replace(slo.alerting, disable=[]), p_s, step_s=step)
    tiers = resolve_tiers(slo.alerting, p_s, step_s=step)
    budget = error_budget(slo)
    labels = _labels(slo, notes)
    ids = {"sloth_id": sloth_id, "sloth_service": slo.service, "sloth_slo": sloth_slo}
    filt = "{" + ", ".join(f"{k}={_q(v)}" for k, v in ids.items()) + "}"
    base = {**labels["rule"], **ids}
    windows = sorted({t.long_window_s for t in all_tiers} | {t.short_window_s for t in all_tiers})
    shortest = windows[0]

    def rec(w: int) -> str:
        return f"slo:sli_error:ratio_rate{format_duration(w)}"

    sli_rules = [{"record": rec(w), "expr": WINDOW.sub(format_duration(w), ratio_tpl),
                  "labels": _sorted({**base, "sloth_window": format_duration(w)})} for w in windows]
    if p_s not in windows:
        pw = format_duration(p_s)
        sli_rules.append({
            "record": rec(p_s),
            "expr": f"sum_over_time({rec(shortest)}{filt}[{pw}])\n/ ignoring (sloth_window)\n"
                    f"count_over_time({rec(shortest)}{filt}[{pw}])\n",
            "labels": _sorted({**base, "sloth_window": pw})})
    objective = objective_percent(slo)
    meta = _sorted(base)

    def burn(w: int) -> str:
        return (f"{rec(w)}{filt}\n/ on(sloth_id, sloth_slo, sloth_service) group_left\n"
                f"slo:error_budget:ratio{filt}\n")

    meta_rules = [
        {"record": "slo:objective:ratio", "expr": f"vector({_num(round(objective / 100, 12))})",
         "labels": meta},
        {"record": "slo:error_budget:ratio", "expr": f"vector({_num(budget)})", "labels": meta},
        {"record": "slo:time_period:days", "expr": f"vector({_num(p_s / 86400)})", "labels": meta},
        {"record": "slo:current_burn_rate:ratio", "expr": burn(shortest), "labels": meta},
        {"record": "slo:period_burn_rate:ratio", "expr": burn(p_s), "labels": meta},
        {"record": "slo:period_error_budget_remaining:ratio",
         "expr": f"1 - slo:period_burn_rate:ratio{filt}", "labels": meta},
        {"record": "sloth_slo_info", "expr": "vector(1)", "labels": _sorted({
            **base, **labels["info"], "sloth_mode": "sloburn-export", "sloth_objective": _num(objective),
            "sloth_spec": "sloburn/v1", "sloth_version": _version()})},
    ]
    groups = [{"name": f"sloth-slo-sli-recordings-{sloth_id}", "rules": sli_rules},
              {"name": f"sloth-slo-meta-recordings-{sloth_id}", "rules": meta_rules}]
    alerts = _alerts(slo, tiers, budget, filt, total_tpl, labels, _alert_name(slo, sloth_id, notes), ids,
                     notes)
    if alerts:
        groups.append({"name": f"sloth-slo-alerts-{sloth_id}", "rules": alerts})
    return groups


def _tier_block(t: AlertTier, budget: float, filt: str, total_tpl: str | None, min_events: int) -> str:
    cond = f"({_num(t.burn_rate_factor)} * {_num(budget)})"
    parts = [f"max(slo:sli_error:ratio_rate{format_duration(t.short_window_s)}{filt} > {cond}) "
             f"without (sloth_window)"]
    if t.long_window_s != t.short_window_s:
        parts += ["and", f"max(slo:sli_error:ratio_rate{format_duration(t.long_window_s)}{filt} > {cond}) "
                         f"without (sloth_window)"]
    if min_events > 1 and total_tpl is not None:
        total = " ".join(WINDOW.sub(format_duration(t.long_window_s), total_tpl).split())
        parts += ["and on()", f"(({total}) * {t.long_window_s} >= {min_events})"]
    return "(\n" + "\n".join(f"    {p}" for p in parts) + "\n)"


def _alerts(slo: SLO, tiers: list[AlertTier], budget: float, filt: str, total_tpl: str | None,
            labels: dict[str, dict[str, str]], name: str, ids: dict[str, str],
            notes: list[str]) -> list[dict[str, Any]]:
    a = slo.alerting
    if a.min_events > 1 and total_tpl is None:
        notes.append(f"SLO {slo.name}: min_events ({a.min_events}) needs a total query; its metrics entry "
                     f"is an error_ratio_query, so the exported alerts have no low-traffic guard")
    keep = parse_duration_s(a.keep_firing_for) if a.keep_firing_for is not None else 0
    rules = []
    for sev in ("page", "ticket"):
        mine = [t for t in tiers if t.severity == sev]
        if not mine:
            continue
        by_for: dict[int, list[AlertTier]] = {}
        for t in mine:
            by_for.setdefault(t.for_s, []).append(t)
        groups = [mine] if len(by_for) == 1 else [[t] for t in mine]
        for group in groups:
            expr = "\nor\n".join(_tier_block(t, budget, filt, total_tpl, a.min_events) for t in group) + "\n"
            rule: dict[str, Any] = {"alert": name, "expr": expr}
            if group[0].for_s:
                rule["for"] = format_duration(group[0].for_s)
            if keep:
                rule["keep_firing_for"] = format_duration(keep)
            tier_label = {"sloburn_tier": group[0].name} if len(group) < len(mine) else {}
            # The ids are on the alerts anyway (from the expression); written here too, rules of two
            # SLOs with the same alert name never look alike to promtool's duplicate-rule lint.
            rule["labels"] = _sorted({"severity": a.severities.get(sev, "critical"), **labels["alert"],
                                      **labels[sev], "sloth_severity": sev, **tier_label, **ids})
            ann = {"title": f"({sev}) {{{{$labels.sloth_service}}}} {{{{$labels.sloth_slo}}}} SLO error "
                            f"budget burn rate is too fast.",
                   "summary": "{{$labels.sloth_service}} {{$labels.sloth_slo}} SLO error budget burn rate "
                              "is over expected."}
            if slo.runbook_url:
                ann["runbook_url"] = slo.runbook_url
            rule["annotations"] = _sorted({**ann, **labels["annotation"], **labels[f"{sev}.annotation"]})
            rules.append(rule)
    return rules


def _sorted(d: dict[str, str]) -> dict[str, str]:
    return {k: d[k] for k in sorted(d)}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sloburn")
    except PackageNotFoundError:
        return "dev"


# ------------------------------------------------------------------------------------- output


# libyaml's emitter when PyYAML has it (a 50-SLO rules file takes ~1.7 s in pure Python).
class _Dumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):  # type: ignore[misc]
    def ignore_aliases(self, data: Any) -> bool:
        return True  # no &id001 anchors: rule files are read by people too


def _str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|" if "\n" in data else None)


_Dumper.add_representer(str, _str)


def export_rules(cfg: Config, metrics: MetricsFile | None = None) -> tuple[dict[str, Any], list[str]]:
    """``{"groups": [...]}`` for every SLO of ``cfg``, and notes on what could not be kept as written."""
    metrics = metrics or MetricsFile()
    notes: list[str] = []
    ids = _unique_ids(cfg, notes)
    groups = [g for slo in cfg.slos for g in _slo_groups(slo, cfg, metrics, ids[slo.name], notes)]
    return {"groups": groups}, notes


def render_rules(cfg: Config, metrics: MetricsFile | None = None, *, config_path: str = "",
                 metrics_path: str | None = None) -> tuple[str, list[str]]:
    """The rules file text (with a header saying where it comes from) and the notes."""
    doc, notes = export_rules(cfg, metrics)
    head = [f"# Prometheus rules for the SLOs of {config_path or 'a sloburn config'}, in Sloth's layout.",
            "# Written by `sloburn export prometheus`: change the sloburn config and export again.",
            f"# Queries: {metrics_path or 'none given'}; other SLOs read http_requests_total / "
            "http_request_duration_seconds by service."]
    if any(s.alerting.suppress_ticket_while_paging for s in cfg.slos):
        head += ["# Tickets are suppressed while the page of the same SLO fires; in Alertmanager:",
                 "#   inhibit_rules: [{source_matchers: ['sloth_severity=\"page\"'], "
                 "target_matchers: ['sloth_severity=\"ticket\"'], equal: [sloth_id]}]"]
    head += [f"# Note: {n}" for n in notes]
    body = yaml.dump(doc, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=1000)
    return "\n".join(head) + "\n" + body, notes
