"""Configuration of deep prompts: how long, where, how initialised, how parameterised."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

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
        from ptuning_v2.config import ConfigError  # a user's config error; that module imports this one

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
                from ptuning_v2.config import ConfigError  # that module imports this one

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
