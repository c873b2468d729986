"""``ptv2 demo``: the main job. P-Tuning v2 on MiniLM + Rotten Tomatoes, and a linear probe beside it.

The two runs go through the comparison runner (each in its own process, on the same budget) and
its table; ``metrics.json`` keeps the demo's own layout: the P-Tuning v2 run's metrics, the linear
probe's under ``baseline_linear_probe``, and a short ``summary``.
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path
from typing import Any

from ptuning_v2.cli.arguments import add_overrides
from ptuning_v2.utils.io import write_json_atomic

METHODS = ("ptuning_v2", "linear_probe")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="train P-Tuning v2 on MiniLM + Rotten Tomatoes (~5 min on 2 CPU cores)")
    p.add_argument("--output-dir", default="runs/demo", help="where metrics.json and both runs go")
    add_overrides(p, "override the demo config (applies to both runs)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ptuning_v2.experiments.report import markdown_report
    from ptuning_v2.experiments.runner import read_base_config, run_comparison
    from ptuning_v2.recipes import recipe_path

    output = Path(args.output_dir)
    command = ["ptv2", "demo", "--output-dir", args.output_dir]
    for override in args.overrides:
        command += ["--set", override]
    print("== P-Tuning v2 and a linear probe on the demo budget, each in its own process", flush=True)
    result = run_comparison(
        read_base_config(recipe_path("demo"), args.overrides),
        list(METHODS),
        output,
        runs_dir=output,
        source="demo recipe",
        command=shlex.join(command),
        show_progress=not args.no_progress,
    )
    print(markdown_report(result))
    if any(row["status"] != "ok" for row in result["methods"]):
        return 1
    results = {m: json.loads((output / m / "metrics.json").read_text(encoding="utf-8")) for m in METHODS}
    report = demo_report(results, result["model"], result["data"])
    write_json_atomic(
        output / "metrics.json",
        {**results["ptuning_v2"], "baseline_linear_probe": results["linear_probe"], "summary": report},
    )
    pt, lp = report["runs"]["ptuning_v2"], report["runs"]["linear_probe"]
    print(f"P-Tuning v2 vs linear probe on test: {pt['test_accuracy'] - lp['test_accuracy']:+.2%} accuracy")
    print(f"(details: {output / 'metrics.json'}; each run's log and checkpoint under {output}/<method>/)")
    return 0


def demo_report(results: dict[str, dict[str, Any]], model: str, data: str) -> dict[str, Any]:
    """The ``summary`` of metrics.json: each run's headline numbers."""

    def row(m: dict[str, Any]) -> dict[str, Any]:
        return {
            "dev_accuracy": m["dev"]["accuracy"],
            "test_accuracy": m["test"]["accuracy"],
            "test_macro_f1": m["test"]["macro_f1"],
            "trainable_params": m["trainable_params"],
            "trainable_share": m["trainable_share"],
            "train_seconds": m["train_seconds"],
            "steps": m["steps"],
            "checkpoint_bytes": m["checkpoint_bytes"],
        }

    return {"model": model, "data": data, "runs": {k: row(v) for k, v in results.items()}}
