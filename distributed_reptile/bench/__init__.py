"""Inner-loop throughput benchmarks: ``distributed-reptile bench <name>``.

* ``scaling``: serial and Ray backends against a ``multiprocessing.Pool`` and a plain ``ray.remote``
  reference, for several worker counts, side by side;
* ``overhead``: orchestration cost with a no-op learner, and many simulated (sleeping) actors;
* ``weights``: broadcast, collection and meta-update time, and driver memory, against policy size;
* ``breakdown``: per-task time components and per-process memory on the Ray backend;
* ``cluster``: driver CPU and bytes per outer step on a real multi-node Ray cluster on this machine
  (nodes in network namespaces), every task's weights to the driver against partial sums;
* ``all``: the first four, with their default settings (``cluster`` needs root and runs alone).

Each writes ``<output>/<name>.json`` (machine facts, library versions, settings, figures, targets
with PASS/MISS) and ``<output>/<name>.png``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from distributed_reptile.bench import breakdown, cluster, overhead, scaling, weights
from distributed_reptile.bench.common import BenchInputError
from distributed_reptile.cli_help import HelpFormatter, add_debug_option, add_output_option

#: name -> (add_arguments, run, one-line help)
BENCHMARKS: dict[
    str,
    tuple[
        Callable[[argparse.ArgumentParser], None],
        Callable[[argparse.Namespace], dict[str, Any]],
        str,
    ],
] = {
    "scaling": (
        scaling.add_arguments,
        scaling.run,
        "seconds per outer step: serial, Ray, Pool and ray.remote references, per worker count",
    ),
    "overhead": (
        overhead.add_arguments,
        overhead.run,
        "orchestration cost: no-op learner, and many sleeping actors",
    ),
    "weights": (
        weights.add_arguments,
        weights.run,
        "weight broadcast, collection, meta-update and driver memory against policy size",
    ),
    "breakdown": (
        breakdown.add_arguments,
        breakdown.run,
        "per-task time components and per-process memory on the Ray backend",
    ),
    "cluster": (
        cluster.add_arguments,
        cluster.run,
        "driver CPU and bytes per outer step on a multi-node Ray cluster in network namespaces",
    ),
}
#: Benchmarks that ``all`` leaves out (``cluster`` needs root, network namespaces and ~15 min).
NOT_IN_ALL = frozenset({"cluster"})


def build_parser() -> argparse.ArgumentParser:
    """The ``bench`` command line: one sub-command per benchmark, and ``all``."""
    parser = argparse.ArgumentParser(
        prog="distributed-reptile bench",
        description=__doc__,
        epilog="example:\n  distributed-reptile bench overhead --output bench_results",
        formatter_class=HelpFormatter,
    )
    sub = parser.add_subparsers(dest="benchmark", required=True)
    for name, (add_arguments, _, help_text) in BENCHMARKS.items():
        p = sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=f"example:\n  distributed-reptile bench {name} --output bench_results",
            formatter_class=HelpFormatter,
        )
        add_arguments(p)
        _add_common(p)
    p = sub.add_parser(
        "all",
        help="every benchmark but cluster, with its default settings",
        description="every benchmark but cluster, with its default settings",
        epilog="example:\n  distributed-reptile bench all --output bench_results",
        formatter_class=HelpFormatter,
    )
    _add_common(p)
    return parser


def _add_common(parser: argparse.ArgumentParser) -> None:
    add_output_option(
        parser,
        "folder of the JSON and PNG files",
        default="bench_results",
        old_names=("--out-dir", "--out"),
        dest="out_dir",
    )
    parser.add_argument(
        "--strict", action="store_true", help="exit with status 1 when a target is missed"
    )
    add_debug_option(parser)


def _missed(report: dict[str, Any]) -> list[str]:
    return [t["name"] for t in report.get("targets", []) if t["status"] == "MISS"]


def cli_main(argv: list[str] | None = None) -> int:
    """Run the benchmark named in ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    :param argv: e.g. ``["scaling", "--workers", "1,2", "--output", "results"]``.
    """
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    names = (
        [n for n in BENCHMARKS if n not in NOT_IN_ALL]
        if args.benchmark == "all"
        else [args.benchmark]
    )
    missed: list[str] = []
    for name in names:
        add_arguments, run, _ = BENCHMARKS[name]
        if args.benchmark == "all":
            sub = argparse.ArgumentParser()
            add_arguments(sub)
            _add_common(sub)
            run_args = sub.parse_args(["--output", args.out_dir])
        else:
            run_args = args
        print(f"== bench {name} ==", flush=True)
        try:
            report = run(run_args)
        except (BenchInputError, FileNotFoundError) as exc:
            print(f"bench {name}: {exc}", file=sys.stderr)
            return 2
        missed += _missed(report)
    if missed:
        print(f"missed targets: {', '.join(missed)}")
    return 1 if (missed and args.strict) else 0


__all__ = ["BENCHMARKS", "NOT_IN_ALL", "build_parser", "cli_main"]
