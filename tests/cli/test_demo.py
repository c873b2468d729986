"""`ptv2 demo` end to end on the real model and data, with a shortened budget (slow)."""

from __future__ import annotations

import json

import pytest

from ptuning_v2.cli.main import main

pytestmark = pytest.mark.slow


def test_demo_trains_both_methods_and_writes_metrics(tmp_path, capsys) -> None:
    code = main(
        [
            "demo",
            "--output-dir",
            str(tmp_path),
            "--no-progress",
            "--set",
            "train.max_steps=10",
            "--set",
            "train.eval_every=10",
            "--set",
            "data.max_eval_examples=100",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "P-Tuning v2 vs linear probe on test" in out
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["method"] == "ptuning_v2" and metrics["baseline_linear_probe"]["method"] == "linear_probe"
    assert set(metrics["summary"]["runs"]) == {"ptuning_v2", "linear_probe"}
    for method in ("ptuning_v2", "linear_probe"):
        assert (tmp_path / method / "checkpoint" / "adapter.safetensors").is_file()
