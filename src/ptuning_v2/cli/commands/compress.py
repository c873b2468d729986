"""``ptv2 compress CHECKPOINT --rank R | --variance V --output-dir DIR``: PCA-compress a prompt checkpoint.

The compressed folder loads like any checkpoint (``ptv2 eval`` / ``predict``, ``load_trained``);
``--expand`` writes the dense checkpoint back, to compress it again at another rank.
"""

from __future__ import annotations

import argparse

from ptuning_v2.config import finite_float


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compress", help="store each prompt layer as low-rank PCA factors (a smaller checkpoint)"
    )
    p.add_argument("checkpoint", help="checkpoint folder of a deep-prompt run (ptuning_v2, prefix_tuning)")
    p.add_argument("--rank", type=int, help="components kept per layer (at most min(length, width))")
    p.add_argument(
        "--variance",
        type=finite_float,
        help="keep per layer the fewest components explaining this share of variance, e.g. 0.99 "
        "(with --rank: at most R components)",
    )
    p.add_argument("--expand", action="store_true", help="write a compressed checkpoint back as dense")
    p.add_argument("--output-dir", required=True, help="where the new checkpoint folder goes")
    p.add_argument("--overwrite", action="store_true", help="write into an --output-dir that is not empty")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ptuning_v2.config import ConfigError
    from ptuning_v2.trained.compression import compress_checkpoint, expand_checkpoint, format_report

    if args.expand:
        if args.rank is not None or args.variance is not None:
            raise ConfigError("--expand: takes no --rank or --variance (it restores the dense prompts)")
        print(
            f"dense checkpoint written to {expand_checkpoint(args.checkpoint, args.output_dir, args.overwrite)}"
        )
        return 0
    report = compress_checkpoint(args.checkpoint, args.output_dir, args.rank, args.variance, args.overwrite)
    print(format_report(report))
    print(f"compressed checkpoint written to {args.output_dir} (report: compression_report.json)")
    return 0
