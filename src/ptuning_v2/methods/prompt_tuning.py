"""Prompt tuning (Lester et al., 2021): k trained vectors at the input layer of a frozen backbone."""

from __future__ import annotations

from typing import Any

from torch import nn

from ptuning_v2.config import RunConfig
from ptuning_v2.methods.input_prompt import InputPromptModel, SoftPrompt, check_input_prompt_config
from ptuning_v2.methods.registry import Method, register_method


def build_prompt_tuning(backbone: nn.Module, config: RunConfig, tokenizer: Any) -> nn.Module:
    check_input_prompt_config(config, backbone)
    prompt = SoftPrompt(config.prompt, backbone.get_input_embeddings(), tokenizer)
    return InputPromptModel(backbone, prompt, config.prompt.dropout)


register_method(
    Method(
        "prompt_tuning",
        "Prompt tuning: trained vectors in front of the input embeddings only (Lester et al., 2021)",
        build_prompt_tuning,
        {"train.lr": 1e-2, "train.head_lr": 5e-3},
        prompt="input",
        search_space={"train.lr": {"low": 1e-3, "high": 3e-1, "log": True}},
    )
)
