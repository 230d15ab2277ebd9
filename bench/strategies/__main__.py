"""``python -m bench.strategies`` (also ``sloburn bench strategies``): the harness.

For every scenario family the warm-up is generated once and ingested once per strategy; each
member then runs on a fork (deep copy) of the warmed-up strategy. Rows go in chunks of 6 h of event
time (members with late delivery: chunks of arrival time, evaluated up to the newest arrival less
the allowed lateness). Every policy runs on every strategy's answers; the guard sweeps run on the
engine strategy only (what sloburn ships). Scores, costs and the detection table go to
:mod:`bench.strategies.report`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.strategies import registry
from bench.strategies.base import NS, StrategyFactory, WindowAnswers, WindowStrategy
from bench.strategies.policies import (
    Burns,
    Policy,
    default_policies,
    detection_tiers,
    evaluate_policy,
    guard_sweep,
    policy_windows,
)
from bench.strategies.scenarios import (
    Family,
    H,
    Segment,
    budget_requests,
    default_families,
    member_segment,
    significance,
    traffic_family,
    warmup,
)
from bench.strategies.score import (
    BurnErrors,
    Cost,
    IncidentTruth,
    MemberScore,
    fork,
    measure_cost,
    score_member,
)
from bench.strategies.windows import ExactWindows

CHUNK_S = 6 * H
SWEEP_STRATEGY = "engine"


@dataclass
class Options:
    """What to run (``None`` = everything of the default run)."""

    scenarios: list[str] | None = None
    policies: list[str] | None = None
    strategies: list[str] | None = None
    out_dir: Path = Path("results/strategies")
    quick: bool = False
    seed: int = 20240101
    step_s: int = 10
    traffic: str | None = None
    incidents: str | None = None
    config: str | None = None
    slo: str | None = None
    objective: float = 99.9
    period_s: int = 30 * 86400
    progress: bool = True
    command: str = "python -m bench.strategies"
    measure_costs: bool = True


@dataclass
class Record:
    """One policy on one strategy over one member."""

    family: str
    member: str
    strategy: str
    policy: str
    tags: dict[str, float]
    score: MemberScore


@dataclass
class Results:
    options: Options
    families: list[Family]
    policies: list[Policy]
    sweep: list[Policy]
    tiers: list[Policy]
    strategies: list[str]
    error_bounds: dict[str, str]
    windows_s: tuple[int, ...]
    records: list[Record] = field(default_factory=list)
    burn: dict[str, BurnErrors] = field(default_factory=dict)
    costs: dict[str, Cost] = field(default_factory=dict)
    rejections: dict[str, dict[str, int]] = field(default_factory=dict)
    input_rejections: dict[str, int] = field(default_factory=dict)
    wall_s: float = 0.0


def _instants(origin_ns: int, from_s: int, to_s: int, step_s: int) -> np.ndarray:
    k0 = from_s // step_s + 1
    k1 = to_s // step_s
    return origin_ns + np.arange(k0, k1 + 1, dtype=np.int64) * (step_s * NS)


def feed(s: WindowStrategy, fam: Family, seg: Segment, from_s: int, to_s: int) -> WindowAnswers:
    """Ingest a segment's rows chunk by chunk and evaluate every instant of ``(from_s, to_s]``."""
    step_s = s.eval_step_s
    parts: list[WindowAnswers] = []
    done_s = from_s
    d = fam.delivery
    chunk = d.chunk_s if d is not None else CHUNK_S
    lateness = int(d.allowed_lateness_s) if d is not None else 0
    key = seg.arrival_ns
    for a in range(from_s, to_s, chunk):
        b = min(a + chunk, to_s)
        last = b >= to_s
        lo = np.searchsorted(key, fam.origin_ns + a * NS)
        hi = key.size if last else np.searchsorted(key, fam.origin_ns + b * NS)
        if hi > lo:
            s.ingest(seg.ts_ns[lo:hi], seg.row_bad[lo:hi], seg.row_total[lo:hi])
        upto = b if last else b - lateness
        inst = _instants(fam.origin_ns, done_s, upto, step_s)
        if inst.size:
            parts.append(s.evaluate(inst))
            done_s = int((inst[-1] - fam.origin_ns) // NS)
    return WindowAnswers.concat(parts, len(s.windows_s))


def _truths(fam: Family, seg: Segment, member_index: int) -> list[IncidentTruth]:
    m = fam.members[member_index]
    out = []
    for inc in m.incidents:
        page, ticket, spent = significance(fam, m, inc, seg.incident_bad)
        own = seg.incident_bad[inc.start_s: inc.end_s]
        t0 = fam.origin_ns + (fam.warmup_s + inc.start_s) * NS
        out.append(IncidentTruth(inc.name, t0, t0 + inc.duration_s * NS, page, ticket, spent,
                                 np.concatenate([[0], np.cumsum(own)]), budget_requests(fam, m)))
    return out


def select(names: list[str] | None, available: list[str], what: str) -> list[str]:
    if not names:
        return available
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ValueError(f"unknown {what} {unknown}; expected some of {available}")
    return [n for n in available if n in names]


def run_benchmark(opts: Options, progress: Any = None) -> Results:
    """Run every selected family x strategy x policy and measure the strategies' costs."""
    t_start = time.perf_counter()
    families: list[Family]
    input_rej: dict[str, int] = {}
    if opts.traffic is not None:
        if opts.incidents is None:
            raise ValueError("--traffic needs --incidents CSV (header start,end[,name])")
        fam, input_rej = traffic_family(opts.traffic, opts.incidents, objective=opts.objective,
                                        period_s=opts.period_s, config_path=opts.config,
                                        slo_name=opts.slo)
        families = [fam]
    else:
        all_fams = default_families(opts.quick)
        names = select(opts.scenarios, [f.name for f in all_fams], "scenarios")
        families = [f for f in all_fams if f.name in names]
    period = families[0].period_s
    all_pol = default_policies(period)
    pol_names = select(opts.policies, [p.name for p in all_pol], "policies")
    policies = [p for p in all_pol if p.name in pol_names]
    sweep = guard_sweep(period) if opts.policies is None else []
    tiers = detection_tiers(period)
    windows = policy_windows([*policies, *sweep, *tiers])
    reg = registry()
    strat_names = select(opts.strategies, list(reg), "strategies")
    if "exact" not in strat_names:
        strat_names = ["exact", *strat_names]
    factories: dict[str, StrategyFactory] = {n: reg[n] for n in strat_names}
    probe = {n: f(windows, families[0].origin_ns, opts.step_s) for n, f in factories.items()}
    res = Results(opts, families, policies, sweep, tiers, strat_names,
                  {n: s.error_bound for n, s in probe.items()}, windows, input_rejections=input_rej)
    res.burn = {n: BurnErrors(windows) for n in strat_names}
    res.rejections = {n: {} for n in strat_names}

    n_members = sum(len(f.members) for f in families)
    task = None
    if progress is not None:
        n_cost = 1 if opts.measure_costs else 0
        task = progress.add_task("strategies", total=len(strat_names) * (n_members + len(families) + n_cost))

    def tick(desc: str) -> None:
        if progress is not None:
            progress.update(task, advance=1, description=desc)

    sloth = next(p for p in all_pol if p.name == "sloth")
    mwmb_windows = sorted(sloth.windows_s)
    for n, f in factories.items() if opts.measure_costs else ():
        res.costs[n] = measure_cost(f, windows, mwmb_windows, families[0].origin_ns, opts.step_s,
                                    quick=opts.quick, seed=opts.seed)
        tick(f"cost {n}")
    for fam in families:
        _run_family(res, fam, factories, policies, sweep, tiers, tick)
    res.wall_s = time.perf_counter() - t_start
    return res


def _run_family(res: Results, fam: Family, factories: dict[str, StrategyFactory], policies: list[Policy],
                sweep: list[Policy], tiers: list[Policy], tick: Any) -> None:
    opts = res.options
    windows = res.windows_s
    B = fam.error_budget
    warm = warmup(fam, opts.seed)
    truth0 = ExactWindows(windows, fam.origin_ns, 1)
    if warm.total.size:
        truth0.ingest(fam.origin_ns + (warm.start_s + np.arange(warm.total.size)) * NS, warm.bad, warm.total)
    warmed: dict[str, tuple[WindowStrategy, np.ndarray, WindowAnswers]] = {}
    for n, f in factories.items():
        s = f(windows, fam.origin_ns, opts.step_s)
        ans = feed(s, fam, warm, 0, fam.warmup_s)
        inst = _instants(fam.origin_ns, 0, fam.warmup_s, s.eval_step_s)
        res.burn[n].add(ans, truth0.window_sums(inst), B)
        warmed[n] = (s, inst, ans)
        tick(f"{fam.name}: warm-up {n}")
    for i, m in enumerate(fam.members):
        seg = member_segment(fam, i, opts.seed)
        truth = fork(truth0)
        truth.ingest(fam.origin_ns + (seg.start_s + np.arange(seg.total.size)) * NS, seg.bad, seg.total)
        incidents = _truths(fam, seg, i)
        end_s = fam.warmup_s + m.duration_s
        for n in factories:
            s0, inst_w, ans_w = warmed[n]
            s = fork(s0)
            ans_m = feed(s, fam, seg, fam.warmup_s, end_s)
            inst_m = _instants(fam.origin_ns, fam.warmup_s, end_s, s.eval_step_s)
            res.burn[n].add(ans_m, truth.window_sums(inst_m), B)
            for reason, k in s.rejections.items():
                res.rejections[n][reason] = res.rejections[n].get(reason, 0) + k
            inst = np.concatenate([inst_w, inst_m])
            burns = Burns.of(WindowAnswers.concat([ans_w, ans_m], len(windows)), B)
            run = list(policies)
            if n == SWEEP_STRATEGY:
                run += sweep
            if fam.name == "grid":
                run += tiers
            for p in run:
                eps = evaluate_policy(p, windows, inst, burns, B)
                sc = score_member(eps, incidents, fam.origin_ns + fam.warmup_s * NS,
                                  fam.origin_ns + end_s * NS, fam.significance.grace_s * NS)
                res.records.append(Record(fam.name, m.name, n, p.name, dict(m.tags), sc))
            tick(f"{fam.name}: {m.name} {n}")


def options_from_args(args: argparse.Namespace, command: str) -> Options:
    from engine.durations import parse_duration_s

    def names(v: str | None) -> list[str] | None:
        return [x.strip() for x in v.split(",") if x.strip()] if v else None

    return Options(
        scenarios=names(args.scenarios), policies=names(args.policies), strategies=names(args.strategies),
        out_dir=Path(args.out), quick=args.quick, seed=args.seed, step_s=args.step_s,
        traffic=args.traffic, incidents=args.incidents, config=args.config, slo=args.slo,
        objective=args.objective, period_s=int(parse_duration_s(args.period)),
        progress=not args.no_progress, command=command)


def run(args: argparse.Namespace, command: str = "python -m bench.strategies") -> int:
    """Run from parsed arguments; print the tables; write CSV, PNG (and Markdown) files."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from bench.strategies.report import write_all
    from engine.errors import EngineError

    err = Console(stderr=True)
    try:
        opts = options_from_args(args, command)
        if opts.progress:
            with Progress(TextColumn("{task.description:<40}"), BarColumn(), TextColumn("{task.completed}/"
                          "{task.total}"), TimeElapsedColumn(), TimeRemainingColumn(), console=err,
                          transient=True) as prog:
                res = run_benchmark(opts, prog)
        else:
            res = run_benchmark(opts)
    except (ValueError, OSError, EngineError) as e:
        err.print(f"[red]error:[/red] {e}", markup=True, highlight=False)
        return 2
    text = write_all(res, opts.out_dir, date=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d"))
    sys.stdout.write(text)
    if args.results_md:
        Path(args.results_md).write_text(text, encoding="utf-8")
    err.print(f"wall time {res.wall_s:.0f} s; CSV and PNG files in {opts.out_dir}", highlight=False)
    return 0


def main(argv: list[str] | None = None) -> int:
    from engine.cli_bench import add_strategies_arguments

    parser = argparse.ArgumentParser(prog="python -m bench.strategies",
                                     description="Window strategies and alerting policies, measured.")
    add_strategies_arguments(parser)
    args = parser.parse_args(argv)
    return run(args, "python -m bench.strategies " + " ".join(argv if argv is not None else sys.argv[1:]))


if __name__ == "__main__":
    sys.exit(main())
