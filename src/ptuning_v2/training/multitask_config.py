"""Multi-task run configuration: one backbone, a list of tasks, a shared ``train`` section.

Each task becomes an ordinary :class:`~ptuning_v2.config.RunConfig` (model, method, its own task
type, data, prompt, head, task options, and the shared train settings with the task's overrides on
top): that is the run config its checkpoint stores, so ``ptv2 predict`` and ``ptv2 eval`` load a
multi-task run's task exactly like a single-task run's.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import ptuning_v2.tasks  # noqa: F401  (registers the task families)
from ptuning_v2.config import (
    ConfigError,
    RunConfig,
    TrainConfig,
    apply_overrides,
    deep_merge,
    did_you_mean,
    read_config_file,
)
from ptuning_v2.data.builtin import REGISTRY
from ptuning_v2.methods import backbone_sharing_methods, resolve_run_config
from ptuning_v2.tasks.base import TASKS, get_task

MIXES = ("proportional", "temperature", "round_robin")

TASK_TRAIN_FIELDS = (
    "batch_size",
    "eval_batch_size",
    "max_length",
    "lr",
    "head_lr",
    "weight_decay",
    "layer_lr_multipliers",
    "layer_lr_ranges",
    "metric_for_best",
)
"""Train settings a task may override; the rest (steps, seed, schedule, evaluation) are the run's."""

UNSUPPORTED_TRAIN_FIELDS = {
    "grad_accum_steps": "each step is one batch of one task",
    "early_stopping_patience": "every task trains to the end; each keeps its best dev checkpoint",
    "max_seconds": "set train.max_steps",
    "save_every": "multi-task runs write no resumable state (no --resume)",
    "keep_states": "multi-task runs write no resumable state (no --resume)",
    "log_with": "the run logs to log.jsonl only",
}
"""Fields of the single-task ``train`` section a multi-task run refuses, with the reason."""

TASK_KEYS = ("name", "task", "data", "prompt", "head", "task_options", "train", "lora")
TOP_KEYS = (
    "model",
    "model_options",
    "method",
    "mix",
    "temperature",
    "prompt_sharing",
    "prompt",
    "train",
    "tasks",
    "output_dir",
)
SHARING = ("separate", "shared")
SHARED_PROMPT_TRAIN_FIELDS = ("lr", "layer_lr_multipliers", "layer_lr_ranges")
"""What a task may not override when all tasks train one prompt: the prompt's learning rates."""
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass
class TaskSpec:
    """One task of the run: its name (a folder name under OUTPUT_DIR/tasks) and its own run config."""

    name: str
    run: RunConfig


@dataclass
class MultiTaskConfig:
    model: str
    method: str
    tasks: list[TaskSpec]
    train: TrainConfig
    """The shared settings: steps, seed, schedule, eval_every, mixed precision (and default lrs, sizes)."""
    mix: Literal["proportional", "temperature", "round_robin"] = "proportional"
    temperature: float = 2.0
    """``mix: temperature``: task i is drawn with probability proportional to ``n_i ** (1 / T)``."""
    prompt_sharing: Literal["separate", "shared"] = "separate"
    """``separate``: a prompt per task; ``shared``: one prompt trained by all tasks (a head per task)."""
    output_dir: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)
    """The mapping it was built from (after overrides), stored in metrics.json."""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.raw)


def is_multitask_config(data: dict[str, Any]) -> bool:
    """A run config with a ``tasks`` list is a multi-task run."""
    return "tasks" in data


def _check_keys(data: dict[str, Any], known: tuple[str, ...], where: str) -> None:
    unknown = sorted(str(k) for k in data if k not in known)
    if unknown:
        hint = did_you_mean(unknown[0], known)
        raise ConfigError(f"{where}{unknown[0]}: unknown field{hint}; known: {list(known)}")


def _check_train(train: Any, where: str, allowed: tuple[str, ...] | None) -> dict[str, Any]:
    if train is None:
        return {}
    if not isinstance(train, dict):
        raise ConfigError(f"{where}: expected a mapping, got {train!r}")
    for key in train:
        if key in UNSUPPORTED_TRAIN_FIELDS:
            raise ConfigError(
                f"{where}.{key}: not supported by multi-task runs ({UNSUPPORTED_TRAIN_FIELDS[key]})"
            )
        if allowed is not None and key in TrainConfig.__dataclass_fields__ and key not in allowed:
            raise ConfigError(
                f"{where}.{key}: shared by all tasks, set it in the top-level train section "
                f"(a task may override {', '.join(allowed)})"
            )
    return train


def _task_spec(
    item: Any, where: str, top: dict[str, Any], shared: dict[str, Any], earlier: list[str]
) -> TaskSpec:
    """One entry of ``tasks``, checked, as its own run config (shared train settings under its own)."""
    if not isinstance(item, dict):
        raise ConfigError(f"{where}: expected a mapping, got {item!r}")
    _check_keys(item, TASK_KEYS, f"{where}.")
    name = item.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(f"{where}.name: expected a folder name (letters, digits, _ . -), got {name!r}")
    if name in earlier:
        raise ConfigError(f"{where}.name: {name!r} is the name of an earlier task")
    task_name = item.get("task", RunConfig.task)
    if task_name not in TASKS:
        hint = did_you_mean(str(task_name), TASKS)
        raise ConfigError(f"{where}.task: unknown task {task_name!r}{hint}; known tasks: {sorted(TASKS)}")
    task_cls = TASKS[task_name]
    data = item.get("data")
    if not isinstance(data, dict) or not (data.get("name") or data.get("train")):
        raise ConfigError(f"{where}.data: set name (a built-in data set) or train (a file), got {data!r}")
    builtin = data.get("name")
    if builtin is not None:
        if builtin not in REGISTRY:
            raise ConfigError(
                f"{where}.data.name: unknown built-in data set {builtin!r}"
                f"{did_you_mean(str(builtin), REGISTRY)}; known: {', '.join(REGISTRY)}"
            )
        family = task_cls.data_family or task_cls.name
        if REGISTRY[builtin].task != family:
            raise ConfigError(
                f"{where}.data.name: {builtin!r} is a {REGISTRY[builtin].task} data set, not for task "
                f"{task_cls.name!r}"
            )
    sharing = top.get("prompt_sharing", "separate")
    allowed = TASK_TRAIN_FIELDS
    if sharing == "shared":
        if item.get("prompt") is not None:
            raise ConfigError(f"{where}.prompt: with prompt_sharing: shared all tasks train the run's prompt")
        allowed = tuple(f for f in TASK_TRAIN_FIELDS if f not in SHARED_PROMPT_TRAIN_FIELDS)
    train = _check_train(item.get("train"), f"{where}.train", allowed)
    prompt = item.get("prompt") or {}
    if not isinstance(prompt, dict):
        raise ConfigError(f"{where}.prompt: expected a mapping, got {prompt!r}")
    run = {k: v for k, v in item.items() if k not in ("name", "train")}
    run.update(
        model=top.get("model", RunConfig.model),
        model_options=top.get("model_options") or {},
        method=top.get("method", RunConfig.method),
        task=task_cls.name,
        prompt=deep_merge(top.get("prompt") or {}, prompt),
        train={**shared, **train},
    )
    return TaskSpec(name, resolve_run_config(run, where))


def multitask_from_dict(data: dict[str, Any], source: str = "config") -> MultiTaskConfig:
    """Validate a multi-task mapping; every error names the field, e.g. ``tasks[1].data.name``."""
    _check_keys(data, TOP_KEYS, f"{source}: ")
    model = data.get("model", RunConfig.model)
    if not isinstance(model, str) or not model:
        raise ConfigError(f"{source}: model: expected a model name or folder, got {model!r}")
    method = data.get("method", RunConfig.method)
    if method not in backbone_sharing_methods():
        raise ConfigError(
            f"{source}: method: {method!r} cannot train several tasks on one shared backbone; "
            f"use one of {backbone_sharing_methods()}"
        )
    mix = data.get("mix", "proportional")
    if mix not in MIXES:
        raise ConfigError(
            f"{source}: mix: {mix!r} is not one of {list(MIXES)}{did_you_mean(str(mix), MIXES)}"
        )
    temperature = data.get("temperature", 2.0)
    if isinstance(temperature, bool) or not isinstance(temperature, int | float | str):
        raise ConfigError(f"{source}: temperature: expected a number, got {temperature!r}")
    try:
        temperature = float(temperature)
    except ValueError:
        raise ConfigError(f"{source}: temperature: expected a number, got {temperature!r}") from None
    if not (math.isfinite(temperature) and temperature > 0):
        raise ConfigError(f"{source}: temperature: must be a positive number, got {temperature}")
    if "temperature" in data and mix != "temperature":
        raise ConfigError(f"{source}: temperature: applies to mix: temperature only (mix is {mix!r})")
    sharing = data.get("prompt_sharing", "separate")
    if sharing not in SHARING:
        raise ConfigError(f"{source}: prompt_sharing: {sharing!r} is not one of {list(SHARING)}")
    if not isinstance(data.get("prompt") or {}, dict):
        raise ConfigError(f"{source}: prompt: expected a mapping, got {data['prompt']!r}")
    shared = _check_train(data.get("train"), f"{source}: train", None)
    shared_train = resolve_run_config({"model": model, "method": method, "train": dict(shared)}, source).train
    tasks_raw = data.get("tasks")
    if not isinstance(tasks_raw, list) or not tasks_raw:
        raise ConfigError(f"{source}: tasks: expected a non-empty list of tasks, got {tasks_raw!r}")
    tasks: list[TaskSpec] = []
    kinds: dict[str, str] = {}
    for i, item in enumerate(tasks_raw):
        where = f"{source}: tasks[{i}]"
        spec = _task_spec(item, where, data, shared, [t.name for t in tasks])
        kind = get_task(spec.run.task).backbone_kind
        kinds.setdefault(kind, where)
        if len(kinds) > 1:
            (first_kind, first_where), (kind, _) = list(kinds.items())[:2]
            raise ConfigError(
                f"{where}.task: {spec.run.task!r} needs backbone kind {kind!r}, {first_where} needs "
                f"{first_kind!r}; the tasks of one run share one backbone"
            )
        tasks.append(spec)
    return MultiTaskConfig(
        model=model,
        method=method,
        tasks=tasks,
        train=shared_train,
        mix=mix,
        temperature=temperature,
        prompt_sharing=sharing,
        output_dir=data.get("output_dir"),
        raw=data,
    )


def load_multitask_config(path: str | Path, overrides: list[str] | None = None) -> MultiTaskConfig:
    """Read a YAML multi-task config and apply ``--set`` overrides; ``--set tasks.0.prompt.num_virtual_tokens=8``
    addresses a task by its index."""
    data = read_config_file(path)
    if not is_multitask_config(data):
        raise ConfigError(f"{path}: not a multi-task config (no tasks list); train it with ptv2 train")
    data = apply_task_overrides(data, overrides or [])
    return multitask_from_dict(data, str(path))


def apply_task_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``--set`` overrides; ``tasks.N.field=value`` sets ``field`` in the N-th task (0-based)."""
    plain = []
    for item in overrides:
        key, sep, value = item.partition("=")
        parts = key.strip().split(".")
        if parts[0] != "tasks":
            plain.append(item)
            continue
        tasks = data.get("tasks")
        if not sep or len(parts) < 3 or not parts[1].isdigit() or not isinstance(tasks, list):
            raise ConfigError(f"--set {item!r}: address a task's field as tasks.<index>.<field>=value")
        index = int(parts[1])
        if index >= len(tasks) or not isinstance(tasks[index], dict):
            raise ConfigError(f"--set {item!r}: there is no tasks[{index}] (the run has {len(tasks)} tasks)")
        apply_overrides(tasks[index], [".".join(parts[2:]) + "=" + value])
    return apply_overrides(data, plain)
