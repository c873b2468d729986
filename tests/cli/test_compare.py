"""``ptv2 compare``: every method on one budget, each in its own process; a failure is a row, not a stop."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from ptuning_v2.cli.main import main
from ptuning_v2.evaluation.compare import markdown_report


@pytest.fixture
def config_path(tiny_bert_dir, sentiment_csvs, tmp_path) -> Path:
    """A two-step sentiment run on the tiny BERT, shared by every compared method."""
    config = {
        "model": str(tiny_bert_dir),
        "data": {k: str(v) for k, v in sentiment_csvs.items()}
        | {"columns": {"text": "review", "label": "sentiment"}},
        "prompt": {"num_virtual_tokens": 4},
        "train": {"max_steps": 2, "batch_size": 16, "max_length": 32},
    }
    path = tmp_path / "compare.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def test_compare_runs_each_method_and_reports_a_failure(config_path: Path, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    code = main(
        [
            "compare",
            str(config_path),
            "--methods",
            "ptuning_v2,prompt_tuning",
            "--output-dir",
            str(out),
            # 120 prompt positions + 32 tokens do not fit the tiny model's 128: this run must fail.
            "--method-set",
            "prompt_tuning:prompt.num_virtual_tokens=120",
        ]
    )
    assert code == 1
    result = json.loads((out / "comparison.json").read_text(encoding="utf-8"))
    ok, failed = result["methods"]
    assert (ok["method"], ok["status"], failed["method"], failed["status"]) == (
        "ptuning_v2",
        "ok",
        "prompt_tuning",
        "failed",
    )
    assert "ConfigError" in failed["error"] and "positions" in failed["error"]
    # the method's own defaults apply under the shared config: ptuning_v2's learning rate
    assert ok["lr"] == 1e-2 and ok["steps"] == 2
    assert ok["trainable_params"] == 2 * 4 * 2 * 32 + (32 * 2 + 2)  # layers * k * (key + value) + head
    assert ok["peak_rss_bytes"] > 50 * 2**20 and ok["checkpoint_bytes"] > 0
    assert 0 <= ok["test"]["accuracy"] <= 1
    assert result["budget"]["max_steps"] == 2 and result["metric"] == "accuracy"
    table = (out / "comparison.md").read_text(encoding="utf-8")
    assert table == markdown_report(result)
    assert "| prompt_tuning | failed |" in table and "| ptuning_v2 | ok |" in table
    assert "--method-set prompt_tuning:prompt.num_virtual_tokens=120" in table
    assert (out / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "runs" / "ptuning_v2" / "checkpoint" / "adapter.safetensors").is_file()
    assert "| prompt_tuning | failed |" in capsys.readouterr().out


def test_unknown_method_is_rejected_before_any_run(tmp_path, capsys) -> None:
    config_path = tmp_path / "c.yaml"
    config_path.write_text("train: {max_steps: 1}\n", encoding="utf-8")
    code = main(
        ["compare", str(config_path), "--methods", "ptuning_v2,bogus", "--output-dir", str(tmp_path / "o")]
    )
    assert code == 2
    assert "bogus" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_reuse_reads_back_unchanged_methods_and_retrains_changed_ones(
    config_path: Path, tmp_path, capsys
) -> None:
    out = tmp_path / "out"
    args = ["compare", str(config_path), "--methods", "ptuning_v2,linear_probe", "--output-dir", str(out)]
    assert main(args) == 0
    first = json.loads((out / "comparison.json").read_text(encoding="utf-8"))
    adapter = out / "runs" / "linear_probe" / "checkpoint" / "adapter.safetensors"
    trained_at = adapter.stat().st_mtime_ns

    assert main([*args, "--reuse", "--method-set", "ptuning_v2:train.lr=0.05"]) == 0
    second = json.loads((out / "comparison.json").read_text(encoding="utf-8"))
    (_, l_first), (p_second, l_second) = first["methods"], second["methods"]
    assert adapter.stat().st_mtime_ns == trained_at  # not trained again
    assert l_second == {**l_first, "reused": True}
    assert "reused" not in p_second and p_second["lr"] == 0.05
    assert "(`--reuse`): linear_probe." in (out / "comparison.md").read_text(encoding="utf-8")
    assert "linear_probe: ok (reused the finished run)" in capsys.readouterr().err
