"""``sloburn bench strategies``: compare window strategies and alerting policies on the same traffic.

::

    sloburn bench strategies                       # the default run: every scenario, policy, strategy
    sloburn bench strategies --quick --out results
    sloburn bench strategies --traffic counts.csv --incidents incidents.csv
    sloburn bench strategies --traffic events.ndjson.zst --config slo.yaml --slo checkout \\
        --incidents incidents.csv

Prints Markdown tables on stdout and writes CSV and PNG files into ``--out``. The benchmark lives in
the ``bench`` package of a source checkout (``python -m bench.strategies`` runs the same thing).

Exit status: 0 done, 2 usage error or unreadable input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_USAGE = 0, 2


def add_strategies_arguments(p: argparse.ArgumentParser) -> None:
    """Options of the strategy benchmark (shared with ``python -m bench.strategies``)."""
    p.add_argument("--scenarios", help="comma-separated scenario families (default: all)")
    p.add_argument("--policies", help="comma-separated policies (default: all, with the guard sweeps)")
    p.add_argument("--strategies", help="comma-separated strategies (default: all; exact always runs)")
    p.add_argument("--out", default="results/strategies", metavar="DIR",
                   help="results folder for CSV, PNG and RESULTS.md (default results/strategies)")
    p.add_argument("--traffic", metavar="FILE",
                   help="replay this traffic instead of the scenarios: a CSV ts,bad,total or, with "
                        "--config, an events file (NDJSON/JSON/msgpack, .gz/.zst)")
    p.add_argument("--incidents", metavar="CSV",
                   help="incident intervals of --traffic: header start,end[,name] (RFC 3339 or epoch s)")
    p.add_argument("--config", help="sloburn config that classifies --traffic events (with --slo)")
    p.add_argument("--slo", help="SLO of --config (default: the first)")
    p.add_argument("--objective", type=float, default=99.9,
                   help="objective in percent of a --traffic CSV of counts (default 99.9)")
    p.add_argument("--period", default="30d", help="SLO period of a --traffic CSV of counts (default 30d)")
    p.add_argument("--quick", action="store_true", help="a smaller grid and shorter scenarios")
    p.add_argument("--seed", type=int, default=20240101, help="scenario seed (default 20240101)")
    p.add_argument("--step", type=int, default=10, dest="step_s", metavar="SECONDS",
                   help="evaluation step of the strategies that take one (default 10)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--results-md", metavar="FILE",
                   help="also write the Markdown tables, headed by the command and date, to FILE")


def register(subparsers: Any) -> None:
    """Add ``bench`` (with its ``strategies`` benchmark) to the ``sloburn`` parser."""
    p = subparsers.add_parser("bench", help="benchmarks (window strategies and alerting policies)",
                              description="Benchmarks run from a source checkout.")
    sub = p.add_subparsers(dest="benchmark", metavar="BENCHMARK")
    sub.required = True
    s = sub.add_parser(
        "strategies", help="compare window strategies and alerting policies on the same traffic",
        description="Run window strategies (exact, bucket rings, the engine's tiers, decaying counters, "
                    "tumbling windows, Prometheus emulation) under alerting policies (the SRE Workbook's "
                    "six approaches, Sloth, Pyrra, sloburn's guards) over seeded scenarios or your own "
                    "traffic; print Markdown tables and write CSV and PNG files.")
    add_strategies_arguments(s)
    s.set_defaults(func=run_strategies)


def _import_bench() -> Any:
    try:
        import bench.strategies.__main__ as harness
    except ModuleNotFoundError as e:
        if e.name not in ("bench", "bench.strategies"):
            raise
        # An editable install of a source checkout: bench/ sits next to engine/.
        root = Path(__file__).resolve().parent.parent
        if not (root / "bench" / "strategies" / "__init__.py").is_file():
            return None
        sys.path.insert(0, str(root))
        import bench.strategies.__main__ as harness
    return harness


def run_strategies(args: argparse.Namespace) -> int:
    harness = _import_bench()
    if harness is None:
        print("sloburn bench strategies: expected the bench package of a source checkout next to engine/, "
              "found none (run it from a clone of the repository)", file=sys.stderr)
        return EXIT_USAGE
    argv = sys.argv[1:]
    command = "sloburn bench strategies"
    if argv[:2] == ["bench", "strategies"]:
        command = "sloburn " + " ".join(argv)
    return int(harness.run(args, command))
