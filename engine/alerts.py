"""Alert records and dedup keys.

An :class:`AlertEvent` is one transition of one SLO x severity (``trigger`` or ``resolve``), carrying
what a responder needs: burn rates of every window, the firing tier, budget remaining, event counts,
latency percentiles and the runbook link. ``dedup_key`` is the lowercase SHA-256 hex of the SLO name
and severity (with an optional namespace), so that replicas and restarts collapse into one incident.
"""

from __future__ import annotations

import hashlib

import msgspec


def dedup_key(slo: str, severity: str, namespace: str = "") -> str:
    """Lowercase SHA-256 hex (64 characters) of ``[namespace/]slo/severity``."""
    text = f"{namespace}/{slo}/{severity}" if namespace else f"{slo}/{severity}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class WindowCounts(msgspec.Struct, frozen=True):
    """Events in one window at the moment of the transition."""

    bad: int
    total: int


class AlertEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One alert transition, as written to ``alerts.jsonl`` and handed to sinks.

    Attributes
    ----------
    slo, severity, action
        SLO name; ``page`` or ``ticket``; ``trigger`` or ``resolve``.
    ts
        Event time of the transition, epoch seconds.
    tier
        The tier that fired (``page_quick`` ...); on resolve, the last tier that was firing.
    burn_rates
        Burn rate per window label (``"5m"``, ``"1h"`` ...); None where the window has no data.
    budget_remaining
        Share of the SLO period's error budget left (1.0 = untouched, may go negative); None when
        the period holds no events.
    dedup_key
        SHA-256 hex of the SLO name and severity.
    """

    slo: str
    severity: str
    action: str
    ts: float
    tier: str
    burn_rates: dict[str, float | None]
    budget_remaining: float | None
    dedup_key: str
    pd_severity: str = "critical"
    service: str = ""
    objective: float = 0.0
    period: str = "30d"
    factors: dict[str, float] = msgspec.field(default_factory=dict)
    windows: dict[str, WindowCounts] = msgspec.field(default_factory=dict)
    latency_ms: dict[str, float] | None = None
    runbook_url: str | None = None
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    description: str = ""
