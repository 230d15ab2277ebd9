"""Prometheus-style durations (``30s``, ``5m``, ``1h30m``, ``28d``, ``2w``) as whole seconds."""

from __future__ import annotations

import re

_UNIT_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)")


def parse_duration_s(text: str | int | float) -> float:
    """Seconds in ``text``; a bare number is seconds.

    Raises ``ValueError`` with the expected form when ``text`` is not a duration.
    """
    if isinstance(text, bool):
        raise ValueError(f"expected a duration like '5m' or '1h30m', got {text!r}")
    if isinstance(text, int | float):
        if text < 0:
            raise ValueError(f"expected a duration >= 0, got {text!r}")
        return float(text)
    s = text.strip()
    pos = 0
    total = 0.0
    for m in _PART.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT_S[m.group(2)]
        pos = m.end()
    if pos != len(s) or not s:
        raise ValueError(f"expected a duration like '5m' or '1h30m', got {text!r}")
    return total


def format_duration(seconds: float) -> str:
    """Shortest exact Prometheus form: 3600 -> '1h', 5400 -> '1h30m', 0.5 -> '500ms'."""
    if seconds == 0:
        return "0s"
    if seconds != int(seconds):
        return f"{round(seconds * 1000)}ms"
    rest = int(seconds)
    out = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size:
            out.append(f"{rest // size}{unit}")
            rest %= size
    return "".join(out)
