"""Sloth SLO specs (``version: prometheus/v1`` and the ``sloth.slok.dev/v1`` PrometheusServiceLevel
CRD) as sloburn SLOs.

Sloth has one period for all SLOs (its ``--default-slo-period``, 30 days): ``--period`` here. Its alert
windows come from ``AlertWindows`` files (``--windows``), one per period, four tiers each (page and
ticket, quick and slow, with ``errorBudgetPercent``): they become sloburn custom tiers with
``budget_percent``, the same factor arithmetic (``factor = budget% * period / long_window``), or
``sre-workbook`` where they are the Workbook's. Sloth's plugins either change nothing sloburn does
(noted in a comment), map to labels (``info_labels``), or make the SLO refused (unknown plugins).
"""

from __future__ import annotations

from typing import Any

from engine.durations import format_duration, parse_duration_s
from engine.errors import ConfigError
from engine.importers import (
    PD_SEVERITIES,
    Document,
    ImportedSLO,
    ImportOptions,
    ImportResult,
    Outcome,
    label_value,
    new_slo,
    not_this_tool,
    number,
    read_documents,
)
from engine.importers.promql import Translation, one_line, translate_events

DAY_S = 86400
_PLUGIN_NOTES = {
    "sloth.dev/core/debug/v1": "logs debug messages while Sloth writes rules",
    "sloth.dev/core/sli_rules/v1": "Sloth's standard SLI recording rules",
    "sloth.dev/core/metadata_rules/v1": "Sloth's standard metadata recording rules",
    "sloth.dev/core/alert_rules/v1": "Sloth's standard alert rules",
    "sloth.dev/core/validate/v1": "validates the SLO",
    "sloth.dev/contrib/validate_victoria_metrics/v1": "validates the queries for VictoriaMetrics",
    "sloth.dev/contrib/rule_intervals/v1": "sets the evaluation interval of the Prometheus rules; sloburn "
                                           "evaluates every engine.step_s",
    "sloth.dev/contrib/denominator_corrected_rules/v1": "weights the period's error ratio by traffic; "
                                                        "sloburn counts events, which does that already",
}
_INFO_LABELS = "sloth.dev/contrib/info_labels/v1"


def _get(d: Any, key: str, default: Any = None) -> Any:
    """``error_query`` (prometheus/v1) or ``errorQuery`` (Kubernetes CRD)."""
    if not isinstance(d, dict):
        return default
    if key in d:
        return d[key]
    head, *rest = key.split("_")
    camel = head + "".join(w.capitalize() for w in rest)
    return d.get(camel, default)


# ------------------------------------------------------------------------------------- windows


def alert_windows(data: Any) -> tuple[int, list[dict[str, Any]]]:
    """(period_s, sloburn tiers) of a Sloth ``AlertWindows`` document; ValueError says what is wrong."""
    spec = data.get("spec") if isinstance(data, dict) else None
    if not isinstance(spec, dict):
        raise ValueError("AlertWindows: expected a 'spec' mapping")
    try:
        period_s = int(parse_duration_s(str(_get(spec, "slo_period", ""))))
    except ValueError as e:
        raise ValueError(f"AlertWindows: spec.sloPeriod: {e}") from None
    tiers = []
    for sev in ("page", "ticket"):
        for speed in ("quick", "slow"):
            w = _get(spec.get(sev), speed)
            at = f"AlertWindows: spec.{sev}.{speed}"
            if not isinstance(w, dict):
                raise ValueError(f"{at}: expected errorBudgetPercent, shortWindow and longWindow")
            pct = number(_get(w, "error_budget_percent"))
            if pct is None or not 0 < pct <= 100:
                raise ValueError(f"{at}.errorBudgetPercent: expected a percentage in (0, 100], "
                                 f"got {_get(w, 'error_budget_percent')!r}")
            durations = []
            for key in ("long_window", "short_window"):
                try:
                    durations.append(format_duration(parse_duration_s(str(_get(w, key, "")))))
                except ValueError as e:
                    raise ValueError(f"{at}.{key}: {e}") from None
            tiers.append({"name": f"{sev}_{speed}", "severity": sev,
                          "budget_percent": int(pct) if pct.is_integer() else pct,
                          "long_window": durations[0], "short_window": durations[1]})
    return period_s, tiers


def read_window_files(paths: list[str]) -> dict[int, list[dict[str, Any]]]:
    """period_s -> tiers from Sloth AlertWindows files; ConfigError on anything else."""
    out: dict[int, list[dict[str, Any]]] = {}
    problems: list[str] = []
    for path in paths:
        for doc in read_documents(path):
            if not (isinstance(doc.data, dict) and doc.data.get("kind") == "AlertWindows"):
                problems.append(f"{doc.where}: --windows: expected a Sloth AlertWindows document, got "
                                f"kind {doc.data.get('kind') if isinstance(doc.data, dict) else None!r}")
                continue
            try:
                period_s, tiers = alert_windows(doc.data)
            except ValueError as e:
                problems.append(f"{doc.where}: {e}")
                continue
            if period_s in out:
                problems.append(f"{doc.where}: --windows: a second catalog for the period "
                                f"{format_duration(period_s)}")
            out[period_s] = tiers
    if problems:
        raise ConfigError(problems)
    return out


def _workbook(period_s: int, tiers: list[dict[str, Any]]) -> bool:
    """Whether ``tiers`` are exactly sloburn's ``sre-workbook`` catalog for this period."""
    from engine.windows import load_catalog

    if period_s not in (28 * DAY_S, 30 * DAY_S):
        return False
    cat = load_catalog(f"sre-workbook-{period_s // DAY_S}d")

    def key(t: Any) -> tuple[Any, ...]:
        d: dict[str, Any] = t if isinstance(t, dict) else {k: getattr(t, k) for k in (
            "name", "severity", "budget_percent", "long_window", "short_window")}
        return (d["name"], d["severity"], float(d["budget_percent"]), parse_duration_s(d["long_window"]),
                parse_duration_s(d["short_window"]))

    return [key(t) for t in tiers] == [key(t) for t in cat.tiers]


def windows_for(period_s: int, opts: ImportOptions, info: list[str]) -> str | list[dict[str, Any]]:
    """The alerting.windows of an SLO of this period, as Sloth would choose them."""
    tiers = opts.windows.get(period_s)
    if tiers is not None:
        if _workbook(period_s, tiers):
            info.append("windows: the --windows catalog is the SRE Workbook's (sre-workbook)")
            return "sre-workbook"
        info.append(f"windows: the --windows catalog for {format_duration(period_s)}")
        return tiers
    if period_s not in (28 * DAY_S, 30 * DAY_S):
        info.append(f"windows: Sloth has no default windows for {format_duration(period_s)} (it needs "
                    f"--windows); the SRE Workbook budget shares are used with factors for this period")
    return "sre-workbook"


# ------------------------------------------------------------------------------------- SLOs


def convert(docs: list[Document], opts: ImportOptions) -> ImportResult:
    """Sloth documents -> imported SLOs and refusals."""
    result = ImportResult()
    for doc in docs:
        data = doc.data
        if isinstance(data, dict) and data.get("kind") == "AlertWindows":
            result.refused.append(Outcome(doc.where, "kind: AlertWindows",
                                          "kind: AlertWindows is a window catalog, not an SLO: use it "
                                          "with --windows"))
            continue
        spec: Any
        if isinstance(data, dict) and data.get("version") == "prometheus/v1":
            spec = data
        elif (isinstance(data, dict) and data.get("apiVersion") == "sloth.slok.dev/v1"
              and data.get("kind") == "PrometheusServiceLevel"):
            spec = data.get("spec")
        elif isinstance(data, dict) and data.get("version") is not None:
            result.refused.append(Outcome(doc.where, f"version {data.get('version')}",
                                          f"Sloth spec version {data.get('version')!r} is not supported "
                                          f"(prometheus/v1 or sloth.slok.dev/v1 PrometheusServiceLevel)"))
            continue
        else:
            result.refused.append(Outcome(doc.where, "document", not_this_tool(data, "sloth")))
            continue
        _service_level(spec, doc, opts, result)
    return result


def _service_level(spec: Any, doc: Document, opts: ImportOptions, result: ImportResult) -> None:
    if not isinstance(spec, dict) or not isinstance(spec.get("slos"), list) or not spec.get("service"):
        result.refused.append(Outcome(doc.where, "service level",
                                      "expected 'service' and a list of 'slos'"))
        return
    service = str(spec["service"])
    labels = {str(k): label_value(v) for k, v in (spec.get("labels") or {}).items()}
    chain = list(_get(_get(spec, "slo_plugins") or {}, "chain") or [])
    for i, raw in enumerate(spec["slos"]):
        name = str(_get(raw, "name") or "")
        what = f"SLO {name or i + 1}"
        try:
            imp = _slo(raw, service, labels, chain, doc, opts)
        except ValueError as e:
            result.refused.append(Outcome(doc.where, what, str(e)))
            continue
        result.slos.append(imp)


def _plugins(chain: list[Any], info: list[str], labels: dict[str, str]) -> None:
    for p in chain:
        pid = str(_get(p, "id") or "")
        if pid == _INFO_LABELS:
            extra = _get(_get(p, "config") or {}, "labels") or {}
            for k, v in extra.items():
                labels[f"info.{k}"] = label_value(v)
            info.append(f"plugin {pid}: its labels are the info.* labels")
        elif pid in _PLUGIN_NOTES:
            info.append(f"plugin {pid}: {_PLUGIN_NOTES[pid]}; nothing to carry over")
        else:
            raise ValueError(f"Sloth SLO plugin {pid!r} is not known here: it may change the SLI or "
                             f"the alerts, so the SLO is not imported")


def _slo(raw: Any, service: str, svc_labels: dict[str, str], svc_chain: list[Any], doc: Document,
         opts: ImportOptions) -> ImportedSLO:
    if not isinstance(raw, dict):
        raise ValueError(f"expected an SLO mapping, got {type(raw).__name__}")
    name = str(_get(raw, "name") or "")
    objective = number(_get(raw, "objective"))
    if not name:
        raise ValueError("the SLO has no name")
    if objective is None or not 0 < objective < 100:
        raise ValueError(f"objective: expected a percentage in (0, 100), got {_get(raw, 'objective')!r}")
    info = [f"{name}: from {doc.where} (Sloth service {service})"]
    labels = dict(svc_labels)
    labels.update({str(k): label_value(v) for k, v in (_get(raw, "labels") or {}).items()})
    _plugins(svc_chain + list(_get(_get(raw, "plugins") or {}, "chain") or []), info, labels)
    imp = ImportedSLO(slo={}, where=doc.where, info=info)
    sli = _get(raw, "sli") or {}
    events, rawsli, plugin = _get(sli, "events"), _get(sli, "raw"), _get(sli, "plugin")
    if events:
        err, tot = str(_get(events, "error_query") or ""), str(_get(events, "total_query") or "")
        tr = translate_events(err, tot, service=service)
        info += [f"error query: {one_line(err)}", f"total query: {one_line(tot)}"]
        imp.queries = {"error_query": err, "total_query": tot}
    elif rawsli:
        q = str(_get(rawsli, "error_ratio_query") or "")
        tr = Translation()
        tr.fill(f"Sloth raw SLI: an error ratio read directly ({one_line(q)}); events carry no ratio: "
                f"write the status matchers or latency threshold that make an event bad")
        imp.queries = {"error_ratio_query": q}
    elif plugin:
        tr = Translation()
        opts_txt = ", ".join(f"{k}={v}" for k, v in (_get(plugin, "options") or {}).items())
        tr.fill(f"the SLI comes from the Sloth SLI plugin {_get(plugin, 'id')!r}"
                + (f" (options: {opts_txt})" if opts_txt else "")
                + ": its queries are not in this file; write the SLI")
    else:
        raise ValueError("sli: expected one of events, raw or plugin")
    imp.state, imp.notes = tr.state, tr.notes
    info.extend(tr.mapping)
    period = opts.period or "30d"
    alerting, runbook = _alerting(_get(raw, "alerting") or {}, labels)
    alerting["windows"] = windows_for(int(parse_duration_s(period)), opts, info)
    imp.slo = new_slo(name=name, service=service, route=tr.route, operation=tr.operation,
                      match_labels=tr.match_labels, objective=objective, period=period,
                      description=str(_get(raw, "description") or ""), runbook_url=runbook,
                      labels=labels, sli=tr.sli, alerting=_ordered(alerting))
    return imp


def _ordered(alerting: dict[str, Any]) -> dict[str, Any]:
    order = ("windows", "severities", "disable")
    return {k: alerting[k] for k in order if alerting.get(k)}  # guards are added by new_slo


def _alerting(a: Any, labels: dict[str, str]) -> tuple[dict[str, Any], str | None]:
    """Sloth alerting -> sloburn alerting, with names, labels and annotations moved into ``labels``."""
    out: dict[str, Any] = {"severities": {"page": "critical", "ticket": "warning"}}
    runbook: str | None = None
    if _get(a, "name"):
        labels["alertname"] = str(_get(a, "name"))
    for k, v in (_get(a, "labels") or {}).items():
        labels[f"alert.{k}"] = label_value(v)

    def annotations(src: Any, prefix: str) -> None:
        nonlocal runbook
        for k, v in (src or {}).items():
            if k in ("runbook", "runbook_url") and runbook is None:
                runbook = label_value(v)
            else:
                labels[f"{prefix}annotation.{k}"] = label_value(v)

    annotations(_get(a, "annotations"), "")
    disable = []
    for sev, key in (("page", "page_alert"), ("ticket", "ticket_alert")):
        meta = _get(a, key) or {}
        if _get(meta, "disable"):
            disable.append(sev)
        for k, v in (_get(meta, "labels") or {}).items():
            if k == "severity" and label_value(v) in PD_SEVERITIES:
                out["severities"][sev] = label_value(v)
            else:
                labels[f"{sev}.{k}"] = label_value(v)
        annotations(_get(meta, "annotations"), f"{sev}.")
    if disable:
        out["disable"] = disable
    return out, runbook
