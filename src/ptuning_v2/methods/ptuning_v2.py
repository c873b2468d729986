"""P-Tuning v2 (Liu et al., 2022): trained prefix keys/values at every layer of the frozen backbone."""

from __future__ import annotations

from typing import Any

from torch import nn

from ptuning_v2.config import RunConfig
from ptuning_v2.methods.registry import Method, check_deep_prompt, register_method
from ptuning_v2.prompts.model import DeepPromptModel


def build_ptuning_v2(backbone: nn.Module, config: RunConfig, tokenizer: Any) -> nn.Module:
    return DeepPromptModel(backbone, config.prompt, tokenizer, backbone_dropout=config.train.backbone_dropout)


register_method(
    Method(
        "ptuning_v2",
        "P-Tuning v2: trained prefix keys/values at every layer of the frozen backbone (Liu et al., 2022)",
        build_ptuning_v2,
        {"train.lr": 1e-2, "train.head_lr": 5e-3},
        # From the sweeps on Rotten Tomatoes, TREC-6, VADER and CoNLL-2003 (docs/tuning.md, "Sweeps"): a
        # high prompt rate and 32 tokens were best or within 0.6 points of best on every one, 0.5 to 5.4
        # points above lr 1e-2 with 16 (64 for NER) tokens. QA and generation were not swept.
        task_defaults={
            family: {"train.lr": 5e-2, "train.head_lr": 5e-3, "prompt.num_virtual_tokens": 32}
            for family in ("classification", "ner")
        },
        prompt="deep",
        search_space={
            "train.lr": {"low": 1e-3, "high": 1e-1, "log": True},
            "train.head_lr": {"low": 1e-4, "high": 5e-2, "log": True},
            "prompt.num_virtual_tokens": {"choices": [8, 16, 32, 64, 128]},
            "prompt.reparameterize": {"choices": [False, True]},
            "prompt.dropout": {"low": 0.0, "high": 0.3},
        },
        check=check_deep_prompt,
        shares_backbone=True,
    )
)
