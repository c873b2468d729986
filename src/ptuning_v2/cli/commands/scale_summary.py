"""``ptv2 scale-summary ROOT``: P-Tuning v2 against the other methods at several model sizes
(``ROOT/<model>/<data set>/comparison.json``)."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "scale-summary",
        help="one table of ptv2 compare results at several model sizes (ROOT/<model>/<data set>/), with gaps",
    )
    p.add_argument("root", help="folder holding ROOT/<model>/<data set>/comparison.json")
    p.add_argument("--output-dir", help="where scale.md and scale.json go (default: ROOT)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ptuning_v2.experiments.scale import write_scale

    output_dir = Path(args.output_dir or args.root)
    words = ["ptv2", "scale-summary", args.root] + (
        ["--output-dir", args.output_dir] if args.output_dir else []
    )
    sets = write_scale(Path(args.root), output_dir, shlex.join(words))
    print(f"{len(sets)} comparisons -> {output_dir / 'scale.md'}")
    return 0
