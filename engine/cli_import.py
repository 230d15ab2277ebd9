"""``sloburn import`` and ``sloburn export``: SLO files of other tools in, Prometheus rules out.

::

    sloburn import sloth|openslo|pyrra FILE... [--out C.yaml] [--windows W.yaml] [--period 28d]
                                              [--metrics-out M.yaml]
    sloburn export prometheus C.yaml [--metrics M.yaml] [--out rules.yaml]

``import`` writes a sloburn config (to ``--out`` or stdout) with every SLO it could carry over, prints
one line per SLO that needs attention and per refused document on stderr, and a summary line. Exit
status: 0 when every document was imported (or defines no SLO), 1 when some were refused (the others
are still written), 2 for a usage error or when nothing could be imported.

``export prometheus`` writes recording and alerting rules (Sloth's names and layout) for a config; exit
status 0, or 2 for an invalid config or metrics file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def register(subparsers: Any) -> None:
    """Add the ``import`` and ``export`` sub-commands to the ``sloburn`` parser."""
    p = subparsers.add_parser(
        "import", help="convert Sloth, OpenSLO or Pyrra SLO files into a sloburn config",
        description="Convert SLO files of other tools into a sloburn config: objectives, periods, alert "
                    "names, labels, severities and alert windows carry over; SLIs are read from their "
                    "PromQL where it follows the usual patterns, and marked FILL IN or CHECK otherwise.")
    p.add_argument("tool", choices=["sloth", "openslo", "pyrra"], help="the tool the files are written for")
    p.add_argument("files", nargs="+", metavar="FILE", help="SLO files (multi-document YAML accepted)")
    p.add_argument("--out", "-o", metavar="C.yaml", help="write the config here (default: stdout)")
    p.add_argument("--windows", action="append", default=[], metavar="W.yaml",
                   help="Sloth AlertWindows file; SLOs of its sloPeriod use its tiers (repeatable)")
    p.add_argument("--period", default=None, metavar="DURATION",
                   help="SLO period where the files give none (Sloth's --default-slo-period; default 30d)")
    p.add_argument("--metrics-out", metavar="M.yaml",
                   help="also write the original queries per SLO, for `export prometheus --metrics`")
    p.set_defaults(func=run_import)

    e = subparsers.add_parser(
        "export", help="write Prometheus rules equivalent to a sloburn config",
        description="Write Prometheus recording and alerting rules for a sloburn config, with Sloth's "
                    "metric names (slo:sli_error:ratio_rate5m, slo:error_budget:ratio, ...) and the same "
                    "multiwindow, multi-burn-rate arithmetic.")
    e.add_argument("target", choices=["prometheus"], help="what to write")
    e.add_argument("config", metavar="C.yaml")
    e.add_argument("--metrics", metavar="M.yaml",
                   help="queries per SLO (error_query/total_query, good_query/total_query, "
                        "error_ratio_query, or errors|good + total selectors); default: "
                        "http_requests_total by service, code=~\"5..\" errors")
    e.add_argument("--out", "-o", metavar="rules.yaml", help="write the rules here (default: stdout)")
    e.set_defaults(func=run_export)


def _write(path: str | None, text: str) -> None:
    if path is None:
        sys.stdout.write(text)
        return
    Path(path).write_text(text, encoding="utf-8")


def run_import(args: argparse.Namespace) -> int:
    """``sloburn import``; ConfigError (bad --windows file) reaches ``main``, which prints it."""
    from engine.config import TextLoader, parse_config
    from engine.importers import import_paths, render_config, render_metrics, summary_lines

    if args.period is not None:
        from engine.durations import parse_duration_s

        try:
            ok = parse_duration_s(args.period) % 86400 == 0 and parse_duration_s(args.period) > 0
        except ValueError:
            ok = False
        if not ok:
            print(f"sloburn import: --period: expected a whole number of days like 30d, got {args.period!r}",
                  file=sys.stderr)
            return EXIT_USAGE
    result = import_paths(args.tool, args.files, windows=args.windows, period=args.period)
    for line in summary_lines(result):
        print(line, file=sys.stderr)
    if not result.slos:
        print("sloburn import: nothing to write", file=sys.stderr)
        return EXIT_USAGE
    text = render_config(result, tool=args.tool, inputs=args.files)
    import yaml

    # The written config must load: each SLO was checked on its own, this checks them together.
    parse_config(yaml.load(text, Loader=TextLoader), args.out or "<stdout>")
    _write(args.out, text)
    if args.metrics_out:
        Path(args.metrics_out).write_text(render_metrics(result), encoding="utf-8")
    return EXIT_FAIL if result.refused else EXIT_OK


def run_export(args: argparse.Namespace) -> int:
    """``sloburn export prometheus``."""
    from engine.config import load_config
    from engine.export_prometheus import load_metrics, render_rules

    cfg = load_config(args.config)
    metrics = load_metrics(args.metrics, cfg) if args.metrics else None
    text, notes = render_rules(cfg, metrics, config_path=args.config, metrics_path=args.metrics)
    for n in notes:
        print(f"sloburn export: {n}", file=sys.stderr)
    _write(args.out, text)
    if args.out:
        print(f"sloburn export: {len(cfg.slos)} SLO(s) -> {args.out}", file=sys.stderr)
    return EXIT_OK
