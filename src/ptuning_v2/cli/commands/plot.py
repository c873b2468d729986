"""``ptv2 plot RUN_DIR [RUN_DIR ...] [--output FILE.png]``: training curves of one or several runs."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plot", help="draw training loss and dev metric against steps from runs' log.jsonl into a PNG"
    )
    p.add_argument(
        "runs",
        nargs="+",
        metavar="RUN_DIR",
        help="folders written by `ptv2 train` (or their log.jsonl files)",
    )
    p.add_argument(
        "--output", help="image file: .png, .svg or .pdf (default: FIRST_RUN_DIR/training_curves.png)"
    )
    p.add_argument(
        "--metric", help="dev metric to draw (default: the one each run selected its checkpoint by)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ptuning_v2.training.curves import default_output, plot_curves, read_curve

    curves = [read_curve(path, args.metric) for path in args.runs]
    output = plot_curves(curves, args.output or default_output(args.runs[0]))
    for curve in curves:
        last = f", last dev {curve.metric} {curve.dev[-1][1]:.4f}" if curve.dev else ""
        print(
            f"{curve.label} ({curve.source}): {len(curve.loss)} loss points, {len(curve.dev)} dev points{last}"
        )
    print(f"wrote {output}")
    return 0
