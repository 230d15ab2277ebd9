"""Pyrra ``ServiceLevelObjective`` documents (``pyrra.dev/v1alpha1`` CRDs and the plain ``v1alpha1``
files of Pyrra's filesystem mode) as sloburn SLOs.

Pyrra's alerts are its four scaled multi-burn-rate windows (sloburn's ``pyrra`` catalog: 1h/5m x14 and
6h/30m x7 critical, 1d/2h x2 and 4d/6h x1 warning, scaled with the period); ``critical`` is sloburn's
``page`` and ``warning`` its ``ticket``. Metadata labels prefixed ``pyrra.dev/`` become SLO labels
(Pyrra puts them on its rules) and ``pyrra.dev/`` annotations alert annotations (a runbook goes to
``runbook_url``); the other Kubernetes labels select PrometheusRule objects and are listed, not carried.
"""

from __future__ import annotations

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
)
from engine.importers.promql import (
    Translation,
    one_line,
    translate_events,
    translate_good,
    translate_native_latency,
)

API_VERSIONS = ("pyrra.dev/v1alpha1", "v1alpha1")
PREFIX = "pyrra.dev/"


def convert(docs: list[Document], opts: ImportOptions) -> ImportResult:
    """Pyrra documents -> imported SLOs and refusals."""
    result = ImportResult()
    for doc in docs:
        d = doc.data
        if not (isinstance(d, dict) and d.get("apiVersion") in API_VERSIONS
                and d.get("kind") == "ServiceLevelObjective"):
            result.refused.append(Outcome(doc.where, "document", not_this_tool(d, "pyrra")))
            continue
        name = str((d.get("metadata") or {}).get("name") or "")
        try:
            result.slos.append(_slo(doc))
        except ValueError as e:
            result.refused.append(Outcome(doc.where, f"SLO {name}", str(e)))
    return result


def _service(meta: dict[str, Any]) -> str | None:
    labels = meta.get("labels") or {}
    for key in (f"{PREFIX}service", "service", "app.kubernetes.io/name"):
        if labels.get(key):
            return str(labels[key])
    return None


def _indicator(ind: dict[str, Any], service: str | None) -> tuple[Translation, list[str], dict[str, str]]:
    kinds = [k for k in ("ratio", "latency", "latencyNative", "bool_gauge", "boolGauge") if ind.get(k)]
    if len(kinds) != 1:
        raise ValueError(f"indicator: expected one of ratio, latency, latencyNative, bool_gauge, got "
                         f"{', '.join(kinds) or 'none'}")
    kind = kinds[0]
    body = ind[kind]
    total = str((body.get("total") or {}).get("metric") or "")
    if kind == "ratio":
        errors = str((body.get("errors") or {}).get("metric") or "")
        tr = translate_events(errors, total, service=service)
        info = [f"errors: {one_line(errors)}", f"total: {one_line(total)}"]
        queries = {"errors": one_line(errors), "total": one_line(total)}
    elif kind == "latency":
        success = str((body.get("success") or {}).get("metric") or "")
        tr = translate_good(success, total, service=service)
        info = [f"success: {one_line(success)}", f"total: {one_line(total)}"]
        queries = {"good": one_line(success), "total": one_line(total)}
    elif kind == "latencyNative":
        try:
            threshold_s = parse_duration_s(str(body.get("latency", "")))
        except ValueError as e:
            raise ValueError(f"indicator.latencyNative.latency: {e}") from None
        tr = translate_native_latency(total, threshold_s, service=service)
        info = [f"native histogram: {one_line(total)} at {body.get('latency')}"]
        queries = {"error_ratio_query": f"1 - histogram_fraction(0, {threshold_s:g}, "
                                        f"sum(rate({one_line(total)}[{{{{.window}}}}])))"}
    else:
        metric = str(body.get("metric") or "")
        tr = Translation()
        tr.fill(f"bool_gauge: Pyrra counts the samples of {metric} that are 0; samples are not request "
                f"events (send probe results as events, e.g. status 200 for success and 503 for failure)")
        info = [f"bool gauge: {metric}"]
        queries = {"error_ratio_query": f"1 - avg(avg_over_time({metric}[{{{{.window}}}}]))"}
    grouping = body.get("grouping")
    if grouping:
        tr.check(f"grouping by {', '.join(map(str, grouping))}: Pyrra alerts per group; sloburn evaluates "
                 f"all the SLO's events together (one SLO per group value would match)")
    return tr, info, queries


def _slo(doc: Document) -> ImportedSLO:
    d = doc.data
    meta = d.get("metadata") or {}
    spec = d.get("spec")
    name = str(meta.get("name") or "")
    if not name or not isinstance(spec, dict):
        raise ValueError("expected metadata.name and a spec mapping")
    reasons = []
    objective = number(spec.get("target"))
    if objective is None or not 0 < objective < 100:
        reasons.append(f"target: expected a percentage in (0, 100), got {spec.get('target')!r}")
    try:
        window_s = parse_duration_s(str(spec.get("window", "")))
        if window_s <= 0 or window_s % 86400:
            reasons.append(f"window {spec.get('window')!r} is not a whole number of days")
    except ValueError as e:
        reasons.append(f"window: {e}")
    if not isinstance(spec.get("indicator"), dict):
        reasons.append("indicator: expected a mapping")
    if reasons:
        raise ValueError("; ".join(reasons))
    service = _service(meta)
    tr, qinfo, queries = _indicator(spec["indicator"], service)
    service = service or tr.service or name
    full = f"{meta['namespace']}/{name}" if meta.get("namespace") else name
    info = [f"{name}: from {doc.where} (Pyrra SLO {full})", *qinfo, *tr.mapping]
    if not _service(meta) and not tr.service:
        info.append("service: the SLO's name (no pyrra.dev/service label, no service-like matcher)")
    labels: dict[str, str] = {}
    skipped = []
    for k, v in (meta.get("labels") or {}).items():
        if k.startswith(PREFIX) and k != f"{PREFIX}service":
            labels[k[len(PREFIX):]] = label_value(v)
        elif k not in (f"{PREFIX}service", "service"):
            skipped.append(f"{k}={label_value(v)}")
    if skipped:
        info.append("Kubernetes labels not carried (they select PrometheusRule objects): "
                    + ", ".join(skipped))
    runbook = None
    for k, v in (meta.get("annotations") or {}).items():
        if not k.startswith(PREFIX):
            continue
        key = k[len(PREFIX):]
        if key in ("runbook", "runbook_url"):
            runbook = label_value(v)
        else:
            labels[f"annotation.{key}"] = label_value(v)
    a = spec.get("alerting") or {}
    if a.get("name"):
        labels["alertname"] = str(a["name"])
    alerting: dict[str, Any] = {"windows": "pyrra", "severities": {"page": "critical", "ticket": "warning"}}
    if a.get("disabled") or a.get("burnrates") is False:
        alerting["disable"] = ["page", "ticket"]
        info.append("Pyrra's burn-rate alerts are disabled for this SLO")
    if a.get("absent") is not False:
        info.append("Pyrra's absent-metrics alert has no counterpart: sloburn reports no-data per window")
    return ImportedSLO(
        slo=new_slo(name=name, service=service, route=tr.route, operation=tr.operation,
                    match_labels=tr.match_labels, objective=objective, period=format_duration(window_s),
                    description=str(spec.get("description") or ""), runbook_url=runbook, labels=labels,
                    sli=tr.sli, alerting=alerting),
        where=doc.where, state=tr.state, notes=tr.notes, info=info, queries=queries)
