"""The two baselines every comparison needs: a linear probe and full fine-tuning."""

from __future__ import annotations

from typing import Any

from torch import nn

from ptuning_v2.config import RunConfig
from ptuning_v2.methods.registry import Method, freeze, register_method


def build_linear_probe(backbone: nn.Module, config: RunConfig, tokenizer: Any) -> nn.Module:
    return freeze(backbone)


def build_full(backbone: nn.Module, config: RunConfig, tokenizer: Any) -> nn.Module:
    for param in backbone.parameters():
        param.requires_grad_(True)
    return backbone


register_method(
    Method(
        "full",
        "full fine-tuning of every backbone weight and the head",
        build_full,
        {"train.lr": 2e-5, "train.head_lr": 2e-5, "train.weight_decay": 0.01},
        search_space={"train.lr": {"low": 5e-6, "high": 2e-4, "log": True}},
    )
)
register_method(
    Method(
        "linear_probe",
        "frozen backbone, only the task head is trained",
        build_linear_probe,
        {"train.head_lr": 5e-3},
        search_space={"train.head_lr": {"low": 1e-4, "high": 1e-1, "log": True}},
        shares_backbone=True,
    )
)
