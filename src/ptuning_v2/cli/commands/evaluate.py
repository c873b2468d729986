"""``ptv2 eval CHECKPOINT --output-dir DIR``: metrics of a trained checkpoint on its data (or other data)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ptuning_v2.cli.arguments import add_overrides
from ptuning_v2.cli.commands.train import summary


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint on dev and test")
    p.add_argument("checkpoint", help="checkpoint folder (OUTPUT_DIR/checkpoint of a training run)")
    add_overrides(p, "change the data, e.g. --set data.test=other.csv --set data.name=null")
    p.add_argument("--output-dir", required=True, help="where metrics.json goes")
    p.add_argument("--overwrite", action="store_true", help="replace a metrics.json already in --output-dir")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ptuning_v2.training.recipe import evaluate_checkpoint

    metrics = evaluate_checkpoint(
        Path(args.checkpoint), Path(args.output_dir), args.overrides, args.overwrite
    )
    print(json.dumps(summary(metrics), indent=2))
    return 0
