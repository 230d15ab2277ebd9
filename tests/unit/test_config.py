"""Configuration decoding and validation: every problem reported, with file and path."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.config import (
    ConfigError,
    error_budget,
    latency_sli,
    load_config,
    objective_percent,
    parse_config,
    parse_latency_sentence,
    status_codes,
)

REPO = Path(__file__).resolve().parents[2]


def _slo(**over: object) -> dict[str, object]:
    base: dict[str, object] = {"name": "a", "service": "checkout", "objective": 99.9,
                               "sli": {"availability": {}}}
    base.update(over)
    return base


def test_example_config_loads() -> None:
    cfg = load_config(REPO / "configs" / "example.yaml")
    assert [s.name for s in cfg.slos] == ["checkout-availability", "checkout-latency"]
    assert cfg.slos[0].sli.availability is not None
    assert cfg.slos[0].sli.availability.bad_status == ["5xx"]
    assert latency_sli(cfg.slos[1].sli) is not None


def test_error_budget_has_no_float_artefact() -> None:
    cfg = parse_config({"slos": [_slo(objective=99.9)]})
    assert error_budget(cfg.slos[0]) == 0.001


def test_latency_sentence_sets_objective() -> None:
    cfg = parse_config({"slos": [_slo(objective=None, sli={"latency": "p95 below 300ms"})]})
    lat = latency_sli(cfg.slos[0].sli)
    assert lat is not None and lat.threshold_ms == 300 and lat.percentile == 95
    assert objective_percent(cfg.slos[0]) == 95


@pytest.mark.parametrize(("text", "ms", "pct"), [
    ("p99 < 1s", 1000.0, 99.0), ("99.5% under 250 ms", 250.0, 99.5), ("p90 below 800us", 0.8, 90.0)])
def test_latency_sentences(text: str, ms: float, pct: float) -> None:
    lat = parse_latency_sentence(text)
    assert lat.threshold_ms == pytest.approx(ms) and lat.percentile == pct


def test_status_matchers() -> None:
    assert list(status_codes("5xx")) == list(range(500, 600))
    assert list(status_codes(429)) == [429]
    assert list(status_codes("500-504")) == [500, 501, 502, 503, 504]
    with pytest.raises(ValueError, match="expected a status code"):
        status_codes("6xx")


def test_objective_out_of_range_message() -> None:
    with pytest.raises(ConfigError, match=r"<c>: \$\.slos\[0\]\.objective: expected a percentage in "
                                          r"\(0, 100\), got 100\.5"):
        parse_config({"slos": [_slo(objective=100.5)]}, "<c>")


def test_every_problem_is_reported(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text(
        "slos:\n"
        "  - {name: a, service: s, objective: 120, sli: {availability: {}}}\n"
        "  - {name: b, service: s, objective: '99', sli: {availability: {}}}\n"
        "  - {name: c, service: s, objective: 99, sli: {availability: {}}, colour: red}\n"
        "  - {name: d, service: s, objective: 99, period: 36h, sli: {availability: {bad_status: [7xx]}}}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(p)
    problems = info.value.problems
    assert any("$.slos[1].objective: expected `float | null`, got `str`" in x for x in problems), problems
    assert any("$.slos[2].colour: unknown field 'colour'" in x for x in problems), problems
    # The cross-field checks run once the shapes are right; fix those and check again.
    p.write_text(
        "slos:\n"
        "  - {name: a, service: s, objective: 120, sli: {availability: {}}}\n"
        "  - {name: a, service: s, objective: 99, period: 36h, sli: {availability: {bad_status: [7xx]}}}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(p)
    text = "\n".join(info.value.problems)
    assert f"{p}: $.slos[0].objective: expected a percentage in (0, 100), got 120" in text
    assert f"{p}: $.slos[1].name: expected a unique name, got 'a'" in text
    assert f"{p}: $.slos[1].period: expected a whole number of days, got '36h'" in text
    assert "$.slos[1].sli.availability.bad_status[0]: expected a status code" in text


def test_both_or_neither_sli() -> None:
    with pytest.raises(ConfigError,
                       match=r"expected exactly one of 'availability' or 'latency', got neither"):
        parse_config({"slos": [_slo(sli={})]})
    with pytest.raises(ConfigError, match=r"got both"):
        parse_config({"slos": [_slo(sli={"availability": {}, "latency": {"threshold_ms": 3}})]})


def test_yaml_syntax_error(tmp_path: Path) -> None:
    p = tmp_path / "broken.yaml"
    p.write_text("slos: [\n  - name: a\n")
    with pytest.raises(ConfigError, match=r"broken.yaml: \$: expected valid YAML, got a syntax error"):
        load_config(p)


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match=r"nope.yaml: cannot read"):
        load_config("nope.yaml")


def test_custom_tiers_validation() -> None:
    tiers = [
        {"name": "fast", "severity": "page", "long_window": "1h", "short_window": "2h", "factor": 10},
        {"name": "slow", "severity": "ticket", "long_window": "1h", "short_window": "5m"},
    ]
    with pytest.raises(ConfigError) as info:
        parse_config({"slos": [_slo(alerting={"windows": tiers})]}, "<c>")
    text = "\n".join(info.value.problems)
    assert "$.slos[0].alerting.windows[0]: expected 0 < short_window <= long_window" in text
    assert ("$.slos[0].alerting.windows[1]: expected exactly one of 'budget_percent' or 'factor', "
            "got neither") in text


def test_unknown_catalog() -> None:
    with pytest.raises(ConfigError,
                       match=r"expected a window catalog name \(.*pyrra.*\) or file, got 'nope'"):
        parse_config({"slos": [_slo(alerting={"windows": "nope"})]})


def test_narrowest_status_matcher_wins() -> None:
    from engine.config import status_verdicts

    v = status_verdicts(["5xx", 429], ["4xx", "500-501"])
    assert v[429] == "bad" and v[404] == "excluded"
    assert v[500] == "excluded" and v[501] == "excluded" and v[502] == "bad"
    assert status_verdicts([503], [503]) == {503: "excluded"}
