"""Multi-task training: one frozen backbone, a prompt and a head per task, one optimizer.

Read it top to bottom, like ``recipe.py``: load the backbone once, wrap it once per task (each task's
``DeepPromptModel`` delivers its own prompt with each call, so several share one backbone), or once
for all tasks with ``prompt_sharing: shared`` (the paper's multi-task prompt: one prompt, one head
per task). Every optimizer step trains one batch of one task, the task drawn by the configured mix;
each task keeps its best dev checkpoint in the single-task format, so ``ptv2 predict`` and ``ptv2
eval`` load ``OUTPUT_DIR/tasks/<name>/checkpoint`` like any other run.

One process only (no torchrun / accelerate launch) and no resumable state: a run starts over.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from datasets import DatasetDict
from torch import nn

from ptuning_v2.checkpoint import TrainedCheckpoint, checkpoint_bytes, save_checkpoint
from ptuning_v2.config import ConfigError, TrainConfig
from ptuning_v2.methods import get_method
from ptuning_v2.models import backbone_fingerprint, load_backbone, load_tokenizer
from ptuning_v2.tasks.base import Task, evaluate_split, get_task
from ptuning_v2.training.multitask_config import MultiTaskConfig, TaskSpec
from ptuning_v2.training.optim import build_scheduler, param_groups
from ptuning_v2.training.recipe import load_splits
from ptuning_v2.training.sharding import release_precision
from ptuning_v2.training.tracking import progress_bar
from ptuning_v2.training.trainer import (
    TrainingDivergedError,
    epoch_batches,
    replace_run_files,
    resolve_mixed_precision,
)
from ptuning_v2.utils.io import write_json_atomic

RUN_FILES = ("metrics.json", "log.jsonl", "tasks")


# ---- the mix: which task each step trains ----------------------------------------------------------
def mix_weights(sizes: list[int], mix: str, temperature: float = 2.0) -> list[float]:
    """The share of steps each task gets, from the tasks' training-set sizes ``n_i``.

    ``proportional``: ``n_i / sum(n)``; ``temperature``: ``n_i ** (1/T) / sum(n_j ** (1/T))`` (T = 1 is
    proportional, a large T tends to equal shares; T5 and mT5 use T = 2 to 3.3); ``round_robin``: ``1/N``.
    """
    if mix == "round_robin":
        return [1.0 / len(sizes)] * len(sizes)
    exponent = 1.0 if mix == "proportional" else 1.0 / temperature
    scaled = [float(n) ** exponent for n in sizes]
    total = sum(scaled)
    return [s / total for s in scaled]


def task_schedule(sizes: list[int], mix: str, temperature: float, steps: int, seed: int) -> list[int]:
    """The task index of every optimizer step: in turn for ``round_robin``, else seeded independent
    draws with the probabilities of :func:`mix_weights` (the same seed gives the same schedule)."""
    if mix == "round_robin":
        return [step % len(sizes) for step in range(steps)]
    weights = mix_weights(sizes, mix, temperature)
    return np.random.RandomState(seed).choice(len(sizes), size=steps, p=weights).tolist()


class BatchStream:
    """One task's training batches in the single-task trainer's order (a seeded permutation per
    epoch), continued into the next epoch whenever the task is drawn again after its last batch."""

    def __init__(self, num_examples: int, batch_size: int, seed: int) -> None:
        self.num_examples, self.batch_size, self.seed = num_examples, batch_size, seed
        self.epoch, self.position = 0, 0
        self.batches = epoch_batches(num_examples, batch_size, seed, 0, 0, 1)

    def next(self) -> list[int]:
        if self.position == len(self.batches):
            self.epoch, self.position = self.epoch + 1, 0
            self.batches = epoch_batches(self.num_examples, self.batch_size, self.seed, self.epoch, 0, 1)
        self.position += 1
        return self.batches[self.position - 1]


# ---- one task of the run ---------------------------------------------------------------------------
@dataclass
class TaskRun:
    """What one task holds during training: its data, its model on the shared backbone, its progress."""

    spec: TaskSpec
    task: Task
    model: nn.Module
    splits: DatasetDict
    features: dict[str, list[dict[str, Any]]]
    stream: BatchStream
    metric: str
    best_metric: float | None = None
    best_step: int | None = None
    steps: int = 0
    examples_seen: int = 0
    loss_sum: float = 0.0
    loss_count: int = 0

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def checkpoint_dir(self) -> Path:
        return Path("tasks") / self.name / "checkpoint"

    def improved(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.best_metric is None:
            return True
        return value > self.best_metric if self.task.higher_is_better else value < self.best_metric


def build_task_models(
    config: MultiTaskConfig, tasks: list[Task], backbone: nn.Module, tokenizer: Any
) -> list[nn.Module]:
    """Each task's model on the one backbone: its own prompt, or the one shared prompt, and its head."""
    method = get_method(config.method)
    if config.prompt_sharing == "shared":
        encoder = method.build(backbone, config.tasks[0].run, tokenizer)
        models = [task.build_model(encoder) for task in tasks]
    else:
        models = [
            task.build_model(method.build(backbone, spec.run, tokenizer))
            for spec, task in zip(config.tasks, tasks, strict=True)
        ]
    if config.train.gradient_checkpointing:  # after the method: prompted, MPNet can be checkpointed too
        backbone.activation_checkpointing_enable()
    return models


def build_optimizer(runs: list[TaskRun], shared: TrainConfig) -> torch.optim.AdamW:
    """AdamW over every task's prompt and head, with each task's prompt / head learning rates (the
    single-task groups, named ``<task>/<group>``); a shared prompt is one group at the shared rates."""
    groups: list[dict[str, Any]] = []
    seen: set[int] = set()
    for run in runs:
        for group in param_groups(run.model, run.spec.run.train):
            params = [p for p in group["params"] if id(p) not in seen]
            seen.update(id(p) for p in params)
            if params:
                groups.append({**group, "name": f"{run.name}/{group['name']}", "params": params})
    return torch.optim.AdamW(groups)


def unique_parameter_count(modules: list[nn.Module]) -> tuple[int, int]:
    """Trained and total parameters of several models that share a backbone, each counted once."""
    params = {id(p): p for module in modules for p in module.parameters()}
    trained = sum(p.numel() for p in params.values() if p.requires_grad)
    return trained, sum(p.numel() for p in params.values())


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def train_multitask(
    config: MultiTaskConfig, output_dir: str | Path, show_progress: bool = True, overwrite: bool = False
) -> dict[str, Any]:
    """Train every task of ``config`` on one backbone; write per-task checkpoints and ``metrics.json``."""
    output_dir = Path(output_dir)
    cfg = config.train
    precision = resolve_mixed_precision(cfg.mixed_precision)
    release_precision(precision)
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=precision)
    if accelerator.num_processes > 1:
        raise ConfigError(
            "multi-task training runs in one process: start ptv2 train-multi directly, "
            "not under torchrun or accelerate launch"
        )
    replace_run_files(output_dir, RUN_FILES, overwrite)
    output_dir.mkdir(parents=True, exist_ok=True)
    set_seed(cfg.seed)
    device = accelerator.device

    # 1. One tokenizer and one backbone for all tasks; each task's data, label set and model on it.
    tokenizer = load_tokenizer(config.model)
    first = config.tasks[0].run
    backbone = load_backbone(config.model, get_task(first.task).backbone_kind, options=first.model_options)
    fingerprint = backbone_fingerprint(backbone)
    tasks, all_splits = [], []
    for spec in config.tasks:
        task = get_task(spec.run.task)(spec.run, tokenizer)
        splits = load_splits(spec.run, type(task))
        task.prepare(splits)
        tasks.append(task)
        all_splits.append(splits)
    models = build_task_models(config, tasks, backbone, tokenizer)
    runs = []
    for spec, task, splits, model in zip(config.tasks, tasks, all_splits, models, strict=True):
        features = {split: task.featurize(dataset, split) for split, dataset in splits.items()}
        stream = BatchStream(len(features["train"]), spec.run.train.batch_size, cfg.seed)
        metric = spec.run.train.metric_for_best or task.main_metric
        runs.append(TaskRun(spec, task, model.to(device), splits, features, stream, metric))
    trained_params, total_params = unique_parameter_count(models)

    # 2. The step budget, the task of every step, one optimizer and one schedule.
    sizes = [len(run.features["train"]) for run in runs]
    steps_per_epoch = sum(len(run.stream.batches) for run in runs)
    total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    schedule = task_schedule(sizes, config.mix, config.temperature, total_steps, cfg.seed)
    optimizer = build_optimizer(runs, cfg)
    scheduler = build_scheduler(optimizer, cfg, total_steps)  # shared warmup and decay over all steps
    optimizer = accelerator.prepare(optimizer)  # loss scaling under fp16
    log_every = max(1, total_steps // 50)
    first_group = {}  # a task's first parameter group (its prompt, or its head): its lr goes in the log
    for position, group in enumerate(optimizer.param_groups):
        first_group.setdefault(group["name"].split("/")[0], position)

    def log(record: dict[str, Any]) -> None:
        with open(output_dir / "log.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def save(run: TaskRun, step: int) -> None:
        save_checkpoint(
            output_dir / run.checkpoint_dir,
            run.model,
            run_config=run.spec.run.to_dict(),
            task_state=run.task.state(),
            backbone_fingerprint=fingerprint,
            extra={"multitask": {"run": str(output_dir), "task_name": run.name, "step": step}},
        )

    def evaluate(run: TaskRun, split: str) -> dict[str, Any]:
        dataset, features = run.splits[split], run.features[split]
        batch_size = run.spec.run.train.eval_batch_size
        return evaluate_split(
            run.task, run.model, dataset, features, batch_size, device, accelerator.autocast()
        )

    def evaluate_and_select(step: int) -> None:
        for run in runs:
            if "validation" not in run.splits:
                continue
            metrics = evaluate(run, "validation")
            if run.metric not in metrics:
                raise ConfigError(
                    f"tasks[{runs.index(run)}].train.metric_for_best: {run.metric!r} is not among "
                    f"{sorted(metrics)}"
                )
            flat = {k: v for k, v in metrics.items() if not isinstance(v, dict)}
            log({"type": "eval", "split": "validation", "step": step, "task": run.name, **flat})
            if run.improved(float(metrics[run.metric])):
                run.best_metric, run.best_step = float(metrics[run.metric]), step
                save(run, step)

    # 3. The loop: each step one batch of the drawn task, one optimizer step over its prompt and head.
    for model in models:
        model.train()
    bar = progress_bar(total_steps, 0, show_progress, f"{config.method} multi-task ({len(runs)} tasks)")
    started, eval_seconds = time.perf_counter(), 0.0
    for step, index in enumerate(schedule, start=1):
        run = runs[index]
        ids = run.stream.next()
        batch = _to_device(run.task.collate([run.features["train"][i] for i in ids]), device)
        with accelerator.autocast():
            loss = run.model(batch)["loss"]
        accelerator.backward(loss)
        value = float(loss.detach())
        if cfg.grad_clip:
            norm = accelerator.clip_grad_norm_(
                [p for p in run.model.parameters() if p.requires_grad], cfg.grad_clip
            )
            value = value if torch.isfinite(norm) else float("nan")
        if not math.isfinite(value):
            raise TrainingDivergedError(
                f"training diverged at step {step} on task {run.name!r}: the loss or its gradient is not "
                f"finite (lr {run.spec.run.train.lr}); lower that task's train.lr or set train.grad_clip"
            )
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)  # the other tasks' parameters get no update at all
        run.steps, run.examples_seen = run.steps + 1, run.examples_seen + len(ids)
        run.loss_sum, run.loss_count = run.loss_sum + value, run.loss_count + 1
        bar.update(1)
        if step % log_every == 0 or step == total_steps:
            elapsed, lrs = round(time.perf_counter() - started, 2), scheduler.get_last_lr()
            for r in runs:
                if r.loss_count:
                    loss_mean = r.loss_sum / r.loss_count
                    log(
                        {
                            "type": "train",
                            "step": step,
                            "task": r.name,
                            "loss": loss_mean,
                            "task_steps": r.steps,
                            "lr": lrs[first_group[r.name]],
                            "elapsed": elapsed,
                        }
                    )
                    r.loss_sum, r.loss_count = 0.0, 0
        if (cfg.eval_every and step % cfg.eval_every == 0) or step == total_steps:
            eval_started = time.perf_counter()
            evaluate_and_select(step)
            eval_seconds += time.perf_counter() - eval_started
    bar.close()
    train_seconds = time.perf_counter() - started

    # 4. Each task's best checkpoint back in its model, evaluated on dev and test: metrics.json.
    results: dict[str, Any] = {}
    for run in runs:
        if run.best_step is None:  # no dev split: the final state is the checkpoint
            run.best_step = total_steps
            save(run, total_steps)
        directory = output_dir / run.checkpoint_dir
        TrainedCheckpoint.read(directory).load_into(run.model)
        results[run.name] = {
            "task": run.spec.run.task,
            "data": run.spec.run.data.name or run.spec.run.data.train,
            "main_metric": run.metric,
            "dev": evaluate(run, "validation") if "validation" in run.splits else {},
            "test": evaluate(run, "test") if "test" in run.splits else {},
            "best_step": run.best_step,
            "steps": run.steps,
            "examples_seen": run.examples_seen,
            "train_examples": len(run.features["train"]),
            "mix_weight": mix_weights(sizes, config.mix, config.temperature)[runs.index(run)],
            "trainable_params": sum(p.numel() for p in run.model.parameters() if p.requires_grad),
            "checkpoint": str(directory),
            "checkpoint_bytes": checkpoint_bytes(directory),
        }
    metrics = {
        "method": config.method,
        "model": config.model,
        "mix": config.mix,
        "temperature": config.temperature if config.mix == "temperature" else None,
        "prompt_sharing": config.prompt_sharing,
        "tasks": results,
        "mean": {split: mean_main_metric(results, split) for split in ("dev", "test")},
        "steps": total_steps,
        "batches_per_epoch": steps_per_epoch,
        "trainable_params": trained_params,
        "total_params": total_params,
        "trainable_share": trained_params / total_params,
        "train_seconds": round(train_seconds, 2),
        "eval_seconds": round(eval_seconds, 2),
        "device": str(device),
        "mixed_precision": accelerator.mixed_precision,
        "num_processes": 1,
        "config": config.to_dict(),
    }
    write_json_atomic(output_dir / "metrics.json", metrics)
    return metrics


def mean_main_metric(results: dict[str, Any], split: str) -> float | None:
    """The mean over tasks of each task's main metric on ``split`` (None when a task lacks the split)."""
    values = [r[split].get(r["main_metric"]) for r in results.values()]
    if not values or any(v is None for v in values):
        return None
    return float(sum(values) / len(values))
