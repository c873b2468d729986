"""The end-to-end recipe: config -> data -> backbone -> method -> task model -> train -> metrics.json.

Read it top to bottom: it is the whole training job, and the CLI only parses arguments for it.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import set_seed
from datasets import DatasetDict
from torch import nn

import ptuning_v2.tasks  # noqa: F401  (registers the task families)
from ptuning_v2.config import RunConfig, apply_overrides
from ptuning_v2.data import DataError, get_builtin, load_builtin
from ptuning_v2.evaluation.runner import evaluate_split
from ptuning_v2.methods import get_method
from ptuning_v2.models import backbone_fingerprint, load_backbone, load_tokenizer
from ptuning_v2.tasks.base import Task, get_task
from ptuning_v2.training.checkpoint import (
    check_fingerprint,
    checkpoint_bytes,
    load_trained_tensors,
    read_checkpoint_meta,
    save_checkpoint,
)
from ptuning_v2.training.trainer import Trainer
from ptuning_v2.utils.io import write_json_atomic


def load_splits(run: RunConfig, task_cls: type[Task]) -> DatasetDict:
    """The built-in data set ``data.name`` or the local files, trimmed to the configured sizes."""
    data = run.data
    if data.name and (data.train or data.validation or data.test):
        raise DataError(
            "set either data.name (a built-in data set) or data.train/validation/test files, not both"
        )
    if data.name:
        builtin = get_builtin(data.name)
        if builtin.task != (task_cls.data_family or task_cls.name):
            raise DataError(
                f"built-in data set {data.name!r} is for task {builtin.task!r}, not {task_cls.name!r}"
            )
        splits = load_builtin(data.name)
    elif data.train:
        splits = task_cls.load_local(data)
    else:
        raise DataError("no data: set data.name to a built-in data set or data.train to a file")
    limits = {
        "train": data.max_train_examples,
        "validation": data.max_eval_examples,
        "test": data.max_eval_examples,
    }
    for split, limit in limits.items():
        if split in splits and limit is not None and limit < len(splits[split]):
            indices = sorted(random.Random(run.train.seed).sample(range(len(splits[split])), limit))
            splits[split] = splits[split].select(indices)
    return splits


def count_parameters(model: nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def build_model(run: RunConfig, task: Task, backbone: nn.Module, tokenizer: Any) -> nn.Module:
    encoder = get_method(run.method).build(backbone, run, tokenizer)
    return task.build_model(encoder)


def train_run(
    run: RunConfig,
    output_dir: str | Path,
    resume: bool = False,
    show_progress: bool = True,
    pause_at_step: int | None = None,
) -> dict:
    """Train, pick the best dev checkpoint, evaluate it on dev and test, write ``metrics.json``.

    ``pause_at_step`` stops early with a resumable state (``resume=True`` continues it exactly).
    """
    output_dir = Path(output_dir)
    set_seed(run.train.seed)
    task_cls = get_task(run.task)
    splits = load_splits(run, task_cls)
    tokenizer = load_tokenizer(run.model)
    backbone = load_backbone(run.model, task_cls.backbone_kind)
    fingerprint = backbone_fingerprint(backbone)
    task = task_cls(run, tokenizer)
    task.prepare(splits)
    model = build_model(run, task, backbone, tokenizer)
    trainable, total = count_parameters(model)
    features = {split: task.featurize(dataset, split) for split, dataset in splits.items()}
    eval_sets = {s: (splits[s], features[s]) for s in ("validation", "test") if s in splits}

    def save(directory: Path, trained: nn.Module) -> int:
        return save_checkpoint(
            directory,
            trained,
            run_config=run.to_dict(),
            task_state=task.state(),
            backbone_fingerprint=fingerprint,
        )

    trainer = Trainer(run, task, model, features["train"], eval_sets, output_dir, save, show_progress)
    state = trainer.train(resume=resume, stop_at_step=pause_at_step)
    if state.step < trainer.total_steps and not state.stopped_early:
        return {"paused_at_step": state.step, "state": str(output_dir / "last")}
    checkpoint_dir = output_dir / "checkpoint"
    load_trained_tensors(checkpoint_dir, trainer.unwrapped)
    metrics = {
        "method": run.method,
        "task": run.task,
        "model": run.model,
        "data": run.data.name or run.data.train,
        "dev": trainer.evaluate("validation") if "validation" in eval_sets else {},
        "test": trainer.evaluate("test") if "test" in eval_sets else {},
        "trainable_params": trainable,
        "total_params": total,
        "trainable_share": trainable / total,
        "train_seconds": round(state.train_seconds, 2),
        "steps": state.step,
        "best_step": state.best_step,
        "stopped_early": state.stopped_early,
        "train_examples": len(features["train"]),
        "checkpoint": str(checkpoint_dir),
        "checkpoint_bytes": checkpoint_bytes(checkpoint_dir),
        "device": str(trainer.accelerator.device),
        "mixed_precision": trainer.accelerator.mixed_precision,
        "num_processes": trainer.accelerator.num_processes,
    }
    if trainer.accelerator.is_main_process:
        write_json_atomic(output_dir / "metrics.json", metrics)
    return metrics


def load_trained(
    checkpoint_dir: str | Path, device: str | torch.device | None = None, run: RunConfig | None = None
) -> tuple[Task, nn.Module]:
    """Rebuild a trained task model from a checkpoint folder, checking the backbone's fingerprint.

    ``run`` replaces the stored run config (e.g. to evaluate on other data); the model part must match.
    """
    meta = read_checkpoint_meta(checkpoint_dir)
    run = run or RunConfig.from_dict(meta["run_config"], source=str(checkpoint_dir))
    task_cls = get_task(run.task)
    tokenizer = load_tokenizer(run.model)
    backbone = load_backbone(run.model, task_cls.backbone_kind)
    check_fingerprint(meta, backbone_fingerprint(backbone), checkpoint_dir)
    task = task_cls(run, tokenizer)
    task.load_state(meta["task_state"])
    model = build_model(run, task, backbone, tokenizer)
    load_trained_tensors(checkpoint_dir, model)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return task, model.to(device).eval()


def evaluate_checkpoint(checkpoint_dir: Path, output_dir: Path, overrides: list[str] | None = None) -> dict:
    """Metrics of a checkpoint on its own dev/test data (or data changed by ``overrides``)."""
    meta = read_checkpoint_meta(checkpoint_dir)
    run = RunConfig.from_dict(
        apply_overrides(meta["run_config"], overrides or []), source=str(checkpoint_dir)
    )
    task, model = load_trained(checkpoint_dir, run=run)
    splits = load_splits(run, type(task))
    device = next(model.parameters()).device
    results = {}
    for split in ("validation", "test"):
        if split in splits:
            features = task.featurize(splits[split], split)
            results[split] = evaluate_split(
                task, model, splits[split], features, run.train.eval_batch_size, device
            )
    trainable = meta["num_parameters"]
    total = sum(p.numel() for p in model.parameters())
    metrics = {
        "method": run.method,
        "task": run.task,
        "model": run.model,
        "data": run.data.name or run.data.test or run.data.validation,
        "checkpoint": str(checkpoint_dir),
        "dev": results.get("validation", {}),
        "test": results.get("test", {}),
        "trainable_params": trainable,
        "total_params": total,
        "trainable_share": trainable / total,
        "train_seconds": 0.0,
        "checkpoint_bytes": checkpoint_bytes(checkpoint_dir),
    }
    write_json_atomic(Path(output_dir) / "metrics.json", metrics)
    return metrics
