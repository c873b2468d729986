"""The one table printer of experiments: ``comparison.md`` and ``comparison.png`` from a comparison result.

``ptv2 compare``, ``ptv2 demo`` and the untuned baseline all print this table; the result dict is
what :func:`ptuning_v2.experiments.runner.run_comparison` writes to ``comparison.json``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ptuning_v2.experiments import UNTUNED
from ptuning_v2.utils.io import atomic_write


def _metric(row: dict[str, Any], split: str, metric: str) -> float | None:
    value = row.get(split, {}).get(metric)
    return None if value is None else float(value)


def _size(n_bytes: float | None) -> str:
    if n_bytes is None:
        return "-"
    if n_bytes < 1024:
        return f"{n_bytes:.0f} B"
    exponent = min(int(math.log(n_bytes, 1024)), 3)
    return f"{n_bytes / 1024**exponent:.1f} {('B', 'KiB', 'MiB', 'GiB')[exponent]}"


def _count(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}K" if n >= 1e3 else str(n)


def mean_spread(mean: float, std: float | None) -> str:
    """``mean`` or ``mean ± std`` (over seeds): how every comparison table prints a metric."""
    return f"{mean:.4f}" if std is None else f"{mean:.4f} ± {std:.4f}"


def _value(row: dict[str, Any], split: str, metric: str) -> str:
    """One metric of a method's row, ``-`` when there is none."""
    mean = _metric(row, split, metric)
    if mean is None:
        return "-"
    return mean_spread(mean, row.get(f"{split}_std", {}).get(metric))


def markdown_report(result: dict[str, Any]) -> str:
    metric = result["metric"]
    b = result["budget"]
    seeds = result.get("seeds") or [b["seed"]]
    length = f"{b['max_steps']} steps" if b["max_steps"] else f"{b['epochs']} epochs"
    if b.get("max_seconds"):
        length = f"{b['max_seconds']:g} s of training each (evaluation not counted; steps differ), at most {length}"
    prompt_text = (
        f"prompt length {b['prompt_length']}"
        if b.get("prompt_length")
        else "each prompt method at its own default prompt length"
    )
    seed_text = f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {', '.join(map(str, seeds))}"
    lines = [
        f"# Method comparison: {result['task']} on {result['data']} with {result['model']}",
        "",
        f"Command: `{result['command']}`" if result["command"] else "",
        "",
        f"Budget (same for every method): {length}, batch {b['batch_size']}, max_length {b['max_length']}, "
        f"train examples {b['max_train_examples'] or 'all'}, eval examples {b['max_eval_examples'] or 'all'}, "
        f"{seed_text}, {prompt_text}{' unless tuned' if result.get('tune_trials') else ''}; "
        f"device {result['device']}.",
        "Metric of the best dev checkpoint on dev and test; memory is the peak RSS of the method's process"
        + (" (and peak CUDA memory)." if result["device"] == "cuda" else "."),
    ]
    if len(seeds) > 1:
        lines.append(
            f"Metrics are mean ± sample standard deviation over {len(seeds)} runs per method (one per seed; "
            "the seed sets initialisation, data order and any max_*_examples subsets); times, steps and "
            "memory are means."
        )
    if result.get("tune_trials"):
        lines.append(
            f"Hyper-parameters: each method's best of {result['tune_trials']} `ptv2 tune` trials on dev "
            "(values below the table; studies and trial tables in OUTPUT_DIR/tune/METHOD/)."
        )
    lines += [
        "",
        f"| method | status | dev {metric} | test {metric} | trainable params | share | checkpoint | "
        "train time | steps | peak memory | lr / head lr |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["methods"]:
        memory = _size(row.get("peak_rss_bytes"))
        if row.get("peak_cuda_bytes"):
            memory += f" (CUDA {_size(row['peak_cuda_bytes'])})"
        share = row.get("trainable_share")
        lr = f"{row['lr']:g} / {row['head_lr']:g}" if "lr" in row else "-"
        train_time = f"{row['train_seconds']:.0f} s" if row.get("train_seconds") is not None else "-"
        steps = f"{row['steps']:.0f}" if row.get("steps") is not None else "-"
        lines.append(
            f"| {row['method']} | {row['status']} | {_value(row, 'dev', metric)} | "
            f"{_value(row, 'test', metric)} | {_count(row.get('trainable_params'))} | "
            f"{'-' if share is None else f'{share:.3%}'} | {_size(row.get('checkpoint_bytes'))} | "
            f"{train_time} | {steps} | {memory} | {lr} |"
        )
    tuned = [row for row in result["methods"] if row.get("tuned")]
    if tuned:
        lines += ["", "Tuned values (best trial, its dev score):", ""]
        for row in tuned:
            t = row["tuned"]
            values = ", ".join(
                f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in t["params"].items()
            )
            lines.append(f"- {row['method']}: trial {t['best_trial']}, dev {metric} {t['dev']:.4f}: {values}")
    reused = [row["method"] for row in result["methods"] if row.get("reused")]
    if reused:
        lines += [
            "",
            f"Read back from an earlier run of the identical config (`--reuse`): {', '.join(reused)}.",
        ]
    if any(row["method"] == UNTUNED for row in result["methods"]):
        lines += [
            "",
            f"{UNTUNED}: the frozen backbone with a new (untrained) head where the task has one, no prompt and "
            "no training, scored on test only.",
        ]
    failed = [row for row in result["methods"] if row["status"] != "ok"]
    if failed:
        lines += ["", "Failed runs:", ""]
        lines += [f"- {row['method']}: {row['error']}" for row in failed]
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    """Test metric (dev where there is no test split) against trainable parameters, log x.

    Over several seeds each method is its mean with ± one standard deviation as an error bar, and
    every seed's run as a faint dot. A row with nothing trained (the untuned baseline) has no place on
    a log axis: it is a dashed horizontal line.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = result["metric"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    split = "test"
    for index, row in enumerate(result["methods"]):
        if _metric(row, "test", metric) is None and _metric(row, "dev", metric) is None:
            continue
        split = "test" if row["test"] else "dev"
        color = f"C{index % 10}"
        y, x = _metric(row, split, metric), row["trainable_params"]
        if not x:
            ax.axhline(y, color=color, linestyle="--", linewidth=1, label=row["method"])
            ax.legend(loc="lower right", fontsize=9)
            continue
        std = row.get(f"{split}_std", {}).get(metric)
        ax.errorbar(x, y, yerr=std, fmt="o", color=color, capsize=4, markersize=6)
        for run in row.get("runs", []):
            if run["status"] == "ok":
                ax.scatter(x, _metric(run, split, metric), s=12, color=color, alpha=0.35)
        ax.annotate(row["method"], (x, y), textcoords="offset points", xytext=(6, 4), fontsize=9)
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (log scale)")
    seeds = result.get("seeds") or []
    ax.set_ylabel(f"{split} {metric}" + (f" (mean ± std, {len(seeds)} seeds)" if len(seeds) > 1 else ""))
    ax.set_title(f"{result['task']} on {result['data']} ({result['model']})")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)
