"""The Prometheus emulation (bench.strategies.prometheus) against promtool 2.42.

promtool is the Debian package ``prometheus`` (2.42.0); .ci/run installs it. Three checks:

1. The public suites in tests/data/promtool-suites (see its SOURCES.md) pass under promtool itself:
   promtool is the oracle, their expectations are what it agrees with.
2. The emulation replays every test case of those suites and meets their expectations: the same
   firing alerts (labels and annotations) at every ``eval_time``, the same values within 1e-9. The
   four rhobs values that promtool 2.42 itself misses in the last digit are matched bit for bit
   against promtool's output instead.
3. Generated cases, the strong check: seeded random counters (an incident, counter resets, missed
   scrapes, a series born late; 15 s and 1 min scrapes) through the suites' own rule files and
   Sloth-shaped rules. The emulation writes its firing alerts at every evaluation and every recorded
   series every 3 min into a promtool test file; promtool must agree. Where every ``sum`` runs over
   two series at most the values must be bit-identical. Over more series promtool's own last digit
   varies from run to run (its loader creates the input series in Go map order and the engine sums
   in that order), so there the values must agree within 1e-9 and each SLI that differs must equal
   the emulation's SLI under some order of the summed series.
"""

from __future__ import annotations

import itertools
import math
import random
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from bench.strategies.prometheus import (
    SLOTH_30D_TIERS,
    BurnTier,
    ReplayCase,
    replay_promtool_file,
    sloth_rules,
)
from bench.strategies.promql import PromQLError, format_labels, parse_duration_ms

pytestmark = pytest.mark.integration

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (Debian package 'prometheus'; .ci/run installs it)")
SUITES = Path(__file__).resolve().parent.parent / "data" / "promtool-suites"
TOL = 1e-9

SUITE_TESTS = {
    "kuadrant-operator": ["slo-availability-test.local.yaml", "slo-latency-test.local.yaml"],
    "opendatahub-operator": sorted(p.name for p in SUITES.glob("opendatahub-operator/*.unit-tests.yaml")),
    "rhobs-configuration": ["rhobs-slos-mst.local.test.yaml", "rhobs-slos-telemeter.local.test.yaml"],
}


def run_promtool(cwd: Path, *files: str) -> tuple[int, str]:
    assert PROMTOOL is not None
    proc = subprocess.run([PROMTOOL, "test", "rules", *files], cwd=cwd, capture_output=True, text=True,
                          timeout=120, check=False)
    return proc.returncode, proc.stdout + proc.stderr


@dataclass
class ValueFailure:
    expr: str
    time: str
    expected: dict[str, float]
    got: dict[str, float]


_SAMPLE_RE = re.compile(r"(\{[^{}]*\}) ([^,\s]+)")


def parse_failures(output: str) -> tuple[list[ValueFailure], list[str]]:
    """promtool's FAILED report: value mismatches of expression tests, and every other failure line."""
    values: list[ValueFailure] = []
    other: list[str] = []
    lines = output.splitlines()
    for i, line in enumerate(lines):
        s = line.strip()
        m = re.match(r'expr: "(.*)", time: (\S+),$', s)
        if m and i + 2 < len(lines) and lines[i + 1].strip().startswith("exp:"):
            exp = {k: float(v) for k, v in _SAMPLE_RE.findall(lines[i + 1])}
            got = {k: float(v) for k, v in _SAMPLE_RE.findall(lines[i + 2])}
            values.append(ValueFailure(m.group(1).replace('\\"', '"'), m.group(2), exp, got))
        elif s.startswith(("alertname:", "rule:", "err", "expr:", "Could not", "error")):
            other.append(s)
    return values, other


def promql_labels(text: str) -> str:
    """promtool prints ``{__name__="x", a="b"}``; the emulation's format_labels prints ``x{a="b"}``."""
    pairs = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', text))
    return format_labels(tuple(sorted(pairs.items())))


# ------------------------------------------------------------------------- 1. suites under promtool

@needs_promtool
@pytest.mark.parametrize("suite", sorted(SUITE_TESTS))
def test_public_suite_passes_promtool(suite: str) -> None:
    code, out = run_promtool(SUITES / suite, *SUITE_TESTS[suite])
    values, other = parse_failures(out)
    assert not other, out
    if suite != "rhobs-configuration":
        assert code == 0, out
        return
    # rhobs: the suite's expectations come from an older Prometheus (see SOURCES.md); promtool 2.42
    # misses 4 values per file in the last digit, and the emulation has promtool's digits exactly
    assert len(values) == 8, out
    cases = {name: replay_promtool_file(SUITES / suite / name)[0] for name in SUITE_TESTS[suite]}
    for f in values:
        assert f.got.keys() == f.expected.keys(), f
        for lbl, exp in f.expected.items():
            got = f.got[lbl]
            assert got != exp and math.isclose(got, exp, rel_tol=TOL), f
            at = parse_duration_ms(f.time)
            emulated = [v for case in cases.values() for lb, v in case.query(f.expr, at)
                        if format_labels(lb) == promql_labels(lbl)]
            assert got in emulated, (f, emulated)


# ------------------------------------------------------------- 2. the emulation meets the suites

SUITE_CASES = [(suite, name, i) for suite, names in SUITE_TESTS.items() for name in names
               for i in range(len(yaml.safe_load((SUITES / suite / name).read_text())["tests"]))]


@pytest.mark.parametrize(("suite", "name", "index"), SUITE_CASES,
                         ids=[f"{s}/{n}#{i}" for s, n, i in SUITE_CASES])
def test_emulation_meets_the_suite(suite: str, name: str, index: int) -> None:
    case = replay_promtool_file(SUITES / suite / name)[index]
    mismatches, skipped = case.check(tol=TOL)
    assert not mismatches, "\n".join(mismatches)
    checks = len(case.spec.get("alert_rule_test") or []) + len(case.spec.get("promql_expr_test") or [])
    assert checks > 0
    if skipped:
        pytest.skip("not emulated: " + "; ".join(skipped))


def test_rhobs_digits_are_promtool_2_42s_not_the_suites() -> None:
    """The four values promtool 2.42 prints for the rhobs telemeter suite (run.sh's note), exactly."""
    case = replay_promtool_file(SUITES / "rhobs-configuration" / "rhobs-slos-telemeter.local.test.yaml")[0]
    sel = '{job="observatorium-observatorium-api",handler="receive"}'
    printed_by_promtool = [  # (expression, minute, promtool 2.42 "got", suite "exp")
        (f"http_requests_total:burnrate5m{sel}", 5, 6.764705882352942e-01, 6.76470588235294e-01),
        (f"http_requests_total:burnrate1h{sel}", 5, 6.75e-01, 6.749999999999999e-01),
        (f"http_requests_total:burnrate1h{sel}", 10, 6.756756756756757e-01, 6.756756756756758e-01),
        ('latencytarget:http_request_duration_seconds:rate5m{job="observatorium-observatorium-api",'
         'handler="receive",latency="5"}', 30, 5.217391304347822e-01, 5.217391304347823e-01),
    ]
    for expr, minute, promtool_value, suite_value in printed_by_promtool:
        [(_, got)] = case.query(expr, minute * 60_000)
        assert got == promtool_value != suite_value, expr


# ---------------------------------------------------------------------- 3. generated random cases

@dataclass(frozen=True)
class Target:
    """Series of one scrape target.

    ``good``/``bad`` count good and bad requests (several series share the amount); each ``latency``
    pair (count, bucket) counts every good request and those under the threshold (the incident makes
    its error ratio of them slow); ``gauges`` are probe results (0 or 1, mostly 0 during the incident).
    """

    good: tuple[str, ...] = ()
    bad: tuple[str, ...] = ()
    latency: tuple[tuple[str, str], ...] = ()
    gauges: tuple[str, ...] = ()


def traffic(rng: random.Random, target: Target, n: int, step_s: int,
            incident: tuple[float, float]) -> dict[str, str]:
    """promtool ``values:`` strings: counters with an incident, joint resets, missed scrapes, a late
    series."""
    start, length = rng.randint(n // 5, n // 2), rng.randint(n // 6, n // 3)
    level = rng.uniform(*incident)
    counters = [*target.good, *target.bad, *(s for pair in target.latency for s in pair)]
    cum = dict.fromkeys(counters, float(rng.randint(0, 40)))
    late = rng.choice([*target.bad, None])  # an error series often appears with its first error
    late_until = rng.randint(1, n // 4)
    out: dict[str, list[str]] = {s: [] for s in [*counters, *target.gauges]}
    for i in range(n):
        requests = rng.randint(40, 160) * step_s // 15
        ratio = level if start <= i < start + length else rng.uniform(0, 0.0004)
        bad = round(requests * ratio) if target.bad else 0
        if rng.random() < 0.01:  # the process restarts: every counter starts over
            restart = float(rng.randint(0, 3))
            cum = dict.fromkeys(counters, restart)
        for names, amount in ((target.good, requests - bad), (target.bad, bad)):
            for k, s in enumerate(names):  # the first series takes the remainder
                cum[s] += amount // len(names) + (amount % len(names) if k == 0 else 0)
        for count, bucket in target.latency:
            cum[count] += requests - bad
            cum[bucket] += requests - bad - round((requests - bad) * ratio)
        missed = rng.random() < 0.03  # a failed scrape misses every series of the target
        for s, values in out.items():
            if missed or (s == late and i < late_until):
                values.append("_")
            elif s in cum:
                values.append(str(int(cum[s])))
            else:
                values.append("0" if start <= i < start + length and rng.random() < 0.6 else "1")
    return {s: " ".join(v) for s, v in out.items()}


@dataclass(frozen=True)
class Generated:
    id: str
    rules: Callable[[Path], list[str]]  # writes/copies rule files into the folder, returns their names
    target: Target
    step_s: int
    minutes: int
    incident: tuple[float, float]
    exact: bool  # every sum over <= 2 series: promtool's values are deterministic
    groups: str = ""  # only alerts of groups whose name contains this are checked at every minute
    seed: int = 1


def copy_rules(*rel: str) -> Callable[[Path], list[str]]:
    def write(folder: Path) -> list[str]:
        for r in rel:
            shutil.copy(SUITES / r, folder / Path(r).name)
        return [Path(r).name for r in rel]
    return write


def write_sloth(folder: Path) -> list[str]:
    doc = sloth_rules('http_requests_total{code=~"5.."}', "http_requests_total", 99.9, SLOTH_30D_TIERS)
    (folder / "sloth-30d.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return ["sloth-30d.yaml"]


KUADRANT_SEL = 'job="ingress-metrics-proxy"'
ODH_TARGET = Target(('haproxy_backend_http_responses_total{route="rhods-dashboard",code="2xx"}',),
                    ('haproxy_backend_http_responses_total{route="rhods-dashboard",code="5xx"}',),
                    gauges=('probe_success{instance="rhods-dashboard-0",name="rhods-dashboard",'
                            'job="user_facing_endpoints_status_rhods_dashboard"}',))
RHOBS_SEL = 'job="observatorium-observatorium-api",handler="receive"'
GENERATED = [
    Generated("kuadrant-availability-15s", copy_rules("kuadrant-operator/availability-rules.yaml"),
              Target((f'istio_requests_total{{{KUADRANT_SEL},response_code="200"}}',),
                     (f'istio_requests_total{{{KUADRANT_SEL},response_code="500"}}',)),
              15, 100, (0.01, 0.3), exact=True, seed=11),
    Generated("kuadrant-latency-1m", copy_rules("kuadrant-operator/latency-rules.yaml"),
              Target(latency=((f'istio_request_duration_milliseconds_count{{{KUADRANT_SEL},response_code="200"}}',
                               f'istio_request_duration_milliseconds_bucket{{le="250",{KUADRANT_SEL},'
                               'response_code="200"}'),)),
              60, 100, (0.02, 0.3), exact=True, seed=12),
    Generated("rhobs-telemeter-1m",
              copy_rules("rhobs-configuration/rhobs-slos-telemeter-stage.prometheusrules.yaml"),
              Target((f'http_requests_total{{{RHOBS_SEL},code="200"}}',
                      f'http_requests_total{{{RHOBS_SEL},code="404"}}'),
                     (f'http_requests_total{{{RHOBS_SEL},code="500"}}',),
                     ((f'http_request_duration_seconds_count{{{RHOBS_SEL},code="200"}}',
                       f'http_request_duration_seconds_bucket{{{RHOBS_SEL},le="5",code="200"}}'),)),
              60, 75, (0.75, 0.95), exact=True, groups="api-metrics-write", seed=13),
    Generated("opendatahub-dashboard-recording-15s",
              copy_rules("opendatahub-operator/rhods-dashboard-recording.rules.yaml"), ODH_TARGET,
              15, 100, (0.02, 0.4), exact=True, seed=14),
    Generated("opendatahub-workbenches-recording-15s",
              copy_rules("opendatahub-operator/workbenches-recording.rules.yaml"),
              Target(gauges=tuple(f'probe_success{{name="{name}",instance="{name}-{i}",'
                                  'job="user_facing_endpoints_status_workbenches"}'
                                  for name in ("notebook-spawner", "rhods-dashboard") for i in range(2))),
              15, 100, (0.0, 0.0), exact=True, seed=17),
    Generated("sloth-30d-1m", write_sloth,
              Target(('http_requests_total{code="200"}',), ('http_requests_total{code="500"}',)),
              60, 120, (0.02, 0.2), exact=True, seed=15),
    Generated("kuadrant-availability-4-codes", copy_rules("kuadrant-operator/availability-rules.yaml"),
              Target((f'istio_requests_total{{{KUADRANT_SEL},response_code="200"}}',
                      f'istio_requests_total{{{KUADRANT_SEL},response_code="404"}}'),
                     (f'istio_requests_total{{{KUADRANT_SEL},response_code="500"}}',
                      f'istio_requests_total{{{KUADRANT_SEL},response_code="503"}}')),
              60, 100, (0.01, 0.3), exact=False, seed=16),
]


def expectations(case: ReplayCase, minutes: int, groups: str) -> dict[str, Any]:
    """The emulation's alerts at every minute and its recorded series every 3 min, as promtool tests."""
    names = sorted({r.alert for g in case.engine.groups if groups in g.name for r in g.rules
                    if r.alert and r.alert not in case.engine.unsupported})
    records = sorted({r.record for g in case.engine.groups for r in g.rules
                      if r.record and r.record not in case.engine.unsupported})
    alert_tests, expr_tests = [], []
    for minute in range(minutes + 1):
        at = minute * 60_000
        for name in names:
            exp = [{"exp_labels": {k: v for k, v in lbls if k != "alertname"}, "exp_annotations": dict(ann)}
                   for lbls, ann in case.alerts_at(at, name)]
            alert_tests.append({"eval_time": f"{minute}m", "alertname": name, "exp_alerts": exp})
        if minute % 3:
            continue
        for rec in records:
            sel = f'{{__name__="{rec}"}}'
            vec = case.query(sel, at)
            if not vec and minute < minutes:
                continue
            # promtool cannot expect NaN (it compares with ==): NaN samples are checked by position
            expr_tests.append({"expr": f"{sel} == {sel}", "eval_time": f"{minute}m", "exp_samples": [
                {"labels": format_labels(lb), "value": v} for lb, v in vec if not math.isnan(v)]})
            if any(math.isnan(v) for _, v in vec):
                expr_tests.append({"expr": f"{sel} != bool {sel}", "eval_time": f"{minute}m", "exp_samples": [
                    {"labels": format_labels(tuple(p for p in lb if p[0] != "__name__")),
                     "value": 1.0 if math.isnan(v) else 0.0} for lb, v in vec]})
    return {"alert_rule_test": alert_tests, "promql_expr_test": expr_tests}


def sum_orders(values: list[float]) -> set[float]:
    out = set()
    for perm in itertools.permutations(values):
        acc = perm[0]
        for v in perm[1:]:
            acc += v
        out.add(acc)
    return out


def explained_by_sum_order(case: ReplayCase, f: ValueFailure) -> bool:
    """An SLI ``sum(rate(errors)) / sum(rate(total))`` promtool computed with another series order."""
    m = re.search(r"slo:sli_error:ratio_rate(\w+)", f.expr)
    if m is None:
        return False
    w, t = m.group(1), parse_duration_ms(f.time)
    assert any(f"[{w}]" in r.expr_text for g in case.engine.groups for r in g.rules if r.record == m.group(0))
    err_sel = f'istio_requests_total{{{KUADRANT_SEL},response_code=~"5.*"}}'
    errs = [v for _, v in case.query(f"rate({err_sel}[{w}])", t)]
    tots = [v for _, v in case.query(f"rate(istio_requests_total{{{KUADRANT_SEL}}}[{w}])", t)]
    candidates = {e / s for e in sum_orders(errs) for s in sum_orders(tots)}
    return all(v in candidates for v in f.got.values())


def write_inputs(gen: Generated, folder: Path) -> tuple[Path, dict[str, Any]]:
    """The case's rule files and a promtool test file holding only its seeded input series."""
    rng = random.Random(gen.seed)
    rule_files = gen.rules(folder)
    n = gen.minutes * 60 // gen.step_s + 1
    series = traffic(rng, gen.target, n, gen.step_s, gen.incident)
    groups = [g["name"] for rf in rule_files for g in yaml.safe_load((folder / rf).read_text())["groups"]]
    doc: dict[str, Any] = {"rule_files": rule_files, "evaluation_interval": "1m", "group_eval_order": groups,
                           "tests": [{"interval": f"{gen.step_s}s", "input_series": [
                               {"series": s, "values": v} for s, v in series.items()]}]}
    test_file = folder / "generated.yaml"
    test_file.write_text(yaml.safe_dump(doc, sort_keys=False, width=1000))
    return test_file, doc


@needs_promtool
@pytest.mark.parametrize("gen", GENERATED, ids=[g.id for g in GENERATED])
def test_promtool_agrees_with_the_emulation(gen: Generated, tmp_path: Path) -> None:
    print(f"case {gen.id}: seed {gen.seed}")
    test_file, doc = write_inputs(gen, tmp_path)
    case = replay_promtool_file(test_file, until_ms=gen.minutes * 60_000)[0]
    doc["tests"][0].update(expectations(case, gen.minutes, gen.groups))
    test_file.write_text(yaml.safe_dump(doc, sort_keys=False, width=1000))

    alert_tests = doc["tests"][0]["alert_rule_test"]
    fired = [t["eval_time"] for t in alert_tests if t["exp_alerts"]]
    assert not alert_tests or 0 < len(fired) < len(alert_tests), \
        f"seed {gen.seed}: alerts fire at {len(fired)} of {len(alert_tests)} checks, the case decides nothing"
    assert sum(len(t["exp_samples"]) for t in doc["tests"][0]["promql_expr_test"]) > 50

    code, out = run_promtool(tmp_path, test_file.name)
    values, other = parse_failures(out)
    assert not other, f"seed {gen.seed}: promtool disagrees on alerts or failed:\n{out[:4000]}"
    if gen.exact:
        assert code == 0, f"seed {gen.seed}: values differ from promtool:\n{out[:4000]}"
        if case.engine.unsupported:
            pytest.skip("promtool agrees on every other rule; not compared: " + "; ".join(
                f"{name}: {why}" for name, why in sorted(case.engine.unsupported.items())))
        return
    for f in values:
        assert f.got.keys() == f.expected.keys(), f
        for lbl, exp in f.expected.items():
            assert math.isclose(f.got[lbl], exp, rel_tol=TOL, abs_tol=TOL), f
        if re.search(r"sli_error:ratio_rate\d+[mhd]\b", f.expr):  # sum(rate) / sum(rate), not the 4w mean
            assert explained_by_sum_order(case, f), f


@needs_promtool
def test_same_named_alert_tiers_fail_where_promtool_fails(tmp_path: Path) -> None:
    """opendatahub gives all tiers of a burn-rate alert one name and one label set. Once one tier
    fires while another is pending, two rules write ALERTS samples of one series and timestamp with
    different values; the TSDB refuses the second ("duplicate sample for timestamp") and promtool
    stops. The emulation stops at the same evaluation for the same rules."""
    gen = Generated("opendatahub-dashboard-alerting-15s",
                    copy_rules("opendatahub-operator/rhods-dashboard-recording.rules.yaml",
                               "opendatahub-operator/rhods-dashboard-alerting.rules.yaml"),
                    ODH_TARGET, 15, 100, (0.02, 0.4), exact=True, seed=14)
    test_file, doc = write_inputs(gen, tmp_path)
    with pytest.raises(PromQLError, match="duplicate sample") as err:
        replay_promtool_file(test_file, until_ms=gen.minutes * 60_000)
    m = re.match(r"rule '(.+)' at (\d+) s: ", str(err.value))
    assert m, err.value
    doc["tests"][0]["alert_rule_test"] = [{"eval_time": f"{gen.minutes}m", "alertname": m.group(1)}]
    test_file.write_text(yaml.safe_dump(doc, sort_keys=False, width=1000))
    code, out = run_promtool(tmp_path, test_file.name)
    assert code != 0
    at = int(m.group(2))
    assert f"rule: {m.group(1)}, time: {at // 60}m0s, err: duplicate sample for timestamp" in out, out


# ------------------------------------------------------------------- slo-math.md: the step incident

@needs_promtool
@pytest.mark.parametrize(("alerts_first", "lag_min"), [(False, 0), (True, 1)])
def test_promtool_pages_two_percent_at_44_min(alerts_first: bool, lag_min: int, tmp_path: Path) -> None:
    """slo-math.md: "promtool 2.42 on 1-minute counters pages the 2 % case at 44 min and clears it 2 min
    after the errors stop" -- with the recording group evaluated first; an alert group evaluated
    before it reads the previous minute's SLI and is one evaluation later both ways."""
    doc = sloth_rules('http_requests_total{code=~"5.."}', "http_requests_total", 99.9,
                      [BurnTier("1h", "5m", 14.4, "page"), BurnTier("6h", "30m", 6.0, "page")])
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    onset, end, last = 360, 450, 480  # minutes: 6 h of history, a 90 min incident at 2 %
    good, bad = [], []
    for m in range(last + 1):
        errors_so_far = 1200 * max(0, min(m, end) - onset)  # 1000 req/s, 2 % of 60,000 a minute
        bad.append(str(errors_so_far))
        good.append(str(60_000 * m - errors_so_far))
    order = [g["name"] for g in doc["groups"]]
    labels = {"sloth_id": "svc-slo", "sloth_service": "svc", "sloth_slo": "svc-slo", "sloth_severity": "page"}

    def at(minute: int, firing: bool) -> dict[str, Any]:
        exp = [{"exp_labels": labels}] if firing else []
        return {"eval_time": f"{minute}m", "alertname": "SLOErrorBudgetBurnPage", "exp_alerts": exp}

    test = {"rule_files": ["rules.yaml"], "evaluation_interval": "1m",
            "group_eval_order": order[::-1] if alerts_first else order,
            "tests": [{"interval": "1m", "input_series": [
                {"series": 'http_requests_total{code="200"}', "values": " ".join(good)},
                {"series": 'http_requests_total{code="500"}', "values": " ".join(bad)}],
                "alert_rule_test": [at(onset + 43 + lag_min, False), at(onset + 44 + lag_min, True),
                                    at(end + 1 + lag_min, True), at(end + 2 + lag_min, False)]}]}
    (tmp_path / "step.yaml").write_text(yaml.safe_dump(test, sort_keys=False))
    code, out = run_promtool(tmp_path, "step.yaml")
    assert code == 0, out
    mismatches, _ = replay_promtool_file(tmp_path / "step.yaml")[0].check()
    assert not mismatches, mismatches
