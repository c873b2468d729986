"""The methods the core needs: P-Tuning v2, a linear probe and full fine-tuning."""

from __future__ import annotations

from typing import Any

from torch import nn

from ptuning_v2.config import RunConfig
from ptuning_v2.methods.registry import Method, freeze, register_method
from ptuning_v2.prompts.model import DeepPromptModel


def build_ptuning_v2(backbone: nn.Module, config: RunConfig, tokenizer: Any) -> nn.Module:
    return DeepPromptModel(backbone, config.prompt, tokenizer)


def build_linear_probe(backbone: nn.Module, config: RunConfig, tokenizer: Any) -> nn.Module:
    return freeze(backbone)


def build_full(backbone: nn.Module, config: RunConfig, tokenizer: Any) -> nn.Module:
    for param in backbone.parameters():
        param.requires_grad_(True)
    return backbone


register_method(
    Method(
        "ptuning_v2",
        "P-Tuning v2: trained prefix keys/values at every layer of the frozen backbone (Liu et al., 2022)",
        build_ptuning_v2,
        {"train": {"lr": 1e-2, "head_lr": 5e-3}},
    )
)
register_method(
    Method(
        "linear_probe",
        "frozen backbone, only the task head is trained",
        build_linear_probe,
        {"train": {"head_lr": 5e-3}},
    )
)
register_method(
    Method(
        "full",
        "full fine-tuning of every backbone weight and the head",
        build_full,
        {"train": {"lr": 2e-5, "head_lr": 2e-5, "weight_decay": 0.01}},
    )
)
