"""Sharded training through Accelerate's FSDP2: 2 CPU processes (gloo) match one process, same global batch.

Accelerate enables FSDP only for accelerator back-ends (its state picks MULTI_CPU, never FSDP, without a
GPU). The launcher below changes exactly that choice, so the rest runs as on GPUs: the example config
``configs/accelerate/fsdp.yaml`` read by ``accelerate launch``, Accelerate's ``fully_shard`` wrapping of
the backbone's layers, the trainer, checkpoints. benchmarks/gpu_check.sh runs it unpatched on GPUs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from launching import free_port
from safetensors.torch import load_file

from ptuning_v2.methods import resolve_run_config
from ptuning_v2.training.recipe import train_run
from ptuning_v2.training.sharding import launched

REPO = Path(__file__).resolve().parents[2]
FSDP_CONFIG = REPO / "configs" / "accelerate" / "fsdp.yaml"

# Runs in each process that `accelerate launch` starts: FSDP on gloo, then the ordinary CLI.
LAUNCHER = """
import json, os, runpy, sys
import torch.distributed as dist
from accelerate.state import PartialState
from accelerate.utils import DistributedType
from torch.distributed.tensor import DTensor

PartialState._prepare_backend = lambda self, cpu=False, sagemaker_dp=False, backend=None: (
    "gloo", DistributedType.MULTI_GPU)
os.environ["ACCELERATE_TORCH_DEVICE"] = "cpu"
dist.init_process_group("gloo")

import ptuning_v2.training.sharding as sharding
import ptuning_v2.training.trainer as trainer
prepare = sharding.prepare_for_training

def recording_prepare(accelerator, model, optimizer, cfg):
    model, optimizer = prepare(accelerator, model, optimizer, cfg)
    params = list(model.named_parameters())
    report = {
        "fsdp2": accelerator.is_fsdp2,
        "sharded_frozen": sum(isinstance(p, DTensor) and not p.requires_grad for _, p in params),
        "frozen": sum(not p.requires_grad for _, p in params),
        "whole_trained": sum(not isinstance(p, DTensor) and p.requires_grad for _, p in params),
        "trained": sum(p.requires_grad for _, p in params),
    }
    with open(os.environ["FSDP_REPORT"] + f".{accelerator.process_index}", "w") as f:
        json.dump(report, f)
    return model, optimizer

trainer.prepare_for_training = recording_prepare
sys.argv = ["ptv2", *sys.argv[1:]]
runpy.run_module("ptuning_v2.cli.main", run_name="__main__")
"""


def test_fsdp_two_processes_match_one_process(
    dropout_free_bert: Path, sentiment_csvs: dict[str, Path], tmp_path: Path
) -> None:
    config = {
        "model": str(dropout_free_bert),
        "data": {
            **{k: str(v) for k, v in sentiment_csvs.items()},
            "columns": {"text": "review", "label": "sentiment"},
        },
        "head": {"dropout": 0.0},
        "train": {"max_steps": 4, "batch_size": 8, "eval_every": 2, "mixed_precision": "no", "lr": 1e-2},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "launch.py").write_text(LAUNCHER)
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(FSDP_CONFIG),
        "--num_processes", "2", "--main_process_port", str(free_port()),
        str(tmp_path / "launch.py"), "train", str(tmp_path / "run.yaml"),
        "--output-dir", str(tmp_path / "fsdp"), "--no-progress",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FSDP_REPORT": str(tmp_path / "report")}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]

    # Both processes trained under FSDP2: every frozen weight sharded, every trained one whole.
    for rank in (0, 1):
        report = json.loads((tmp_path / f"report.{rank}").read_text())
        assert report["fsdp2"] is True
        assert report["sharded_frozen"] == report["frozen"] > 0
        assert report["whole_trained"] == report["trained"] == 4  # two layer prompts, head weight and bias
    metrics = json.loads((tmp_path / "fsdp" / "metrics.json").read_text())
    assert metrics["num_processes"] == 2 and metrics["steps"] == 4

    # One process, the same global batch (2 x 8): the same examples in each step.
    # read as the CLI reads it (method defaults included)
    single = resolve_run_config({**config, "train": {**config["train"], "batch_size": 16}})
    train_run(single, tmp_path / "single", show_progress=False)

    sharded = load_file(str(tmp_path / "fsdp" / "checkpoint" / "adapter.safetensors"))
    reference = load_file(str(tmp_path / "single" / "checkpoint" / "adapter.safetensors"))
    assert sorted(sharded) == sorted(reference)
    initial_distance = 0.0
    for name, tensor in reference.items():
        # Float round-off only (the mean over 16 examples taken as two means over 8, summed across
        # processes): 4 Adam steps at lr 1e-2 keep the difference below 1e-5.
        torch.testing.assert_close(sharded[name], tensor, rtol=0, atol=1e-5, msg=name)
        initial_distance = max(initial_distance, float(tensor.abs().max()))
    assert initial_distance > 0


@pytest.mark.parametrize(
    "value, expected", [(None, False), ("", False), ("-1", False), ("0", True), ("3", True)]
)
def test_launched_reads_local_rank(monkeypatch, value, expected) -> None:
    """A process started by torchrun or accelerate launch has LOCAL_RANK; unset, empty or -1 is not one."""
    if value is None:
        monkeypatch.delenv("LOCAL_RANK", raising=False)
    else:
        monkeypatch.setenv("LOCAL_RANK", value)
    assert launched() is expected
