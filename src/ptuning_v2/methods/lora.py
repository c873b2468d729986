"""LoRA (Hu et al., 2021) through the PEFT library: low-rank updates of the attention projections.

PEFT's ``inject_adapter_in_model`` adds the LoRA layers to the backbone in place and leaves only
them trainable, so the encoder stays the backbone itself (same ``config``, ``forward``, ``generate``)
and the task head sits on top as for every other method. Checkpoints store the LoRA matrices (the
parameters that require grad) under stable names; rebuilding injects the same layers again.
"""

from __future__ import annotations

from typing import Any

from peft import LoraConfig, inject_adapter_in_model
from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from torch import nn
from transformers.pytorch_utils import Conv1D

from ptuning_v2.config import ConfigError, LoraOptions, RunConfig
from ptuning_v2.methods.registry import Method, freeze, register_method

RANK = LoraOptions.rank  # the defaults; a run's own values are in ``run.lora``
ALPHA = LoraOptions.alpha
# Query/value projections under the names common architectures give them, for models PEFT's table lacks.
_FALLBACK_NAMES = (("query", "value"), ("q_proj", "v_proj"), ("q", "v"), ("q_lin", "v_lin"))


def lora_targets(backbone: nn.Module) -> list[str]:
    """The attention projections to adapt: PEFT's table for the model type, else query/value by name."""
    model_type = getattr(backbone.config, "model_type", None)
    known = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model_type)
    if known:
        return list(known)
    leaves = {
        name.rsplit(".", 1)[-1] for name, module in backbone.named_modules() if isinstance(module, nn.Linear)
    }
    for names in _FALLBACK_NAMES:
        if set(names) <= leaves:
            return list(names)
    raise ConfigError(
        f"method lora: no query/value projections found in model type {model_type!r} "
        f"(looked for {[list(n) for n in _FALLBACK_NAMES]})"
    )


def check_targets(backbone: nn.Module, names: list[str]) -> list[str]:
    """``lora.target_modules`` as given, once each names a linear layer of the backbone (GPT-2's
    ``Conv1D`` projections count: PEFT adapts them too)."""
    leaves = {
        name.rsplit(".", 1)[-1]
        for name, module in backbone.named_modules()
        if isinstance(module, nn.Linear | Conv1D)
    }
    missing = [name for name in names if name not in leaves]
    if missing:
        raise ConfigError(
            f"lora.target_modules: no linear layer named {missing} in model type "
            f"{getattr(backbone.config, 'model_type', None)!r}; its linear layers: {sorted(leaves)}"
        )
    return list(names)


def build_lora(backbone: nn.Module, config: RunConfig, tokenizer: Any) -> nn.Module:
    options = config.lora
    targets = options.target_modules
    lora = LoraConfig(
        r=options.rank,
        lora_alpha=options.alpha,
        lora_dropout=options.dropout,
        target_modules=lora_targets(backbone) if targets is None else check_targets(backbone, targets),
    )
    return inject_adapter_in_model(lora, freeze(backbone))


register_method(
    Method(
        "lora",
        "LoRA through PEFT: low-rank updates (lora.rank, default 8) of the attention query/value projections "
        "or lora.target_modules (Hu et al., 2021)",
        build_lora,
        {"train.lr": 1e-3, "train.head_lr": 5e-3},
        search_space={
            "train.lr": {"low": 1e-4, "high": 1e-2, "log": True},
            "lora.rank": {"choices": [4, 8, 16, 32]},
            "lora.alpha": {"choices": [8, 16, 32, 64]},
        },
    )
)
