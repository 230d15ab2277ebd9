"""Importing Sloth, OpenSLO and Pyrra SLO files, and exporting Prometheus rules in Sloth's layout.

The SLO files are the real ones collected in tests/data/slo-configs (see its SOURCES.md): every file has
an expected outcome below, worked out by reading it, and every imported config must load and plan. The
export is compared with the rules Sloth itself wrote for the same files (``_generated_rules_oracle``).
"""

from __future__ import annotations

import argparse
import random
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from engine.config import TextLoader, load_config, parse_config
from engine.errors import ConfigError
from engine.export_prometheus import MetricsFile, export_rules, load_metrics
from engine.importers import import_paths, render_config, render_metrics
from engine.importers.promql import ALL_CODES, Matcher, codes_regex, status_match, status_specs
from engine.plan import build_plan
from engine.windows import resolve_tiers

DATA = Path(__file__).resolve().parents[1] / "data" / "slo-configs"
T, C, N = "translated", "check", "needs-sli"

# file -> list of SLI states of the imported SLOs, or the text a refusal must contain.
EXPECTED: dict[str, list[str] | str] = {
    # Sloth
    "sloth/kuadrant-operator__slo-availability.yaml": [C],          # sum ... by (request_host)
    "sloth/kuadrant-operator__slo-latency.yaml": [C],
    "sloth/slok-sloth__alert-windows-google-28d.yaml": "kind: AlertWindows is a window catalog, not an SLO: "
                                                       "use it with --windows",
    "sloth/slok-sloth__alert-windows-google-30d.yaml": "kind: AlertWindows is a window catalog",
    "sloth/slok-sloth__windows-7d.yaml": "kind: AlertWindows is a window catalog",
    "sloth/slok-sloth__windows-custom-30d.yaml": "kind: AlertWindows is a window catalog",
    "sloth/slok-sloth__contrib-denominator-corrected.yaml": [T],
    "sloth/slok-sloth__contrib-slo-plugins.yml": [T, T],
    "sloth/slok-sloth__getting-started.yml": [T],
    "sloth/slok-sloth__home-wifi.yml": [N, N],                      # counts of gauge samples
    "sloth/slok-sloth__k8s-getting-started.yml": [T],
    "sloth/slok-sloth__k8s-home-wifi.yml": [N, N],
    "sloth/slok-sloth__k8s-multifile.yml": [T, T],
    "sloth/slok-sloth__kubernetes-apiserver.yml": [T, C],           # verb!="WATCH"
    "sloth/slok-sloth__multifile.yml": [T, T],
    "sloth/slok-sloth__no-alerts.yml": [T],
    "sloth/slok-sloth__plugin-getting-started.yml": [N],            # SLI plugin
    "sloth/slok-sloth__raw-home-wifi.yml": [N],                     # raw error ratio
    "sloth/slok-sloth__slo-plugin-getting-started.yml": [T],
    "sloth/slok-sloth__victoria-metrics.yml": [T, T],               # histogram_share
    # OpenSLO
    "openslo/OpenSLO-oslo__validate-v1.yaml": "Timeslices budgeting has no event-level equivalent",
    "openslo/OpenSLO-oslo__validate-v1alpha.yaml": "a 1M time window has no fixed length in days",
    "openslo/OpenSLO-oslo__validate-v2alpha.yaml": "OpenSLO v2alpha is not supported",
    "openslo/OpenSLO-slogen__tracing_order-api-errors.yaml": "Timeslices budgeting has no event-level",
    "openslo/OpenSLO-slogen__tracing_order-api-latency.yaml": "Timeslices budgeting has no event-level",
    "openslo/OpenSLO-slogen__v1_alert-policy_burn-rate.yaml": "kind: AlertPolicy 'High-Burn-Rate' is not an "
                                                              "SLO: import it together with the SLOs",
    "openslo/OpenSLO-slogen__v1_logs-req-calendar.yaml": "calendar-aligned time window (Week from Monday",
    "openslo/OpenSLO-slogen__v1_logs-req-rolling.yaml": [N],        # Sumo Logic queries
    "openslo/OpenSLO-slogen__v1_th-based_logs-req-threshold-based.yaml": "calendar-aligned time window",
    "openslo/OpenSLO__low-traffic-timeslices-slo.yaml": "Timeslices budgeting has no event-level",
    "openslo/OpenSLO__occurences-slo.yaml": [N],                    # thresholdMetric, query "Any"
    "openslo/OpenSLO__ratio-timeslices.yaml": "RatioTimeslices budgeting has no event-level equivalent",
    "openslo/OpenSLO__timeslices-slo.yaml": "Timeslices budgeting has no event-level",
    "openslo/osko__openslo_v1_datasource.yaml": "no SLO in this file: only kind: Datasource",
    "openslo/osko__openslo_v1_slo.yaml": [N],                       # status_code="200" on the bucket only
    "openslo/osko__slo_gatekeeper_webhook_response_time_0005.yaml": [T],
    "openslo/slok-sloth__openslo-getting-started.yml": [T],
    "openslo/slok-sloth__openslo-kubernetes-apiserver.yml": [T, C, C],
    # Pyrra
    "pyrra/pyrra__caddy-response-latency.yaml": [T],
    "pyrra/pyrra__k8s-slo-apiserver-read-cluster-latency.yaml": [C],    # scope=~"cluster|", verb=~
    "pyrra/pyrra__k8s-slo-apiserver-read-namespace-latency.yaml": [C],
    "pyrra/pyrra__k8s-slo-apiserver-read-resource-latency.yaml": [C],
    "pyrra/pyrra__k8s-slo-apiserver-read-response-errors.yaml": [C],
    "pyrra/pyrra__k8s-slo-apiserver-write-response-errors.yaml": [C],
    "pyrra/pyrra__k8s-slo-coredns-response-errors.yaml": [N],           # rcode="SERVFAIL"
    "pyrra/pyrra__k8s-slo-kubelet-request-errors.yaml": [T],
    "pyrra/pyrra__k8s-slo-kubelet-runtime-errors.yaml": [N],            # separate error counter
    "pyrra/pyrra__k8s-slo-prometheus-notification-errors.yaml": [N],
    "pyrra/pyrra__k8s-slo-prometheus-operator-http-errors.yaml": [T],
    "pyrra/pyrra__k8s-slo-prometheus-operator-reconcile-errors.yaml": [N],
    "pyrra/pyrra__k8s-slo-prometheus-query-errors.yaml": [C],
    "pyrra/pyrra__k8s-slo-prometheus-rule-evaluation-failures.yaml": [N],
    "pyrra/pyrra__k8s-slo-prometheus-sd-kubernetes-errors.yaml": [C],   # "<error>" is no status
    "pyrra/pyrra__mimir-example-slo.yaml": [C],
    "pyrra/pyrra__nginx.yaml": [T, N],                                  # latency success has status=~5..
    "pyrra/pyrra__parca-grpc-queryrange-errors.yaml": [C],              # gRPC Aborted shares 409
    "pyrra/pyrra__prometheus-http.yaml": [C],
    "pyrra/pyrra__prometheus-operator.yaml": [T],
    "pyrra/pyrra__prometheus-probe-success.yaml": [N],                  # bool_gauge
    "pyrra/pyrra__pyrra-connect-errors.yaml": [C],
    "pyrra/pyrra__pyrra-connect-latency.yaml": [C],
    "pyrra/pyrra__pyrra-filesystem-errors.yaml": [N],
    "pyrra/pyrra__pyrra-kubernetes-errors.yaml": [N],                   # result="error"
    "pyrra/pyrra__thanos-grpc.yaml": [C],
    "pyrra/pyrra__thanos-http.yaml": [C],
}
_RHOBS_CHECK = {"mst-production-api-logs-query-availability-slo.yaml"}  # handler=~"query|label|..."
for _p in sorted((DATA / "pyrra").glob("rhobs-configuration__*.yaml")):
    EXPECTED[f"pyrra/{_p.name}"] = [C] if _p.name.split("__")[1] in _RHOBS_CHECK else [T]


def _slo_files() -> list[str]:
    return sorted(str(p.relative_to(DATA)) for tool in ("sloth", "openslo", "pyrra")
                  for p in (DATA / tool).glob("*.y*ml"))


def test_every_collected_file_has_an_expected_outcome() -> None:
    assert _slo_files() == sorted(EXPECTED)
    assert len(EXPECTED) == 90  # 20 Sloth, 18 OpenSLO, 52 Pyrra (25 of them rhobs)


@pytest.mark.parametrize("rel", sorted(EXPECTED))
def test_each_file_imports_or_is_refused_with_its_reason(rel: str, tmp_path: Path) -> None:
    tool = rel.split("/", maxsplit=1)[0]
    result = import_paths(tool, [str(DATA / rel)])
    expected = EXPECTED[rel]
    if isinstance(expected, str):
        assert result.slos == []
        assert any(expected in o.reason for o in result.refused), [o.reason for o in result.refused]
        return
    assert [s.state for s in result.slos] == expected
    assert result.refused == []
    out = tmp_path / "imported.yaml"
    out.write_text(render_config(result, tool=tool, inputs=[rel]), encoding="utf-8")
    cfg = load_config(out)  # validates
    assert build_plan(cfg).n_slos == len(expected)
    marks = [s.labels.get("sloburn_import") for s in cfg.slos]
    assert marks == [{T: None, C: "check-sli", N: "needs-sli"}[s] for s in expected]
    text = out.read_text(encoding="utf-8")
    assert text.count("  # FILL IN:") == expected.count(N)
    if C in expected:
        assert "  # CHECK:" in text
    if expected == [T] * len(expected):
        assert "  # CHECK:" not in text


def test_all_files_of_a_tool_import_together_into_one_valid_config() -> None:
    for tool in ("sloth", "openslo", "pyrra"):
        files = [str(DATA / r) for r in EXPECTED if r.startswith(f"{tool}/")]
        result = import_paths(tool, files)
        n_expected = sum(len(v) for k, v in EXPECTED.items()
                         if k.startswith(f"{tool}/") and isinstance(v, list))
        assert len(result.slos) == n_expected
        cfg = parse_config(yaml.load(render_config(result, tool=tool, inputs=files), Loader=TextLoader))
        assert len({s.name for s in cfg.slos}) == n_expected  # duplicates were renamed


# ------------------------------------------------------------------------------------- what carries over


def _one(tool: str, rel: str, **kw: Any) -> dict[str, Any]:
    result = import_paths(tool, [str(DATA / rel)], **kw)
    assert len(result.slos) == 1, result.refused
    return result.slos[0].slo


def test_sloth_objective_labels_alert_name_and_severities() -> None:
    slo = _one("sloth", "sloth/slok-sloth__getting-started.yml")
    assert (slo["name"], slo["service"], slo["objective"], slo["period"]) == (
        "requests-availability", "myservice", 99.9, "30d")
    assert slo["sli"] == {"availability": {"bad_status": [429, "5xx"]}}   # code=~"(5..|429)"
    labels = slo["labels"]
    assert labels["owner"] == "myteam" and labels["tier"] == "2"
    assert labels["alertname"] == "MyServiceHighErrorRate"
    assert labels["alert.category"] == "availability"
    assert labels["annotation.summary"] == "High error rate on 'myservice' requests responses"
    # severity: pageteam is no PagerDuty severity: kept as the page alert's label.
    assert labels["page.severity"] == "pageteam" and labels["page.routing_key"] == "myteam"
    assert labels["ticket.slack_channel"] == "#alerts-myteam"
    assert slo["alerting"]["windows"] == "sre-workbook"


def test_sloth_pagerduty_severities_runbook_and_latency() -> None:
    result = import_paths("sloth", [str(DATA / "sloth/slok-sloth__kubernetes-apiserver.yml")])
    avail, lat = (s.slo for s in result.slos)
    assert avail["alerting"]["severities"] == {"page": "critical", "ticket": "warning"}
    assert "page.severity" not in avail["labels"]
    assert avail["runbook_url"].endswith("#alert-name-kubeapierrorshigh")
    assert lat["sli"] == {"latency": {"threshold_s": 0.4}}  # le="0.4" of a _seconds histogram
    assert lat["objective"] == 99


def test_sloth_disabled_alerts_and_plugins() -> None:
    assert _one("sloth", "sloth/slok-sloth__no-alerts.yml")["alerting"]["disable"] == ["page", "ticket"]
    result = import_paths("sloth", [str(DATA / "sloth/slok-sloth__contrib-slo-plugins.yml")])
    info_labels = result.slos[0].slo["labels"]
    assert {k: v for k, v in info_labels.items() if k.startswith("info.")} == {
        "info.plug-l1": "in-k1", "info.plug-l2": "in-k2", "info.plug-l3": "in-k3"}
    plugin = import_paths("sloth", [str(DATA / "sloth/slok-sloth__plugin-getting-started.yml")]).slos[0]
    assert "getting_started_availability" in plugin.notes[0] and plugin.notes[0].startswith("FILL IN:")


def test_sloth_unknown_plugin_refuses_the_slo(tmp_path: Path) -> None:
    src = (DATA / "sloth/slok-sloth__getting-started.yml").read_text(encoding="utf-8")
    bad = tmp_path / "bad.yml"
    bad.write_text(src + "slo_plugins:\n  chain:\n    - id: example.com/rewrite/v1\n", encoding="utf-8")
    result = import_paths("sloth", [str(bad)])
    assert result.slos == []
    assert "Sloth SLO plugin 'example.com/rewrite/v1' is not known" in result.refused[0].reason


def test_sloth_kuadrant_latency_in_milliseconds_only_200() -> None:
    slo = _one("sloth", "sloth/kuadrant-operator__slo-latency.yaml", period="28d")
    lat = slo["sli"]["latency"]
    assert lat["threshold_ms"] == 250  # istio_request_duration_milliseconds, le="250"
    excluded = set()
    for spec in lat["exclude_status"]:
        excluded |= set(_codes(spec))
    assert ALL_CODES - excluded == {200}   # response_code="200" on total and bucket
    assert slo["period"] == "28d" and slo["match_labels"] == {"job": "ingress-metrics-proxy"}


def _codes(spec: str | int) -> range:
    from engine.config import status_codes

    return status_codes(spec)


@pytest.mark.parametrize(("catalog", "expected"), [
    ("slok-sloth__alert-windows-google-30d.yaml", "sre-workbook"),
    ("slok-sloth__windows-custom-30d.yaml", None),
])
def test_sloth_alert_windows_become_tiers(catalog: str, expected: str | None) -> None:
    slo = _one("sloth", "sloth/slok-sloth__getting-started.yml", windows=[str(DATA / "sloth" / catalog)])
    windows = slo["alerting"]["windows"]
    if expected is not None:
        assert windows == expected
        return
    cfg = parse_config({"slos": [slo]})
    tiers = {t.name: t for t in resolve_tiers(cfg.slos[0].alerting, 30 * 86400)}
    # Sloth: factor = errorBudgetPercent/100 * period / longWindow.
    assert tiers["page_quick"].burn_rate_factor == pytest.approx(0.01 * 30 * 24 * 60 / 30)   # 1 % in 30m
    assert tiers["ticket_slow"].burn_rate_factor == pytest.approx(0.05 * 30 * 24 / 36)       # 5 % in 36h
    assert (tiers["page_slow"].long_window_s, tiers["page_slow"].short_window_s) == (3 * 3600, 15 * 60)


def test_sloth_windows_of_another_period_and_bad_window_files(tmp_path: Path) -> None:
    seven = str(DATA / "sloth/slok-sloth__windows-7d.yaml")
    slo = _one("sloth", "sloth/slok-sloth__getting-started.yml", windows=[seven], period="7d")
    assert slo["period"] == "7d"
    assert [t["budget_percent"] for t in slo["alerting"]["windows"]] == [8, 12.5, 20, 42]
    with pytest.raises(ConfigError, match="--windows: expected a Sloth AlertWindows document"):
        import_paths("sloth", [seven], windows=[str(DATA / "sloth/slok-sloth__getting-started.yml")])
    with pytest.raises(ConfigError, match="a second catalog for the period 7d"):
        import_paths("sloth", [seven], windows=[seven, seven])


def test_openslo_alert_policy_becomes_single_window_tiers() -> None:
    files = [str(DATA / "openslo/OpenSLO-slogen__v1_logs-req-rolling.yaml"),
             str(DATA / "openslo/OpenSLO-slogen__v1_alert-policy_burn-rate.yaml")]
    result = import_paths("openslo", files)
    assert result.refused == []  # the policy is used by the SLO
    slo = result.slos[0].slo
    tiers = slo["alerting"]["windows"]
    assert [(t["severity"], t["factor"], t["long_window"], t["short_window"], t["for"]) for t in tiers] == [
        ("ticket", 2, "1h", "1h", "5m"), ("page", 4, "1h", "1h", "5m")]
    assert slo["period"] == "7d" and slo["objective"] == 98
    assert slo["labels"]["serviceTier"] == "tier-1"
    cfg = parse_config({"slos": [slo]})
    assert [t.burn_rate_factor for t in resolve_tiers(cfg.slos[0].alerting, 7 * 86400)] == [2, 4]


def test_openslo_multiple_objectives_and_refusal_reasons() -> None:
    result = import_paths("openslo", [str(DATA / "openslo/slok-sloth__openslo-kubernetes-apiserver.yml")])
    names = [s.slo["name"] for s in result.slos]
    assert names == ["requests-availability-openslo", "requests-latency-openslo-0",
                     "requests-latency-openslo-1"]
    assert [s.slo["sli"]["latency"]["threshold_s"] for s in result.slos[1:]] == [0.4, 5]
    assert [s.slo["objective"] for s in result.slos] == [99.9, 99, 99.9]
    # good = code!~"(5..|429)" over everything: bad are 5xx and 429.
    assert result.slos[0].slo["sli"] == {"availability": {"bad_status": [429, "5xx"]}}
    cal = import_paths("openslo", [str(DATA / "openslo/OpenSLO__low-traffic-timeslices-slo.yaml")])
    assert cal.refused[0].reason == (
        "Timeslices budgeting has no event-level equivalent: sloburn counts good and bad events "
        "(Occurrences), not good time slices; calendar-aligned time window (1w from 2022-01-01 12:00:00 "
        "America/New_York) is not supported: sloburn budgets over a rolling period; set isRolling: true "
        "to import it as a rolling 1w window")


def test_pyrra_windows_labels_runbook_and_service() -> None:
    rel = "pyrra/rhobs-configuration__mst-production-api-metrics-write-availability-slo.yaml"
    slo = _one("pyrra", rel)
    assert slo["service"] == "observatorium-api"         # pyrra.dev/service label
    assert slo["route"] == "receive"                     # handler="receive"
    assert slo["match_labels"] == {"job": "observatorium-observatorium-mst-api", "group": "metricsv1"}
    assert slo["sli"] == {"availability": {"bad_status": ["5xx"]}}    # code=~"^5..$"
    assert (slo["objective"], slo["period"], slo["alerting"]["windows"]) == (99, "28d", "pyrra")
    assert slo["runbook_url"].endswith("#APIMetricsWriteAvailabilityErrorBudgetBurning")
    assert slo["labels"]["alertname"] == "APIMetricsWriteAvailabilityErrorBudgetBurning"
    assert "instance" not in slo["labels"]                # a Kubernetes label, not Pyrra's


def test_pyrra_grpc_codes_and_native_latency() -> None:
    grpc = import_paths("pyrra", [str(DATA / "pyrra/pyrra__parca-grpc-queryrange-errors.yaml")]).slos[0]
    assert grpc.slo["route"] == "/parca.query.v1alpha1.QueryService/QueryRange"
    # Aborted 409, Unavailable 503, Internal/Unknown/DataLoss 500, Unimplemented 501 (google.rpc.Code).
    assert grpc.slo["sli"] == {"availability": {"bad_status": [409, "500-501", 503]}}
    assert any("ALREADY_EXISTS (409)" in n for n in grpc.notes)
    native = _one("pyrra", "pyrra/pyrra__pyrra-connect-latency.yaml")
    assert native["sli"]["latency"]["threshold_s"] == pytest.approx(0.2)
    assert native["service"] == "pyrra"                    # job="pyrra"
    assert native["period"] == "14d"


def test_documents_of_another_tool_are_refused_with_the_right_command() -> None:
    result = import_paths("pyrra", [str(DATA / "sloth/slok-sloth__getting-started.yml")])
    assert result.refused[0].reason == "this is a sloth document: use `sloburn import sloth`"
    result = import_paths("sloth", [str(DATA / "openslo/OpenSLO__occurences-slo.yaml")])
    assert result.refused[0].reason == "this is a openslo document: use `sloburn import openslo`"


def test_unreadable_and_invalid_yaml_are_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("slos: [\n", encoding="utf-8")
    result = import_paths("sloth", [str(bad), str(tmp_path / "missing.yaml")])
    reasons = [o.reason for o in result.refused]
    assert "expected valid YAML, got a syntax error (line 2, column 1)" in reasons[0]
    assert "cannot read" in reasons[1]


# ------------------------------------------------------------------------------------- PromQL statuses


@pytest.mark.parametrize(("label", "op", "value", "expected"), [
    ("code", "=~", "5..", set(range(500, 600))),
    ("status", "=~", "5.*", set(range(500, 600))),
    ("code", "=~", "^5..$", set(range(500, 600))),
    ("code", "=~", "(5..|429)", set(range(500, 600)) | {429}),
    ("code", "!~", "2..|3..", set(range(100, 200)) | set(range(400, 600))),
    ("code", "=", "503", {503}),
    ("code", "!=", "200", set(range(100, 600)) - {200}),
    ("code", "=~", "2xx|4xx", set(range(200, 300)) | set(range(400, 500))),
    ("grpc_code", "=", "Unavailable", {503}),
    ("grpc_code", "=", "14", {503}),                     # numeric gRPC code on a gRPC label
    ("code", "=", "deadline_exceeded", {504}),           # Connect's spelling
    ("grpc_code", "!=", "OK", set(range(100, 600)) - {200}),
])
def test_status_matchers(label: str, op: str, value: str, expected: set[int]) -> None:
    sm = status_match(Matcher(label, op, value))
    assert sm is not None and set(sm.codes) == expected


def test_status_values_that_are_no_status() -> None:
    assert status_match(Matcher("rcode", "=", "SERVFAIL")) is None
    assert status_match(Matcher("code", "=", "0")) is None       # not gRPC's OK on an HTTP label
    sm = status_match(Matcher("status_code", "=~", "5..|<error>"))
    assert sm is not None and set(sm.codes) == set(range(500, 600)) and "'<error>'" in sm.notes[0]


def test_codes_regex_and_specs_round_trip() -> None:
    seed = 20240611
    rng = random.Random(seed)
    print(f"seed={seed}")
    for _ in range(200):
        codes = {c for c in ALL_CODES if rng.random() < rng.choice([0.02, 0.5, 0.98])}
        if not codes:
            continue
        rx = codes_regex(codes)
        assert {c for c in ALL_CODES if re.fullmatch(rx, str(c))} == codes, rx
        back: set[int] = set()
        for spec in status_specs(codes):
            back |= set(_codes(spec))
        assert back == codes


# ------------------------------------------------------------------------------------- CLI


def _run(argv: list[str]) -> int:
    from engine.cli_import import register

    parser = argparse.ArgumentParser(prog="sloburn")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_cli_import_writes_config_and_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "c.yaml"
    rc = _run(["import", "sloth", str(DATA / "sloth/slok-sloth__home-wifi.yml"),
               str(DATA / "sloth/slok-sloth__windows-7d.yaml"), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 1  # the AlertWindows file is refused, the SLOs are written
    assert "refused: kind: AlertWindows is a window catalog" in err
    assert err.strip().splitlines()[-1].startswith(
        "imported 2 SLO(s): 0 translated, 0 to check, 2 need an SLI")
    assert len(load_config(out).slos) == 2
    assert _run(["import", "pyrra", str(DATA / "pyrra/pyrra__nginx.yaml"), "--out", str(out)]) == 0
    assert _run(["import", "openslo", str(DATA / "openslo/OpenSLO__timeslices-slo.yaml")]) == 2
    assert _run(["import", "sloth", str(DATA / "sloth/slok-sloth__getting-started.yml"),
                 "--period", "36h"]) == 2


# ------------------------------------------------------------------------------------- export


ORACLE = DATA / "sloth" / "_generated_rules_oracle"
_IGNORED_LABELS = {"cmd", "sloth_mode", "sloth_spec", "sloth_version"}


def _norm(expr: str) -> str:
    text = re.sub(r"\s+", "", expr)
    return re.sub(r"\d+\.\d+(?:e-?\d+)?", lambda m: f"{float(m.group()):.9g}", text)


def _vector_value(expr: str) -> float:
    inner = re.fullmatch(r"vector\(([-+*/0-9.e ]+)\)", expr.strip())
    assert inner, expr
    return float(eval(inner.group(1), {"__builtins__": {}}))  # digits and + - * / only


def _export_of(rel: str, tmp_path: Path) -> dict[str, Any]:
    result = import_paths("sloth", [str(DATA / rel)])
    cfg_path, metrics_path = tmp_path / "c.yaml", tmp_path / "m.yaml"
    cfg_path.write_text(render_config(result, tool="sloth", inputs=[rel]), encoding="utf-8")
    metrics_path.write_text(render_metrics(result), encoding="utf-8")
    cfg = load_config(cfg_path)
    doc, _ = export_rules(cfg, load_metrics(str(metrics_path), cfg))
    return doc


@pytest.mark.parametrize("name", ["getting-started", "kubernetes-apiserver", "multifile", "no-alerts",
                                  "home-wifi", "raw-home-wifi", "victoria-metrics"])
def test_export_reproduces_sloth_rules(name: str, tmp_path: Path) -> None:
    ours = _export_of(f"sloth/slok-sloth__{name}.yml", tmp_path)
    docs = yaml.safe_load_all((ORACLE / f"slok-sloth___gen__{name}.yml").read_text(encoding="utf-8"))
    oracle = {"groups": [g for d in docs if d for g in d["groups"]]}
    assert [g["name"] for g in ours["groups"]] == [g["name"] for g in oracle["groups"]]
    for og, mg in zip(oracle["groups"], ours["groups"], strict=True):
        assert len(og["rules"]) == len(mg["rules"]), og["name"]
        for o, m in zip(og["rules"], mg["rules"], strict=True):
            if "record" in o:
                assert m["record"] == o["record"]
                if o["record"] in ("slo:objective:ratio", "slo:error_budget:ratio", "slo:time_period:days"):
                    assert _vector_value(m["expr"]) == pytest.approx(_vector_value(o["expr"]), rel=1e-9)
                else:
                    assert _norm(m["expr"]) == _norm(o["expr"]), o["record"]
                want = {k: str(v) for k, v in o["labels"].items() if k not in _IGNORED_LABELS}
                got = {k: v for k, v in m["labels"].items() if k not in _IGNORED_LABELS}
                assert got == want, o["record"]
                continue
            # Prometheus alert names are metric names: Sloth's '-' (VictoriaMetrics) becomes '_'.
            assert m["alert"] == o["alert"].replace("-", "_")
            assert _norm(m["expr"]) == _norm(o["expr"])
            want = {k: str(v) for k, v in o["labels"].items()}
            got = dict(m["labels"])
            ids = {k: got.pop(k) for k in ("sloth_id", "sloth_service", "sloth_slo")}
            assert f'sloth_id="{ids["sloth_id"]}", sloth_service="{ids["sloth_service"]}", ' \
                   f'sloth_slo="{ids["sloth_slo"]}"' in o["expr"]
            if "severity" not in want:   # sloburn always names the PagerDuty severity
                assert got.pop("severity") in ("critical", "warning")
            assert got == want
            want_ann = {("runbook_url" if k == "runbook" else k): v for k, v in o["annotations"].items()}
            assert m["annotations"] == want_ann


def _cfg(slo: dict[str, Any], **top: Any) -> Any:
    return parse_config({"slos": [{"name": "checkout-availability", "service": "checkout", "objective": 99.9,
                                   "sli": {"availability": {"bad_status": ["5xx"]}}, **slo}], **top})


def _rules(doc: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [r for g in doc["groups"] for r in g["rules"] if kind in r]


def test_export_default_queries_factors_and_names() -> None:
    cfg = _cfg({"period": "28d", "route": "/pay", "match_labels": {"region": "eu"},
                "sli": {"availability": {"bad_status": ["5xx", 429], "exclude_status": ["4xx"]}}})
    doc, notes = export_rules(cfg)
    assert notes == []
    assert doc["groups"][0]["name"] == "sloth-slo-sli-recordings-checkout-availability"
    rec = _rules(doc, "record")
    five = next(r for r in rec if r["record"] == "slo:sli_error:ratio_rate5m")
    assert 'http_requests_total{service="checkout",route="/pay",region="eu",code!~"' in five["expr"]
    excluded_rx, bad_rx = re.findall(r'code!~"([^"]+)",code=~"([^"]+)"', five["expr"])[0]
    # 429 stays bad although 4xx is excluded (the narrower matcher wins).
    assert {c for c in ALL_CODES if re.fullmatch(excluded_rx, str(c))} == set(range(400, 500)) - {429}
    assert {c for c in ALL_CODES if re.fullmatch(bad_rx, str(c))} == set(range(500, 600)) | {429}
    assert five["labels"]["sloth_slo"] == "availability"   # name starts with the service
    factors = sorted(float(f) for r in _rules(doc, "alert")
                     for f in re.findall(r"> \(([\d.]+) \*", r["expr"]))
    assert factors == pytest.approx(sorted([13.44] * 2 + [5.6] * 2 + [2.8] * 2 + [28 / 30] * 2))
    assert {r["alert"] for r in _rules(doc, "alert")} == {"CheckoutAvailabilityErrorBudgetBurn"}
    days = next(r for r in rec if r["record"] == "slo:time_period:days")
    assert days["expr"] == "vector(28)"


def test_export_latency_guards_and_label_scopes() -> None:
    cfg = _cfg({"name": "cart-latency", "objective": None, "sli": {"latency": "p99 below 1s"},
                "period": "28d",
                "labels": {"team": "pay", "alertname": "CartSlow", "alert.category": "latency",
                           "page.routing_key": "pay-oncall", "annotation.summary": "Cart is slow",
                           "info.tier": "1", "sloburn_import": "check-sli", "bad key": "x"},
                "alerting": {"windows": "pyrra", "min_events": 100, "keep_firing_for": "5m"}})
    doc, notes = export_rules(cfg)
    assert notes == [
        'SLO cart-latency is marked sloburn_import: check-sli and has no --metrics entry: its rules read '
        'http_request_duration_seconds_bucket{service="checkout",le=~"1(\\\\.0)?"}',
        "SLO cart-latency: label 'bad key' is not a Prometheus label name: written as 'bad_key'"]
    five = next(r for r in _rules(doc, "record") if r["record"].startswith("slo:sli_error:ratio_rate"))
    assert 'http_request_duration_seconds_bucket{service="checkout",le=~"1(\\\\.0)?"}' in five["expr"]
    assert five["labels"]["team"] == "pay" and "sloburn_import" not in five["labels"]
    assert "category" not in five["labels"] and "tier" not in five["labels"]
    info = next(r for r in _rules(doc, "record") if r["record"] == "sloth_slo_info")
    assert info["labels"]["tier"] == "1" and info["labels"]["sloth_objective"] == "99"
    alerts = _rules(doc, "alert")
    # Pyrra's tiers have different `for`s: one rule per tier, each with its own.
    assert [(a["labels"]["sloth_severity"], a["for"]) for a in alerts] == [
        ("page", "2m"), ("page", "15m"), ("ticket", "1h"), ("ticket", "3h")]
    assert all(a["alert"] == "CartSlow" and a["keep_firing_for"] == "5m" for a in alerts)
    assert alerts[0]["labels"]["routing_key"] == "pay-oncall" and "routing_key" not in alerts[2]["labels"]
    assert alerts[0]["labels"]["category"] == "latency"
    assert alerts[0]["annotations"]["summary"] == "Cart is slow"
    assert "* 3600 >= 100)" in alerts[0]["expr"]   # the low-traffic guard on the 1h window
    budget = next(r for r in _rules(doc, "record") if r["record"] == "slo:error_budget:ratio")
    assert budget["expr"] == "vector(0.01)"


def test_metrics_file_is_checked(tmp_path: Path) -> None:
    cfg = _cfg({})
    path = tmp_path / "m.yaml"
    path.write_text("slos:\n  nope: {errors: 'a{}', total: 'a'}\n  checkout-availability: {errors: 'a'}\n",
                    encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        load_metrics(str(path), cfg)
    assert e.value.problems == [
        f"{path}: $.slos.nope: expected the name of an SLO of the config, got 'nope'",
        f"{path}: $.slos.checkout-availability: expected error_query + total_query, good_query + "
        f"total_query, error_ratio_query, or errors (or good) + total, got errors"]
    path.write_text("slos:\n  checkout-availability: {errors: 'e', total: 't'}\n", encoding="utf-8")
    doc, _ = export_rules(cfg, load_metrics(str(path), cfg))
    assert _rules(doc, "record")[0]["expr"] == "(sum(rate(e[5m])))\n/\n(sum(rate(t[5m])))\n"
    assert isinstance(load_metrics(str(path), cfg), MetricsFile)


def test_cli_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("slos:\n- {name: a, service: s, objective: 99, sli: {availability: {}}}\n",
                   encoding="utf-8")
    out = tmp_path / "rules.yaml"
    assert _run(["export", "prometheus", str(cfg), "--out", str(out)]) == 0
    rules = yaml.safe_load(out.read_text(encoding="utf-8"))
    assert [g["name"] for g in rules["groups"]] == [
        "sloth-slo-sli-recordings-s-a", "sloth-slo-meta-recordings-s-a", "sloth-slo-alerts-s-a"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("slos:\n- {name: a, service: s, objective: 100, sli: {availability: {}}}\n",
                   encoding="utf-8")
    with pytest.raises(ConfigError, match=r"objective: expected a percentage in \(0, 100\), got 100"):
        _run(["export", "prometheus", str(bad)])
    capsys.readouterr()


def test_window_catalog_of_an_unused_period_is_reported() -> None:
    result = import_paths("sloth", [str(DATA / "sloth/slok-sloth__getting-started.yml")],
                          windows=[str(DATA / "sloth/slok-sloth__windows-7d.yaml")])
    assert result.slos[0].slo["alerting"]["windows"] == "sre-workbook"
    assert result.notes == ["--windows: no imported SLO has the period 7d, so that catalog is not used "
                            "(--period sets the period of Sloth SLOs)"]


def test_cli_import_then_export_keeps_the_original_queries(tmp_path: Path) -> None:
    cfg, metrics, rules = tmp_path / "c.yaml", tmp_path / "m.yaml", tmp_path / "rules.yaml"
    src = DATA / "pyrra/pyrra__thanos-http.yaml"
    assert _run(["import", "pyrra", str(src), "--out", str(cfg), "--metrics-out", str(metrics)]) == 0
    assert _run(["export", "prometheus", str(cfg), "--metrics", str(metrics), "--out", str(rules)]) == 0
    text = rules.read_text(encoding="utf-8")
    # Pyrra's selectors, as sum(rate(...)) over each window; the 28-day period scales nothing.
    errors = 'http_requests_total{job="thanos-query",handler=~"query|query_range",code=~"5.."}'
    assert f"(sum(rate({errors}[5m])))" in text
    assert "slo:sli_error:ratio_rate4d" in text and "vector(28)" in text
