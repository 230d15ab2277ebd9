"""OpenSLO ``v1`` and ``v1alpha`` documents as sloburn SLOs.

Read: ``SLO`` (inline ``indicator`` or ``indicatorRef`` to an ``SLI`` document), ``AlertPolicy`` and
``AlertCondition`` (burn-rate conditions become single-window tiers: long = short = ``lookbackWindow``,
factor = ``threshold``, ``for`` = ``alertAfter``), and ``DataSource`` (for the query language of a
``metricSourceRef``). ``Service`` and ``AlertNotificationTarget`` define nothing sloburn evaluates.

Refused, with the reason: ``v2alpha`` (a draft), ``Timeslices`` and ``RatioTimeslices`` budgeting
(sloburn counts events, not good time slices), calendar-aligned windows (sloburn budgets over a rolling
period) and windows that are not a whole number of days. An SLO with several objectives becomes one
sloburn SLO per objective, named ``<name>-<index>`` as Sloth names them.
"""

from __future__ import annotations

import re
from typing import Any

from engine.durations import format_duration, parse_duration_s
from engine.importers import (
    Document,
    ImportedSLO,
    ImportOptions,
    ImportResult,
    Outcome,
    label_value,
    new_slo,
    not_this_tool,
    number,
    percent,
)
from engine.importers.promql import Translation, one_line, translate_events, translate_good

V1 = ("openslo/v1", "openslo.com/v1")
V1ALPHA = ("openslo/v1alpha", "openslo.com/v1alpha")
V2ALPHA = ("openslo/v2alpha", "openslo.com/v2alpha")
PROMQL_SOURCES = {"prometheus", "promql", "mimir", "thanos", "cortex", "victoriametrics", "victoria-metrics",
                  "grafana-mimir", "amazon-prometheus", "google-managed-prometheus"}
_INFO_KINDS = {"Service": "describes a service", "DataSource": "describes where metrics come from",
               "Datasource": "describes where metrics come from",
               "AlertNotificationTarget": "describes where notifications go"}
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_V1ALPHA_UNIT = {"Second": "s", "Minute": "m", "Hour": "h", "Day": "d", "Week": "w", "Month": "M",
                 "Quarter": "Q", "Year": "Y"}
_PAGE = {"critical", "page", "high", "error", "major"}
_TICKET = {"warning", "ticket", "medium", "low", "minor", "info"}


def _name(d: Any) -> str:
    meta = d.get("metadata") if isinstance(d, dict) else None
    return str(meta.get("name", "")) if isinstance(meta, dict) else ""


def convert(docs: list[Document], opts: ImportOptions) -> ImportResult:
    """OpenSLO documents -> imported SLOs and refusals (references resolve across all inputs)."""
    result = ImportResult()
    index: dict[tuple[str, str], Document] = {}
    slos: list[Document] = []
    for doc in docs:
        d = doc.data
        api = str(d.get("apiVersion", "")) if isinstance(d, dict) else ""
        kind = str(d.get("kind", "")) if isinstance(d, dict) else ""
        if api in V2ALPHA:
            result.refused.append(Outcome(doc.where, f"{kind} {_name(d)}".strip(),
                                          "OpenSLO v2alpha is not supported (a draft of the next version "
                                          "of the spec): write it as openslo/v1"))
        elif api not in V1 + V1ALPHA:
            result.refused.append(Outcome(doc.where, "document", not_this_tool(d, "openslo")))
        elif kind == "SLO":
            slos.append(doc)
        elif kind in ("SLI", "AlertPolicy", "AlertCondition", "DataSource", "Datasource"):
            index[(kind.lower(), _name(d))] = doc
        elif kind in _INFO_KINDS:
            result.ignored.append(Outcome(doc.where, f"kind: {kind}", f"{_INFO_KINDS[kind]}, not an SLO"))
        else:
            result.refused.append(Outcome(doc.where, f"kind: {kind}",
                                          f"kind {kind!r} is not an OpenSLO kind this importer reads "
                                          f"(SLO, SLI, AlertPolicy, AlertCondition, DataSource, Service)"))
    used: set[tuple[str, str]] = set()
    for doc in slos:
        try:
            result.slos.extend(_slo(doc, index, used))
        except ValueError as e:
            result.refused.append(Outcome(doc.where, f"SLO {_name(doc.data)}", str(e)))
    for key, doc in index.items():
        kind = str(doc.data.get("kind"))
        if key in used or kind in ("DataSource", "Datasource"):
            what = "used by the SLOs that name it" if key in used else _INFO_KINDS[kind]
            result.ignored.append(Outcome(doc.where, f"kind: {kind}", what, supplied=key in used))
        else:
            ref = {"SLI": "indicatorRef", "AlertPolicy": "alertPolicies",
                   "AlertCondition": "an AlertPolicy's conditionRef"}[kind]
            result.refused.append(Outcome(doc.where, f"kind: {kind}",
                                          f"kind: {kind} {_name(doc.data)!r} is not an SLO: import it "
                                          f"together with the SLOs that name it in {ref}"))
    return result


# ------------------------------------------------------------------------------------- period


def _period(spec: dict[str, Any], alpha: bool) -> str:
    """The rolling period in whole days; ValueError with the reason otherwise."""
    key = "timeWindows" if alpha else "timeWindow"
    windows = spec.get(key)
    if windows is None:
        raise ValueError(f"spec.{key} is missing")
    if not isinstance(windows, list) or len(windows) != 1 or not isinstance(windows[0], dict):
        raise ValueError(f"expected one {key} entry, got {windows!r}")
    w = windows[0]
    if alpha:
        unit = _V1ALPHA_UNIT.get(str(w.get("unit")), "?")
        text = f"{w.get('count')}{unit}"
    else:
        text = str(w.get("duration", ""))
    problems = []
    m = re.fullmatch(r"(\d+)([smhdwMQY])", text)
    if not m:
        problems.append(f"time window duration {text!r} is not an OpenSLO duration (like 28d or 4w)")
    elif m.group(2) in "MQY":
        problems.append(f"a {text} time window has no fixed length in days")
    elif (int(m.group(1)) * _UNIT_S[m.group(2)]) % 86400 or int(m.group(1)) == 0:
        unit_name = {"s": "second", "m": "minute", "h": "hour"}.get(m.group(2), "")
        problems.append(f"a {text} time window ({m.group(1)} {unit_name}(s) in OpenSLO's units) is not a "
                        f"whole number of days")
    cal = w.get("calendar") or {}
    rolling = w.get("isRolling")
    if rolling is False or (rolling is None and isinstance(cal, dict) and cal.get("startTime")):
        start = f" from {cal.get('startTime')}" if isinstance(cal, dict) and cal.get("startTime") else ""
        tz = f" {cal.get('timeZone')}" if isinstance(cal, dict) and cal.get("timeZone") else ""
        hint = f"; set isRolling: true to import it as a rolling {text} window" if not problems else ""
        problems.insert(0, f"calendar-aligned time window ({text}{start}{tz}) is not supported: sloburn "
                           f"budgets over a rolling period{hint}")
    if problems:
        raise ValueError("; ".join(problems))
    assert m is not None
    return format_duration(int(m.group(1)) * _UNIT_S[m.group(2)])


# ------------------------------------------------------------------------------------- SLIs


def _source(metric: Any, alpha: bool, index: dict[tuple[str, str], Document],
            used: set[tuple[str, str]]) -> tuple[str, str]:
    """(query, source type) of a metric of a ratio, in either spec version."""
    if not isinstance(metric, dict):
        return "", ""
    if alpha:
        return str(metric.get("query", "")), str(metric.get("source") or metric.get("queryType") or "")
    src = metric.get("metricSource") or {}
    spec = src.get("spec") or {}
    kind = str(src.get("type") or "")
    ref = src.get("metricSourceRef")
    ds = index.get(("datasource", str(ref))) if ref else None
    if ds is not None:
        used.add(("datasource", str(ref)))
        kind = kind or str((ds.data.get("spec") or {}).get("type", ""))
    return str(spec.get("query", "")) if isinstance(spec, dict) else "", kind


def _ratio(ratio: dict[str, Any], alpha: bool, service: str, index: dict[tuple[str, str], Document],
           used: set[tuple[str, str]]) -> tuple[Translation, list[str], dict[str, str]]:
    total, total_src = _source(ratio.get("total"), alpha, index, used)
    good, good_src = _source(ratio.get("good"), alpha, index, used)
    bad, bad_src = _source(ratio.get("bad"), alpha, index, used)
    part, part_src, is_good = (good, good_src, True) if good else (bad, bad_src, False)
    role = "good" if is_good else "bad"
    info = [f"{role} query: {one_line(part)}", f"total query: {one_line(total)}"]
    kinds = {k.lower() for k in (part_src, total_src) if k}
    if not part or not total:
        tr = Translation()
        tr.fill("the ratio needs a good (or bad) and a total query")
        return tr, info, {}
    if kinds - PROMQL_SOURCES:
        tr = Translation()
        tr.fill(f"the SLI queries are {'/'.join(sorted(kinds))}, not PromQL: write the status matchers or "
                f"latency threshold they stand for ({role}: {one_line(part)}; total: {one_line(total)})")
        return tr, info, {}
    if is_good:
        return (translate_good(part, total, service=service), info,
                {"good_query": part, "total_query": total})
    return translate_events(part, total, service=service), info, {"error_query": part, "total_query": total}


def _threshold_sli(metric: Any, objective: dict[str, Any], alpha: bool,
                   index: dict[tuple[str, str], Document],
                   used: set[tuple[str, str]]) -> tuple[Translation, list[str]]:
    query, kind = _source(metric, alpha, index, used)
    src: Any = {}
    if not alpha and isinstance(metric, dict):
        src = (metric.get("metricSource") or {}).get("spec") or {}
    op = objective.get("op") or (src.get("op") if isinstance(src, dict) else None)
    value = objective.get("value") if objective.get("value") is not None else (
        src.get("threshold") if isinstance(src, dict) else None)
    tr = Translation()
    tr.fill(f"thresholdMetric: each data point of {one_line(query) or 'the metric'} ({kind or 'no source'}) "
            f"is good when it is {op} {value}; if it is a per-request latency, write "
            f"sli: {{latency: {{threshold_ms: ...}}}} in the metric's unit (not given)")
    return tr, [f"threshold query: {one_line(query)}"]


def _objectives(spec: dict[str, Any], alpha: bool, service: str, index: dict[tuple[str, str], Document],
                used: set[tuple[str, str]]) -> list[tuple[float, Translation, list[str], dict[str, str]]]:
    objectives = spec.get("objectives")
    if not isinstance(objectives, list) or not objectives:
        raise ValueError("expected at least one entry in objectives")
    indicator: Any = spec.get("indicator")
    ref = spec.get("indicatorRef")
    if not alpha and ref is not None:
        sli_doc = index.get(("sli", str(ref)))
        if sli_doc is None:
            raise ValueError(f"indicatorRef {ref!r} names no SLI document among the inputs")
        used.add(("sli", str(ref)))
        indicator = sli_doc.data
    ind_spec = indicator.get("spec", indicator) if isinstance(indicator, dict) and not alpha else indicator
    out: list[tuple[float, Translation, list[str], dict[str, str]]] = []
    for i, obj in enumerate(objectives):
        if not isinstance(obj, dict):
            raise ValueError(f"objectives[{i}]: expected a mapping")
        target = number(obj.get("target"))
        objective = percent(target) if target is not None else number(obj.get("targetPercent"))
        if objective is None or not 0 < objective < 100:
            raise ValueError(f"objectives[{i}]: expected a target in (0, 1) or targetPercent in (0, 100), "
                             f"got {obj.get('target', obj.get('targetPercent'))!r}")
        if not alpha and (obj.get("indicator") or obj.get("indicatorRef")):
            raise ValueError(f"objectives[{i}] has its own indicator (a composite SLO): not supported")
        ratio = obj.get("ratioMetrics") if alpha else None
        if ratio is None and isinstance(ind_spec, dict):
            ratio = ind_spec.get("ratioMetric")
        threshold = ind_spec.get("thresholdMetric") if isinstance(ind_spec, dict) else None
        if isinstance(ratio, dict) and ratio.get("raw") is not None:
            tr = Translation()
            tr.fill("ratioMetric.raw is a precomputed ratio; events carry no ratio: write the SLI")
            out.append((objective, tr, [], {}))
        elif isinstance(ratio, dict):
            out.append((objective, *_ratio(ratio, alpha, service, index, used)))
        elif threshold is not None:
            out.append((objective, *_threshold_sli(threshold, obj, alpha, index, used), {}))
        else:
            raise ValueError(f"objectives[{i}]: expected a ratio or threshold indicator")
    return out


# ------------------------------------------------------------------------------------- alerts


def _tiers(spec: dict[str, Any], index: dict[tuple[str, str], Document], used: set[tuple[str, str]],
           info: list[str]) -> list[dict[str, Any]] | None:
    policies = spec.get("alertPolicies") or []
    tiers: list[dict[str, Any]] = []
    names: set[str] = set()
    for p in policies:
        doc = p if isinstance(p, dict) and p.get("kind") == "AlertPolicy" else None
        ref = (p.get("alertPolicyRef") if isinstance(p, dict) else p) if doc is None else None
        if doc is None:
            found = index.get(("alertpolicy", str(ref)))
            if found is None:
                info.append(f"alert policy {ref!r} is not among the inputs: default windows (sre-workbook)")
                continue
            used.add(("alertpolicy", str(ref)))
            doc = found.data
        pspec = doc.get("spec") or {}
        if pspec.get("alertWhenResolved") is False:
            info.append(f"alert policy {_name(doc)}: alertWhenResolved is false; sloburn always resolves")
        for item in pspec.get("conditions") or []:
            cond = item
            if isinstance(item, dict) and item.get("conditionRef"):
                key = ("alertcondition", str(item["conditionRef"]))
                if key not in index:
                    raise ValueError(f"conditionRef {item['conditionRef']!r} names no AlertCondition "
                                     f"document among the inputs")
                used.add(key)
                cond = index[key].data
            tiers.append(_tier(cond, _name(doc), names, info))
    return tiers or None


def _tier(cond: Any, policy: str, names: set[str], info: list[str]) -> dict[str, Any]:
    cspec = (cond or {}).get("spec") or {}
    c = cspec.get("condition") or {}
    if str(c.get("kind", "")).lower() != "burnrate":
        raise ValueError(f"alert policy {policy}: condition kind {c.get('kind')!r} is not burnrate")
    op = str(c.get("op", "gt"))
    if op in ("lt", "lte"):
        raise ValueError(f"alert policy {policy}: op {op} alerts on a burn rate below the threshold")
    factor = number(c.get("threshold"))
    if factor is None or factor <= 0:
        raise ValueError(f"alert policy {policy}: burn-rate threshold {c.get('threshold')!r} is not > 0")
    look = str(c.get("lookbackWindow", ""))
    if look.startswith("-"):
        info.append(f"alert policy {policy}: lookbackWindow {look} read as {look[1:]}")
        look = look[1:]
    try:
        long_s = parse_duration_s(look)
        for_s = parse_duration_s(str(c.get("alertAfter") or "0s"))
    except ValueError as e:
        raise ValueError(f"alert policy {policy}: {e}") from None
    sev_text = str(cspec.get("severity", "")).lower()
    severity = "page" if sev_text in _PAGE else "ticket"
    if sev_text not in _PAGE | _TICKET:
        info.append(f"alert policy {policy}: severity {sev_text!r} read as ticket")
    if op == "gte":
        info.append(f"alert policy {policy}: op gte read as gt (burn rate above the threshold)")
    base = _name(cond) or policy
    name = base if base not in names else f"{base}-{severity}"
    k = 2
    while name in names:
        name, k = f"{base}-{k}", k + 1
    names.add(name)
    window = format_duration(long_s)
    tier: dict[str, Any] = {"name": name, "severity": severity,
                            "factor": int(factor) if factor.is_integer() else factor, "long_window": window,
                            "short_window": window}
    if for_s:
        tier["for"] = format_duration(for_s)
    return tier


# ------------------------------------------------------------------------------------- SLOs


def _labels(meta: dict[str, Any]) -> dict[str, str]:
    return {str(k): label_value(v) for k, v in (meta.get("labels") or {}).items()}


def _slo(doc: Document, index: dict[tuple[str, str], Document],
         used: set[tuple[str, str]]) -> list[ImportedSLO]:
    d = doc.data
    alpha = str(d.get("apiVersion")) in V1ALPHA
    meta = d.get("metadata") or {}
    spec = d.get("spec")
    name = _name(d)
    if not isinstance(spec, dict) or not name:
        raise ValueError("expected metadata.name and a spec mapping")
    reasons = []
    method = spec.get("budgetingMethod")
    if method in ("Timeslices", "RatioTimeslices"):
        reasons.append(f"{method} budgeting has no event-level equivalent: sloburn counts good and bad "
                       f"events (Occurrences), not good time slices")
    elif method != "Occurrences":
        reasons.append(f"budgetingMethod: expected Occurrences, got {method!r}")
    try:
        period = _period(spec, alpha)
    except ValueError as e:
        reasons.append(str(e))
    service = str(spec.get("service") or "")
    if not service:
        reasons.append("spec.service is missing")
    if reasons:
        raise ValueError("; ".join(reasons))
    objectives = _objectives(spec, alpha, service, index, used)
    policy_info: list[str] = []
    tiers = None if alpha else _tiers(spec, index, used, policy_info)
    if meta.get("annotations"):
        ann = ", ".join(f"{k}={v}" for k, v in meta["annotations"].items())
        policy_info.append(f"metadata.annotations not carried (they configure other tools): {ann}")
    out = []
    for i, (objective, tr, qinfo, queries) in enumerate(objectives):
        slo_name = name if len(objectives) == 1 else f"{name}-{i}"
        info = [f"{slo_name}: from {doc.where} (OpenSLO SLO {name}"
                + (f", objective {i}" if len(objectives) > 1 else "") + ")", *qinfo, *tr.mapping,
                *policy_info]
        alerting: dict[str, Any] = {"windows": tiers or "sre-workbook",
                                    "severities": {"page": "critical", "ticket": "warning"}}
        description = str(spec.get("description") or meta.get("displayName") or "")
        slo = new_slo(name=slo_name, service=tr.service or service, route=tr.route, operation=tr.operation,
                      match_labels=tr.match_labels, objective=objective, period=period,
                      description=description, labels=_labels(meta), sli=tr.sli, alerting=alerting)
        out.append(ImportedSLO(slo=slo, where=doc.where, state=tr.state, notes=tr.notes, info=info,
                               queries=queries))
    return out
