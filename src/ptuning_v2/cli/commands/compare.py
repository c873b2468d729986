"""``ptv2 compare CONFIG.yaml --methods a,b,... --output-dir DIR``: methods side by side on one budget.

``untuned`` among the methods adds the frozen backbone, scored on test with no prompt and no training
(the baseline of a generation task).
"""

from __future__ import annotations

import argparse
import shlex

from ptuning_v2.cli.arguments import add_overrides
from ptuning_v2.config import ConfigError, finite_float


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="train several methods on the same data and budget; write comparison.json/.md/.png",
    )
    p.add_argument("config", help="YAML run config shared by all methods (its 'method' field is ignored)")
    p.add_argument(
        "--methods",
        help="comma-separated methods, and 'untuned' for the untrained backbone "
        "(default: every method of the registry but variants; `ptv2 params MODEL` lists them all)",
    )
    p.add_argument("--output-dir", required=True, help="where comparison.json, .md and .png go")
    p.add_argument(
        "--runs-dir", help="where each method's run (checkpoint, logs) goes (default OUTPUT_DIR/runs)"
    )
    add_overrides(p, "override a config field for every method, e.g. --set train.max_steps=200")
    p.add_argument(
        "--method-set",
        dest="method_overrides",
        action="append",
        default=[],
        metavar="METHOD:KEY=VALUE",
        help="override a field for one method, e.g. --method-set full:train.lr=5e-5",
    )
    p.add_argument(
        "--reuse",
        action="store_true",
        help="read back a method's finished run of the identical config in the runs dir instead of training it again",
    )
    p.add_argument(
        "--tune",
        type=int,
        metavar="N",
        help="first give every method N `ptv2 tune` trials on dev (OUTPUT_DIR/tune/METHOD, resumable), "
        "then compare the best configs on test",
    )
    p.add_argument(
        "--seeds",
        type=int,
        default=1,
        metavar="K",
        help="run every method with K seeds (train.seed, +1, ...); report mean ± std and error bars",
    )
    p.add_argument(
        "--budget-seconds",
        type=finite_float,
        metavar="S",
        help="give every method S seconds of training (train.max_seconds) instead of the same steps",
    )
    p.set_defaults(func=run)


def parse_method_overrides(items: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for item in items:
        method, sep, override = item.partition(":")
        if not sep or not method or "=" not in override:
            raise ConfigError(f"--method-set {item!r}: expected METHOD:KEY=VALUE")
        out.setdefault(method.strip(), []).append(override)
    return out


def command_line(args: argparse.Namespace, methods: list[str]) -> str:
    """The command, rebuilt from its arguments, for the report."""
    parts = ["ptv2", "compare", args.config, "--methods", ",".join(methods), "--output-dir", args.output_dir]
    if args.runs_dir:
        parts += ["--runs-dir", args.runs_dir]
    for override in args.overrides:
        parts += ["--set", override]
    for override in args.method_overrides:
        parts += ["--method-set", override]
    if args.reuse:
        parts.append("--reuse")
    if args.tune:
        parts += ["--tune", str(args.tune)]
    if args.seeds != 1:
        parts += ["--seeds", str(args.seeds)]
    if args.budget_seconds is not None:
        parts += ["--budget-seconds", f"{args.budget_seconds:g}"]
    return shlex.join(parts)


def run(args: argparse.Namespace) -> int:
    from ptuning_v2.experiments.report import markdown_report
    from ptuning_v2.experiments.runner import check_methods, default_methods, read_base_config, run_comparison

    methods = (
        default_methods()
        if args.methods is None
        else [m.strip() for m in args.methods.split(",") if m.strip()]
    )
    check_methods(methods)
    result = run_comparison(
        read_base_config(args.config, args.overrides),
        methods,
        args.output_dir,
        runs_dir=args.runs_dir,
        method_overrides=parse_method_overrides(args.method_overrides),
        source=args.config,
        command=command_line(args, methods),
        reuse=args.reuse,
        tune_trials=args.tune,
        seeds=args.seeds,
        budget_seconds=args.budget_seconds,
    )
    print(markdown_report(result))
    return 1 if any(row["status"] != "ok" for row in result["methods"]) else 0
