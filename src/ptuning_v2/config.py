"""Run configuration: YAML files are data, ``--set a.b=value`` overrides any field."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import yaml

from ptuning_v2.prompts.config import DeepPromptConfig


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the field."""


@dataclass
class DataConfig:
    """A built-in data set by ``name``, or local ``train``/``validation``/``test`` files."""

    name: str | None = None
    train: str | None = None
    validation: str | None = None
    test: str | None = None
    format: str | None = None
    """csv, tsv or jsonl (default: from the file extension)."""
    columns: dict[str, str] = field(default_factory=dict)
    """Our column name -> the file's column name, e.g. {text: review, label: sentiment}."""
    max_train_examples: int | None = None
    max_eval_examples: int | None = None


@dataclass
class HeadConfig:
    pooling: Literal["cls", "mean", "pooler"] = "cls"
    dropout: float = 0.1


@dataclass
class TrainConfig:
    """Defaults suit prompt tuning (high learning rates); methods override what they need."""

    epochs: float = 3.0
    max_steps: int | None = None
    batch_size: int = 32
    eval_batch_size: int = 128
    max_length: int = 128
    lr: float = 1e-2
    """Learning rate of the prompt (or of the adapted weights for other methods)."""
    head_lr: float = 5e-3
    weight_decay: float = 0.0
    warmup_ratio: float = 0.06
    scheduler: Literal["linear", "cosine", "constant"] = "linear"
    grad_clip: float = 1.0
    grad_accum_steps: int = 1
    layer_lr_multipliers: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    """Prompt learning-rate multipliers for the early, middle and late thirds of the layers."""
    eval_every: int | None = None
    """Evaluate every N optimizer steps; None means once per epoch."""
    early_stopping_patience: int | None = None
    metric_for_best: str | None = None
    seed: int = 42
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    """auto: bf16 on a CUDA GPU that supports it, full precision on CPU."""
    save_every: int | None = None
    """Write a resumable state every N steps (always at each evaluation)."""


@dataclass
class RunConfig:
    model: str = "minilm"
    task: str = "classification"
    method: str = "ptuning_v2"
    data: DataConfig = field(default_factory=DataConfig)
    prompt: DeepPromptConfig = field(default_factory=DeepPromptConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    task_options: dict[str, Any] = field(default_factory=dict)
    """Task-specific options (e.g. QA stride, generation templates)."""
    output_dir: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> RunConfig:
        return _build(cls, data, source)


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; known: {sorted(known)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        sub = _NESTED.get((cls.__name__, name))
        if sub is not None and value is not None:
            kwargs[name] = _build(sub, value, f"{where}.{name}")
        else:
            kwargs[name] = _coerce(value, hints[name], f"{where}.{name}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check a scalar against its annotation; YAML reads ``1e-2`` as a string, so numbers are parsed."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return _coerce(value, options[0], where)
        return value
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if hint is float and isinstance(value, int | float | str) and not isinstance(value, bool):
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if hint is int and not isinstance(value, bool):
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if hint is bool and not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if hint is str and not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


_NESTED: dict[tuple[str, str], type] = {
    ("RunConfig", "data"): DataConfig,
    ("RunConfig", "prompt"): DeepPromptConfig,
    ("RunConfig", "head"): HeadConfig,
    ("RunConfig", "train"): TrainConfig,
}


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` strings (values parsed as YAML) to a nested dict."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        target = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = target.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {part!r} is not a section")
            target = node
        target[parts[-1]] = yaml.safe_load(raw)
    return data


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The raw mapping of a YAML run config, before overrides and method defaults."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config fields, got {type(data).__name__}")
    return data


def load_run_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML run config (or start from defaults) and apply ``--set`` overrides."""
    data = read_config_file(path) if path is not None else {}
    data = apply_overrides(data, overrides or [])
    return RunConfig.from_dict(with_method_defaults(data), str(path) if path is not None else "defaults")


def with_method_defaults(data: dict[str, Any]) -> dict[str, Any]:
    """Put the chosen method's defaults (e.g. its learning rate) under the values the user set."""
    from ptuning_v2.methods import get_method  # methods import this module

    try:
        defaults = get_method(data.get("method", RunConfig.method)).defaults
    except ValueError as exc:
        raise ConfigError(f"method: {exc}") from exc
    return deep_merge(defaults, data)


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``top`` wins; nested dicts merge key by key."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out
