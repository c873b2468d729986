"""``ptv2 compare-summary DIR``: one table of every comparison under ``DIR`` (``DIR/<data set>/comparison.json``)."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare-summary",
        help="one table of many ptv2 compare results (DIR/<data set>/comparison.json), with differences",
    )
    p.add_argument("root", help="folder holding one ptv2 compare output folder per data set")
    p.add_argument(
        "--reference",
        default="ptuning_v2",
        help="the method every other is subtracted from in the differences table (default ptuning_v2)",
    )
    p.add_argument("--output-dir", help="where summary.md and summary.json go (default: ROOT)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ptuning_v2.experiments.summary import write_summary

    output_dir = Path(args.output_dir or args.root)
    words = ["ptv2", "compare-summary", args.root]
    if args.reference != "ptuning_v2":
        words += ["--reference", args.reference]
    if args.output_dir:
        words += ["--output-dir", args.output_dir]
    sets = write_summary(Path(args.root), output_dir, args.reference, shlex.join(words))
    print(f"{len(sets)} comparisons -> {output_dir / 'summary.md'}")
    return 0
