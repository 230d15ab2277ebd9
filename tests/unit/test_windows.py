"""Window catalogs and factor arithmetic (SRE Workbook ch. 5, Sloth, Pyrra)."""

from __future__ import annotations

import pytest

from engine.config import Alerting
from engine.plan import serving_resolution_s
from engine.windows import burn_rate_factor, resolve_tiers

DAY = 86400


def _factors(windows: str, period_days: int) -> dict[str, float]:
    return {t.name: t.burn_rate_factor for t in resolve_tiers(Alerting(windows=windows), period_days * DAY)}


def test_workbook_30d_factors() -> None:
    f = _factors("sre-workbook", 30)
    assert f == pytest.approx({"page_quick": 14.4, "page_slow": 6.0, "ticket_quick": 3.0, "ticket_slow": 1.0})


def test_workbook_28d_factors_match_sloth() -> None:
    f = _factors("sre-workbook", 28)
    assert f == pytest.approx({"page_quick": 13.44, "page_slow": 5.6, "ticket_quick": 2.8,
                               "ticket_slow": 0.9333333333333333})


def test_workbook_factors_scale_with_any_period() -> None:
    # 2 % of 7 days within 1 hour.
    assert _factors("sre-workbook", 7)["page_quick"] == pytest.approx(0.02 * 7 * 24)


def test_pyrra_windows_scale_with_period() -> None:
    tiers = {t.name: t for t in resolve_tiers(Alerting(windows="pyrra"), 28 * DAY)}
    assert (tiers["page_quick"].long_window_s, tiers["page_quick"].short_window_s) == (3600, 300)
    assert tiers["page_quick"].for_s == 120 and tiers["page_quick"].burn_rate_factor == 14
    assert tiers["ticket_slow"].long_window_s == 4 * DAY
    week = {t.name: t for t in resolve_tiers(Alerting(windows="pyrra"), 7 * DAY)}
    assert week["page_quick"].long_window_s == 900  # 1h * 7/28
    assert week["page_quick"].for_s == 60  # 2m * 7/28 = 30 s, rounded half away from zero


def test_disable_severity() -> None:
    tiers = resolve_tiers(Alerting(disable=["ticket"]), 30 * DAY)
    assert {t.severity for t in tiers} == {"page"}


def test_burn_rate_factor_formula() -> None:
    assert burn_rate_factor(2, 30 * DAY, 3600) == pytest.approx(14.4)


@pytest.mark.parametrize(("window_s", "res_s"), [
    (300, 10), (1800, 60), (3600, 60), (7200, 60), (21600, 300), (86400, 300), (259200, 3600),
    (30 * DAY, 3600), (60, 1), (45, 1)])
def test_serving_resolution(window_s: int, res_s: int) -> None:
    assert serving_resolution_s(window_s, 1) == res_s
