"""The Grafana dashboard, sloburn's own alerting rules and the operator's runbook against the code.

Metric names and label names come from a real :class:`engine.io.metrics.Metrics`: the registry says
which sample names exist (a counter ``x`` exposes ``x_total``), and a Metrics instance driven through
every instrument says which labels each one carries. Every PromQL expression of the dashboard and
of the rules may only use those; the runbook may only mention those metrics and existing config keys.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from engine.batch import EventBatch, EventKey
from engine.config import parse_config
from engine.docs import github_anchor, sections
from engine.engine import Engine
from engine.io.metrics import Metrics

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "configs" / "grafana" / "sloburn-dashboard.json"
RULES = REPO / "configs" / "prometheus" / "sloburn-alerts.yaml"
RUNBOOK = REPO / "docs" / "runbook.md"
NS = 1_000_000_000
T0_S = 1_700_000_000

# Labels Prometheus adds to every scraped series, and the bucket label of histograms.
TARGET_LABELS = frozenset({"job", "instance"})
SUFFIXES = {"counter": ("_total", "_created"), "gauge": ("",),
            "histogram": ("_bucket", "_count", "_sum", "_created"), "info": ("_info",),
            "summary": ("", "_count", "_sum", "_created")}

_METRIC = re.compile(r"(?<![\w:])(sloburn_[a-zA-Z0-9_]+)(\s*\{[^}]*\})?")
_MATCHER = re.compile(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)\s*\"")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_LEGEND = re.compile(r"\{\{\s*([a-zA-Z_]\w*)\s*\}\}")
_RULE_LABEL = re.compile(r"\$labels\.([a-zA-Z_]\w*)")


# ---------------------------------------------------------------------------------------------
# what the code exposes


def registered_names() -> set[str]:
    """Sample names a fresh Metrics registry can expose, from each family's name and type."""
    names: set[str] = set()
    for fam in Metrics().registry.collect():
        names.update(fam.name + suffix for suffix in SUFFIXES[fam.type])
    return names


def driven_labels() -> dict[str, set[str]]:
    """Sample name -> label names, from the exposition of a Metrics fed through every instrument."""
    cfg = parse_config({"slos": [{"name": "checkout", "service": "checkout", "objective": 99.9,
                                  "sli": {"availability": {}}}]})
    engine = Engine(cfg)
    key = engine.keys.intern(EventKey("checkout"))
    n = 200
    ts = (T0_S + 1) * NS + np.arange(n, dtype=np.int64) * (60 * NS // n)
    engine.ingest(EventBatch.from_arrays(ts, np.full(n, key), np.where(np.arange(n) < 20, 500, 200)))
    engine.advance(int(ts[-1]))
    m = Metrics(clock=lambda: T0_S + 120.0)
    m.refresh_from_engine(engine)
    m.add_rejections({"malformed_json": 2})
    m.set_lag("requests", 0, 5)
    m.count_messages(3)
    m.count_malformed("malformed_json")
    m.count_delivery("pagerduty", "delivered")
    m.observe_tick(0.002)
    m.set_backpressure(0, paused=False)
    m.set_outbox_depth({"pending": 1, "dead": 0})
    m.observe_checkpoint(0.05, T0_S + 100.0)
    labels: dict[str, set[str]] = {}
    for fam in text_string_to_metric_families(m.exposition().decode()):
        for s in fam.samples:
            labels.setdefault(s.name, set()).update(s.labels)
    return labels


@pytest.fixture(scope="module")
def names() -> set[str]:
    return registered_names()


@pytest.fixture(scope="module")
def labels() -> dict[str, set[str]]:
    return driven_labels()


def test_driven_metrics_cover_every_registered_name(names: set[str], labels: dict[str, set[str]]) -> None:
    # The label checks below are only as good as this: every family must have been exercised.
    missing = {n for n in names if not n.endswith("_created")} - labels.keys()
    assert not missing, f"drive these metrics in driven_labels(): {sorted(missing)}"


# ---------------------------------------------------------------------------------------------
# PromQL checks shared by the dashboard and the rules


def promql_problems(expr: str, names: set[str], labels: dict[str, set[str]], *,
                    extra_names: frozenset[str] = frozenset(), legend: str = "") -> list[str]:
    """Unknown metric names, and label names that none of the expression's metrics carries."""
    problems: list[str] = []
    used = [m.group(1) for m in _METRIC.finditer(expr)]
    known_labels = set(TARGET_LABELS)
    for name in used:
        if name not in names and name not in extra_names:
            problems.append(f"unknown metric {name!r} in {expr!r}")
        known_labels |= labels.get(name, set())
    for m in _METRIC.finditer(expr):
        own = labels.get(m.group(1), set()) | TARGET_LABELS
        for label in _MATCHER.findall(m.group(2) or ""):
            if label not in own:
                problems.append(f"{m.group(1)} has no label {label!r} (has {sorted(own)})")
    for group in _GROUPING.findall(expr):
        for label in (x.strip() for x in group.split(",") if x.strip()):
            if label not in known_labels:
                problems.append(f"grouping by {label!r}, which no metric of {expr!r} carries")
    for label in _LEGEND.findall(legend) + _RULE_LABEL.findall(legend):
        if label not in known_labels:
            problems.append(f"legend/template uses {label!r}, which no metric of {expr!r} carries")
    return problems


def test_promql_check_catches_unknown_names_and_labels(names: set[str], labels: dict[str, set[str]]) -> None:
    assert promql_problems('sum by (slo) (sloburn_slo_burn_rate{window="5m"})', names, labels) == []
    assert promql_problems("rate(sloburn_events_ingested[5m])", names, labels)  # the _total is missing
    assert promql_problems('sloburn_slo_burn_rate{windw="5m"}', names, labels)
    assert promql_problems("sum by (sink) (sloburn_outbox_events)", names, labels)
    assert promql_problems("sloburn_outbox_events", names, labels, legend="{{sink}}")


# ---------------------------------------------------------------------------------------------
# dashboard


def dashboard_exprs(doc: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    """(where, expr, legend) of every query: panel targets, annotations, templating."""
    for panel in doc["panels"]:
        for t in panel.get("targets", []):
            yield f"panel {panel['title']!r} {t['refId']}", t["expr"], t.get("legendFormat", "")
    for ann in doc["annotations"]["list"]:
        if "expr" in ann:
            yield f"annotation {ann['name']!r}", ann["expr"], ann.get("titleFormat", "")
    for var in doc["templating"]["list"]:
        if var["type"] == "query":
            m = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", var["definition"])
            assert m, f"variable {var['name']}: expected label_values(metric, label), got {var['definition']}"
            yield f"variable {var['name']!r}", f"{m.group(1)}{{{m.group(2)}=~\".+\"}}", ""


def dashboard_problems(doc: dict[str, Any], names: set[str], labels: dict[str, set[str]]) -> list[str]:
    problems = []
    for where, expr, legend in dashboard_exprs(doc):
        problems.extend(f"{where}: {p}" for p in promql_problems(expr, names, labels, legend=legend))
    return problems


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return doc


def test_dashboard_queries_use_only_registered_metrics_and_labels(
        dashboard: dict[str, Any], names: set[str], labels: dict[str, set[str]]) -> None:
    assert dashboard_problems(dashboard, names, labels) == []


def test_dashboard_check_catches_a_misspelt_metric(
        dashboard: dict[str, Any], names: set[str], labels: dict[str, set[str]]) -> None:
    doc = copy.deepcopy(dashboard)
    target = next(p for p in doc["panels"] if p.get("targets"))["targets"][0]
    target["expr"] = target["expr"].replace("sloburn_", "sloburn_x", 1)
    assert any("unknown metric" in p for p in dashboard_problems(doc, names, labels))


def test_dashboard_shows_what_operators_ask_for(dashboard: dict[str, Any]) -> None:
    exprs = " ".join(expr for _, expr, _ in dashboard_exprs(dashboard))
    for name in ("sloburn_slo_burn_rate", "sloburn_slo_burn_rate_factor",
                 "sloburn_slo_error_budget_remaining_ratio", "sloburn_slo_alert_firing",
                 "sloburn_events_ingested_total", "sloburn_events_rejected_total",
                 "sloburn_kafka_consumer_lag_messages", "sloburn_outbox_events",
                 "sloburn_tick_duration_seconds_bucket", "sloburn_deliveries_total",
                 "sloburn_event_time_lag_seconds", "sloburn_last_checkpoint_timestamp_seconds"):
        assert re.search(rf"\b{name}\b", exprs), f"the dashboard shows nothing of {name}"


def test_dashboard_is_well_formed(dashboard: dict[str, Any], labels: dict[str, set[str]]) -> None:
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    boxes = []
    for p in dashboard["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24, f"{p['title']}: off the 24-column grid"
        boxes.append((p["title"], g["x"], g["y"], g["x"] + g["w"], g["y"] + g["h"]))
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert refs and len(refs) == len(set(refs)), f"{p['title']}: targets need unique refIds"
        for t in p["targets"]:
            assert t["datasource"] == p["datasource"], p["title"]
            # Per-SLO series follow the slo variable, so that choosing SLOs filters every panel.
            per_slo = [m.group(1) for m in _METRIC.finditer(t["expr"]) if "slo" in labels.get(m.group(1), ())]
            if per_slo:
                assert 'slo=~"$slo"' in t["expr"], f"{p['title']} {t['refId']}: not filtered by $slo"
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            overlap = a[1] < b[3] and b[1] < a[3] and a[2] < b[4] and b[2] < a[4]
            assert not overlap, f"panels {a[0]!r} and {b[0]!r} overlap"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["slo"]["multi"] and variables["slo"]["includeAll"]
    repeated = [p for p in dashboard["panels"] if p.get("repeat")]
    assert [p["repeat"] for p in repeated] == ["slo"], "burn rates are drawn per SLO"


# ---------------------------------------------------------------------------------------------
# alerting rules and runbook


@pytest.fixture(scope="module")
def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [r for g in doc["groups"] for r in g["rules"]]


def test_rules_use_only_registered_metrics_and_labels(
        rules: list[dict[str, Any]], names: set[str], labels: dict[str, set[str]]) -> None:
    recorded = frozenset(r["record"] for r in rules if "record" in r)
    assert all(name.startswith("sloburn:") for name in recorded), "recorded names: level:metric:operations"
    problems = []
    for r in rules:
        text = " ".join(str(v) for v in r.get("annotations", {}).values())
        found = promql_problems(r["expr"], names, labels, extra_names=recorded, legend=text)
        problems.extend(f"{r.get('alert') or r.get('record')}: {p}" for p in found)
    assert problems == []


def test_every_alert_has_a_severity_and_a_runbook_section(rules: list[dict[str, Any]]) -> None:
    runbook = RUNBOOK.read_text(encoding="utf-8")
    anchors = {github_anchor(h) for h in re.findall(r"^#+ (.+)$", runbook, flags=re.MULTILINE)}
    alerts = [r for r in rules if "alert" in r]
    assert len(alerts) >= 10
    for r in alerts:
        assert r["labels"]["severity"] in ("critical", "warning"), r["alert"]
        assert r["annotations"]["summary"], r["alert"]
        url = r["annotations"]["runbook_url"]
        fragment = url.partition("#")[2]
        assert fragment in anchors, f"{r['alert']}: {url} points at no section of docs/runbook.md"
        # A slow-burn variant shares the section of its fast-burn alert.
        assert fragment in (r["alert"].lower(), r["alert"].lower().removesuffix("slow")), (
            f"{r['alert']}: runbook section named differently")
        assert r["alert"] in runbook, f"{r['alert']} is not explained in docs/runbook.md"


def test_runbook_names_only_real_metrics_config_keys_and_links(
        names: set[str], rules: list[dict[str, Any]]) -> None:
    text = RUNBOOK.read_text(encoding="utf-8")
    recorded = {r["record"] for r in rules if "record" in r}
    families = {fam.name for fam in Metrics().registry.collect()}  # prose may name a histogram as a whole
    for name in set(re.findall(r"(?<![\w:])sloburn_[a-z0-9_]+", text)):
        assert name in names | families, f"docs/runbook.md names a metric the daemon does not expose: {name}"
    for name in set(re.findall(r"sloburn:[a-z0-9_:]+", text)):
        assert name in recorded, f"docs/runbook.md names a recording rule that does not exist: {name}"
    # Key paths as written in YAML, list and mapping levels left out: "slos.alerting.for".
    keys = {f"{s.path}.{f.encode_name}".lstrip(".").replace("[]", "").replace(".<key>", "")
            for s in sections() for f in s.info.fields}
    sections_re = r"(?:engine|events|source|sinks|http|daemon|budget_policy|alerting)"
    for key in set(re.findall(rf"`({sections_re}(?:\.[a-z_]+)+)`", text)):
        assert any(k == key or k.endswith("." + key) for k in keys), (
            f"docs/runbook.md names a configuration key that does not exist: {key}")
    anchors = {github_anchor(h) for h in re.findall(r"^#+ (.+)$", text, flags=re.MULTILINE)}
    config_md = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    config_anchors = {github_anchor(h) for h in re.findall(r"^#+ (.+)$", config_md, flags=re.MULTILINE)}
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        path, _, fragment = target.partition("#")
        if path.startswith("http"):
            continue
        if not path:
            assert fragment in anchors, f"docs/runbook.md: link to a missing section #{fragment}"
            continue
        assert (RUNBOOK.parent / path).exists(), f"docs/runbook.md: link to a missing file {path}"
        if path == "configuration.md" and fragment:
            assert fragment in config_anchors, f"docs/runbook.md: no section #{fragment} in configuration.md"
