"""Side-by-side comparison of fine-tuning methods on one task, one split and one budget.

Every method runs in its own process (``python -m ptuning_v2.evaluation.compare RUN_CONFIG DIR``),
so each run's peak memory is its own (the parent reads it with ``os.wait4``) and a method that
crashes cannot take the others down. All methods get the same config; only the values a method's
own defaults set (its learning rates, say) differ, unless the config pins them, and
``method_overrides`` can change any field for one method.
"""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ptuning_v2.config import ConfigError, RunConfig, apply_overrides, read_config_file, with_method_defaults
from ptuning_v2.utils.io import atomic_write, write_json_atomic, write_text_atomic

DEFAULT_METHODS = (
    "full",
    "linear_probe",
    "prompt_tuning",
    "ptuning_v1",
    "prefix_tuning",
    "ptuning_v2",
    "lora",
)
CHILD_FILE = "child.json"
LOG_FILE = "train.log"
ROW_FILE = "row.json"


def read_base_config(path: str | Path, overrides: list[str]) -> dict[str, Any]:
    """The user's YAML config and ``--set`` overrides as a dict, before any method's defaults."""
    return apply_overrides(read_config_file(path), overrides)


def method_config(base: dict[str, Any], method: str, overrides: list[str], source: str) -> RunConfig:
    """``base`` (the user's config, before any method defaults) for ``method``, with its defaults under it."""
    data = apply_overrides(copy.deepcopy(base), overrides)
    data["method"] = method
    return RunConfig.from_dict(with_method_defaults(data), f"{source} ({method})")


def run_method(run: RunConfig, directory: Path) -> dict[str, Any]:
    """Train one method in a child process; its row of the comparison, failed or not."""
    directory.mkdir(parents=True, exist_ok=True)
    config_path = write_json_atomic(directory / "run_config.json", run.to_dict())
    started = time.perf_counter()
    with open(directory / LOG_FILE, "w", encoding="utf-8") as log:
        child = subprocess.Popen(
            [sys.executable, "-m", "ptuning_v2.evaluation.compare", str(config_path), str(directory)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
    row: dict[str, Any] = {
        "method": run.method,
        "lr": run.train.lr,
        "head_lr": run.train.head_lr,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "peak_rss_bytes": usage.ru_maxrss * 1024,  # Linux reports KiB
        "run_dir": str(directory),
    }
    metrics_path, child_path = directory / "metrics.json", directory / CHILD_FILE
    if child.returncode != 0 or not metrics_path.is_file():
        return {**row, "status": "failed", "error": failure_reason(directory / LOG_FILE, child.returncode)}
    metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    child_info = json.loads(child_path.read_text(encoding="utf-8")) if child_path.is_file() else {}
    row = {
        **row,
        "status": "ok",
        "dev": metrics["dev"],
        "test": metrics["test"],
        "trainable_params": metrics["trainable_params"],
        "total_params": metrics["total_params"],
        "trainable_share": metrics["trainable_share"],
        "checkpoint_bytes": metrics["checkpoint_bytes"],
        "train_seconds": metrics["train_seconds"],
        "steps": metrics["steps"],
        "train_examples": metrics["train_examples"],
        "peak_cuda_bytes": child_info.get("peak_cuda_bytes"),
    }
    write_json_atomic(directory / ROW_FILE, row)
    return row


def finished_row(run: RunConfig, directory: Path) -> dict[str, Any] | None:
    """The row of an earlier successful run in ``directory`` of exactly this config, else None.

    Seeded runs of the same config give the same numbers, so an interrupted or extended comparison
    only needs to train the methods whose config changed.
    """
    config_path, row_path = directory / "run_config.json", directory / ROW_FILE
    if not (config_path.is_file() and row_path.is_file() and (directory / "metrics.json").is_file()):
        return None
    if json.loads(config_path.read_text(encoding="utf-8")) != run.to_dict():
        return None
    row = json.loads(row_path.read_text(encoding="utf-8"))
    return {**row, "reused": True} if row.get("status") == "ok" else None


def failure_reason(log_path: Path, returncode: int) -> str:
    """The last non-empty line of the run's log (the exception, as a rule) and the exit status."""
    lines = [line.strip() for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines()]
    last = next((line for line in reversed(lines) if line), "no output")
    return f"{last} (exit status {returncode})"


def run_comparison(
    base: dict[str, Any],
    methods: list[str],
    output_dir: str | Path,
    *,
    runs_dir: str | Path | None = None,
    method_overrides: dict[str, list[str]] | None = None,
    source: str = "config",
    command: str | None = None,
    reuse: bool = False,
) -> dict[str, Any]:
    """Run every method, then write ``comparison.json``, ``comparison.md`` and ``comparison.png``.

    With ``reuse``, a method whose run directory already holds a finished run of the identical
    config is read back instead of trained again.
    """
    output_dir = Path(output_dir)
    runs_dir = Path(runs_dir) if runs_dir else output_dir / "runs"
    method_overrides = method_overrides or {}
    unknown = sorted(set(method_overrides) - set(methods))
    if unknown:
        raise ConfigError(f"per-method overrides for {unknown}, which are not among the compared methods")
    reference = RunConfig.from_dict(with_method_defaults(copy.deepcopy(base)), source)
    from ptuning_v2.tasks import get_task  # importing tasks loads datasets; keep the CLI start fast

    task_cls = get_task(reference.task)
    rows = []
    for method in methods:
        print(f"[compare] {method} ...", file=sys.stderr, flush=True)
        try:
            run = method_config(base, method, method_overrides.get(method, []), source)
        except ConfigError as exc:
            rows.append({"method": method, "status": "failed", "error": str(exc)})
            continue
        row = finished_row(run, runs_dir / method) if reuse else None
        rows.append(row or run_method(run, runs_dir / method))
        status = rows[-1]["status"] + (" (reused the finished run)" if row else "")
        print(f"[compare] {method}: {status}", file=sys.stderr, flush=True)
    result = {
        "command": command,
        "task": reference.task,
        "model": reference.model,
        "data": reference.data.name or reference.data.train,
        "metric": reference.train.metric_for_best or task_cls.main_metric,
        "higher_is_better": task_cls.higher_is_better,
        "budget": budget(reference),
        "method_overrides": method_overrides,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "methods": rows,
    }
    write_json_atomic(output_dir / "comparison.json", result)
    write_text_atomic(output_dir / "comparison.md", markdown_report(result))
    plot(result, output_dir / "comparison.png")
    return result


def budget(run: RunConfig) -> dict[str, Any]:
    """What every method shared: data sizes, steps or epochs, batch, sequence length, seed."""
    train = run.train
    return {
        "max_train_examples": run.data.max_train_examples,
        "max_eval_examples": run.data.max_eval_examples,
        "max_steps": train.max_steps,
        "epochs": None if train.max_steps else train.epochs,
        "batch_size": train.batch_size,
        "max_length": train.max_length,
        "eval_every": train.eval_every,
        "seed": train.seed,
        "prompt_length": run.prompt.num_virtual_tokens,
    }


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


def markdown_report(result: dict[str, Any]) -> str:
    metric = result["metric"]
    b = result["budget"]
    length = f"{b['max_steps']} steps" if b["max_steps"] else f"{b['epochs']} epochs"
    lines = [
        f"# Method comparison: {result['task']} on {result['data']} with {result['model']}",
        "",
        f"Command: `{result['command']}`" if result["command"] else "",
        "",
        f"Budget (same for every method): {length}, batch {b['batch_size']}, max_length {b['max_length']}, "
        f"train examples {b['max_train_examples'] or 'all'}, eval examples {b['max_eval_examples'] or 'all'}, "
        f"seed {b['seed']}, prompt length {b['prompt_length']}; device {result['device']}.",
        "Metric of the best dev checkpoint on dev and test; memory is the peak RSS of the method's process"
        + (" (and peak CUDA memory)." if result["device"] == "cuda" else "."),
        "",
        f"| method | status | dev {metric} | test {metric} | trainable params | share | checkpoint | "
        "train time | peak memory | lr / head lr |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["methods"]:
        dev, test = _metric(row, "dev", metric), _metric(row, "test", metric)
        memory = _size(row.get("peak_rss_bytes"))
        if row.get("peak_cuda_bytes"):
            memory += f" (CUDA {_size(row['peak_cuda_bytes'])})"
        share = row.get("trainable_share")
        lr = f"{row['lr']:g} / {row['head_lr']:g}" if "lr" in row else "-"
        train_time = f"{row['train_seconds']:.0f} s" if "train_seconds" in row else "-"
        lines.append(
            f"| {row['method']} | {row['status']} | {'-' if dev is None else f'{dev:.4f}'} | "
            f"{'-' if test is None else f'{test:.4f}'} | {_count(row.get('trainable_params'))} | "
            f"{'-' if share is None else f'{share:.3%}'} | {_size(row.get('checkpoint_bytes'))} | "
            f"{train_time} | {memory} | {lr} |"
        )
    reused = [row["method"] for row in result["methods"] if row.get("reused")]
    if reused:
        lines += [
            "",
            f"Read back from an earlier run of the identical config (`--reuse`): {', '.join(reused)}.",
        ]
    failed = [row for row in result["methods"] if row["status"] != "ok"]
    if failed:
        lines += ["", "Failed runs:", ""]
        lines += [f"- {row['method']}: {row['error']}" for row in failed]
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    """Test metric (dev where there is no test split) against trainable parameters, log x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = result["metric"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    split = "test"
    for row in result["methods"]:
        if row["status"] != "ok":
            continue
        split = "test" if row["test"] else "dev"
        y, x = _metric(row, split, metric), row["trainable_params"]
        ax.scatter(x, y, s=40)
        ax.annotate(row["method"], (x, y), textcoords="offset points", xytext=(5, 4), fontsize=9)
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel(f"{split} {metric}")
    ax.set_title(f"{result['task']} on {result['data']} ({result['model']})")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


def _child_main(config_path: str, directory: str) -> None:
    """One method's run, in its own process: train, then record the CUDA peak next to metrics.json."""
    from ptuning_v2.training.recipe import train_run

    run = RunConfig.from_dict(json.loads(Path(config_path).read_text(encoding="utf-8")), config_path)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    train_run(run, directory, show_progress=False)
    peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
    write_json_atomic(Path(directory) / CHILD_FILE, {"peak_cuda_bytes": peak})


if __name__ == "__main__":
    _child_main(*sys.argv[1:3])
