"""Does P-Tuning v2's gap to full fine-tuning and to LoRA shrink as the model grows?

``ptv2 scale-summary ROOT`` reads ``ROOT/<model>/<data set>/comparison.json`` (one ``ptv2 compare`` per model
and set, every one on the same budget) and writes one table: per set and model, each method's test metric,
trained share, train time and peak memory, then P-Tuning v2 minus full fine-tuning and minus LoRA at each
model size.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ptuning_v2.config import ConfigError
from ptuning_v2.experiments.report import mean_spread
from ptuning_v2.experiments.summary import Cell, difference, finished_methods
from ptuning_v2.utils.io import write_json_atomic, write_text_atomic

REFERENCE = "ptuning_v2"
GAPS = ("full", "lora")


@dataclass
class MethodRow:
    method: str
    test: Cell
    trainable_share: float
    train_seconds: float
    peak_rss_mib: float | None


@dataclass
class ModelSet:
    """One ``ptv2 compare``: one model on one data set."""

    model: str
    data: str
    metric: str
    total_params: int
    command: str
    rows: dict[str, MethodRow]


def read_model_set(path: Path) -> ModelSet:
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
        metric, rows, total = result["metric"], {}, 0
        for row, cell in finished_methods(result):
            rss = row.get("peak_rss_bytes")
            rows[row["method"]] = MethodRow(
                row["method"],
                cell,
                float(row["trainable_share"]),
                float(row["train_seconds"]),
                None if rss is None else rss / 2**20,
            )
            total = max(total, int(row["total_params"]))
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: not a ptv2 compare result ({type(exc).__name__}: {exc})") from None
    return ModelSet(path.parent.parent.name, result.get("data") or path.parent.name, metric, total,
                    result.get("command", ""), rows)  # fmt: skip


def read_scale(root: Path) -> list[ModelSet]:
    """Every ``root/<model>/<set>/comparison.json``, smallest model first, then by set."""
    paths = sorted(root.glob("*/*/comparison.json"))
    if not paths:
        raise ConfigError(f"{root}: no comparison found (expected {root}/<model>/<data set>/comparison.json)")
    sets = [read_model_set(p) for p in paths]
    return sorted(sets, key=lambda s: (s.data, s.total_params))


def _millions(n: int) -> str:
    return f"{n / 1e6:.0f}M"


def markdown(sets: list[ModelSet], command: str) -> str:
    lines = [
        "# P-Tuning v2 across model sizes",
        "",
        f"Command: `{command}`",
        "",
        "Each model and set is one `ptv2 compare` on the same budget (commands below); test metric at the best "
        "dev checkpoint (mean ± std where there are several seeds), share of parameters trained, training "
        "seconds and the training process's peak resident memory.",
        "",
        "| data set | model | method | test | trained share | train s | peak RSS MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in sets:
        for row in s.rows.values():
            rss = "-" if row.peak_rss_mib is None else f"{row.peak_rss_mib:,.0f}"
            lines.append(
                f"| {s.data} | {s.model} ({_millions(s.total_params)}) | {row.method} | "
                f"{mean_spread(row.test.mean, row.test.std)} | {100 * row.trainable_share:.2f}% | "
                f"{row.train_seconds:,.0f} | {rss} |"
            )
    lines += [
        "",
        f"{REFERENCE} minus each method, test points (± the standard error over seeds where there are several):",
        "",
        "| data set | model | " + " | ".join(f"{REFERENCE} - {m}" for m in GAPS) + " |",
        "|---|---|" + "---|" * len(GAPS),
    ]
    for s in sets:
        cells = []
        for other in GAPS:
            if REFERENCE not in s.rows or other not in s.rows:
                cells.append("-")
                continue
            diff, error = difference(s.rows[REFERENCE].test, s.rows[other].test)
            cells.append(f"{diff:+.1f}" + ("" if error is None else f" ± {error:.1f}"))
        lines.append(f"| {s.data} | {s.model} ({_millions(s.total_params)}) | " + " | ".join(cells) + " |")
    lines += ["", "Commands:", ""] + [f"- {s.model} / {s.data}: `{s.command}`" for s in sets]
    return "\n".join(lines) + "\n"


def write_scale(root: Path, output_dir: Path, command: str) -> list[ModelSet]:
    sets = read_scale(root)
    payload: dict[str, Any] = {"command": command, "sets": [asdict(s) for s in sets]}
    write_json_atomic(output_dir / "scale.json", payload)
    write_text_atomic(output_dir / "scale.md", markdown(sets, command))
    return sets
