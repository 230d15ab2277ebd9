"""Burn rates, budgets and policy states from window counts (pure functions).

The kernels decide alerts; this module turns the counts they keep into the numbers people read:
burn rate per window, error budget remaining over the SLO period, and the error-budget policy state
a deploy pipeline gates on.
"""

from __future__ import annotations

from typing import Literal

import msgspec

PolicyState = Literal["healthy", "warning", "freeze", "no_data"]


def burn_rate(bad: int, total: int, error_budget: float) -> float | None:
    """``(bad / total) / B``, or None when the window holds no events (never NaN, never 0)."""
    if total <= 0:
        return None
    return (bad / total) / error_budget


def budget_remaining(bad: int, total: int, error_budget: float, coverage: float = 1.0) -> float | None:
    """Share of the SLO period's error budget left: 1.0 untouched, 0 spent, negative overspent.

    The budget of a period is ``B`` times the events the period holds: ``1 - bad / (B * total)``.
    Before a whole period of history exists (``coverage`` = history / period < 1), the period's
    events are extrapolated from the traffic so far, ``total / coverage``; otherwise a day of data
    in a 30-day period would report a day's errors against a day's budget.
    """
    if total <= 0:
        return None
    c = min(1.0, coverage) if coverage > 0 else 1.0
    return 1.0 - bad / (error_budget * (total / c))


class BudgetPolicy(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Thresholds of the error-budget policy, in percent of budget remaining.

    Defaults: healthy at >= 50 %, warning between 10 % and 50 %, freeze below 10 %.
    """

    warning_below_percent: float = 50.0
    freeze_below_percent: float = 10.0


def policy_state(remaining: float | None, policy: BudgetPolicy | None = None) -> PolicyState:
    """Policy state for a remaining budget ratio (None = no data)."""
    p = policy or BudgetPolicy()
    if remaining is None:
        return "no_data"
    pct = remaining * 100.0
    if pct < p.freeze_below_percent:
        return "freeze"
    if pct < p.warning_below_percent:
        return "warning"
    return "healthy"
