"""``ptv2 demo``: the main job. P-Tuning v2 on MiniLM + Rotten Tomatoes, and a linear probe beside it."""

from __future__ import annotations

import argparse
from pathlib import Path

from ptuning_v2.cli.arguments import add_overrides
from ptuning_v2.utils.io import write_json_atomic


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="train P-Tuning v2 on MiniLM + Rotten Tomatoes (~5 min on 2 CPU cores)")
    p.add_argument("--output-dir", default="runs/demo", help="where metrics.json and both runs go")
    add_overrides(p, "override the demo config (applies to both runs)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ptuning_v2.config import load_run_config
    from ptuning_v2.recipes import recipe_path
    from ptuning_v2.training.recipe import train_run

    output = Path(args.output_dir)
    results = {}
    for method in ("ptuning_v2", "linear_probe"):
        print(f"== {method}: training on the demo budget", flush=True)
        config = load_run_config(recipe_path("demo"), [*args.overrides, f"method={method}"])
        results[method] = train_run(
            config, output / method, show_progress=not args.no_progress, overwrite=True
        )
    report = demo_report(results)
    write_json_atomic(
        output / "metrics.json",
        {**results["ptuning_v2"], "baseline_linear_probe": results["linear_probe"], "summary": report},
    )
    print(format_report(report))
    print(f"(details: {output / 'metrics.json'}; each run's log and checkpoint under {output}/<method>/)")
    return 0


def demo_report(results: dict[str, dict]) -> dict:
    def row(m: dict) -> dict:
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

    return {"model": "minilm", "data": "rotten_tomatoes", "runs": {k: row(v) for k, v in results.items()}}


def format_report(report: dict) -> str:
    lines = [
        f"\nP-Tuning v2 demo: {report['model']} on {report['data']} (dev/test: fixed seeded split)",
        f"{'method':14} {'dev acc':>8} {'test acc':>8} {'trained params':>15} {'share':>8} {'train s':>8} {'ckpt':>9}",
    ]
    for name, r in report["runs"].items():
        lines.append(
            f"{name:14} {r['dev_accuracy']:8.4f} {r['test_accuracy']:8.4f} {r['trainable_params']:15,d} "
            f"{r['trainable_share']:8.3%} {r['train_seconds']:8.1f} {r['checkpoint_bytes'] / 1024:7.0f}KB"
        )
    pt, lp = report["runs"]["ptuning_v2"], report["runs"]["linear_probe"]
    delta = pt["test_accuracy"] - lp["test_accuracy"]
    lines.append(f"P-Tuning v2 vs linear probe on test: {delta:+.2%} accuracy")
    return "\n".join(lines)
