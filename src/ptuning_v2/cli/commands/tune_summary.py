"""``ptv2 tune-summary DIR``: one table of every search under ``DIR`` (``DIR/<data set>/<method>/study.db``)."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tune-summary", help="one table of many ptv2 tune studies (DIR/<data set>/<method>/study.db)"
    )
    p.add_argument("root", help="folder holding one ptv2 tune output folder per data set and method")
    p.add_argument("--output-dir", help="where summary.md and summary.json go (default: ROOT)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ptuning_v2.tuning.summary import write_summary

    output_dir = Path(args.output_dir or args.root)
    command = shlex.join(
        ["ptv2", "tune-summary", args.root, *(["--output-dir", args.output_dir] * bool(args.output_dir))]
    )
    rows = write_summary(Path(args.root), output_dir, command)
    print(f"{len(rows)} studies -> {output_dir / 'summary.md'}")
    return 0
