"""The one comparison runner: methods side by side on one task, one split and one budget.

``ptv2 compare``, ``ptv2 demo`` and the untuned baseline (``--methods untuned,...``) all run here.
Every method runs in its own process, so each run's peak memory is its own (the parent reads it
with ``os.wait4``) and a method that crashes cannot take the others down. All methods get the same
config; only the values a method's own defaults set (its learning rates, say) differ, unless the
config pins them, and ``method_overrides`` can change any field for one method.

Fairness options: ``tune_trials`` gives every method the same number of ``ptv2 tune`` trials on dev
before its test run; ``seeds`` repeats every run with consecutive seeds and reports mean ± standard
deviation; ``budget_seconds`` gives every method the same training time instead of the same steps.
"""

from __future__ import annotations

import codecs
import copy
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

import torch

from ptuning_v2.config import ConfigError, RunConfig, apply_overrides, read_config_file
from ptuning_v2.experiments import UNTUNED
from ptuning_v2.experiments.report import markdown_report, plot
from ptuning_v2.methods import compared_methods, get_method, resolve_run_config
from ptuning_v2.tuning.space import apply_params, set_path
from ptuning_v2.utils.io import write_json_atomic, write_text_atomic

CHILD_FILE = "child.json"
LOG_FILE = "train.log"
ROW_FILE = "row.json"
# Per-run numbers averaged over seeds; the rest of a method's row is the same for every seed.
AVERAGED = ("train_seconds", "eval_seconds", "steps", "wall_seconds", "peak_rss_bytes", "peak_cuda_bytes")
SHARED = ("trainable_params", "total_params", "trainable_share", "checkpoint_bytes", "train_examples")


def read_base_config(path: str | Path, overrides: list[str]) -> dict[str, Any]:
    """The user's YAML config and ``--set`` overrides as a dict, before any method's defaults."""
    return apply_overrides(read_config_file(path), overrides)


def default_methods() -> list[str]:
    """What ``ptv2 compare`` runs when no methods are named: the registry's compared methods."""
    return compared_methods()


def check_methods(methods: list[str]) -> None:
    """Every name is a registered method or the untuned baseline."""
    if not methods:
        raise ConfigError("--methods: no method given")
    for method in methods:
        if method != UNTUNED:
            try:
                get_method(method)
            except ValueError as exc:
                raise ConfigError(f"--methods: {exc} (or {UNTUNED!r}, the untuned baseline)") from exc


def method_data(base: dict[str, Any], method: str, overrides: list[str]) -> dict[str, Any]:
    """``base`` (the user's config, before any method defaults) for ``method``, with its overrides.

    The untuned baseline keeps the config's own method: it builds nothing of it, and its run config
    then reads like the config it is the baseline of.
    """
    data = apply_overrides(copy.deepcopy(base), overrides)
    if method != UNTUNED:
        data["method"] = method
    return data


def method_config(
    data: dict[str, Any], source: str, params: dict[str, Any] | None = None, seed: int | None = None
) -> RunConfig:
    """One run of a method: its config dict with tuned ``params`` and ``seed`` set, defaults under it."""
    data = apply_params(data, params or {})
    if seed is not None:
        set_path(data, "train.seed", seed)
    return resolve_run_config(data, f"{source} ({data.get('method', RunConfig.method)})")


def tune_method(
    data: dict[str, Any], tune_section: Any, trials: int, directory: Path, source: str
) -> dict[str, Any]:
    """``trials`` trials of ``ptv2 tune`` on dev for one method; its best values, without a test run."""
    from ptuning_v2.tuning.search import run_tuning

    summary = run_tuning(
        {**data, "tune": tune_section} if tune_section is not None else data,
        directory,
        trials=trials,
        final=False,
        source=f"{source} ({data['method']})",
    )
    best = summary["best"]
    return {
        "trials": trials,
        "study": str(directory),
        "best_trial": best["number"],
        "dev": best["dev"],
        "params": best["params"],
    }


def run_method(run: RunConfig, directory: Path, name: str, show_progress: bool = False) -> dict[str, Any]:
    """Train method ``name`` (or score the untuned baseline) in a child process; its row of the
    comparison, failed or not. ``show_progress`` also copies the child's output (progress bars) to
    stderr; the run's log gets it either way."""
    directory.mkdir(parents=True, exist_ok=True)
    config_path = write_json_atomic(directory / "run_config.json", run.to_dict())
    command = [sys.executable, "-m", __name__, str(config_path), str(directory), name]
    started = time.perf_counter()
    with open(directory / LOG_FILE, "wb") as log:
        if show_progress:
            child = subprocess.Popen(
                [*command, "--progress"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
            _tee(child.stdout, log)  # type: ignore[arg-type]  # a pipe, as asked
        else:
            child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
    row: dict[str, Any] = {"method": name}
    if name != UNTUNED:  # nothing is trained, so no learning rate applies
        row |= {"lr": run.train.lr, "head_lr": run.train.head_lr}
    row |= {
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
        "eval_seconds": metrics.get("eval_seconds"),
        "out_of_time": metrics.get("out_of_time", False),
        "train_examples": metrics["train_examples"],
        "peak_cuda_bytes": child_info.get("peak_cuda_bytes"),
    }
    write_json_atomic(directory / ROW_FILE, row)
    return row


def _tee(source: IO[bytes], log: IO[bytes]) -> None:
    """Copy a child's output to its log and to stderr as it comes (stderr may be a text stream only)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    while chunk := source.read1(4096):  # type: ignore[attr-defined]  # a BufferedReader
        log.write(chunk)
        sys.stderr.write(decoder.decode(chunk))
        sys.stderr.flush()


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
    tune_trials: int | None = None,
    seeds: int = 1,
    budget_seconds: float | None = None,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Run every method, then write ``comparison.json``, ``comparison.md`` and ``comparison.png``.

    With ``reuse``, a method whose run directory already holds a finished run of the identical
    config is read back instead of trained again (per seed). ``tune_trials`` searches each method's
    space on dev first (``OUTPUT_DIR/tune/METHOD``, resumable); ``seeds`` > 1 runs seeds
    ``train.seed``, ``train.seed + 1``, ... in ``RUNS_DIR/METHOD/seed_S``; ``budget_seconds`` sets
    ``train.max_seconds`` for every run. The untuned baseline (``untuned`` among ``methods``) is
    scored, not trained, and not tuned.
    """
    check_methods(methods)
    if seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {seeds}")
    if tune_trials is not None and tune_trials < 1:
        raise ConfigError(f"--tune must be at least 1 trial, got {tune_trials}")
    if budget_seconds is not None and budget_seconds <= 0:
        raise ConfigError(f"--budget-seconds must be positive, got {budget_seconds}")
    output_dir = Path(output_dir)
    runs_dir = Path(runs_dir) if runs_dir else output_dir / "runs"
    method_overrides = method_overrides or {}
    unknown = sorted(set(method_overrides) - set(methods))
    if unknown:
        raise ConfigError(f"per-method overrides for {unknown}, which are not among the compared methods")
    base = copy.deepcopy(base)
    tune_section = base.pop("tune", None)
    if budget_seconds is not None:
        set_path(base, "train.max_seconds", budget_seconds)
    reference = resolve_run_config(copy.deepcopy(base), source)
    seed_list = [reference.train.seed + i for i in range(seeds)]
    from ptuning_v2.tasks import get_task  # importing tasks loads datasets; keep the CLI start fast

    task_cls = get_task(reference.task)
    rows = []
    for method in methods:
        print(f"[compare] {method} ...", file=sys.stderr, flush=True)
        try:
            data = method_data(base, method, method_overrides.get(method, []))
            method_config(data, source)  # a bad config fails here, before any search
            tuned = None
            if tune_trials and method != UNTUNED:
                tuned = tune_method(data, tune_section, tune_trials, output_dir / "tune" / method, source)
            runs = [method_config(data, source, tuned and tuned["params"], seed) for seed in seed_list]
        except (
            Exception
        ) as exc:  # a failed search or config is this method's row, not the end of the comparison
            error = str(exc) if isinstance(exc, ConfigError) else f"{type(exc).__name__}: {exc}"
            rows.append({"method": method, "status": "failed", "error": error})
            print(f"[compare] {method}: failed: {error}", file=sys.stderr, flush=True)
            continue
        seed_rows = []
        for run in runs:
            directory = runs_dir / method if seeds == 1 else runs_dir / method / f"seed_{run.train.seed}"
            reused = finished_row(run, directory) if reuse else None
            row = reused or run_method(run, directory, method, show_progress)
            seed_rows.append({**row, "seed": run.train.seed})
            status = seed_rows[-1]["status"] + (" (reused the finished run)" if reused else "")
            label = method if seeds == 1 else f"{method} seed {run.train.seed}"
            print(f"[compare] {label}: {status}", file=sys.stderr, flush=True)
        row = seed_rows[0] if seeds == 1 else aggregate(method, seed_rows)
        rows.append(row | ({"tuned": tuned} if tuned else {}))
    result = {
        "command": command,
        "task": reference.task,
        "model": reference.model,
        "data": reference.data.name or reference.data.train,
        "metric": reference.train.metric_for_best or task_cls.main_metric,
        "higher_is_better": task_cls.higher_is_better,
        "budget": budget(reference, (base.get("prompt") or {}).get("num_virtual_tokens")),
        "seeds": seed_list,
        "tune_trials": tune_trials,
        "method_overrides": method_overrides,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "methods": rows,
    }
    write_json_atomic(output_dir / "comparison.json", result)
    write_text_atomic(output_dir / "comparison.md", markdown_report(result))
    plot(result, output_dir / "comparison.png")
    return result


def _mean_std(dicts: list[dict[str, Any]]) -> tuple[dict[str, float], dict[str, float]]:
    """Mean and sample standard deviation of every number that all ``dicts`` have."""
    keys = [k for k, v in dicts[0].items() if isinstance(v, int | float) and not isinstance(v, bool)]
    keys = [k for k in keys if all(isinstance(d.get(k), int | float) for d in dicts)]
    means = {k: statistics.fmean(d[k] for d in dicts) for k in keys}
    stds = {k: statistics.stdev(d[k] for d in dicts) for k in keys} if len(dicts) > 1 else {}
    return means, stds


def aggregate(method: str, seed_rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One method's row over seeds: metrics as mean (``dev``, ``test``) and std (``dev_std``, ``test_std``).

    The row is ``ok`` only when every seed's run is; the finished runs still give the mean.
    """
    ok = [r for r in seed_rows if r["status"] == "ok"]
    failed = [r for r in seed_rows if r["status"] != "ok"]
    row: dict[str, Any] = {
        "method": method,
        "status": "failed" if failed else "ok",
        "seeds": [r["seed"] for r in seed_rows],
        "finished_seeds": len(ok),
    }
    row |= {key: seed_rows[0][key] for key in ("lr", "head_lr") if key in seed_rows[0]}
    if failed:
        row["error"] = "; ".join(f"seed {r['seed']}: {r['error']}" for r in failed)
    if ok:
        row |= {key: ok[0].get(key) for key in SHARED}
        for key in AVERAGED:
            values = [r[key] for r in ok if r.get(key) is not None]
            row[key] = statistics.fmean(values) if values else None
        for split in ("dev", "test"):
            row[split], row[f"{split}_std"] = _mean_std([r[split] for r in ok])
    if all(r.get("reused") for r in seed_rows):
        row["reused"] = True
    row["runs"] = seed_rows
    return row


def budget(run: RunConfig, prompt_length: int | None) -> dict[str, Any]:
    """What every method shared: data sizes, steps or epochs, batch, sequence length, seed, and the prompt
    length when the config sets one (else each prompt method uses its own default)."""
    train = run.train
    return {
        "max_train_examples": run.data.max_train_examples,
        "max_eval_examples": run.data.max_eval_examples,
        "max_steps": train.max_steps,
        "epochs": None if train.max_steps else train.epochs,
        "max_seconds": train.max_seconds,
        "batch_size": train.batch_size,
        "max_length": train.max_length,
        "eval_every": train.eval_every,
        "seed": train.seed,
        "prompt_length": prompt_length,
    }


def _child_main(config_path: str, directory: str, name: str, *flags: str) -> None:
    """One method's run, in its own process: train it (or score the untuned baseline), then record the
    CUDA peak next to metrics.json."""
    from ptuning_v2.experiments.untuned import evaluate_untuned
    from ptuning_v2.training.recipe import train_run

    run = RunConfig.from_dict(json.loads(Path(config_path).read_text(encoding="utf-8")), config_path)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    if name == UNTUNED:
        evaluate_untuned(run, directory)
    else:  # run_method decided to (re)train
        train_run(run, directory, show_progress="--progress" in flags, overwrite=True)
    peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
    write_json_atomic(Path(directory) / CHILD_FILE, {"peak_cuda_bytes": peak})


if __name__ == "__main__":
    _child_main(*sys.argv[1:])
