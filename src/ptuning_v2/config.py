"""Run configuration: YAML files are data, ``--set a.b=value`` overrides any field.

This module is the schema and knows no method: the chosen method's defaults (its learning rates) are
put under the user's values by :func:`ptuning_v2.methods.load_run_config`, from the method registry.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import math
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the field."""


def finite_float(text: str) -> float:
    """A command-line number (argparse ``type``): ``nan`` and ``inf`` parse as floats but would make
    waits, budgets and bounds never end or never hold."""
    try:
        number = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return number


def _at_least(name: str, value: int | None, low: int, optional: bool = False) -> None:
    if value is None and optional:
        return
    if value is None or value < low:
        raise ConfigError(f"{name}: must be an integer >= {low}, got {value}")


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

    def __post_init__(self) -> None:
        for name in ("max_train_examples", "max_eval_examples"):
            _at_least(f"data.{name}", getattr(self, name), 1, optional=True)


InjectionMode = Literal["prefix", "hidden"]
InitMethod = Literal["random", "zero", "text", "checkpoint"]
LengthSchedule = Literal["constant", "adaptive"]
SlotKind = Literal["self", "decoder_self", "cross"]
PositionOffset = Literal["none", "prefix"]


@dataclass
class DeepPromptConfig:
    """Everything that defines a deep prompt; JSON-serialisable so checkpoints can rebuild it.

    ``mode="prefix"`` (the official P-Tuning v2 form) prepends trained keys and values to every
    attention layer; ``mode="hidden"`` prepends trained vectors to the hidden states before each
    layer and drops them after it.
    """

    num_virtual_tokens: int = 20
    mode: InjectionMode = "prefix"
    layers: list[int] | None = None
    """Layer indices to prompt (negative counts from the end); ``None`` means every layer."""
    layer_lengths: list[int] | None = None
    """Explicit length per prompted layer, in the order of ``layers``; overrides the schedule."""
    length_schedule: LengthSchedule = "constant"
    task_complexity: float = 0.5
    """In [0, 1]; scales the adaptive schedule (harder tasks get longer prompts)."""
    min_length: int = 1
    max_length: int = 512
    attach_to: list[SlotKind] = field(default_factory=lambda: ["self", "decoder_self", "cross"])
    """Encoder-decoder models: which attention kinds receive prefixes (prefix-tuning layout)."""
    init: InitMethod = "random"
    init_std: float = 0.02
    init_text: str | None = None
    init_checkpoint: str | None = None
    """``init: checkpoint``: a trained checkpoint folder on the same backbone (e.g. a task's prompt from a
    multi-task run) whose prompts start this one, each layer tiled or cut to this prompt's length."""
    reparameterize: bool = False
    """Prefix-tuning style MLP over a shared embedding; fold it away with ``fold()`` for inference."""
    reparam_hidden_size: int = 512
    dropout: float = 0.0
    """Dropout on the prompt tensors during training (shared across the batch)."""
    position_offset: PositionOffset = "none"
    """Decoder-only models: ``none`` keeps the real tokens at positions 0..n-1 (the prompt takes no
    position); ``prefix`` shifts them by the prompt length, as PEFT's prefix tuning does when it passes
    the prefix as a cache (needed for exported prompts to give the same logits under PEFT)."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.num_virtual_tokens < 0:
            raise ValueError(f"prompt.num_virtual_tokens must be >= 0, got {self.num_virtual_tokens}")
        if self.mode not in ("prefix", "hidden"):
            raise ValueError(f"prompt.mode must be 'prefix' or 'hidden', got {self.mode!r}")
        if self.init not in ("random", "zero", "text", "checkpoint"):
            raise ValueError(
                f"prompt.init must be 'random', 'zero', 'text' or 'checkpoint', got {self.init!r}"
            )
        if self.init == "text" and not self.init_text:
            raise ValueError("prompt.init is 'text' but prompt.init_text is empty")
        if self.init == "checkpoint" and not self.init_checkpoint:
            raise ValueError("prompt.init is 'checkpoint' but prompt.init_checkpoint (a folder) is not set")
        if self.length_schedule not in ("constant", "adaptive"):
            raise ValueError(
                f"prompt.length_schedule must be 'constant' or 'adaptive', got {self.length_schedule!r}"
            )
        if not 0.0 <= self.task_complexity <= 1.0:
            raise ValueError(f"prompt.task_complexity must be in [0, 1], got {self.task_complexity}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"prompt.dropout must be in [0, 1), got {self.dropout}")
        if self.position_offset not in ("none", "prefix"):
            raise ValueError(
                f"prompt.position_offset must be 'none' or 'prefix', got {self.position_offset!r}"
            )
        if self.min_length < 0 or self.max_length < self.min_length:
            raise ValueError(f"prompt.min_length/max_length invalid: {self.min_length}, {self.max_length}")
        if self.layer_lengths is not None:
            if any(n < 0 for n in self.layer_lengths):
                raise ValueError(f"prompt.layer_lengths must be >= 0, got {self.layer_lengths}")
            if self.layers is not None and len(self.layers) != len(self.layer_lengths):
                raise ValueError(
                    f"prompt.layer_lengths has {len(self.layer_lengths)} entries but prompt.layers has "
                    f"{len(self.layers)}"
                )
        bad = set(self.attach_to) - {"self", "decoder_self", "cross"}
        if bad:
            raise ValueError(f"prompt.attach_to has unknown kinds {sorted(bad)}")

    def layer_indices(self, num_layers: int) -> list[int]:
        """The prompted layers as sorted non-negative indices."""
        if self.layers is None:
            return list(range(num_layers))
        out = []
        for layer in self.layers:
            idx = layer + num_layers if layer < 0 else layer
            if not 0 <= idx < num_layers:
                raise ConfigError(
                    f"prompt.layers has {layer}, but the model has {num_layers} layers "
                    f"(0 to {num_layers - 1}, or -1 to -{num_layers} from the end)"
                )
            out.append(idx)
        if len(set(out)) != len(out):
            raise ConfigError(f"prompt.layers repeats a layer: {self.layers}")
        return out

    def lengths(self, num_layers: int) -> dict[int, int]:
        """Prompt length per prompted layer (layers whose length is 0 are left out)."""
        layers = self.layer_indices(num_layers)
        if self.layer_lengths is not None:
            if self.layers is None and len(self.layer_lengths) != num_layers:
                raise ConfigError(
                    f"prompt.layer_lengths has {len(self.layer_lengths)} entries but the model has {num_layers} layers"
                )
            lengths = list(self.layer_lengths)
        elif self.length_schedule == "adaptive":
            lengths = [adaptive_length(self, layer, num_layers) for layer in layers]
        else:
            lengths = [self.num_virtual_tokens] * len(layers)
        return {layer: n for layer, n in zip(layers, lengths, strict=True) if n > 0}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeepPromptConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown prompt option(s) {unknown}; known: {sorted(known)}")
        return cls(**data)


def adaptive_length(config: DeepPromptConfig, layer: int, num_layers: int) -> int:
    """length_l = base * (0.8 + 0.4 * c) * (1 + 0.5 * sin(pi * l / L)), clipped to [min, max].

    Middle layers get the longest prompts; ``c`` is the task complexity in [0, 1].
    """
    base = config.num_virtual_tokens
    raw = base * (0.8 + 0.4 * config.task_complexity) * (1 + 0.5 * math.sin(math.pi * layer / num_layers))
    return int(min(max(round(raw), config.min_length), config.max_length))


@dataclass
class HeadConfig:
    pooling: Literal["cls", "mean", "pooler"] = "cls"
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"head.dropout: must be in [0, 1), got {self.dropout}")


@dataclass
class TrainConfig:
    """Defaults suit prompt tuning (high learning rates); methods override what they need."""

    def __post_init__(self) -> None:
        # Each of these passed silently before (or failed deep in training with a ZeroDivisionError):
        # a negative learning rate is gradient ascent, max_steps=-5 trains nothing and saves nothing.
        for name in ("batch_size", "eval_batch_size", "grad_accum_steps", "max_length"):
            _at_least(f"train.{name}", getattr(self, name), 1)
        for name in ("max_steps", "eval_every", "early_stopping_patience", "save_every"):
            _at_least(f"train.{name}", getattr(self, name), 1, optional=True)
        if not self.lr > 0:
            raise ConfigError(f"train.lr: must be a positive number, got {self.lr}")
        for name in ("head_lr", "weight_decay", "grad_clip"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"train.{name}: must be >= 0, got {getattr(self, name)}")
        if not self.epochs > 0:
            raise ConfigError(f"train.epochs: must be a positive number, got {self.epochs}")
        if not 0.0 <= self.warmup_ratio <= 1.0:
            raise ConfigError(f"train.warmup_ratio: must be in [0, 1], got {self.warmup_ratio}")
        if not 0 <= self.seed < 2**32:
            raise ConfigError(f"train.seed: must be in [0, 2**32), got {self.seed}")

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
    """Prompt learning-rate multipliers for the early, middle and late thirds of the backbone's layers."""
    layer_lr_ranges: list[list[float]] | None = None
    """Explicit prompt learning-rate multipliers instead of the thirds: ``[first, last, multiplier]``
    entries over the backbone's layers (inclusive), e.g. ``[[0, 2, 0.5], [3, 8, 1.0], [9, 11, 1.5]]``;
    prompted layers outside every range keep the base rate."""
    eval_every: int | None = None
    """Evaluate every N optimizer steps; None means once per epoch."""
    early_stopping_patience: int | None = None
    metric_for_best: str | None = None
    seed: int = 42
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    """auto: bf16 on a CUDA GPU that supports it, full precision on CPU."""
    save_every: int | None = 200
    """Write a resumable state every N steps (and at each evaluation); null: only at evaluations."""
    keep_states: int = 2
    """How many of the newest resumable states (OUTPUT_DIR/states/step-N) to keep."""
    backbone_dropout: bool = True
    """Deep-prompt methods: keep the frozen backbone's own dropout on in training, as the official code does.
    Off, a step is cheaper (no dropout masks, the fused attention kernel); docs/performance.md measures both."""
    gradient_checkpointing: bool = False
    """Recompute the backbone's layers in the backward pass: less activation memory for one more forward
    pass of compute. Works with deep prompts (they travel with each layer call, so the recompute sees them)."""
    log_with: Literal["tensorboard"] | None = None
    """Also log loss, learning rate and dev metrics to TensorBoard (OUTPUT_DIR/tensorboard), via Accelerate."""
    max_seconds: float | None = None
    """Stop after this much optimisation time (evaluations do not count), e.g. to compare methods at
    equal wall time; the schedule still follows max_steps / epochs."""


@dataclass
class LoraOptions:
    """Method ``lora``: rank, scale, dropout and the adapted projections of the low-rank updates."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.1
    target_modules: list[str] | None = None
    """Names of the linear layers to adapt (the last part of the module name, e.g. [query, key, value]);
    null: the attention query/value projections, from PEFT's table for the model type."""

    def __post_init__(self) -> None:
        _at_least("lora.rank", self.rank, 1)
        if not self.alpha > 0:
            raise ConfigError(f"lora.alpha: must be a positive number, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"lora.dropout: must be in [0, 1), got {self.dropout}")
        if self.target_modules is not None and (
            not self.target_modules or not all(isinstance(n, str) and n for n in self.target_modules)
        ):
            raise ConfigError(
                f"lora.target_modules: expected a non-empty list of module names or null, got {self.target_modules!r}"
            )


@dataclass
class PtuningV1Options:
    """Methods ``ptuning_v1`` / ``ptuning_v1_mlp``: the prompt encoder that produces the input prompt."""

    encoder: Literal["lstm", "mlp"] | None = None
    """bi-LSTM + MLP (the paper's) or the MLP alone; null: the method's own (lstm for ptuning_v1, mlp for
    ptuning_v1_mlp)."""
    hidden_size: int | None = None
    """Hidden width of the encoder's MLP; null: prompt.reparam_hidden_size (512)."""

    def __post_init__(self) -> None:
        _at_least("ptuning_v1.hidden_size", self.hidden_size, 1, optional=True)


@dataclass
class RunConfig:
    model: str = "minilm"
    model_options: dict[str, Any] = field(default_factory=dict)
    """Quantised loading of the backbone (bitsandbytes): {load_in_8bit: true} or {load_in_4bit: true, ...}."""
    task: str = "classification"
    method: str = "ptuning_v2"
    data: DataConfig = field(default_factory=DataConfig)
    prompt: DeepPromptConfig = field(default_factory=DeepPromptConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    lora: LoraOptions = field(default_factory=LoraOptions)
    ptuning_v1: PtuningV1Options = field(default_factory=PtuningV1Options)
    task_options: dict[str, Any] = field(default_factory=dict)
    """Task-specific options (e.g. QA stride, generation templates)."""
    output_dir: str | None = None

    def __post_init__(self) -> None:
        check_prompt_size(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> RunConfig:
        return _build(cls, data, source)


MAX_PROMPT_TOKENS = 1024
"""Longest prompt per layer a config may ask for. The paper's prompts are 4 to 256 tokens; far longer
ones are a typo (``num_virtual_tokens: 100000`` is a 1.8 GB prompt on a small model)."""


def longest_prompt(prompt: DeepPromptConfig) -> int:
    """The most prompt tokens any layer gets under ``prompt``'s lengths and schedule."""
    if prompt.layer_lengths is not None:
        return max(prompt.layer_lengths, default=0)
    if prompt.length_schedule == "adaptive":
        return min(prompt.max_length, max(prompt.min_length, math.ceil(1.8 * prompt.num_virtual_tokens)))
    return prompt.num_virtual_tokens


def check_prompt_size(run: RunConfig) -> None:
    """Refuse prompts longer than :data:`MAX_PROMPT_TOKENS` (whether a method needs at least one token
    is the method's own check, in its registry entry)."""
    prompt = run.prompt
    longest = longest_prompt(prompt)
    if longest > MAX_PROMPT_TOKENS or prompt.num_virtual_tokens > MAX_PROMPT_TOKENS:
        raise ConfigError(
            f"prompt.num_virtual_tokens: {max(longest, prompt.num_virtual_tokens)} tokens per layer is above "
            f"the limit of {MAX_PROMPT_TOKENS} (P-Tuning v2 uses 4 to 256)"
        )


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    """The config class's field types, resolved once: a server reads a run config for every task it loads."""
    return typing.get_type_hints(cls)


def _build(cls: type, data: Any, where: str, section: str = "") -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted((k for k in data if k not in known), key=str)
    if unknown:
        hint = suggest_key(unknown[0], section)
        raise ConfigError(
            f"{where}: unknown field(s) {unknown}"
            + (f"; did you mean {hint}?" if hint else f"; known: {sorted(known)}")
        )
    hints = _type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        sub = _NESTED.get((cls.__name__, name))
        if sub is not None:  # an empty YAML section (``prompt:`` alone) is None: the defaults
            kwargs[name] = _build(sub, {} if value is None else value, f"{where}.{name}", name)
        else:
            kwargs[name] = _coerce(value, hints[name], f"{where}.{name}")
    try:
        return cls(**kwargs)
    except ConfigError as exc:  # it names its own field
        raise ConfigError(f"{where.removesuffix('.' + section) if section else where}: {exc}") from exc
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc


# Names other libraries (HF Trainer, PEFT, the official P-Tuning v2 code) use for our fields, so a user
# who writes theirs is pointed at ours: ``train.learning_rate`` -> ``train.lr``.
_SYNONYMS: dict[str, dict[str, str]] = {
    "": {"model_name_or_path": "model", "model_name": "model", "dataset": "data", "output": "output_dir"},
    "train": {
        "learning_rate": "lr",
        "num_train_epochs": "epochs",
        "num_epochs": "epochs",
        "gradient_accumulation_steps": "grad_accum_steps",
        "per_device_train_batch_size": "batch_size",
        "per_device_eval_batch_size": "eval_batch_size",
        "max_seq_length": "max_length",
        "max_grad_norm": "grad_clip",
        "lr_scheduler_type": "scheduler",
        "eval_steps": "eval_every",
        "save_steps": "save_every",
        "patience": "early_stopping_patience",
    },
    "prompt": {
        "pre_seq_len": "num_virtual_tokens",
        "prefix_length": "num_virtual_tokens",
        "prompt_length": "num_virtual_tokens",
        "prefix_projection": "reparameterize",
    },
}


def _section_fields(section: str) -> list[str]:
    cls = RunConfig if not section else _NESTED.get(("RunConfig", section))
    return [f.name for f in fields(cls)] if cls is not None else []


def suggest_key(name: Any, section: str) -> str | None:
    """The dotted config key meant by ``name`` (unknown in ``section``): the same name or synonym in
    another section, else a close spelling in the same section, else one in another section."""
    name = str(name).lower()
    others = [s for s in ["", *(key for _, key in _NESTED)] if s != section]
    tries = [(s, 1.0) for s in others] + [(section, 0.6)] + [(s, 0.75) for s in others]
    for candidate_section, cutoff in tries:
        synonyms = _SYNONYMS.get(candidate_section, {})
        names = _section_fields(candidate_section) + list(synonyms)
        match = difflib.get_close_matches(name, names, n=1, cutoff=cutoff)
        if match:
            field_name = synonyms.get(match[0], match[0])
            return f"{candidate_section}.{field_name}" if candidate_section else field_name
    return None


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check a value against its annotation; YAML reads ``1e-2`` as a string, so numbers are parsed."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)] if args else value
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ConfigError(f"{where}: expected a mapping with names as keys, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return _coerce(value, options[0], where)
        return value
    if origin is Literal:
        word = ("yes" if value else "no") if isinstance(value, bool) else None  # YAML reads no, yes as bools
        if word in args:
            return word
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if hint is float and isinstance(value, int | float | str) and not isinstance(value, bool):
        try:
            number = float(value)
        except (ValueError, OverflowError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        if not math.isfinite(number):  # a NaN learning rate trains NaNs without any other symptom
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return number
    if hint is float:
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if hint is int and not isinstance(value, bool):
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
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
    ("RunConfig", "lora"): LoraOptions,
    ("RunConfig", "ptuning_v1"): PtuningV1Options,
}


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` strings (values parsed as YAML) to a nested dict."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        target = data
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"--set {item!r}: expected a key like train.lr before '='")
        for part in parts[:-1]:
            node = target.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {part!r} is not a section")
            target = node
        try:
            target[parts[-1]] = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            problem = str(exc).replace("\n", " ")
            raise ConfigError(f"--set {item!r}: the value is not valid YAML ({problem})") from None
    return data


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The raw mapping of a YAML run config, before overrides and method defaults."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}: line {line}: byte {raw[exc.start]:#04x} is not valid UTF-8") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).replace("\n", " ")
        raise ConfigError(f"{path}: invalid YAML: {where}{problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config fields, got {type(data).__name__}")
    return data


def did_you_mean(name: str, known: typing.Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest known name, or nothing when none is close."""
    match = difflib.get_close_matches(str(name), list(known), n=1, cutoff=0.6)
    return f"; did you mean {match[0]!r}?" if match else ""


MODEL_FIELDS = ("model", "model_options", "method", "task", "prompt", "head", "lora", "ptuning_v1")
"""Run-config sections that define the trained model: evaluating a checkpoint with one of them
changed would evaluate a different model than the one trained (``head.pooling``: 0.42 instead of 0.92)."""


def check_eval_overrides(stored: RunConfig, changed: RunConfig, where: str) -> None:
    """Refuse an evaluation config that differs from the training config in a model-defining field."""
    before, after = stored.to_dict(), changed.to_dict()
    diffs = []
    for key in MODEL_FIELDS:
        old, new = before.get(key), after.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            diffs += [f"{key}.{k} {old.get(k)!r} -> {new.get(k)!r}" for k in old if old.get(k) != new.get(k)]
        elif old != new:
            diffs.append(f"{key} {old!r} -> {new!r}")
    if diffs:
        raise ConfigError(
            f"{where}: these fields define the trained model and cannot change at evaluation: "
            f"{'; '.join(diffs)}; change only data.*, train.max_length, train.eval_batch_size or task_options"
        )


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``top`` wins; nested dicts merge key by key."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out
