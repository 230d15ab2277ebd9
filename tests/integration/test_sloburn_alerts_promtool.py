"""sloburn's own alerting rules and dashboard queries through Prometheus' promtool.

``promtool check rules`` must accept configs/prometheus/sloburn-alerts.yaml as it is; ``promtool
test rules`` then runs the alert expressions over synthetic series (each case with a situation that
must fire and one that must not); and every query of the Grafana dashboard must parse as PromQL.
promtool compares annotations exactly, so the unit tests run on a copy of the rules without them
(their templates are checked by ``check rules`` on the file itself).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "configs" / "prometheus" / "sloburn-alerts.yaml"
DASHBOARD = REPO / "configs" / "grafana" / "sloburn-dashboard.json"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (apt-get install prometheus)")

LABELS = 'job="sloburn", instance="a"'
SERVICE = {"job": "sloburn", "instance": "a", "service": "sloburn"}


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=120, cwd=cwd,
                          check=False)


@needs_promtool
def test_promtool_accepts_the_rules_file() -> None:
    proc = promtool("check", "rules", str(RULES))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    n_rules = sum(len(g["rules"]) for g in yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"])
    assert f"SUCCESS: {n_rules} rules found" in proc.stdout


@needs_promtool
def test_promtool_refuses_a_broken_expression(tmp_path: Path) -> None:
    doc = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    doc["groups"][1]["rules"][0]["expr"] = "sum by (job (up)"
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(doc), encoding="utf-8")
    assert promtool("check", "rules", str(broken)).returncode != 0


def _alert(severity: str, **labels: str) -> dict[str, Any]:
    """One expected alert of instance "a": the rule's labels and those its expression keeps."""
    return {"exp_labels": {**SERVICE, "severity": severity, **labels}}


# (title, input series, [(eval_time, alertname, expected alerts)]). Times in minutes of 1m steps.
CASES: list[tuple[str, list[tuple[str, str]], list[tuple[str, str, list[dict[str, Any]]]]]] = [
    ("scrape down", [(f"up{{{LABELS}}}", "1x5 0x20")], [
        ("8m", "SloburnDown", []),
        ("15m", "SloburnDown", [_alert("critical")]),
    ]),
    ("consumer stalled", [
        (f'sloburn_kafka_consumer_lag_messages{{{LABELS}, topic="t", partition="0"}}', "100x40"),
        (f"sloburn_kafka_messages_consumed_total{{{LABELS}}}", "0+50x10 500x30"),
    ], [
        ("12m", "SloburnConsumerStalled", []),
        ("25m", "SloburnConsumerStalled", [_alert("critical")]),
    ]),
    ("consumer lag high but consuming", [
        (f'sloburn_kafka_consumer_lag_messages{{{LABELS}, topic="t", partition="0"}}', "1000x10 100000x30"),
        (f"sloburn_kafka_messages_consumed_total{{{LABELS}}}", "0+600x40"),  # 10 messages/s
    ], [
        ("15m", "SloburnConsumerLagHigh", []),     # the long lag started 5 minutes ago
        ("30m", "SloburnConsumerLagHigh", [_alert("warning")]),
        ("30m", "SloburnConsumerStalled", []),
    ]),
    ("watermark lagging", [
        (f"sloburn_max_event_timestamp_seconds{{{LABELS}}}", "1000+60x40"),
        (f"sloburn_watermark_timestamp_seconds{{{LABELS}}}", "995+60x10 1595x30"),
    ], [
        ("10m", "SloburnWatermarkLagging", []),
        ("25m", "SloburnWatermarkLagging", [_alert("warning")]),
    ]),
    ("freshness burn, page and ticket", [
        (f"sloburn_event_time_lag_seconds{{{LABELS}}}", "10x60 300x60"),
    ], [
        ("62m", "SloburnFreshnessBudgetBurn", []),
        ("80m", "SloburnFreshnessBudgetBurn", [_alert("critical")]),
        ("62m", "SloburnFreshnessBudgetBurnSlow", []),
        ("90m", "SloburnFreshnessBudgetBurnSlow", [_alert("warning")]),
    ]),
    ("freshness blip", [
        (f"sloburn_event_time_lag_seconds{{{LABELS}}}", "10x60 300x3 10x60"),
    ], [
        ("64m", "SloburnFreshnessBudgetBurn", []),  # 3 bad minutes of 60: 5 % < 14.4 %
        ("100m", "SloburnFreshnessBudgetBurnSlow", []),
    ]),
    ("dead letters", [
        (f'sloburn_outbox_events{{{LABELS}, status="dead"}}', "0x5 1x10"),
        (f'sloburn_outbox_events{{{LABELS}, status="pending"}}', "0x15"),
    ], [
        ("3m", "SloburnDeadLetters", []),
        ("8m", "SloburnDeadLetters", [_alert("critical")]),
        ("8m", "SloburnOutboxBacklog", []),
    ]),
    ("delivery failing, then recovering", [
        (f'sloburn_deliveries_total{{{LABELS}, sink="pagerduty", result="retried"}}', "0+2x60"),
        (f'sloburn_deliveries_total{{{LABELS}, sink="pagerduty", result="delivered"}}', "5x30 5+1x30"),
        (f'sloburn_outbox_events{{{LABELS}, status="pending"}}', "3x30 0x30"),
    ], [
        ("25m", "SloburnDeliveryFailing", [_alert("critical", sink="pagerduty")]),
        ("25m", "SloburnOutboxBacklog", [_alert("critical")]),
        ("45m", "SloburnDeliveryFailing", []),
        ("45m", "SloburnOutboxBacklog", []),
    ]),
    ("rejections: decode errors page, unmatched events do not", [
        (f"sloburn_events_ingested_total{{{LABELS}}}", "0+1000x40"),
        (f'sloburn_events_rejected_total{{{LABELS}, reason="unmatched"}}', "0+5000x40"),
        (f'sloburn_events_rejected_total{{{LABELS}, reason="malformed_json"}}', "0x10 0+100x30"),
    ], [
        ("20m", "SloburnRejectionsHigh", []),
        ("38m", "SloburnRejectionsHigh", [_alert("warning")]),
    ]),
    ("slow ticks and stale checkpoints", [
        (f'sloburn_tick_duration_seconds_bucket{{{LABELS}, le="0.1"}}', "0+60x40"),
        (f'sloburn_tick_duration_seconds_bucket{{{LABELS}, le="1"}}', "0+60x10 600+120x30"),
        (f'sloburn_tick_duration_seconds_bucket{{{LABELS}, le="+Inf"}}', "0+60x10 600+120x30"),
        (f"sloburn_last_checkpoint_timestamp_seconds{{{LABELS}}}", "0+60x10 600x30"),
        (f"sloburn_backpressure_paused{{{LABELS}}}", "0x10 1x30"),
    ], [
        ("9m", "SloburnTickSlow", []),
        ("35m", "SloburnTickSlow", [_alert("warning")]),
        ("19m", "SloburnCheckpointStale", []),      # 540 s old at 19m; over 600 s from 21m, for 5m
        ("30m", "SloburnCheckpointStale", [_alert("warning")]),
        ("15m", "SloburnBackpressure", []),
        ("25m", "SloburnBackpressure", [_alert("warning")]),
    ]),
]


@needs_promtool
def test_alerts_fire_when_they_should_and_only_then(tmp_path: Path) -> None:
    doc = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    for group in doc["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    tests = []
    for title, series, checks in CASES:
        tests.append({
            "name": title,
            "interval": "1m",
            "input_series": [{"series": s, "values": v} for s, v in series],
            "alert_rule_test": [{"eval_time": t, "alertname": name, "exp_alerts": exp}
                                for t, name, exp in checks],
        })
    suite = {"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": tests}
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(suite, sort_keys=False), encoding="utf-8")
    proc = promtool("test", "rules", "tests.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    alerts = {r["alert"] for g in doc["groups"] for r in g["rules"] if "alert" in r}
    covered = {name for _, _, checks in CASES for _, name, exp in checks if exp}
    assert alerts - {"SloburnAbsent"} <= covered, f"no firing case for {sorted(alerts - covered)}"


@needs_promtool
def test_every_dashboard_query_parses_as_promql(tmp_path: Path) -> None:
    doc = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exprs = [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]
    exprs += [a["expr"] for a in doc["annotations"]["list"] if "expr" in a]
    assert len(exprs) >= 20
    rules = []
    for i, query in enumerate(exprs):
        # Grafana's variables as Prometheus would receive them.
        expr = re.sub(r"\$\{?slo\}?", "(checkout|cart)", query.replace("$__rate_interval", "1m"))
        assert "$" not in expr, f"an unknown Grafana variable in {query!r}"
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}), encoding="utf-8")
    proc = promtool("check", "rules", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
