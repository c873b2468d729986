"""Shared by the method tests: train a method through the recipe, then rebuild it from its checkpoint."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from ptuning_v2.config import RunConfig
from ptuning_v2.tasks.base import evaluate_split
from ptuning_v2.trained.model import load_trained
from ptuning_v2.training.recipe import load_splits, train_run


@pytest.fixture()
def train_and_reload(sentiment_csvs: dict[str, Path], tmp_path: Path) -> Callable[..., dict]:
    """``train_and_reload(method, model_dir, prompt=None)`` -> the run's metrics, after the reload checks."""
    return lambda method, model_dir, prompt=None: _train_and_reload(
        method, model_dir, sentiment_csvs, tmp_path, prompt
    )


def _train_and_reload(
    method: str, model_dir: Path, csvs: dict[str, Path], tmp_path: Path, prompt: dict | None
) -> dict:
    """Train a few steps through the recipe, reload the checkpoint, and compare predictions."""
    run = RunConfig.from_dict(
        {
            "model": str(model_dir),
            "method": method,
            "data": {k: str(v) for k, v in csvs.items()}
            | {"columns": {"text": "review", "label": "sentiment"}},
            "prompt": {"num_virtual_tokens": 4, **(prompt or {})},
            "train": {"max_steps": 3, "batch_size": 16, "max_length": 32, "lr": 1e-2},
        }
    )
    metrics = train_run(run, tmp_path / method, show_progress=False)
    texts = ["what a great film", "the plot is awful"]
    probabilities = []
    for _ in range(2):  # two independent rebuilds: anything not in the checkpoint would differ
        task, model = load_trained(tmp_path / method / "checkpoint", device="cpu")
        probabilities.append([p["probabilities"]["pos"] for p in task.predict(model, texts)])
    assert probabilities[0] == pytest.approx(probabilities[1], abs=1e-6)
    splits = load_splits(task.config, type(task))
    features = task.featurize(splits["test"], "test")
    reloaded = evaluate_split(task, model, splits["test"], features, 8, "cpu")
    assert reloaded["accuracy"] == metrics["test"]["accuracy"]
    assert reloaded["per_class"] == metrics["test"]["per_class"]
    return metrics
