"""What the trainer reports besides ``log.jsonl``: experiment trackers and the progress line.

Trackers go through Accelerate (``train.log_with``): the run config is recorded as flat
hyper-parameters and every log record as scalars. In a non-interactive log (stderr is not a
terminal) tqdm draws no bar, and the run ends with one summary line instead.
"""

from __future__ import annotations

import json
from typing import Any

from tqdm.auto import tqdm

from ptuning_v2.config import ConfigError

TRACKER_PROJECT = "tensorboard"
"""Accelerate's project name: TensorBoard events go to OUTPUT_DIR/tensorboard."""

_NOT_SCALARS = {"type", "split", "step"}


def trackers(log_with: str | None) -> list[str] | None:
    """Accelerate's ``log_with`` for ``train.log_with``; a missing package is a config error, since
    Accelerate would silently drop the tracker."""
    if log_with is None:
        return None
    from accelerate.utils import is_tensorboard_available

    if log_with == "tensorboard" and not is_tensorboard_available():
        raise ConfigError(
            "train.log_with: tensorboard needs the tensorboard package: pip install 'ptuning-v2[tensorboard]'"
        )
    return [log_with]


def flatten_config(config: dict[str, Any], prefix: str = "") -> dict[str, bool | int | float | str]:
    """``{"train": {"lr": 0.01}}`` -> ``{"train.lr": 0.01}``; lists become JSON text and None "null",
    since TensorBoard's hyper-parameters take only scalars and strings."""
    flat: dict[str, bool | int | float | str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_config(value, f"{name}."))
        elif isinstance(value, bool | int | float | str):
            flat[name] = value
        else:
            flat[name] = json.dumps(value)
    return flat


def tracker_values(record: dict[str, Any]) -> dict[str, float]:
    """A ``log.jsonl`` record as tracker scalars: ``train/loss``, ``train/lr``, ``validation/accuracy``, ..."""
    section = record.get("split", record["type"])
    return {
        f"{section}/{key}": float(value)
        for key, value in record.items()
        if key not in _NOT_SCALARS and isinstance(value, int | float) and not isinstance(value, bool)
    }


def progress_bar(total: int, initial: int, enabled: bool, desc: str) -> tqdm:
    """A bar on a terminal; none in a captured log (``disable=None`` is tqdm's own "only on a TTY")."""
    return tqdm(
        total=total, initial=initial, disable=None if enabled else True, desc=desc, dynamic_ncols=True
    )


def summary_line(desc: str, state: Any, total_steps: int, metric: str) -> str:
    """One line that says how the run went (``state`` is the trainer's TrainState)."""
    parts = [f"{desc}: {state.step}/{total_steps} steps in {state.train_seconds:.1f} s"]
    losses = [r["loss"] for r in state.history if r.get("type") == "train"]
    if losses:
        parts.append(f"last loss {losses[-1]:.4f}")
    if state.best_metric is not None:
        parts.append(f"best dev {metric} {state.best_metric:.4f} at step {state.best_step}")
    if state.stopped_early:
        parts.append("stopped early")
    return ", ".join(parts)
