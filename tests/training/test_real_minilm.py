"""Real model, real data: P-Tuning v2 on all-MiniLM-L6-v2 for Rotten Tomatoes (slow: minutes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ptuning_v2.methods import load_run_config
from ptuning_v2.recipes import recipe_path
from ptuning_v2.training.recipe import train_run

pytestmark = pytest.mark.slow


def test_ptuning_v2_learns_sentiment_and_checkpoint_is_kilobytes(tmp_path: Path) -> None:
    config = load_run_config(
        recipe_path("demo"), ["train.max_steps=60", "train.eval_every=60", "data.max_eval_examples=400"]
    )
    metrics = train_run(config, tmp_path / "run", show_progress=False)
    assert metrics["dev"]["accuracy"] > 0.70  # chance is ~0.58 (majority class)
    assert metrics["trainable_params"] == 6 * 20 * 2 * 384 + 2 * 384 + 2
    assert metrics["trainable_share"] < 0.005
    assert 300_000 < metrics["checkpoint_bytes"] < 450_000  # ~93k float32 parameters + JSON
