"""The training loop: exact resume, frozen backbone, learning-rate groups, early stopping, outputs."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from tiny_runs import sentiment_run
from transformers import BertModel

from ptuning_v2.config import RunConfig, TrainConfig
from ptuning_v2.methods import load_run_config
from ptuning_v2.training.optim import param_groups
from ptuning_v2.training.recipe import train_run


def run_config(model_dir: Path, csvs: dict[str, Path], *extra: str) -> RunConfig:
    return load_run_config(
        None,
        sentiment_run(
            model_dir,
            csvs,
            "train.max_steps=12",
            "train.eval_every=4",
            "train.lr=5e-2",
            "train.head_lr=5e-2",
            "prompt.num_virtual_tokens=4",
            "prompt.dropout=0.1",
            *extra,
        ),
    )


def test_training_writes_the_output_contract_and_keeps_the_backbone_bit_identical(
    tiny_bert_dir: Path, sentiment_csvs: dict[str, Path], tmp_path: Path
) -> None:
    metrics = train_run(run_config(tiny_bert_dir, sentiment_csvs), tmp_path / "run", show_progress=False)
    on_disk = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for key in (
        "method",
        "task",
        "model",
        "dev",
        "test",
        "trainable_params",
        "total_params",
        "train_seconds",
    ):
        assert key in on_disk
    assert (
        on_disk["method"] == "ptuning_v2" and "accuracy" in on_disk["dev"] and "macro_f1" in on_disk["test"]
    )
    assert metrics["trainable_params"] == 2 * 4 * 64 + (32 * 2 + 2)  # 2 layers x k=4 x (key+value 32) + head
    stored = load_file(str(tmp_path / "run" / "checkpoint" / "adapter.safetensors"))
    assert set(stored) == {
        "encoder.prompt.prompts.self_0",
        "encoder.prompt.prompts.self_1",
        "head.1.weight",
        "head.1.bias",
    }
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r["type"] == "eval"] == [4, 8, 12]

    from ptuning_v2.trained.model import load_trained

    _, model = load_trained(tmp_path / "run" / "checkpoint", device="cpu")
    pretrained = BertModel.from_pretrained(tiny_bert_dir)
    for (name, trained), (_, original) in zip(
        model.encoder.backbone.named_parameters(), pretrained.named_parameters(), strict=True
    ):
        assert torch.equal(trained, original), name


def test_resume_continues_exactly(
    tiny_bert_dir: Path, sentiment_csvs: dict[str, Path], tmp_path: Path
) -> None:
    config = run_config(
        tiny_bert_dir, sentiment_csvs, "train.eval_every=null", "train.epochs=2", "train.max_steps=null"
    )
    straight = train_run(config, tmp_path / "straight", show_progress=False)

    paused = train_run(config, tmp_path / "paused", show_progress=False, pause_at_step=5)
    assert paused["paused_at_step"] == 5 and not (tmp_path / "paused" / "metrics.json").exists()
    resumed = train_run(config, tmp_path / "paused", resume=True, show_progress=False)
    assert resumed["steps"] == straight["steps"] == 16
    a = load_file(str(tmp_path / "straight" / "states" / "step-000000016" / "state.safetensors"))
    b = load_file(str(tmp_path / "paused" / "states" / "step-000000016" / "state.safetensors"))
    assert set(a) == set(b)
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_param_groups_apply_layer_multipliers_and_head_lr(tiny_bert_dir: Path) -> None:
    from ptuning_v2.config import DeepPromptConfig
    from ptuning_v2.prompts.model import DeepPromptModel

    backbone = BertModel.from_pretrained(tiny_bert_dir)
    model = torch.nn.ModuleDict(
        {
            "encoder": DeepPromptModel(backbone, DeepPromptConfig(num_virtual_tokens=2)),
            "head": torch.nn.Linear(32, 2),
        }
    )
    groups = param_groups(model, TrainConfig(lr=0.1, head_lr=0.02, layer_lr_multipliers=[1.0, 2.0, 3.0]))
    by_name = {g["name"]: (g["lr"], len(g["params"])) for g in groups}
    # 2 layers: layer 0 is in the early third, layer 1 in the middle third (1 * 3 // 2 = 1)
    assert by_name == {"prompt_early": (0.1, 1), "prompt_middle": (0.2, 1), "head": (0.02, 2)}


def test_early_stopping_stops_after_patience(
    tiny_bert_dir: Path, sentiment_csvs: dict[str, Path], tmp_path: Path
) -> None:
    config = run_config(
        tiny_bert_dir,
        sentiment_csvs,
        "train.lr=1e-12",  # as good as frozen: dev accuracy never improves after the first evaluation
        "train.head_lr=1e-12",
        "train.max_steps=40",
        "train.eval_every=2",
        "train.early_stopping_patience=2",
    )
    metrics = train_run(config, tmp_path / "run", show_progress=False)
    assert metrics["stopped_early"] and metrics["steps"] == 6 and metrics["best_step"] == 2


def test_same_seed_same_run(tiny_bert_dir: Path, sentiment_csvs: dict[str, Path], tmp_path: Path) -> None:
    config = run_config(tiny_bert_dir, sentiment_csvs, "train.max_steps=4", "train.eval_every=2")
    train_run(config, tmp_path / "a", show_progress=False)
    train_run(config, tmp_path / "b", show_progress=False)
    a = load_file(str(tmp_path / "a" / "checkpoint" / "adapter.safetensors"))
    b = load_file(str(tmp_path / "b" / "checkpoint" / "adapter.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_one_process_trains_runs_of_different_precisions_one_after_another(
    tiny_bert_dir: Path, sentiment_csvs: dict[str, Path], tmp_path: Path
) -> None:
    """Accelerate keeps a process's first precision and refuses another; a notebook that trains a bf16 run
    and then a full-precision one must not have to restart."""
    for i, precision in enumerate(("bf16", "no", "bf16")):
        run = run_config(
            tiny_bert_dir, sentiment_csvs, "train.max_steps=2", f"train.mixed_precision={precision}"
        )
        train_run(run, tmp_path / f"run{i}", show_progress=False)
        log = json.loads((tmp_path / f"run{i}" / "metrics.json").read_text())
        assert log["mixed_precision"] == precision
