"""Optimizer and schedule: AdamW with separate learning rates for prompt, head and layers.

Layer-wise prompt learning rates are placed by the *backbone's* layer index: the thirds (early,
middle, late) or the explicit ``train.layer_lr_ranges`` are over all of the backbone's layers, so
prompting ``layers: [4, 5, 6, 7]`` of a 12-layer model puts 4-7 in the middle third, not in all three.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import nn
from transformers import get_scheduler

from ptuning_v2.config import ConfigError, TrainConfig
from ptuning_v2.prompts.model import DeepPromptModel

_PROMPT_SLOT = re.compile(r"^(?P<kind>[a-z_]+)_(?P<layer>\d+)$")
THIRDS = ("early", "middle", "late")
LayerRange = tuple[int, int, float]


def layer_third(layer: int, num_layers: int) -> int:
    """0, 1 or 2: the early, middle or late third of the layers."""
    return min(2, layer * 3 // max(num_layers, 1))


def check_layer_lr(train: TrainConfig) -> list[LayerRange] | None:
    """Validate ``train.layer_lr_multipliers`` / ``train.layer_lr_ranges``; the ranges as tuples, if set.

    Checks what needs no model: shapes, order, overlaps, positive multipliers. Whether the ranges fit
    the backbone's layer count is checked when the optimizer is built.
    """
    multipliers = [_number(m) for m in train.layer_lr_multipliers]
    if len(multipliers) != 3 or any(m is None or m <= 0 for m in multipliers):
        raise ConfigError(
            "train.layer_lr_multipliers: expected 3 positive numbers (early, middle, late), "
            f"got {train.layer_lr_multipliers}"
        )
    if train.layer_lr_ranges is None:
        return None
    if multipliers != [1.0, 1.0, 1.0]:
        raise ConfigError("train.layer_lr_ranges and train.layer_lr_multipliers are both set: set one")
    if not isinstance(train.layer_lr_ranges, list) or not train.layer_lr_ranges:
        raise ConfigError(
            f"train.layer_lr_ranges: expected a list of [first, last, multiplier], got {train.layer_lr_ranges!r}"
        )
    ranges: list[LayerRange] = []
    for index, entry in enumerate(train.layer_lr_ranges):
        where = f"train.layer_lr_ranges[{index}]"
        if not isinstance(entry, Sequence) or isinstance(entry, str) or len(entry) != 3:
            raise ConfigError(f"{where}: expected [first_layer, last_layer, multiplier], got {entry!r}")
        first, last, multiplier = (_number(x) for x in entry)
        if first is None or last is None or not first.is_integer() or not last.is_integer():
            raise ConfigError(f"{where}: layers must be whole numbers, got {entry!r}")
        if not 0 <= first <= last:
            raise ConfigError(f"{where}: layers must satisfy 0 <= first <= last, got {entry!r}")
        if multiplier is None or multiplier <= 0:
            raise ConfigError(f"{where}: the multiplier must be a positive number, got {entry[2]!r}")
        ranges.append((int(first), int(last), multiplier))
    ordered = sorted(ranges)
    for (a_first, a_last, _), (b_first, b_last, _) in zip(ordered, ordered[1:], strict=False):
        if b_first <= a_last:
            raise ConfigError(
                f"train.layer_lr_ranges: layers {a_first}-{a_last} and {b_first}-{b_last} overlap"
            )
    return ranges


def _number(value: object) -> float | None:
    """A number as float; YAML reads ``5e-1`` as a string, so numeric strings count. Else None."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        return float(value)
    except ValueError:
        return None


def layer_group(
    layer: int, num_layers: int, train: TrainConfig, ranges: list[LayerRange] | None
) -> tuple[str, float]:
    """The group name and learning-rate multiplier of a prompt at backbone layer ``layer``."""
    if ranges is None:
        third = layer_third(layer, num_layers)
        return f"prompt_{THIRDS[third]}", float(train.layer_lr_multipliers[third])  # checked: a number
    for first, last, multiplier in ranges:
        if first <= layer <= last:
            return f"prompt_layers_{first}-{last}", multiplier
    return "prompt", 1.0


def backbone_layer_counts(model: DeepPromptModel) -> dict[str, int]:
    """Per attention kind (self, decoder_self, cross): how many layers the backbone has, prompted or not."""
    counts: dict[str, int] = {}
    for slot in model.injector.slots:
        counts[slot.kind] = max(counts.get(slot.kind, 0), slot.layer + 1)
    return counts


def prompt_groups(
    model: DeepPromptModel, train: TrainConfig, ranges: list[LayerRange] | None
) -> dict[int, tuple[str, float]]:
    """``id(parameter) -> (group, lr)`` for the trainable prompt parameters of one DeepPromptModel.

    With the MLP reparameterisation every prompt comes out of one shared MLP, so its parameters form
    one group ``prompt_mlp`` whose rate is ``lr`` times the mean of the prompted layers' multipliers,
    each layer weighted by its number of prompt values (equal multipliers give exactly that rate).
    """
    counts = backbone_layer_counts(model)
    for first, last, _ in ranges or []:
        deepest = max(counts.values(), default=0)
        if last >= deepest:
            raise ConfigError(
                f"train.layer_lr_ranges: [{first}, {last}, ...] names layer {last}, "
                f"but the backbone has {deepest} layers (0-{deepest - 1})"
            )
    prompt = model.prompt
    slot_groups: dict[str, tuple[str, float]] = {}
    for name in prompt.shapes:
        match = _PROMPT_SLOT.match(name)
        if match is None:
            raise ValueError(f"prompt slot {name!r} does not name a kind and a layer")
        slot_groups[name] = layer_group(int(match["layer"]), counts[match["kind"]], train, ranges)
    out: dict[int, tuple[str, float]] = {}
    if prompt.config.reparameterize:
        sizes = {name: n * w for name, (n, w) in prompt.shapes.items()}
        total = sum(sizes.values()) or 1
        mean = sum(slot_groups[name][1] * size for name, size in sizes.items()) / total
        for param in prompt.parameters():
            out[id(param)] = ("prompt_mlp", train.lr * mean)
        return out
    for name, param in prompt.prompts.items():
        group, multiplier = slot_groups[name]
        out[id(param)] = (group, train.lr * multiplier)
    return out


def param_groups(model: nn.Module, train: TrainConfig) -> list[dict]:
    """Group trainable parameters: head -> head_lr; deep prompts -> lr x their layer's multiplier; rest -> lr."""
    ranges = check_layer_lr(train)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("the model has no trainable parameters")
    prompt_keys: dict[int, tuple[str, float]] = {}
    for module in model.modules():
        if isinstance(module, DeepPromptModel):
            prompt_keys.update(prompt_groups(module, train, ranges))
    groups: dict[tuple[str, float], list[nn.Parameter]] = {}
    for name, param in named:
        if name.startswith("head.") or ".head." in name:
            key = ("head", train.head_lr)
        else:
            key = prompt_keys.get(id(param), ("other", train.lr))
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
