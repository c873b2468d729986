"""Gradient checkpointing is refused with deep prompts: its recompute would run without the prompts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ptuning_v2.models import load_backbone
from ptuning_v2.prompts.config import DeepPromptConfig
from ptuning_v2.prompts.model import DeepPromptModel

IDS = {"input_ids": torch.tensor([[2, 8, 9, 10, 3]])}


def test_a_checkpointed_backbone_cannot_be_prompted(tiny_bert_dir: Path) -> None:
    backbone = load_backbone(str(tiny_bert_dir), "encoder")
    backbone.activation_checkpointing_enable()
    with pytest.raises(ValueError, match="checkpointing.*turn it off"):
        DeepPromptModel(backbone, DeepPromptConfig(num_virtual_tokens=2))


def test_checkpointing_turned_on_later_stops_training_but_not_inference(tiny_bert_dir: Path) -> None:
    model = DeepPromptModel(
        load_backbone(str(tiny_bert_dir), "encoder"), DeepPromptConfig(num_virtual_tokens=2)
    )
    model.backbone.activation_checkpointing_enable()
    with pytest.raises(ValueError, match="checkpointing.*turn it off"):
        model.train()(**IDS)
    with torch.no_grad():  # no backward pass, no recompute
        prompted = model.eval()(**IDS).last_hidden_state
    model.backbone.activation_checkpointing_disable()
    model.train()(**IDS).last_hidden_state.sum().backward()
    assert all(p.grad is not None for p in model.prompt.parameters())
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(**IDS).last_hidden_state, prompted)
