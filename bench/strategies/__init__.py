"""Window strategies and alerting policies, measured on the same traffic.

``python -m bench.strategies`` (or ``sloburn bench strategies``) runs every strategy of
:func:`registry` under every policy of :mod:`bench.strategies.policies` over the scenarios of
:mod:`bench.strategies.scenarios` and prints the scores. The strategy interface is
:class:`bench.strategies.base.WindowStrategy`.
"""

from __future__ import annotations

import importlib

from bench.strategies.base import StrategyFactory

STRATEGY_MODULES = ("bench.strategies.windows", "bench.strategies.prometheus")
"""Modules that expose ``STRATEGIES: dict[str, StrategyFactory]``, in display order."""


def registry() -> dict[str, StrategyFactory]:
    """Every registered strategy factory by display name (modules in :data:`STRATEGY_MODULES`)."""
    out: dict[str, StrategyFactory] = {}
    for mod_name in STRATEGY_MODULES:
        try:
            mod = importlib.import_module(mod_name)
        except ModuleNotFoundError as e:
            if e.name != mod_name:
                raise
            continue  # an optional strategy module that is not installed
        for name, factory in getattr(mod, "STRATEGIES", {}).items():
            if name in out:
                raise ValueError(f"{mod_name}: strategy name {name!r} is already registered")
            out[name] = factory
    return out
