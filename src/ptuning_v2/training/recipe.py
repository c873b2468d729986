"""The end-to-end recipe: config -> data -> backbone -> method -> task model -> train -> metrics.json.

Read it top to bottom: it is the whole training job, and the CLI only parses arguments for it.
"""

from __future__ import annotations

import copy
import random
import sys
from collections.abc import Callable
from pathlib import Path

from accelerate.utils import set_seed
from datasets import DatasetDict
from torch import nn

from ptuning_v2.checkpoint import TrainedCheckpoint, checkpoint_bytes, save_checkpoint
from ptuning_v2.config import ConfigError, RunConfig, apply_overrides, check_eval_overrides
from ptuning_v2.data import DataError, DataReport, get_builtin, load_builtin
from ptuning_v2.models import backbone_fingerprint, load_backbone, load_tokenizer
from ptuning_v2.tasks import Task, get_task
from ptuning_v2.tasks.base import evaluate_split
from ptuning_v2.trained.model import build_model, load_trained
from ptuning_v2.training.sharding import writable_trained_params
from ptuning_v2.training.trainer import Trainer, newest_state, prepare_output_dir, refuse_a_file
from ptuning_v2.utils.io import write_json_atomic


def load_splits(
    run: RunConfig, task_cls: type[Task], report: DataReport | None = None, need_train: bool = True
) -> DatasetDict:
    """The built-in data set ``data.name`` or the local files, trimmed to the configured sizes.

    ``report`` counts the records read and those the size limits leave out; ``need_train=False``
    (evaluating a checkpoint, which stores what it learnt from train) reads local dev/test files alone.
    """
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
    elif data.train or not need_train and (data.validation or data.test):
        splits = task_cls.load_local(data, report)
    elif need_train:
        raise DataError("no data: set data.name to a built-in data set or data.train to a file")
    else:
        raise DataError(
            "no data to evaluate on: the run had no validation or test file; give one with "
            "--set data.test=FILE (or data.validation=FILE)"
        )
    if not need_train:
        splits.pop("train", None)
    for split, dataset in splits.items():
        if report is not None:
            report.read(split, len(dataset))
    limits = {
        "train": data.max_train_examples,
        "validation": data.max_eval_examples,
        "test": data.max_eval_examples,
    }
    for split, limit in limits.items():
        if split in splits and limit is not None and limit < len(splits[split]):
            indices = sorted(random.Random(run.train.seed).sample(range(len(splits[split])), limit))
            if report is not None:
                option = "max_train_examples" if split == "train" else "max_eval_examples"
                report.skip(split, f"data.{option}={limit}", len(splits[split]) - limit)
            splits[split] = splits[split].select(indices)
    return splits


def count_parameters(model: nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def train_run(
    run: RunConfig,
    output_dir: str | Path,
    resume: bool = False,
    show_progress: bool = True,
    pause_at_step: int | None = None,
    on_evaluate: Callable[[int, float], None] | None = None,
    evaluate_test: bool = True,
    overwrite: bool = False,
) -> dict:
    """Train, pick the best dev checkpoint, evaluate it on dev and test, write ``metrics.json``.

    ``pause_at_step`` stops early with a resumable state (``resume=True`` continues it exactly).
    A folder that holds a previous run is refused unless ``resume`` or ``overwrite`` (which removes it).
    ``on_evaluate(step, dev_metric)`` sees every dev evaluation (a search prunes weak trials from it);
    ``evaluate_test=False`` leaves the test split untouched (search trials select on dev only).
    """
    output_dir = Path(output_dir)
    prepare_output_dir(output_dir, run, resume, overwrite)
    set_seed(run.train.seed)
    task_cls = get_task(run.task)
    report = DataReport()
    splits = load_splits(run, task_cls, report)
    tokenizer = load_tokenizer(run.model)
    backbone = load_backbone(run.model, task_cls.backbone_kind, options=run.model_options)
    fingerprint = backbone_fingerprint(backbone)
    task = task_cls(run, tokenizer)
    task.report = report
    task.prepare(splits)
    model = build_model(run, task, backbone, tokenizer)
    trainable, total = count_parameters(model)
    features = {split: task.featurize(dataset, split) for split, dataset in splits.items()}
    for line in report.notices():
        print(f"[data] {line}", file=sys.stderr)
    eval_splits = ("validation", "test") if evaluate_test else ("validation",)
    eval_sets = {s: (splits[s], features[s]) for s in eval_splits if s in splits}

    def save(directory: Path, trained: nn.Module) -> int:
        return save_checkpoint(
            directory,
            trained,
            run_config=run.to_dict(),
            task_state=task.state(),
            backbone_fingerprint=fingerprint,
        )

    train_features = features["train"]
    trainer = Trainer(
        run,
        task,
        model,
        train_features,
        eval_sets,
        output_dir,
        save,
        show_progress,
        on_evaluate=on_evaluate,
        data_report=report.to_dict(),
    )
    state = trainer.train(resume=resume, stop_at_step=pause_at_step)
    if state.step < trainer.total_steps and not (state.stopped_early or state.out_of_time):
        return {"paused_at_step": state.step, "state": str(newest_state(output_dir))}
    checkpoint_dir = output_dir / "checkpoint"
    with writable_trained_params(trainer.accelerator, trainer.unwrapped):  # ZeRO-3: gathered, then split
        TrainedCheckpoint.read(checkpoint_dir).load_into(trainer.unwrapped)
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
        "out_of_time": state.out_of_time,
        "eval_seconds": round(state.eval_seconds, 2),
        "train_examples": len(features["train"]),
        "data_report": report.to_dict(),
        "checkpoint": str(checkpoint_dir),
        "checkpoint_bytes": checkpoint_bytes(checkpoint_dir),
        "device": str(trainer.accelerator.device),
        "mixed_precision": trainer.accelerator.mixed_precision,
        "num_processes": trainer.accelerator.num_processes,
    }
    if trainer.accelerator.is_main_process:
        write_json_atomic(output_dir / "metrics.json", metrics)
    return metrics


def evaluate_checkpoint(
    checkpoint_dir: Path, output_dir: Path, overrides: list[str] | None = None, overwrite: bool = False
) -> dict:
    """Metrics of a checkpoint on its own dev/test data (or data changed by ``overrides``), written to
    ``output_dir/metrics.json``: never over a training run's or an earlier evaluation's unless ``overwrite``."""
    refuse_a_file(Path(output_dir))
    if (Path(output_dir) / "metrics.json").exists() and not overwrite:
        raise ConfigError(
            f"{output_dir}: holds a metrics.json (of a training run or an evaluation); pass --overwrite to "
            "replace it, or choose another --output-dir"
        )
    checkpoint = TrainedCheckpoint.read(checkpoint_dir)
    run = RunConfig.from_dict(
        apply_overrides(copy.deepcopy(checkpoint.run_config), overrides or []), source=str(checkpoint_dir)
    )
    check_eval_overrides(checkpoint.run(), run, f"{checkpoint_dir}: --set")
    run.data.train = None  # the checkpoint holds what the task learnt from train (e.g. its labels)
    task, model = load_trained(checkpoint, run=run)
    report = DataReport()
    task.report = report
    splits = load_splits(run, type(task), report, need_train=False)
    device = next(model.parameters()).device
    results = {}
    for split in ("validation", "test"):
        if split in splits:
            features = task.featurize(splits[split], split)
            results[split] = evaluate_split(
                task, model, splits[split], features, run.train.eval_batch_size, device
            )
    trainable = checkpoint.meta["num_parameters"]
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
        "checkpoint_bytes": checkpoint_bytes(checkpoint_dir),
        "data_report": report.to_dict(),
    }
    for line in report.notices():
        print(f"[data] {line}", file=sys.stderr)
    write_json_atomic(Path(output_dir) / "metrics.json", metrics)
    return metrics
