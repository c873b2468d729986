"""Multi-process training through torchrun (gloo on CPU): the path `accelerate launch` uses too.
Evaluation is sharded across the processes and gathered: its metrics equal a single-process evaluation's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml
from launching import free_port

from ptuning_v2.training.recipe import evaluate_checkpoint

# Each process runs the ordinary CLI, counting the forward calls its model makes in eval mode.
COUNTING_LAUNCHER = """
import atexit, os, runpy, sys
import ptuning_v2.training.recipe as recipe
build, calls = recipe.build_model, [0]

def counting_build(*args, **kwargs):
    model = build(*args, **kwargs)
    model.register_forward_pre_hook(lambda module, inputs: calls.__setitem__(0, calls[0] + (not module.training)))
    return model

recipe.build_model = counting_build
counts = sys.argv.pop(1) + os.environ["RANK"]
atexit.register(lambda: open(counts, "w").write(str(calls[0])))
sys.argv[0] = "ptv2"
runpy.run_module("ptuning_v2.cli.main", run_name="__main__")
"""


def test_two_processes_train_one_model(
    tiny_bert_dir: Path, sentiment_csvs: dict[str, Path], tmp_path: Path
) -> None:
    config = {
        "model": str(tiny_bert_dir),
        "data": {
            **{k: str(v) for k, v in sentiment_csvs.items()},
            "columns": {"text": "review", "label": "sentiment"},
        },
        # 24 dev and test examples in batches of 5: process 0 runs batches 0, 2, 4, process 1 runs 1, 3
        "train": {"max_steps": 4, "batch_size": 8, "eval_every": 2, "eval_batch_size": 5},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "launch.py").write_text(COUNTING_LAUNCHER)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
        str(tmp_path / "launch.py"),
        str(tmp_path / "eval_forwards."),
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
    single = evaluate_checkpoint(tmp_path / "out" / "checkpoint", tmp_path / "single")
    assert metrics["dev"] == single["dev"] and metrics["test"] == single["test"]
    assert sum(c["support"] for c in metrics["dev"]["per_class"].values()) == 24  # every example, once
    # 4 evaluations (dev at steps 2 and 4, then the best checkpoint on dev and test) of 5 batches each:
    # sharded, process 0 ran 3 batches of each and process 1 ran 2 (unsharded, each would run 20).
    forwards = [int((tmp_path / f"eval_forwards.{rank}").read_text()) for rank in (0, 1)]
    assert forwards == [12, 8]
