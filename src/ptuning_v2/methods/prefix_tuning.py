"""Prefix tuning (Li & Liang, 2021): deep prefixes produced by an MLP over a shared embedding.

The same deep prompts as P-Tuning v2, reparameterised (``prompt.reparameterize`` is forced on, and
``prompt.reparam_hidden_size`` is the MLP's width); ``DeepPrompt.fold()`` replaces the MLP by the
prefixes it produces once training is over.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from ptuning_v2.config import RunConfig
from ptuning_v2.methods.registry import Method, check_deep_prompt, register_method
from ptuning_v2.prompts.model import DeepPromptModel


def build_prefix_tuning(backbone: nn.Module, config: RunConfig, tokenizer: Any) -> nn.Module:
    prompt = dataclasses.replace(config.prompt, reparameterize=True)
    return DeepPromptModel(backbone, prompt, tokenizer, backbone_dropout=config.train.backbone_dropout)


register_method(
    Method(
        "prefix_tuning",
        "Prefix tuning: deep prefixes through an MLP reparameterisation (Li & Liang, 2021)",
        build_prefix_tuning,
        {"prompt.reparameterize": True, "train.lr": 5e-3, "train.head_lr": 5e-3},
        prompt="deep",
        search_space={"train.lr": {"low": 1e-4, "high": 3e-2, "log": True}},
        check=check_deep_prompt,
        shares_backbone=True,
    )
)
