"""Training curves from the trainer's ``log.jsonl``: loss and dev metric against optimizer steps.

A run is a folder written by ``ptv2 train`` (``log.jsonl``, ``metrics.json``, ``checkpoint/``) or a
log file itself (``results/understanding/X_log.jsonl``, read with its ``X_metrics.json``). The dev
metric is the one the run selected its checkpoint by (``train.metric_for_best`` or the task's main
metric) unless one is asked for.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ptuning_v2.config import ConfigError, did_you_mean
from ptuning_v2.data import DataError
from ptuning_v2.utils.io import atomic_write

LOG_FILE = "log.jsonl"
DEFAULT_NAME = "training_curves.png"
FORMATS = ("png", "svg", "pdf")


@dataclass
class Curve:
    """One run's points: training loss and the dev metric, by step."""

    label: str
    """The run's method where its files say it, else the folder (or log file) name."""
    source: str
    """The folder (or log file) name: tells runs of one method apart."""
    metric: str | None
    loss: list[tuple[int, float]] = field(default_factory=list)
    dev: list[tuple[int, float]] = field(default_factory=list)


def log_path(run: str | Path) -> Path:
    """``RUN_DIR/log.jsonl``, or the path itself when it is a log file."""
    run = Path(run)
    path = run / LOG_FILE if run.is_dir() else run
    if not path.is_file():
        raise DataError(f"no {LOG_FILE} here; give a folder written by `ptv2 train` or its log file", run)
    return path


def read_log(path: Path) -> list[dict[str, Any]]:
    """The log's records; a resumed run logs some steps twice, and the later record wins. A last line cut
    short (a run killed while writing it; its resume writes the record again) is left out, and said."""
    latest: dict[tuple[str, int], dict[str, Any]] = {}
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines) and not text.endswith("\n"):
                print(
                    f"[log] {path}: line {number} is cut short (the run was killed); left out",
                    file=sys.stderr,
                )
                continue
            raise DataError("not a JSON record", path, line=number) from None
        if not isinstance(record, dict) or not isinstance(record.get("step"), int) or "type" not in record:
            raise DataError("not a training log record (needs 'type' and an integer 'step')", path, number)
        latest[(record["type"], record["step"])] = record
    if not any(kind == "train" for kind, _ in latest):
        raise DataError("no training records (type 'train'); has the run logged a step yet?", path)
    return sorted(latest.values(), key=lambda r: r["step"])


def run_info(path: Path) -> dict[str, Any]:
    """What the run's files say about it: ``method``, ``task``, ``metric`` (each only where known)."""
    info: dict[str, Any] = {}
    metrics_file = path.with_name(path.name.removesuffix(LOG_FILE) + "metrics.json")
    if metrics_file.is_file():
        metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
        info.update({k: metrics[k] for k in ("method", "task") if k in metrics})
    checkpoint_meta = path.parent / "checkpoint" / "ptv2_checkpoint.json"
    if path.name == LOG_FILE and checkpoint_meta.is_file():
        run_config = json.loads(checkpoint_meta.read_text(encoding="utf-8"))["run_config"]
        info.update(method=run_config["method"], task=run_config["task"])
        if run_config["train"].get("metric_for_best"):
            info["metric"] = run_config["train"]["metric_for_best"]
    if "metric" not in info and "task" in info:
        from ptuning_v2.tasks import get_task

        info["metric"] = get_task(info["task"]).main_metric
    return info


def read_curve(run: str | Path, metric: str | None = None) -> Curve:
    """One run's curve; ``metric`` overrides the run's own dev metric."""
    path = log_path(run)
    records = read_log(path)
    info = run_info(path)
    dev_records = [r for r in records if r["type"] == "eval" and r.get("split", "validation") == "validation"]
    logged = sorted({k for r in dev_records for k, v in r.items() if k != "step" and _is_number(v)})
    if metric is not None and dev_records and metric not in logged:  # an empty panel would say nothing
        raise DataError(
            f"--metric {metric}: the dev records have {logged}" + did_you_mean(metric, logged), path
        )
    metric = metric or info.get("metric") or _first_number(dev_records)
    source = path.parent.name if path.name == LOG_FILE else path.stem
    return Curve(
        label=info.get("method") or source,
        source=source,
        metric=metric,
        loss=[(r["step"], float(r["loss"])) for r in records if r["type"] == "train" and "loss" in r],
        dev=[(r["step"], float(r[metric])) for r in dev_records if _is_number(r.get(metric))],
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _first_number(records: list[dict[str, Any]]) -> str | None:
    for record in records:
        for key, value in record.items():
            if key != "step" and _is_number(value):
                return key
    return None


def default_output(run: str | Path) -> Path:
    """The first run's folder (the folder of a log file)."""
    run = Path(run)
    return (run if run.is_dir() else run.parent) / DEFAULT_NAME


def plot_curves(curves: list[Curve], output: str | Path) -> Path:
    """Loss (left) and dev metric (right) of every run on one figure, written atomically."""
    output = Path(output)
    fmt = output.suffix.lstrip(".").lower()
    if fmt not in FORMATS:
        raise ConfigError(
            f"--output {output}: the file name must end in one of {', '.join('.' + f for f in FORMATS)}"
        )
    labels = [c.label for c in curves]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = {c.metric for c in curves if c.dev}
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for index, curve in enumerate(curves):
        label = curve.label if labels.count(curve.label) == 1 else f"{curve.label} ({curve.source})"
        color = f"C{index % 10}"
        if curve.loss:
            left.plot(*zip(*curve.loss, strict=True), color=color, label=label)
        if curve.dev:
            name = label if len(metrics) == 1 else f"{label} ({curve.metric})"
            right.plot(*zip(*curve.dev, strict=True), color=color, marker="o", markersize=3, label=name)
    left.set(xlabel="optimizer step", ylabel="training loss", title="training loss")
    metric_name = next(iter(metrics)) if len(metrics) == 1 else "metric"
    right.set(xlabel="optimizer step", ylabel=f"dev {metric_name}", title=f"dev {metric_name}")
    if not metrics:
        right.text(0.5, 0.5, "no dev evaluations logged", ha="center", va="center", transform=right.transAxes)
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(output, lambda tmp: fig.savefig(tmp, format=fmt, dpi=120))
    plt.close(fig)
    return output
