"""``ptv2 train CONFIG.yaml [--set key=value ...] --output-dir DIR``."""

from __future__ import annotations

import argparse
import json

from ptuning_v2.cli.arguments import add_overrides
from ptuning_v2.config import ConfigError, read_config_file


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a method on a task from a YAML config")
    p.add_argument("config", nargs="?", help="YAML run config (defaults if omitted)")
    add_overrides(p, "override a config field, e.g. --set train.lr=5e-3 --set prompt.num_virtual_tokens=32")
    p.add_argument("--output-dir", help="where metrics.json, log.jsonl and the checkpoint go (or output_dir)")
    p.add_argument(
        "--resume", action="store_true", help="continue exactly from the newest state in OUTPUT_DIR/states"
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace a previous run in OUTPUT_DIR (refused otherwise)"
    )
    p.add_argument(
        "--pause-at-step", type=int, help="stop after this many steps; continue later with --resume"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ptuning_v2.methods import load_run_config
    from ptuning_v2.training.multitask_config import is_multitask_config
    from ptuning_v2.training.recipe import train_run

    if args.config and is_multitask_config(read_config_file(args.config)):
        raise ConfigError(
            f"{args.config}: a multi-task config (it lists tasks): use ptv2 train-multi {args.config}"
        )
    config = load_run_config(args.config, args.overrides)
    output_dir = args.output_dir or config.output_dir
    if not output_dir:
        raise FileNotFoundError("no output directory: pass --output-dir DIR or set output_dir in the config")
    metrics = train_run(
        config,
        output_dir,
        resume=args.resume,
        show_progress=not args.no_progress,
        pause_at_step=args.pause_at_step,
        overwrite=args.overwrite,
    )
    if "paused_at_step" in metrics:
        print(f"paused at step {metrics['paused_at_step']}; continue with --resume --output-dir {output_dir}")
        return 0
    print(json.dumps(summary(metrics), indent=2))
    return 0


def summary(metrics: dict) -> dict:
    """The headline numbers (no per-class tables) for the terminal."""

    def flat(d: dict) -> dict:
        return {
            k: round(v, 4) if isinstance(v, float) else v for k, v in d.items() if not isinstance(v, dict)
        }

    keys = (
        "method",
        "task",
        "model",
        "trainable_params",
        "trainable_share",
        "train_seconds",
        "checkpoint_bytes",
    )
    return {
        "dev": flat(metrics["dev"]),
        "test": flat(metrics["test"]),
        **{k: metrics[k] for k in keys if k in metrics},
    }
