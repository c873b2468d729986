"""Multi-process training through torchrun (gloo on CPU): the path `accelerate launch` uses too."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml


def test_two_processes_train_one_model(
    tiny_bert_dir: Path, sentiment_csvs: dict[str, Path], tmp_path: Path
) -> None:
    config = {
        "model": str(tiny_bert_dir),
        "data": {
            **{k: str(v) for k, v in sentiment_csvs.items()},
            "columns": {"text": "review", "label": "sentiment"},
        },
        "train": {"max_steps": 4, "batch_size": 8, "eval_every": 2},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29533",
        "-m",
        "ptuning_v2.cli.main",
        "train",
        str(tmp_path / "run.yaml"),
        "--output-dir",
        str(tmp_path / "out"),
        "--no-progress",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["num_processes"] == 2 and metrics["steps"] == 4
    assert (tmp_path / "out" / "checkpoint" / "adapter.safetensors").is_file()
