"""Optimizer and schedule: AdamW with separate learning rates for prompt, head and layers."""

from __future__ import annotations

import re

import torch
from torch import nn
from transformers import get_scheduler

from ptuning_v2.config import TrainConfig

_PROMPT_SLOT = re.compile(r"prompts\.(?P<kind>[a-z_]+)_(?P<layer>\d+)$")


def layer_third(layer: int, num_layers: int) -> int:
    """0, 1 or 2: the early, middle or late third of the layers."""
    return min(2, layer * 3 // max(num_layers, 1))


def param_groups(model: nn.Module, train: TrainConfig) -> list[dict]:
    """Group trainable parameters: head -> head_lr; prompt layer l -> lr * multiplier(third of l); rest -> lr."""
    if len(train.layer_lr_multipliers) != 3:
        raise ValueError("train.layer_lr_multipliers needs 3 values (early, middle, late layers)")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("the model has no trainable parameters")
    layer_counts: dict[str, int] = {}
    for name, _ in named:
        match = _PROMPT_SLOT.search(name)
        if match:
            layer_counts[match["kind"]] = layer_counts.get(match["kind"], 0) + 1
    groups: dict[tuple[str, float], list[nn.Parameter]] = {}
    for name, param in named:
        match = _PROMPT_SLOT.search(name)
        if name.startswith("head.") or ".head." in name:
            key = ("head", train.head_lr)
        elif match:
            third = layer_third(int(match["layer"]), layer_counts[match["kind"]])
            key = (
                f"prompt_{('early', 'middle', 'late')[third]}",
                train.lr * train.layer_lr_multipliers[third],
            )
        else:
            key = ("other", train.lr)
        groups.setdefault(key, []).append(param)
    return [
        {"name": name, "params": params, "lr": lr, "weight_decay": train.weight_decay}
        for (name, lr), params in groups.items()
    ]


def build_optimizer(model: nn.Module, train: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(param_groups(model, train))


def build_scheduler(optimizer: torch.optim.Optimizer, train: TrainConfig, total_steps: int):
    return get_scheduler(
        "constant_with_warmup" if train.scheduler == "constant" else train.scheduler,
        optimizer,
        num_warmup_steps=int(train.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )
