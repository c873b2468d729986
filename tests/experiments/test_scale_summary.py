"""``ptv2 scale-summary``: one table across model sizes, gaps computed from the comparisons' own numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ptuning_v2.cli.main import main
from ptuning_v2.config import ConfigError
from ptuning_v2.experiments.scale import read_scale


def comparison(root: Path, model: str, data: str, total: int, scores: dict[str, float]) -> None:
    rows = [
        {"method": m, "status": "ok", "test": {"accuracy": v}, "trainable_share": 0.01, "train_seconds": 10.0,
         "peak_rss_bytes": 2**30, "total_params": total}
        for m, v in scores.items()
    ]  # fmt: skip
    folder = root / model / data
    folder.mkdir(parents=True)
    payload = {"metric": "accuracy", "data": data, "command": f"ptv2 compare {model}", "methods": rows}
    (folder / "comparison.json").write_text(json.dumps(payload))


def test_gaps_per_model_size(tmp_path: Path) -> None:
    comparison(tmp_path, "mpnet", "rt", 110_000_000, {"ptuning_v2": 0.85, "full": 0.86, "lora": 0.84})
    comparison(tmp_path, "minilm", "rt", 22_000_000, {"ptuning_v2": 0.78, "full": 0.80, "lora": 0.79})
    assert main(["scale-summary", str(tmp_path)]) == 0
    text = (tmp_path / "scale.md").read_text()
    assert [s.model for s in read_scale(tmp_path)] == ["minilm", "mpnet"]  # smallest first
    assert "| rt | minilm (22M) | -2.0 | -1.0 |" in text and "| rt | mpnet (110M) | -1.0 | +1.0 |" in text
    assert "| rt | mpnet (110M) | lora | 0.8400 | 1.00% | 10 | 1,024 |" in text
    assert json.loads((tmp_path / "scale.json").read_text())["sets"][1]["model"] == "mpnet"


def test_empty_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no comparison found"):
        read_scale(tmp_path)
