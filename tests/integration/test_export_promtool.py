"""Exported Prometheus rules through the real ``promtool`` (Debian package ``prometheus``).

- ``promtool check rules`` accepts the export of several configs: an example config, hand-written ones
  using every alerting option, and the imports of all collected Sloth, OpenSLO and Pyrra files, with and
  without their original queries.
- Kuadrant's own promtool tests of the rules Sloth wrote for its SLOs pass on the rules sloburn exports
  from the imported SLO files (and fail when the objective is changed).
- On sloburn's default metrics, the page of a 2 % error ratio at 99.9 % / 30 d fires 44 min after the
  errors start and clears 2 min after they stop, as ``reference/slo-math.md`` measures with promtool 2.42.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from engine.config import load_config, parse_config
from engine.export_prometheus import load_metrics, render_rules
from engine.importers import import_paths, render_config, render_metrics

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data" / "slo-configs"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed "
                                    "(Debian: apt-get install prometheus)")


def _promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                          check=False)


def _export(cfg_path: Path, metrics_path: Path | None, out: Path) -> Path:
    cfg = load_config(cfg_path)
    metrics = load_metrics(str(metrics_path), cfg) if metrics_path else None
    text, _ = render_rules(cfg, metrics, config_path=cfg_path.name)
    out.write_text(text, encoding="utf-8")
    return out


def _import(tool: str, files: list[Path], tmp: Path, **kw: object) -> tuple[Path, Path]:
    result = import_paths(tool, [str(f) for f in files], **kw)  # type: ignore[arg-type]
    assert result.slos
    cfg, metrics = tmp / f"{tool}.yaml", tmp / f"{tool}-metrics.yaml"
    cfg.write_text(render_config(result, tool=tool, inputs=[f.name for f in files]), encoding="utf-8")
    metrics.write_text(render_metrics(result), encoding="utf-8")
    return cfg, metrics


OPTIONS_CONFIG = """
slos:
  - name: checkout-availability
    service: checkout
    route: /api/pay
    operation: POST
    match_labels: {region: eu-west-1}
    objective: 99.95
    period: 28d
    runbook_url: https://runbooks.example.com/checkout
    labels: {team: payments, alertname: CheckoutBurn, page.routing_key: pay, annotation.summary: "Pay fails"}
    sli: {availability: {bad_status: [5xx, 429], exclude_status: [4xx]}}
    alerting: {windows: sre-workbook, min_events: 50, keep_firing_for: 5m, for: 1m}
  - name: cart-latency
    service: checkout
    route: /api/cart
    period: 14d
    sli: {latency: "p99 below 300ms"}
    alerting: {windows: pyrra, disable: [ticket]}
  - name: search-latency
    service: search
    objective: 99
    period: 7d
    sli: {latency: {threshold_s: 2, exclude_status: [5xx]}}
    alerting:
      windows:
        - {name: fast, severity: page, factor: 10, long_window: 30m, short_window: 5m}
        - {name: single, severity: ticket, factor: 2, long_window: 2h, short_window: 2h, for: 10m}
"""


def _configs(tmp: Path) -> list[tuple[str, Path, Path | None]]:
    """(case, config, metrics file or None) for every export the rule check runs on."""
    cases: list[tuple[str, Path, Path | None]] = [("example", ROOT / "configs" / "example.yaml", None)]
    opts = tmp / "options.yaml"
    opts.write_text(OPTIONS_CONFIG, encoding="utf-8")
    cases.append(("options", opts, None))
    for tool in ("sloth", "openslo", "pyrra"):
        # victoria-metrics.yml is MetricsQL (histogram_share, vector(1)[5m]): checked apart below.
        files = sorted(p for p in (DATA / tool).glob("*.y*ml") if "victoria-metrics" not in p.name)
        sub = tmp / tool
        sub.mkdir()
        cfg, metrics = _import(tool, files, sub)
        cases += [(f"{tool}-imported", cfg, metrics), (f"{tool}-default-metrics", cfg, None)]
    return cases


@needs_promtool
def test_promtool_accepts_the_exports(tmp_path: Path) -> None:
    checked = 0
    for case, cfg, metrics in _configs(tmp_path):
        rules = _export(cfg, metrics, tmp_path / f"{case}-rules.yaml")
        n_slos = len(load_config(cfg).slos)
        res = _promtool("check", "rules", rules.name, cwd=tmp_path)
        assert res.returncode == 0, f"{case}:\n{res.stdout}\n{res.stderr}"
        assert "FAILED" not in res.stdout + res.stderr, f"{case}:\n{res.stdout}\n{res.stderr}"
        found = int(re.search(r"SUCCESS: (\d+) rules found", res.stdout).group(1))  # type: ignore[union-attr]
        assert found >= 9 * n_slos, case  # >= 1 window + period + 7 meta rules per SLO
        checked += 1
    assert checked == 8


@needs_promtool
def test_promtool_rejects_metricsql_queries_passed_through(tmp_path: Path) -> None:
    # The export keeps the original queries as they are; VictoriaMetrics' are not PromQL.
    cfg, metrics = _import("sloth", [DATA / "sloth" / "slok-sloth__victoria-metrics.yml"], tmp_path)
    rules = _export(cfg, metrics, tmp_path / "vm-rules.yaml")
    res = _promtool("check", "rules", rules.name, cwd=tmp_path)
    assert res.returncode != 0
    assert "histogram_share" in res.stderr or "ranges only allowed" in res.stderr
    rules = _export(cfg, None, tmp_path / "vm-default-rules.yaml")  # sloburn's own queries are PromQL
    assert _promtool("check", "rules", rules.name, cwd=tmp_path).returncode == 0


def _kuadrant(tmp: Path, kind: str, objective: str | None = None) -> subprocess.CompletedProcess[str]:
    cfg, metrics = _import("sloth", [DATA / "sloth" / f"kuadrant-operator__slo-{kind}.yaml"], tmp,
                           period="28d")
    if objective is not None:
        text = cfg.read_text(encoding="utf-8")
        cfg.write_text(text.replace("objective: 99.95", f"objective: {objective}"), encoding="utf-8")
    _export(cfg, metrics, tmp / f"{kind}-rules.yaml")
    suite = yaml.safe_load((DATA / "promtool" / f"kuadrant-operator__slo-{kind}-test.yaml").read_text(
        encoding="utf-8"))
    assert suite["rule_files"] == [f"/prometheus/{kind}-rules.yaml"]
    suite["rule_files"] = [f"{kind}-rules.yaml"]
    (tmp / f"{kind}-test.yaml").write_text(yaml.safe_dump(suite, sort_keys=False), encoding="utf-8")
    return _promtool("test", "rules", f"{kind}-test.yaml", cwd=tmp)


@needs_promtool
@pytest.mark.parametrize("kind", ["availability", "latency"])
def test_kuadrant_promtool_tests_pass_on_the_export(kind: str, tmp_path: Path) -> None:
    res = _kuadrant(tmp_path, kind)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout
    # The suite can tell: with a 50 % objective the page does not fire at 60 min and it fails.
    other = tmp_path / "mutated"
    other.mkdir()
    res = _kuadrant(other, kind, objective="50")
    assert res.returncode != 0 and "FAILED" in res.stdout + res.stderr


# Errors start at minute S (the first counter increase that holds them) and stop at minute E.
S, E = 421, 481
NATIVE = """
slos:
  - name: checkout-availability
    service: checkout
    objective: 99.9
    period: 30d
    sli: {availability: {bad_status: [5xx], exclude_status: [4xx]}}
    alerting: {windows: sre-workbook, disable: [ticket], min_events: 0, keep_firing_for: 0s}
  - name: cart-latency
    service: cart
    objective: 99.9
    period: 30d
    sli: {latency: {threshold_s: 1}}
    alerting: {windows: sre-workbook, disable: [ticket], min_events: 0, keep_firing_for: 0s}
"""  # Sloth's timing: neither of sloburn's guards


def _series(good: str, bad: str) -> str:
    return f"""
      - series: {good}
        values: "0+100x{S - 1} {100 * S}+98x{E - S} {100 * S + 98 * (E - S) + 100}+100x60"
      - series: {bad}
        values: "0+0x{S - 1} 0+2x{E - S} {2 * (E - S)}+0x60"
"""


@needs_promtool
def test_default_metrics_page_timing_matches_slo_math(tmp_path: Path) -> None:
    cfg_path = tmp_path / "native.yaml"
    cfg_path.write_text(NATIVE, encoding="utf-8")
    parse_config(yaml.safe_load(NATIVE))
    rules = _export(cfg_path, None, tmp_path / "native-rules.yaml")
    # 2 % errors at 99.9 %: slo-math.md's promtool figures: page at 44 min, cleared 2 min after the end.
    # 404s are excluded: counted as good they would keep the ratio (2/150) under 14.4 x 0.1 %.
    series = _series('http_requests_total{service="checkout",code="200"}',
                     'http_requests_total{service="checkout",code="500"}')
    series += '      - series: http_requests_total{service="checkout",code="404"}\n'
    series += f'        values: "0+50x{E + 60}"\n'
    # 2 % of cart requests slower than 1 s: the 1 s bucket holds 98 of each 100.
    series += _series('http_request_duration_seconds_bucket{service="cart",le="1"}',
                      'slow_requests_not_scraped_total{service="cart"}')
    series += '      - series: http_request_duration_seconds_count{service="cart"}\n'
    series += f'        values: "0+100x{E + 60}"\n'
    checks = []
    for minute, firing in ((S + 43, False), (S + 44, True), (E + 1, True), (E + 2, False)):
        for alert, slo in (("CheckoutAvailabilityErrorBudgetBurn", ("checkout", "availability")),
                           ("CartLatencyErrorBudgetBurn", ("cart", "latency"))):
            exp = "[]" if not firing else (
                f"\n          - exp_labels: {{severity: critical, sloth_severity: page, "
                f"sloth_id: {slo[0]}-{slo[1]}, sloth_service: {slo[0]}, sloth_slo: {slo[1]}}}\n"
                f"            exp_annotations:\n"
                f"              title: (page) {slo[0]} {slo[1]} SLO error budget burn rate is too fast.\n"
                f"              summary: {slo[0]} {slo[1]} SLO error budget burn rate is over expected.")
            checks.append(f"      - eval_time: {minute}m\n        alertname: {alert}\n"
                          f"        exp_alerts: {exp}")
    # Prometheus runs each group on its own schedule, so an alert may read the recording rules of the
    # instant before (slo-math.md); promtool's order is fixed here to the file's: recordings, then alerts.
    groups = [g["name"] for g in yaml.safe_load(rules.read_text(encoding="utf-8"))["groups"]]
    suite = ("rule_files: [native-rules.yaml]\nevaluation_interval: 1m\n"
             f"group_eval_order: {groups}\ntests:\n  - interval: 1m\n"
             f"    input_series:{series}    alert_rule_test:\n" + "\n".join(checks) + "\n")
    (tmp_path / "native-test.yaml").write_text(suite, encoding="utf-8")
    res = _promtool("test", "rules", "native-test.yaml", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
