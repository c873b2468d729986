"""``ptv2 tune CONFIG.yaml --trials N --output-dir DIR``: search hyper-parameters on dev, test the best once."""

from __future__ import annotations

import argparse
import json
import shlex

from ptuning_v2.cli.arguments import add_overrides
from ptuning_v2.config import finite_float


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tune",
        help="Optuna search (TPE, median pruning) on the dev split; best.yaml, trials table, plots, test once",
    )
    p.add_argument("config", help="YAML run config; its method is tuned, its tune: section changes the space")
    p.add_argument(
        "--trials",
        type=int,
        required=True,
        help="trials the study should have in total (resuming counts old)",
    )
    p.add_argument("--timeout", type=finite_float, help="start no new trial after this many seconds")
    p.add_argument(
        "--output-dir", required=True, help="study.db, best.yaml, trials.csv/.md, plots, trials/, best/"
    )
    p.add_argument(
        "--storage", help="Optuna storage URL (default sqlite:///OUTPUT_DIR/study.db), e.g. postgresql://..."
    )
    p.add_argument("--study-name", help="name of the study in the storage (default: the method)")
    add_overrides(p, "override a config field, e.g. --set train.max_steps=300")
    p.add_argument("--seed", type=int, help="sampler seed (default train.seed); give each worker its own")
    p.add_argument(
        "--prune-after",
        type=int,
        default=4,
        metavar="N",
        help="median pruning starts once N trials have finished (default 4)",
    )
    p.add_argument("--no-pruning", action="store_true", help="let every trial run to the end")
    p.add_argument(
        "--no-final",
        action="store_true",
        help="do not retrain the best config and test it (extra workers sharing a study)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar for the final run")
    p.set_defaults(func=run)


def command_line(args: argparse.Namespace) -> str:
    parts = ["ptv2", "tune", args.config, "--trials", str(args.trials), "--output-dir", args.output_dir]
    for flag in ("timeout", "storage", "study_name", "seed"):
        if getattr(args, flag) is not None:
            parts += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    for override in args.overrides:
        parts += ["--set", override]
    if args.no_pruning:
        parts.append("--no-pruning")
    elif args.prune_after != 4:
        parts += ["--prune-after", str(args.prune_after)]
    if args.no_final:
        parts.append("--no-final")
    return shlex.join(parts)


def run(args: argparse.Namespace) -> int:
    from ptuning_v2.config import apply_overrides, read_config_file
    from ptuning_v2.tuning.search import run_tuning

    summary = run_tuning(
        apply_overrides(read_config_file(args.config), args.overrides),
        args.output_dir,
        trials=args.trials,
        timeout=args.timeout,
        storage=args.storage,
        study_name=args.study_name,
        seed=args.seed,
        prune_after=None if args.no_pruning else args.prune_after,
        final=not args.no_final,
        source=args.config,
        command=command_line(args),
        show_progress=not args.no_progress,
    )
    print(
        json.dumps({k: summary[k] for k in ("study_name", "trials", "best", "final")}, indent=2, default=str)
    )
    return 0
