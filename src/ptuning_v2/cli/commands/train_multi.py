"""``ptv2 train-multi CONFIG.yaml --output-dir DIR``: several tasks on one backbone (docs/multitask.md)."""

from __future__ import annotations

import argparse
import json

from ptuning_v2.cli.arguments import add_overrides


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-multi", help="train several tasks on one frozen backbone, a prompt and a head per task"
    )
    p.add_argument(
        "config", help="YAML multi-task config (a tasks list; see configs/multitask_rt_trec_conll.yaml)"
    )
    add_overrides(
        p, "override a field, e.g. --set train.max_steps=600 --set tasks.2.prompt.num_virtual_tokens=64"
    )
    p.add_argument(
        "--output-dir", help="where metrics.json, log.jsonl and tasks/<name>/checkpoint go (or output_dir)"
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace a previous run in OUTPUT_DIR (refused otherwise)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ptuning_v2.training.multitask import train_multitask
    from ptuning_v2.training.multitask_config import load_multitask_config

    config = load_multitask_config(args.config, args.overrides)
    output_dir = args.output_dir or config.output_dir
    if not output_dir:
        raise FileNotFoundError("no output directory: pass --output-dir DIR or set output_dir in the config")
    metrics = train_multitask(
        config, output_dir, show_progress=not args.no_progress, overwrite=args.overwrite
    )
    print(json.dumps(summary(metrics), indent=2))
    return 0


def summary(metrics: dict) -> dict:
    """Per task its main metric on dev and test and its checkpoint, and the means, for the terminal."""

    def main(entry: dict, split: str) -> float | None:
        value = entry[split].get(entry["main_metric"])
        return round(value, 4) if value is not None else None

    tasks = {
        name: {
            "metric": entry["main_metric"],
            "dev": main(entry, "dev"),
            "test": main(entry, "test"),
            "steps": entry["steps"],
            "checkpoint": entry["checkpoint"],
        }
        for name, entry in metrics["tasks"].items()
    }
    mean = {k: round(v, 4) if v is not None else None for k, v in metrics["mean"].items()}
    keys = ("mix", "prompt_sharing", "steps", "trainable_params", "train_seconds")
    return {"tasks": tasks, "mean": mean, **{k: metrics[k] for k in keys}}
