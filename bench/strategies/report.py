"""Markdown tables (returned as text), CSV files and PNG plots of a strategy benchmark run."""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bench.strategies.policies import Policy
from bench.strategies.scenarios import DAY, H
from engine.durations import format_duration
from engine.plan import serving_resolution_s

if TYPE_CHECKING:
    from bench.strategies.__main__ import Record, Results

TABLE_RATIOS = (1.0, 0.1, 0.02, 0.01, 0.003, 0.001)
READING_GUIDE = """## How to read the tables

- A *policy* decides when to alert; a *strategy* counts the windows it reads. Policy tables score one
  policy over every scenario; the strategy table says what counting costs and how far it is from the
  exact windows, whatever the policy.
- **page precision**: paged incidents that were page-significant / (paged incidents + pages outside
  incidents); an incident counts once however often it paged. **page recall**:
  page-significant incidents that paged / all of them. **detect median, p90**: incident start to its
  first page. **reset median**: incident end to the last of its pages clearing (*not reset*: still
  firing when the scenario ended). **pages/incident**: notifications per detected incident (flapping
  shows here). **pages/day outside**: pages outside every incident per day, over the scenarios with
  background traffic. **budget before page**: share of the 30-day budget the incident had spent when
  it paged. **ticket** columns: the same for tickets (recall counts any alert).
- The grid has no background errors and constant traffic: it measures the window arithmetic. Noise,
  diurnal, low-traffic, latency, spikes and late scenarios add what production adds.
"""
NOISE_FAMILIES = ("noise-at-budget", "noise-below-budget", "diurnal", "low-traffic", "latency", "spikes",
                  "late")


def fmt_s(v: float) -> str:
    """A duration for a table: ``52 s``, ``8.6 min``, ``3.6 h``, ``2.1 d``; ``-`` for none."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if math.isinf(v):
        return "not reset"
    if v < 120:
        return f"{v:.0f} s"
    if v < 2 * H:
        return f"{v / 60:.1f} min"
    if v < 2 * DAY:
        return f"{v / H:.1f} h"
    return f"{v / DAY:.2f} d"


def pct(v: float, digits: int = 0) -> str:
    return "-" if v is None or math.isnan(v) else f"{100 * v:.{digits}f} %"


def num(v: float, digits: int = 2) -> str:
    if v is None or math.isnan(v):
        return "-"
    if v != 0 and (abs(v) >= 1e5 or abs(v) < 10 ** -digits):
        return f"{v:.2g}"
    return f"{v:.{digits}f}"


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _median(xs: list[float], q: float = 50) -> float:
    return float(np.percentile(xs, q, method="lower")) if xs else math.nan


# ---------------------------------------------------------------------------------------------
# aggregation


def summarize(recs: Sequence[Record]) -> dict[str, float]:
    """Scores of one policy on one strategy over some records (see bench.strategies.score).

    Precision counts detections, not notifications (SRE Workbook: detected events that were
    significant): an alerted incident counts once however often it paged, a trigger outside every
    incident counts once. Flapping shows in pages/incident instead.
    """
    inc = [o for r in recs for o in r.score.incidents]
    sig = [o for o in inc if o.page_significant]
    det = [o for o in sig if o.detected_page]
    tsig = [o for o in inc if o.ticket_significant or o.page_significant]
    tdet = [o for o in tsig if o.detected_ticket or o.detected_page]
    paged = [o for o in inc if o.detected_page]
    ticketed = [o for o in inc if o.detected_ticket]
    false_pages = sum(r.score.pages_outside for r in recs)
    false_tickets = sum(r.score.tickets_outside for r in recs)
    bg = [r for r in recs if r.family != "grid"]
    days = sum(r.score.outside_days for r in bg)
    resets = [math.inf if o.reset_censored else o.reset_s for o in det]
    tresets = [math.inf if o.ticket_reset_censored else o.ticket_reset_s for o in ticketed]
    p_all = len(paged) + false_pages
    t_all = len(ticketed) + false_tickets
    return {
        "significant": len(sig), "detected": len(det),
        "precision": len(det) / p_all if p_all else math.nan,
        "recall": len(det) / len(sig) if sig else math.nan,
        "detect_med_s": _median([o.detection_s for o in det]),
        "detect_p90_s": _median([o.detection_s for o in det], 90),
        "reset_med_s": _median(resets),
        "pages_per_incident": float(np.mean([o.pages for o in det])) if det else math.nan,
        "pages_per_day_outside": sum(r.score.pages_outside for r in bg) / days if days else math.nan,
        "budget_before_detect": _median([o.budget_at_detection for o in det]),
        "ticket_precision": sum(1 for o in ticketed if o.ticket_significant or o.page_significant) / t_all
        if t_all else math.nan,
        "ticket_recall": len(tdet) / len(tsig) if tsig else math.nan,
        "ticket_reset_med_s": _median(tresets),
        "pages": sum(r.score.pages for r in recs), "tickets": sum(r.score.tickets for r in recs),
    }


def _select(res: Results, *, strategy: str | None = None, policy: str | None = None,
            family: str | Sequence[str] | None = None, member: str | None = None) -> list[Record]:
    fams = (family,) if isinstance(family, str) else family
    return [r for r in res.records if (strategy is None or r.strategy == strategy)
            and (policy is None or r.policy == policy) and (fams is None or r.family in fams)
            and (member is None or r.member == member)]


def _one(res: Results, strategy: str, policy: str, family: str, member: str) -> Any:
    recs = _select(res, strategy=strategy, policy=policy, family=family, member=member)
    return recs[0].score.incidents[0] if recs and recs[0].score.incidents else None


# ---------------------------------------------------------------------------------------------
# sections


def _header(res: Results, date: str) -> str:
    o = res.options
    out = ["# Window strategies and alerting policies: benchmark results\n",
           f"Command: `{o.command}`  \nDate: {date}; wall time {res.wall_s:.0f} s; seed {o.seed}; "
           f"evaluation step {o.step_s} s (Prometheus: its own rule interval).\n",
           "## Scenarios and ground truth\n"]
    out += [f"- **{f.name}** ({len(f.members)} member{'s' if len(f.members) > 1 else ''}, SLO "
            f"{f.objective:g} % {f.sli} over {format_duration(f.period_s)}, warm-up "
            f"{format_duration(f.warmup_s) if f.warmup_s else 'none'}): {f.description}"
            for f in res.families]
    lost = {k: v for k, v in sorted(res.input_rejections.items()) if v}
    if lost:
        out.append("- input records not counted, by reason: "
                   + ", ".join(f"{k} {v:,}" for k, v in lost.items()))
    out += ["", *(f"- {line}" for line in res.families[0].significance.describe()), ""]
    out += [READING_GUIDE]
    out += ["## Policies\n", table(["policy", "rules", "source"],
                                   [(p.name, p.text(), p.source) for p in res.policies])]
    if res.sweep:
        out.append("The guard sweeps vary one guard of `sloburn` at a time (the other at its default).\n")
    return "\n".join(out) + "\n"


def _policy_table(res: Results, strategy: str) -> str:
    rows = []
    for p in res.policies:
        s = summarize(_select(res, strategy=strategy, policy=p.name))
        rows.append((p.name, pct(s["precision"]), pct(s["recall"]), f"{s['detected']}/{s['significant']}",
                     fmt_s(s["detect_med_s"]), fmt_s(s["detect_p90_s"]), fmt_s(s["reset_med_s"]),
                     num(s["pages_per_incident"], 1), num(s["pages_per_day_outside"], 2),
                     pct(s["budget_before_detect"], 1), pct(s["ticket_precision"]), pct(s["ticket_recall"]),
                     fmt_s(s["ticket_reset_med_s"])))
    return (f"## Policies on the `{strategy}` strategy (all scenarios)\n\n" + table(
        ["policy", "page precision", "page recall", "detected", "detect median", "detect p90",
         "reset median", "pages/incident", "pages/day outside", "budget before page",
         "ticket precision", "ticket recall", "ticket reset"], rows))


def _matrix(res: Results) -> str:
    rows = []
    for n in res.strategies:
        cells = []
        for p in res.policies:
            s = summarize(_select(res, strategy=n, policy=p.name))
            cells.append(f"{pct(s['recall'])} / {pct(s['precision'])} / {fmt_s(s['detect_med_s'])}")
        rows.append((n, *cells))
    return ("## Every policy on every strategy: page recall / precision / median detection\n\n"
            + table(["strategy", *(p.name for p in res.policies)], rows))


def _strategy_table(res: Results) -> str:
    rows = []
    for n in res.strategies:
        c, b = res.costs.get(n), res.burn[n]
        short = [w for w in (300, 3600) if w in res.windows_s]
        rej = sum(res.rejections[n].values())
        cost = (("-",) * 5 if c is None else
                (f"{c.memory_bytes_mwmb:,}", f"{c.memory_bytes:,}", num(c.ns_per_event, 0),
                 num(c.us_per_evaluation, 1), f"{c.eval_step_s} s"))
        rows.append((n, *cost, num(b.quantile(0.99), 3),
                     num(b.maximum(), 1), *(num(b.quantile(0.99, [w]), 3) for w in short),
                     pct(b.no_answer_share(), 2), f"{rej:,}"))
    short_h = [f"p99 {format_duration(w)}" for w in (300, 3600) if w in res.windows_s]
    bounds = "\n".join(f"- `{n}`: {res.error_bounds[n]}" for n in res.strategies)
    return ("## Strategies: cost and burn-rate error against the exact reference\n\n"
            "Memory is the state one SLO needs (bytes) for the Sloth/Workbook windows (5m .. 3d) and for "
            f"all {len(res.windows_s)} windows of this run. ns/event: single events, ingest plus its "
            "share of evaluation. us/eval: one evaluation of all windows. Burn-rate error: |b - b_exact| "
            "over every instant and window where the exact window has data (p99 from a log histogram, "
            "+-2.3 %); no answer: the strategy had none where the exact window had data.\n\n"
            + table(["strategy", "memory MWMB", "memory all", "ns/event", "us/eval", "step",
                     "burn err p99", "burn err max", *short_h, "no answer", "rejected requests"], rows)
            + "\nError bounds:\n\n" + bounds + "\n")


def _detection_rows(res: Results, strategy: str) -> list[tuple[Any, ...]]:
    step = res.options.step_s
    rows = []
    longest: dict[float, tuple[float, str]] = {}
    for r in res.records:
        if r.family == "grid" and "error_ratio" in r.tags:
            e, d = r.tags["error_ratio"], r.tags["duration_s"]
            if d > longest.get(e, (0.0, ""))[0]:
                longest[e] = (d, r.member)
    for e in TABLE_RATIOS:
        if e not in longest:
            continue
        member = longest[e][1]
        cells: list[str] = [f"{e:g}", f"{e / 0.001:g}x", format_duration(int(longest[e][0]))]
        for t in res.tiers:
            rule = t.rules[0]
            long_s, factor = rule.terms[0].window_s, rule.terms[0].factor
            expect = 0.001 / e * long_s * factor
            o = _one(res, strategy, t.name, "grid", member)
            if o is None:
                cells.append("-")
                continue
            got = o.detection_s if rule.severity == "page" else o.ticket_detection_s
            tol = step + (serving_resolution_s(long_s, step) if strategy == "engine" else 0)
            if math.isclose(expect, long_s, rel_tol=1e-9):
                # burn == factor exactly: "never" by the formula, a one-request excess fires it.
                cells.append(f"burn = factor ({fmt_s(got) if not math.isnan(got) else 'never'}) ok")
            elif expect > long_s:
                mark = "ok" if math.isnan(got) else "MISMATCH"
                cells.append(f"never ({fmt_s(got) if not math.isnan(got) else 'never'}) {mark}")
            else:
                ok = not math.isnan(got) and expect - tol <= got <= expect + tol
                cells.append(f"{fmt_s(expect)} ({fmt_s(got)}) {'ok' if ok else 'MISMATCH'}")
        o = _one(res, strategy, "sloth", "grid", member)
        cells.append(fmt_s(o.detection_s) if o is not None and o.detected_page else
                     ("ticket only" if o is not None and o.detected_ticket else "never"))
        rows.append(tuple(cells))
    return rows


def _detection_table(res: Results) -> str:
    if not any(r.family == "grid" for r in res.records):
        return ""
    out = ["## Detection table (slo-math.md): formula (measured), 99.9 %, 30 d, full history\n",
           "A cell is ok when the measured first alert of the tier alone lies within one evaluation step "
           "(exact) or one bucket of the long window's serving resolution plus one step (engine) of "
           "`t = (B / e) x long x factor`.\n"]
    for n in [x for x in ("exact", "engine") if x in res.strategies]:
        out.append(f"### `{n}`\n")
        tiers = [t.rules[0].text() for t in res.tiers]
        out.append(table(["e", "burn", "incident", *tiers, "page at (sloth)"],
                         _detection_rows(res, n)))
    return "\n".join(out)


def _verdicts(res: Results, strategy: str = "exact") -> str:
    def o(policy: str, member: str, family: str = "grid") -> Any:
        return _one(res, strategy, policy, family, member)

    def s(policy: str, family: str | Sequence[str] | None = None) -> dict[str, float]:
        return summarize(_select(res, strategy=strategy, policy=policy, family=family))

    rows: list[tuple[str, str, str, str]] = []

    def check(name: str, claim: str, measured: str, ok: bool | None) -> None:
        rows.append((name, claim, measured, "-" if ok is None else ("yes" if ok else "NO")))

    def have(*fams: str) -> bool:
        return all(any(r.family == f for r in res.records) for f in fams)

    pol = {p.name for p in res.policies}
    if have("noise-at-budget") and "1-threshold" in pol:
        v = s("1-threshold", "noise-at-budget")["pages_per_day_outside"]
        check("1 threshold", "up to 144 pages/day inside the SLO", f"{num(v, 1)} pages/day at the budget",
              v > 10)
    if have("grid"):
        x = o("1-threshold", "1x10m") if "1-threshold" in pol else None
        if x is not None:
            check("1 threshold", "total outage detected in 0.6 s", f"{fmt_s(x.detection_s)} (one step)",
                  x.detection_s <= res.options.step_s)
        x = o("2-long-window", "1x10m") if "2-long-window" in pol else None
        if x is not None:
            check("2 long window", "total outage detected in 2m10s", fmt_s(x.detection_s),
                  abs(x.detection_s - 130) <= res.options.step_s)
            r = math.inf if x.reset_censored else x.reset_s
            check("2 long window", "keeps firing ~36 h after the end", fmt_s(r), abs(r - 36 * H) <= H)
        x = o("3-duration", "1x1d") if "3-duration" in pol else None
        if x is not None:
            check("3 duration", "100 % outage alerts after 1 h, 140 % of budget spent",
                  f"{fmt_s(x.detection_s)}, {pct(x.budget_at_detection)}",
                  abs(x.detection_s - H) <= 2 * res.options.step_s and x.budget_at_detection > 1.3)
        x = o("4-burn-rate", "1x1d") if "4-burn-rate" in pol else None
        if x is not None:
            r = math.inf if x.reset_censored else x.reset_s
            check("4 burn rate", "58 min reset after a long outage", fmt_s(r), abs(r - 58 * 60) <= 120)
        x = o("4-burn-rate", "0.035x1d") if "4-burn-rate" in pol else None
        if x is not None:
            check("4 burn rate", "a 35x burn never pages yet empties the budget in 20.5 h",
                  f"{x.pages} pages, {pct(x.budget_fraction)} of budget in 1 d", x.pages == 0)
    if have("spikes") and "3-duration" in pol:
        x = o("3-duration", "spikes", "spikes")
        check("3 duration", "spikes every 10 min never fire yet spend ~35 %",
              f"{x.pages} pages, {pct(x.budget_fraction)} spent",
              x.pages == 0 and 0.25 < x.budget_fraction < 0.45)
    busy = [f.name for f in res.families if f.name != "low-traffic"]  # the Workbook assumes traffic
    if have("grid") and "5-multi-burn" in pol:
        sc = s("5-multi-burn", busy)
        lt = s("5-multi-burn", "low-traffic")["pages_per_day_outside"] if have("low-traffic") else math.nan
        check("5 multi burn", "good precision and recall",
              f"{pct(sc['precision'])} / {pct(sc['recall'])} (low traffic: {num(lt, 1)} false pages/day)",
              sc["precision"] > 0.8 and sc["recall"] > 0.8)
        tail_ok = max((m.duration_s - m.tags.get("duration_s", 0) for f in res.families if f.name == "grid"
                       for m in f.members), default=0) > 3 * DAY
        check("5 multi burn", "3-day ticket reset", fmt_s(sc["ticket_reset_med_s"]) +
              ("" if tail_ok else " (scenario tails shorter than 3 d)"),
              (2 * DAY <= sc["ticket_reset_med_s"] <= 3 * DAY + H) if tail_ok else None)
    if "6-mwmb" in pol:
        sc = s("6-mwmb", busy)
        lt = s("6-mwmb", "low-traffic")["pages_per_day_outside"] if have("low-traffic") else math.nan
        check("6 MWMB", "good precision and recall",
              f"{pct(sc['precision'])} / {pct(sc['recall'])} (low traffic: {num(lt, 1)} false pages/day)",
              sc["precision"] > 0.8 and sc["recall"] > 0.8)
        for tier, short_s, factor in (("page_quick", 300, 14.4), ("page_slow", 1800, 6.0)):
            x = o(tier, "1x1d") if have("grid") else None
            if x is None:
                continue
            r = math.inf if x.reset_censored else x.reset_s
            want = short_s * (1 - factor / 1000)
            check("6 MWMB", f"{tier} resets short x (1 - factor/burn) = {fmt_s(want)} after a long outage",
                  fmt_s(r), abs(r - want) <= 2 * res.options.step_s)
        check("6 MWMB", "median reset within about one short window (5m .. 30m)",
              fmt_s(sc["reset_med_s"]), sc["reset_med_s"] <= 35 * 60)
    if not rows:
        return ""
    return (f"## The Workbook's verdicts, measured (`{strategy}` strategy)\n\n"
            "Precision and recall of approaches 5 and 6 over every scenario but low-traffic (the Workbook "
            "assumes enough traffic; its false pages per day are shown alongside).\n\n"
            + table(["approach", "Workbook", "measured", "reproduced"], rows))


@dataclass(frozen=True, slots=True)
class _Col:
    label: str
    key: str
    fmt: Callable[[float], str]
    family: str | Sequence[str] | None = None
    member: str | None = None


def _sweeps(res: Results) -> str:
    if not res.sweep:
        return ""
    base = next((p for p in res.policies if p.name == "sloburn"), None)
    out = ["## Guard sweeps (sloth tiers on the `engine` strategy)\n"]
    if base is not None:
        out.append(f"The `sloburn` policy uses min_events {base.min_events} and keep_firing_for "
                   f"{format_duration(base.keep_firing_for_s)}; each sweep varies one of them.\n")
    mins = [p for p in res.sweep if p.family == "sweep-min-events"]
    keeps = [p for p in res.sweep if p.family == "sweep-keep"]
    noise = [f for f in NOISE_FAMILIES if f != "low-traffic"]

    def two(v: float) -> str:
        return num(v, 2)

    def rows(pols: list[Policy], cols: list[_Col]) -> list[list[str]]:
        return [[p.name, *(c.fmt(summarize(_select(res, strategy="engine", policy=p.name, family=c.family,
                                                   member=c.member))[c.key]) for c in cols)] for p in pols]

    cols_min = [
        _Col("1 req/min: false pages/day", "pages_per_day_outside", two, "low-traffic", "1/min"),
        _Col("10 req/min: false pages/day", "pages_per_day_outside", two, "low-traffic", "10/min"),
        _Col("low-traffic recall", "recall", pct, "low-traffic"),
        _Col("low-traffic detect median", "detect_med_s", fmt_s, "low-traffic"),
        _Col("other noise: false pages/day", "pages_per_day_outside", two, noise),
        _Col("recall (all)", "recall", pct), _Col("precision (all)", "precision", pct)]
    out.append("### min_events (keep_firing_for at the default)\n")
    out.append(table(["min_events", *(c.label for c in cols_min)], rows(mins, cols_min)))
    cols_keep = [
        _Col("spikes 1m/10m: pages", "pages", lambda v: f"{v:.0f}", "spikes", "spikes"),
        _Col("spikes 2m/30m: pages", "pages", lambda v: f"{v:.0f}", "spikes", "spikes-30m"),
        _Col("pages/incident (all)", "pages_per_incident", two),
        _Col("reset median", "reset_med_s", fmt_s),
        _Col("false pages/day", "pages_per_day_outside", two, noise),
        _Col("recall (all)", "recall", pct), _Col("precision (all)", "precision", pct)]
    out.append("\n### keep_firing_for (min_events at the default)\n")
    out.append(table(["keep_firing_for", *(c.label for c in cols_keep)], rows(keeps, cols_keep)))
    return "\n".join(out)


def _outside_by_family(res: Results, strategy: str = "exact") -> str:
    fams = [f.name for f in res.families if f.name != "grid"]
    if not fams:
        return ""
    rows = [(p.name, *(num(summarize(_select(res, strategy=strategy, policy=p.name, family=f))
                                   ["pages_per_day_outside"], 2) for f in fams)) for p in res.policies]
    return (f"## Pages per day outside incidents, by scenario (`{strategy}`)\n\n"
            + table(["policy", *fams], rows))


def markdown(res: Results, date: str) -> str:
    ref = "exact"
    parts = [_header(res, date), _policy_table(res, ref)]
    if "engine" in res.strategies:
        parts.append(_policy_table(res, "engine"))
    parts += [_verdicts(res, ref), _detection_table(res), _outside_by_family(res, ref), _sweeps(res),
              _strategy_table(res), _matrix(res)]
    return "\n".join(p for p in parts if p)


# ---------------------------------------------------------------------------------------------
# files


def write_csv(res: Results, out: Path) -> None:
    with (out / "incidents.csv").open("w", newline="", encoding="utf-8") as f:
        w: Any = None
        for r in res.records:
            for o in r.score.incidents:
                row = {"family": r.family, "member": r.member, "strategy": r.strategy, "policy": r.policy,
                       **{f"tag_{k}": v for k, v in r.tags.items()}, **asdict(o)}
                if w is None:
                    w = csv.DictWriter(f, fieldnames=[*row.keys()], extrasaction="ignore", restval="")
                    w.writeheader()
                w.writerow(row)
    with (out / "policies.csv").open("w", newline="", encoding="utf-8") as f:
        pols = [*res.policies, *res.sweep, *res.tiers]
        w = None
        for n in res.strategies:
            for p in pols:
                recs = _select(res, strategy=n, policy=p.name)
                if not recs:
                    continue
                row = {"strategy": n, "policy": p.name, **summarize(recs)}
                if w is None:
                    w = csv.DictWriter(f, fieldnames=[*row.keys()])
                    w.writeheader()
                w.writerow(row)
    with (out / "strategies.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["strategy", "window_s", "memory_bytes_mwmb", "memory_bytes_all", "ns_per_event",
                    "us_per_evaluation", "burn_err_p99", "burn_err_max", "no_answer", "error_bound"])
        for n in res.strategies:
            c, b = res.costs.get(n), res.burn[n]
            cost = ["", "", "", ""] if c is None else [c.memory_bytes_mwmb, c.memory_bytes, c.ns_per_event,
                                                       c.us_per_evaluation]
            for win in [None, *res.windows_s]:
                ws = None if win is None else [win]
                w.writerow([n, "all" if win is None else win, *cost, b.quantile(0.99, ws), b.maximum(ws),
                            b.no_answer_share(), res.error_bounds[n]])


def write_plots(res: Results, out: Path) -> None:
    import matplotlib as mpl

    mpl.use("Agg")
    import matplotlib.pyplot as plt

    grid = [r for r in res.records if r.family == "grid" and r.strategy == "exact"]
    if grid:
        fig, ax = plt.subplots(figsize=(8, 5))
        for p in res.policies:
            pts: dict[float, list[float]] = {}
            for r in grid:
                if r.policy == p.name and r.tags.get("duration_s", 0) == max(
                        x.tags.get("duration_s", 0) for x in grid if x.tags.get("error_ratio") == r.tags.get(
                            "error_ratio")):
                    o = r.score.incidents[0]
                    if o.detected_page:
                        pts.setdefault(r.tags["error_ratio"], []).append(o.detection_s / 60)
            if pts:
                xs = sorted(pts)
                ax.plot(xs, [min(pts[x]) for x in xs], marker="o", label=p.name)
        ax.set(xscale="log", yscale="log", xlabel="error ratio", ylabel="detection time (min)",
               title="Detection time vs error ratio (longest incident of each ratio, exact windows)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "detection_vs_ratio.png", dpi=110)
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(9, 4.5))
    names = [p.name for p in res.policies]
    sums = [summarize(_select(res, strategy="exact", policy=n)) for n in names]
    x = np.arange(len(names))
    ax.bar(x - 0.2, [s["precision"] for s in sums], 0.4, label="page precision")
    ax.bar(x + 0.2, [s["recall"] for s in sums], 0.4, label="page recall")
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set(ylim=(0, 1.05), title="Precision and recall per policy (exact windows, all scenarios)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "precision_recall.png", dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(9, 4.5))
    wins = [w for w in (300, 3600, 6 * H, 3 * DAY) if w in res.windows_s]
    x = np.arange(len(res.strategies))
    width = 0.8 / max(len(wins), 1)
    for k, win in enumerate(wins):
        vals = [max(res.burn[n].quantile(0.99, [win]), 1e-4) for n in res.strategies]
        ax.bar(x + (k - len(wins) / 2 + 0.5) * width, vals, width, label=f"p99, {format_duration(win)}")
    ax.set_xticks(x, res.strategies, rotation=30, ha="right")
    ax.set(yscale="log", ylabel="|burn rate - exact| (p99; 1e-4 = none)",
           title="Burn-rate error per strategy")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "burn_rate_error.png", dpi=110)
    plt.close(fig)


def write_all(res: Results, out: Path, date: str) -> str:
    """Write CSV and PNG files into ``out`` and return the Markdown text."""
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(res, date)
    write_csv(res, out)
    write_plots(res, out)
    (out / "RESULTS.md").write_text(text, encoding="utf-8")
    return text
