"""Settings shared by tests that train a tiny classifier on the ``sentiment_csvs`` fixture's files."""

from __future__ import annotations

from pathlib import Path


def sentiment_run(model_dir: Path, csvs: dict[str, Path], *extra: str) -> list[str]:
    """``--set`` overrides of a tiny classification run on ``sentiment_csvs`` (batches of 8), plus ``extra``."""
    return [
        f"model={model_dir}",
        f"data.train={csvs['train']}",
        f"data.validation={csvs['validation']}",
        f"data.test={csvs['test']}",
        "data.columns={text: review, label: sentiment}",
        "train.batch_size=8",
        *extra,
    ]
