"""The backtest report: ``index.html`` with PNG plots per SLO, summary and alert timeline tables.

Per SLO, three plots drawn with matplotlib's Agg canvas (no display, no pyplot state):

- ``<slo>-burn.png``: burn rate of every alert window on a log axis, each tier's ``burn_rate_factor``
  as a dashed line, and shaded spans where a severity was firing (trigger to resolve; a span still
  open at the end of the run extends to the end);
- ``<slo>-latency.png``: p50/p95/p99 latency with the threshold of a latency SLO;
- ``<slo>-budget.png``: error budget remaining over the SLO period.

The page is self-contained: inline CSS, PNGs linked by relative name, no script and no remote
resource. :func:`summary_rows` gives the same per-SLO summary to the terminal.
"""

from __future__ import annotations

import datetime as dt
import html
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from engine.alerts import AlertEvent
from engine.durations import format_duration
from engine.series import BacktestResult, SloSeries

SEVERITY_COLOURS = {"page": "#d62728", "ticket": "#ff7f0e"}
_OTHER_COLOUR = "#7f7f7f"
_FIG_SIZE_IN = (10.0, 3.8)
_DPI = 100


# ---------------------------------------------------------------------------------------------
# Firing spans and summaries


@dataclass(frozen=True)
class FiringSpan:
    """One alert of one SLO x severity, from its trigger to its resolve (or the end of the run)."""

    slo: str
    severity: str
    tier: str
    start_s: float
    end_s: float
    open: bool

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


def firing_spans(events: Iterable[AlertEvent], end_ts: float) -> list[FiringSpan]:
    """Pair triggers with resolves per (SLO, severity); spans still open end at ``end_ts``.

    A trigger while the same SLO x severity is already firing continues that alert; a resolve with
    no alert firing closes nothing. Spans come back ordered by start time.
    """
    firing: dict[tuple[str, str], AlertEvent] = {}
    spans: list[FiringSpan] = []
    for a in sorted(events, key=lambda e: e.ts):
        key = (a.slo, a.severity)
        if a.action == "trigger":
            firing.setdefault(key, a)
        elif a.action == "resolve" and key in firing:
            t = firing.pop(key)
            spans.append(FiringSpan(a.slo, a.severity, t.tier, t.ts, a.ts, open=False))
    for (slo, sev), t in firing.items():
        spans.append(FiringSpan(slo, sev, t.tier, t.ts, max(end_ts, t.ts), open=True))
    spans.sort(key=lambda s: (s.start_s, s.severity))
    return spans


def time_firing_s(events: Iterable[AlertEvent], end_ts: float, severity: str | None = None) -> float:
    """Seconds of event time during which at least one alert was firing.

    Parameters
    ----------
    events
        Alert transitions (any SLOs); open alerts count until ``end_ts``.
    end_ts
        End of the run, epoch seconds.
    severity
        Count only this severity (``page``/``ticket``); None counts every severity.
    """
    spans = sorted((s.start_s, s.end_s) for s in firing_spans(events, end_ts)
                   if severity is None or s.severity == severity)
    total = 0.0
    cur: list[float] | None = None  # the union interval being extended
    for a, b in spans:
        if cur is None or a > cur[1]:
            total += 0.0 if cur is None else cur[1] - cur[0]
            cur = [a, b]
        else:
            cur[1] = max(cur[1], b)
    return total + (0.0 if cur is None else cur[1] - cur[0])


@dataclass(frozen=True)
class SloSummary:
    """The numbers of one SLO's summary row (None where there is no data)."""

    slo: str
    objective: float
    events: int
    bad: int
    error_ratio: float | None
    budget_consumed: float | None
    page_alerts: int
    ticket_alerts: int
    firing_s: float
    page_firing_s: float
    ticket_firing_s: float
    peak_burn: float | None
    peak_window: str | None


def summarize(s: SloSeries) -> SloSummary:
    """Summary numbers of one SLO: counts, budget consumed (1 - last budget remaining), alerts."""
    end = s.end_s if s.end_s is not None else 0.0
    spans = firing_spans(s.events, end)
    events, bad = int(s.totals.get("events", 0)), int(s.totals.get("bad", 0))
    left = s.final_budget_remaining
    peak = s.peak_burn()
    return SloSummary(
        slo=s.slo, objective=s.objective, events=events, bad=bad,
        error_ratio=bad / events if events else None,
        budget_consumed=None if left is None else 1.0 - left,
        page_alerts=sum(sp.severity == "page" for sp in spans),
        ticket_alerts=sum(sp.severity == "ticket" for sp in spans),
        firing_s=time_firing_s(s.events, end),
        page_firing_s=time_firing_s(s.events, end, "page"),
        ticket_firing_s=time_firing_s(s.events, end, "ticket"),
        peak_burn=None if peak is None else peak[0], peak_window=None if peak is None else peak[1])


def _pct(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x * 100:.{digits}f}%"


def _dur(seconds: float) -> str:
    return format_duration(round(seconds)) if seconds > 0 else "0s"


def summary_rows(result: BacktestResult) -> list[dict[str, str]]:
    """One display-ready row per SLO (column name -> text), for the terminal and the HTML summary."""
    rows = []
    for s in result.series:
        m = summarize(s)
        rows.append({
            "slo": m.slo,
            "objective": f"{m.objective:g}%",
            "events": f"{m.events:,}",
            "bad": f"{m.bad:,}",
            "error ratio": _pct(m.error_ratio, 3),
            "budget consumed": _pct(m.budget_consumed, 1),
            "alerts": f"{m.page_alerts} page, {m.ticket_alerts} ticket",
            "time firing": f"{_dur(m.page_firing_s)} page, {_dur(m.ticket_firing_s)} ticket",
            "peak burn": "-" if m.peak_burn is None else f"{m.peak_burn:.1f} ({m.peak_window})",
        })
    return rows


# ---------------------------------------------------------------------------------------------
# Plots


def _times(ts_s: npt.NDArray[np.float64]) -> npt.NDArray[np.datetime64]:
    return np.round(ts_s * 1000).astype(np.int64).astype("datetime64[ms]")


def _new_axes(title: str) -> tuple[Figure, Axes]:
    fig = Figure(figsize=_FIG_SIZE_IN, dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_title(title, fontsize=10, loc="left")
    ax.grid(True, which="major", alpha=0.3)
    return fig, ax


def _time_axis(ax: Axes, s: SloSeries) -> None:
    ax.set_xlabel("event time (UTC)")
    if not s.n_samples:
        return
    locator = AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    x = _times(s.ts_s)
    lo, hi = x[0], x[-1]
    end = s.end_s
    if end is not None and end > s.ts_s[-1]:
        hi = _times(np.array([end]))[0]
    if hi <= lo:
        lo, hi = lo - np.timedelta64(30, "m"), hi + np.timedelta64(30, "m")
    ax.set_xlim(lo, hi)


def _note(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=12,
            color=_OTHER_COLOUR)


def plot_burn(s: SloSeries) -> Figure:
    """Burn rate of each window (log axis) against each tier's factor, with firing spans shaded.

    Each shaded span is an artist with ``gid`` ``firing-<severity>``; zero burn rates are drawn on
    the bottom edge of the axis (a log axis has no 0), windows without data draw nothing.
    """
    fig, ax = _new_axes(f"{s.slo}: burn rate per window (objective {s.objective:g}%)")
    ax.set_yscale("log")
    finite = s.burn[np.isfinite(s.burn)]
    positive = finite[finite > 0]
    factors = [t.burn_rate_factor for t in s.tiers]
    floor = max(1e-4, min(0.01, float(positive.min()) / 2)) if positive.size else 0.01
    top = max([1.0, *factors, float(positive.max()) if positive.size else 1.0])
    ax.set_ylim(floor, top * 3)
    ax.set_ylabel("burn rate (0 drawn at the bottom)")
    x = _times(s.ts_s)
    cmap = colormaps["viridis"]
    n_w = len(s.window_labels)
    handles: list[object] = []
    for j, label in enumerate(s.window_labels):
        y = s.burn[:, j]
        shown = np.where(np.isnan(y), np.nan, np.maximum(y, floor))
        has_data = bool(np.isfinite(y).any())
        (line,) = ax.plot(x, shown, lw=1.2, color=cmap(j / max(1, n_w - 1) * 0.9),
                          marker="." if s.n_samples < 3 else None,
                          label=label if has_data else f"{label} (no data)")
        handles.append(line)
    for t in s.tiers:
        colour = SEVERITY_COLOURS.get(t.severity, _OTHER_COLOUR)
        ax.axhline(t.burn_rate_factor, ls="--", lw=0.9, color=colour)
        ax.text(1.005, t.burn_rate_factor, f"{t.name} x{t.burn_rate_factor:g} ({t.label})",
                transform=ax.get_yaxis_transform(), fontsize=7, va="center", color=colour)
    end = s.end_s
    if end is not None:
        for sp in firing_spans(s.events, end):
            a, b = _times(np.array([sp.start_s, sp.end_s]))
            ax.axvspan(a, b, color=SEVERITY_COLOURS.get(sp.severity, _OTHER_COLOUR), alpha=0.15,
                       lw=0, gid=f"firing-{sp.severity}")
    handles.extend(Patch(color=c, alpha=0.3, label=f"{sev} firing") for sev, c in SEVERITY_COLOURS.items())
    fig.legend(handles=handles, fontsize=7, loc="outside lower center", ncol=min(9, len(handles)),
               frameon=False)
    if not s.n_samples:
        _note(ax, "no samples")
    elif not finite.size:
        _note(ax, "no data in any window")
    _time_axis(ax, s)
    return fig


def plot_latency(s: SloSeries) -> Figure:
    """p50/p95/p99 latency over time, with the threshold of a latency SLO as a dashed line."""
    fig, ax = _new_axes(f"{s.slo}: latency percentiles")
    ax.set_ylabel("latency (ms)")
    x = _times(s.ts_s)
    finite = s.latency_ms[np.isfinite(s.latency_ms)]
    values = [float(finite.min()), float(finite.max())] if finite.size else []
    if s.threshold_ms is not None:
        values.append(s.threshold_ms)
    positive = [v for v in values if v > 0]
    if positive and max(positive) / min(positive) > 30:
        ax.set_yscale("log")
        ax.set_ylim(min(positive) / 1.5, max(positive) * 1.5)
    else:
        ax.set_ylim(0, max(values) * 1.15 if values and max(values) > 0 else 1.0)
    for j, (name, colour) in enumerate((("p50", "#1f77b4"), ("p95", "#9467bd"), ("p99", "#8c564b"))):
        ax.plot(x, s.latency_ms[:, j], lw=1.2, color=colour, label=name,
                marker="." if s.n_samples < 3 else None)
    if s.threshold_ms is not None:
        ax.axhline(s.threshold_ms, ls="--", lw=1.0, color=SEVERITY_COLOURS["page"],
                   label=f"threshold {s.threshold_ms:g} ms")
    fig.legend(fontsize=7, loc="outside lower center", ncol=4, frameon=False)
    if not finite.size:
        _note(ax, "no latency data")
    _time_axis(ax, s)
    return fig


def plot_budget(s: SloSeries) -> Figure:
    """Error budget remaining over the SLO period (percent; below 0 is overspent)."""
    fig, ax = _new_axes(f"{s.slo}: error budget remaining ({format_duration(s.period_s)} period)")
    ax.set_ylabel("budget remaining (%)")
    x = _times(s.ts_s)
    y = s.budget_remaining * 100
    finite = y[np.isfinite(y)]
    lo = min(0.0, float(finite.min())) if finite.size else 0.0
    hi = max(100.0, float(finite.max())) if finite.size else 100.0
    ax.set_ylim(lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))
    ax.axhline(0, color="black", lw=0.8)
    ax.plot(x, y, lw=1.4, color="#2ca02c", marker="." if s.n_samples < 3 else None)
    if finite.size:
        ax.fill_between(x, y, 0, where=np.isfinite(y) & (y < 0), color=SEVERITY_COLOURS["page"],
                        alpha=0.2, interpolate=True)
    else:
        _note(ax, "no data")
    _time_axis(ax, s)
    return fig


# ---------------------------------------------------------------------------------------------
# HTML

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em;color:#222;
max-width:1100px}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:0.6em 0;font-size:0.85em}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
img{display:block;max-width:100%;margin:0.5em 0;border:1px solid #eee}
.page{color:#d62728;font-weight:bold}.ticket{color:#c25d00;font-weight:bold}.muted{color:#888}
"""


def _fmt_ts(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _e(x: object) -> str:
    return html.escape(str(x), quote=True)


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], raw: bool = False) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c if raw else _e(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _slug(name: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "slo"
    slug, i = base, 2
    while slug.lower() in taken:
        slug, i = f"{base}-{i}", i + 1
    taken.add(slug.lower())
    return slug


def _timeline_rows(s: SloSeries) -> list[list[str]]:
    rows: list[list[str]] = []
    since: dict[str, tuple[float, int]] = {}  # severity -> (trigger time, row of the trigger)
    for a in sorted(s.events, key=lambda e: e.ts):
        burns = " ".join(f"{k}={'-' if v is None else f'{v:.2f}'}" for k, v in a.burn_rates.items())
        lasted = ""
        if a.action == "trigger":
            since.setdefault(a.severity, (a.ts, len(rows)))
        elif a.severity in since:
            lasted = _dur(a.ts - since.pop(a.severity)[0])
        sev = f'<span class="{_e(a.severity)}">{_e(a.severity)}</span>'
        rows.append([_e(_fmt_ts(a.ts)), sev, _e(a.action), _e(a.tier), _e(burns),
                     _e(_pct(a.budget_remaining, 1)), _e(lasted)])
    for _, row in since.values():
        rows[row][-1] = "still firing at the end"
    return rows


def _slo_section(s: SloSeries, slug: str, images: dict[str, str]) -> str:
    kind = (f"latency &le; {s.threshold_ms:g} ms" if s.threshold_ms is not None else "availability")
    parts = [f'<h2 id="{_e(slug)}">{_e(s.slo)}</h2>',
             f"<p>{kind}, objective {s.objective:g}%, period {_e(format_duration(s.period_s))}"
             f"{', service ' + _e(s.service) if s.service else ''}; {s.n_samples:,} samples.</p>"]
    parts.append(_table(["tier", "severity", "long window", "short window", "burn rate factor", "for"],
                        [[t.name, t.severity, format_duration(t.long_window_s),
                          format_duration(t.short_window_s), f"{t.burn_rate_factor:g}",
                          format_duration(t.for_s)] for t in s.tiers]))
    for kind_name, alt in (("burn", "burn rate per window"), ("latency", "latency percentiles"),
                           ("budget", "error budget remaining")):
        parts.append(f'<img src="{_e(images[kind_name])}" alt="{_e(s.slo)}: {alt}">')
    parts.append("<h3>Alert timeline</h3>")
    rows = _timeline_rows(s)
    if rows:
        parts.append(_table(["time (UTC)", "severity", "action", "tier", "burn rates", "budget left",
                             "fired for"], rows, raw=True))
    else:
        parts.append('<p class="muted">No alerts.</p>')
    return "\n".join(parts)


def _save(fig: Figure, path: Path) -> None:
    fig.savefig(path, format="png", dpi=_DPI)


def write_report(result: BacktestResult, out_dir: Path) -> Path:
    """Write ``index.html`` and the PNG plots of every SLO into ``out_dir``; return the page's path.

    ``out_dir`` is created if needed; files of an earlier report with the same names are replaced.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    taken: set[str] = {"index"}
    sections = []
    slugs = []
    for s in result.series:
        slug = _slug(s.slo, taken)
        slugs.append(slug)
        images = {}
        for kind, plot in (("burn", plot_burn), ("latency", plot_latency), ("budget", plot_budget)):
            name = f"{slug}-{kind}.png"
            _save(plot(s), out_dir / name)
            images[kind] = name
        sections.append(_slo_section(s, slug, images))
    rows = summary_rows(result)
    summary = _table(
        list(rows[0]) if rows else ["slo"],
        [[f'<a href="#{_e(slug)}">{_e(r["slo"])}</a>', *(_e(v) for k, v in r.items() if k != "slo")]
         for r, slug in zip(rows, slugs, strict=True)], raw=True) if rows else "<p>No SLOs.</p>"
    rejected = sum(result.rejections.values())
    rej_table = (_table(["reason", "records"], [[k, f"{v:,}"] for k, v in sorted(result.rejections.items())])
                 if result.rejections else '<p class="muted">No records were rejected.</p>')
    run = _table(["inputs", "records", "rejected", "wall time", "records/s"], [[
        ", ".join(result.inputs) or "-", f"{result.events:,}", f"{rejected:,}", f"{result.wall_s:.2f} s",
        f"{result.events_per_s:,.0f}"]])
    page = "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        "<title>sloburn backtest report</title>", f"<style>{_CSS}</style></head><body>",
        "<h1>sloburn backtest report</h1>", run, "<h2>Summary</h2>", summary,
        "<h2>Rejected records</h2>", rej_table, *sections, "</body></html>", ""])
    index = out_dir / "index.html"
    index.write_text(page, encoding="utf-8")
    return index
