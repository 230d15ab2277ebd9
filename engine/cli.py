"""The ``sloburn`` command: backtest, validate, generate, run, budget, outbox, demo.

``main(argv) -> int`` never lets a traceback reach the user for bad input: configuration problems
print one line each (``file: $.path: expected ..., got ...``) and exit 2.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path
from typing import Any

import msgspec

from engine.errors import ConfigError, EngineError

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def _fmt_ts(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _fmt_burn(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


# ---------------------------------------------------------------------------- validate


def _cmd_validate(args: argparse.Namespace) -> int:
    from engine.config import load_config
    from engine.plan import build_plan

    status = EXIT_OK
    for path in args.configs:
        try:
            cfg = load_config(path)
        except ConfigError as e:
            for line in e.problems:
                print(line, file=sys.stderr)
            status = EXIT_USAGE
            continue
        plan = build_plan(cfg)
        print(f"{path}: ok, {plan.n_slos} SLO(s)")
        for sp in plan.slos:
            tiers = ", ".join(f"{t.name} {t.label} x{t.burn_rate_factor:g}" for t in sp.tiers)
            kind = f"latency <= {sp.threshold_ms:g} ms" if sp.is_latency else "availability"
            print(f"  {sp.slo.name}: {kind}, objective {sp.objective:g} %, period "
                  f"{sp.period_s // 86400}d; {tiers}")
    return status


# ---------------------------------------------------------------------------- backtest


def _cmd_backtest(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    from engine.backtest import run_backtest
    from engine.config import load_config

    cfg = load_config(args.config)
    err = Console(stderr=True)
    out = Console(width=None if sys.stdout.isatty() else 160)
    alerts_file = open(args.out, "wb") if args.out else None  # noqa: SIM115 - closed below
    enc = msgspec.json.Encoder()

    def on_alert(a: Any) -> None:
        if alerts_file:
            alerts_file.write(enc.encode(a) + b"\n")

    try:
        with Progress(TextColumn("[bold]backtest"), BarColumn(), DownloadColumn(),
                      TimeRemainingColumn(), console=err, disable=args.quiet,
                      transient=True) as prog:
            task = prog.add_task("replay", total=None)

            def progress(done: int, total: int | None) -> None:
                prog.update(task, completed=done, total=total)

            result = run_backtest(cfg, args.files, fmt=args.format, progress=progress, on_alert=on_alert)
    finally:
        if alerts_file:
            alerts_file.close()
    _print_timeline(out, result)
    _print_summary(out, result)
    if args.report:
        from engine.report import write_report

        index = write_report(result, Path(args.report))
        err.print(f"report: {index}")
    return EXIT_OK


def _print_timeline(out: Any, result: Any) -> None:
    from rich.table import Table

    from engine.durations import format_duration

    table = Table(title="Alert timeline (event time, UTC)")
    for col in ("time", "slo", "severity", "action", "tier", "burn rates (tier windows)", "budget left"):
        table.add_column(col)
    events = sorted((a for s in result.series for a in s.events), key=lambda a: a.ts)
    tier_windows = {(s.slo, t.name): (t.long_window_s, t.short_window_s)
                    for s in result.series for t in s.tiers}
    for a in events:
        # The windows of the tier that fired, long then short: what decided the alert.
        long_s, short_s = tier_windows.get((a.slo, a.tier), (0, 0))
        shown = [format_duration(long_s), format_duration(short_s)]
        burns = " ".join(f"{k}={_fmt_burn(a.burn_rates.get(k))}" for k in shown if k in a.burn_rates)
        left = "-" if a.budget_remaining is None else f"{a.budget_remaining * 100:.1f}%"
        table.add_row(_fmt_ts(a.ts), a.slo, a.severity, a.action, a.tier, burns, left)
    if not events:
        table.add_row("-", "no alerts", "", "", "", "", "")
    out.print(table)


def _print_summary(out: Any, result: Any) -> None:
    from rich.table import Table

    from engine.report import summary_rows

    rows = summary_rows(result)
    table = Table(title=f"Summary: {result.events:,} records in {result.wall_s:.2f} s "
                        f"({result.events_per_s:,.0f}/s)")
    if rows:
        for col in rows[0]:
            table.add_column(str(col))
        for r in rows:
            table.add_row(*(str(v) for v in r.values()))
    out.print(table)
    if result.rejections:
        rej = ", ".join(f"{k}={v}" for k, v in sorted(result.rejections.items()))
        out.print(f"rejected: {rej}")


# ---------------------------------------------------------------------------- convert


def _cmd_convert(args: argparse.Namespace) -> int:
    from collections import Counter

    from engine.formats import nezha

    counts: Counter[str] = Counter()
    if args.kind == "nezha-minutes":
        data = nezha.nezha_minutes_to_ndjson(args.file, counts=counts)
    else:
        data = nezha.nezha_requests_to_ndjson(args.file, counts=counts)
    if args.out and args.out != "-":
        Path(args.out).write_bytes(data)
    else:
        sys.stdout.buffer.write(data)
    summary = ", ".join(f"{k}={v}" for k, v in sorted(counts.items()))
    print(f"{args.file}: {summary}", file=sys.stderr)
    return EXIT_OK


# ---------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sloburn", description="Streaming SLO burn-rate alert evaluator.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("validate", help="check configuration files")
    p.add_argument("configs", nargs="+", metavar="CONFIG")
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("backtest", help="replay traffic files through the engine in event time")
    p.add_argument("--config", "-c", required=True)
    p.add_argument("files", nargs="+", metavar="FILE", help="NDJSON/JSON/msgpack, .gz/.zst, or - for stdin")
    p.add_argument("--format", default=None, choices=[
        "auto", "ndjson", "json", "msgpack", "detect", "nginx_json", "nginx_combined", "apache_combined",
        "envoy", "ecs_json", "otlp_json", "k6_json", "aggregates_csv", "aggregates_ndjson",
        "prometheus_json", "prometheus_text", "openmetrics", "mapping"])
    p.add_argument("--out", help="write alert transitions as JSON lines")
    p.add_argument("--report", metavar="DIR", help="write an HTML report with plots")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_backtest)

    p = sub.add_parser("convert", help="turn a known data set into NDJSON events")
    p.add_argument("kind", choices=["nezha-minutes", "nezha-requests"],
                   help="Nezha OnlineBoutique per-minute series, or its single-request CSV")
    p.add_argument("file")
    p.add_argument("--out", "-o", help="output file (default stdout)")
    p.set_defaults(func=_cmd_convert)

    for modname in ("engine.generate", "engine.cli_outbox", "engine.cli_daemon", "engine.cli_budget",
                    "engine.demo", "engine.cli_import", "engine.cli_bench", "engine.docs"):
        _register(sub, modname)
    return parser


def _register(sub: Any, modname: str) -> None:
    import importlib

    try:
        mod = importlib.import_module(modname)
    except ModuleNotFoundError as e:
        if e.name == modname:
            return
        raise
    mod.register(sub)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as e:
        for line in e.problems:
            print(line, file=sys.stderr)
        return EXIT_USAGE
    except (EngineError, OSError) as e:
        print(f"sloburn {args.command}: {e}", file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
