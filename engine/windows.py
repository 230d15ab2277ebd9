"""Alert window catalogs as data, and the burn-rate factor arithmetic.

A catalog is a YAML file (``engine/catalogs/*.yaml``, also reachable as ``configs/windows``) listing
tiers with a long window, a short window, a severity and either ``budget_percent`` or a fixed
``factor``. ``sre-workbook`` picks the 28-day file for 28-day SLOs and the 30-day file otherwise,
computing factors for the SLO's own period: ``factor = budget_percent/100 * period / long_window``
(SRE Workbook ch. 5). ``pyrra`` scales windows with the period (Pyrra slo/rules.go).
"""

from __future__ import annotations

import math
from pathlib import Path

import msgspec
import yaml

from engine.config import Alerting, TierSpec
from engine.durations import format_duration, parse_duration_s

CATALOG_DIR = Path(__file__).parent / "catalogs"


class CatalogError(Exception):
    """A window catalog or custom tier list is invalid; ``problems`` has one line each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class AlertTier(msgspec.Struct, frozen=True):
    """One resolved MWMB tier: fires when b(long) > factor and b(short) > factor."""

    name: str
    severity: str
    long_window_s: int
    short_window_s: int
    burn_rate_factor: float
    for_s: int = 0

    @property
    def label(self) -> str:
        return f"{format_duration(self.long_window_s)}/{format_duration(self.short_window_s)}"


class Catalog(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    period: str
    tiers: list[TierSpec]
    scale_with_period: bool = False


def catalog_names() -> list[str]:
    return sorted(["sre-workbook", *(p.stem for p in CATALOG_DIR.glob("*.yaml"))])


def load_catalog(name_or_path: str) -> Catalog:
    """Load a catalog by name (``sre-workbook-30d``, ``pyrra``) or by file path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = CATALOG_DIR / f"{name_or_path}.yaml"
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise CatalogError([f"expected a window catalog name ({', '.join(catalog_names())}) or file, "
                            f"got {name_or_path!r} ({e.strerror or e})"]) from None
    except yaml.YAMLError as e:
        raise CatalogError([f"{path}: expected valid YAML, got {e}"]) from None
    try:
        return msgspec.convert(data, Catalog)
    except msgspec.ValidationError as e:
        raise CatalogError([f"{path}: {e}"]) from None


def burn_rate_factor(budget_percent: float, period_s: float, long_window_s: float) -> float:
    """Factor at which ``budget_percent`` of the period's budget is spent within the long window."""
    return budget_percent / 100.0 * period_s / long_window_s


def _resolve_one(t: TierSpec, at: str, period_s: int, scale: float, default_for_s: float, step_s: int,
                 problems: list[str]) -> AlertTier | None:
    try:
        long_s = parse_duration_s(t.long_window) * scale
        short_s = parse_duration_s(t.short_window) * scale
        for_s = parse_duration_s(t.for_) * scale if t.for_ is not None else default_for_s
    except ValueError as e:
        problems.append(f"{at}: {e}")
        return None
    if scale != 1.0:
        # Pyrra rounds scaled durations to the minute, halves away from zero (Go's Duration.Round).
        long_s, short_s, for_s = (math.floor(x / 60 + 0.5) * 60 for x in (long_s, short_s, for_s))
    if (t.budget_percent is None) == (t.factor is None):
        problems.append(f"{at}: expected exactly one of 'budget_percent' or 'factor', got "
                        f"{'both' if t.factor is not None else 'neither'}")
        return None
    if not 0 < short_s <= long_s:
        problems.append(f"{at}: expected 0 < short_window <= long_window, got "
                        f"{t.short_window!r} and {t.long_window!r}")
        return None
    if long_s > period_s:
        problems.append(f"{at}.long_window: expected at most the SLO period "
                        f"({format_duration(period_s)}), got {t.long_window!r}")
        return None
    bad_step = False
    for label, v in (("long_window", long_s), ("short_window", short_s), ("for", for_s)):
        if v % step_s:
            problems.append(f"{at}.{label}: expected a multiple of the evaluation step "
                            f"({step_s}s), got {format_duration(v)}")
            bad_step = True
    if bad_step:
        return None
    if t.budget_percent is not None:
        if not 0 < t.budget_percent <= 100:
            problems.append(f"{at}.budget_percent: expected a percentage in (0, 100], "
                            f"got {t.budget_percent}")
            return None
        factor = burn_rate_factor(t.budget_percent, period_s, long_s)
    else:
        assert t.factor is not None
        if not (t.factor > 0 and math.isfinite(t.factor)):
            problems.append(f"{at}.factor: expected a number > 0, got {t.factor}")
            return None
        factor = t.factor
    return AlertTier(t.name, t.severity, int(long_s), int(short_s), factor, int(for_s))


def _resolve(specs: list[TierSpec], period_s: int, scale: float, default_for_s: float, where: str,
             step_s: int) -> list[AlertTier]:
    problems: list[str] = []
    tiers: list[AlertTier] = []
    names: set[str] = set()
    for i, t in enumerate(specs):
        at = f"{where}[{i}]"
        if t.name in names:
            problems.append(f"{at}.name: expected a unique tier name, got {t.name!r}")
        names.add(t.name)
        tier = _resolve_one(t, at, period_s, scale, default_for_s, step_s, problems)
        if tier is not None:
            tiers.append(tier)
    if problems:
        raise CatalogError(problems)
    return tiers


def resolve_tiers(alerting: Alerting, period_s: int, *, step_s: int = 1,
                  where: str = "$.alerting.windows") -> list[AlertTier]:
    """The tiers an SLO alerts on, with factors computed for its period.

    Raises :class:`CatalogError` with one line per problem, each prefixed with ``where``.
    """
    try:
        default_for = parse_duration_s(alerting.for_) if alerting.for_ is not None else 0.0
    except ValueError:
        default_for = 0.0  # reported by the config check of `for` itself
    if isinstance(alerting.windows, list):
        if not alerting.windows:
            raise CatalogError([f"{where}: expected at least one tier, got an empty list"])
        tiers = _resolve(alerting.windows, period_s, 1.0, default_for, where, step_s)
    else:
        name = alerting.windows
        if name == "sre-workbook":
            name = "sre-workbook-28d" if period_s == 28 * 86400 else "sre-workbook-30d"
        try:
            cat = load_catalog(name)
        except CatalogError as e:
            raise CatalogError([f"{where}: {p}" for p in e.problems]) from None
        scale = period_s / parse_duration_s(cat.period) if cat.scale_with_period else 1.0
        tiers = _resolve(cat.tiers, period_s, scale, default_for, f"{where}<{name}>.tiers", step_s)
    return [t for t in tiers if t.severity not in alerting.disable]
