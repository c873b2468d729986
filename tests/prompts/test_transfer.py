"""Prompt transfer: ``prompt.init: checkpoint`` starts from another run's trained prompts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModel

from ptuning_v2.checkpoint import CheckpointError, save_checkpoint
from ptuning_v2.config import DeepPromptConfig, RunConfig
from ptuning_v2.models import backbone_fingerprint
from ptuning_v2.prompts.model import DeepPromptModel
from ptuning_v2.tasks.classification import ClassificationModel


def trained_checkpoint(model_dir: Path, directory: Path, prompt: dict) -> dict[str, torch.Tensor]:
    """A checkpoint of a classification run with random prompts; returns the prompt matrices."""
    backbone = AutoModel.from_pretrained(model_dir)
    torch.manual_seed(0)
    config = DeepPromptConfig(**prompt, init_std=0.5)
    model = ClassificationModel(DeepPromptModel(backbone, config), 32, 3, "cls", 0.1)
    run = RunConfig(model=str(model_dir), prompt=config)
    save_checkpoint(
        directory, model, run_config=run.to_dict(), task_state={"labels": ["a", "b", "c"]},
        backbone_fingerprint=backbone_fingerprint(backbone),
    )  # fmt: skip
    with torch.no_grad():
        return {name: t.clone() for name, t in model.encoder.prompt.raw().items()}


@pytest.mark.parametrize("length", [2, 5, 11])
def test_prompts_are_tiled_or_cut_to_the_new_length(tiny_bert_dir: Path, tmp_path: Path, length: int) -> None:
    source = trained_checkpoint(tiny_bert_dir, tmp_path, {"num_virtual_tokens": 5})
    config = DeepPromptConfig(num_virtual_tokens=length, init="checkpoint", init_checkpoint=str(tmp_path))
    model = DeepPromptModel(AutoModel.from_pretrained(tiny_bert_dir), config)
    for name, prompt in model.prompt.raw().items():
        expected = torch.cat([source[name]] * 3)[:length]  # 5 rows tiled, then cut
        assert torch.equal(prompt.detach(), expected)


def test_a_reparameterised_source_gives_the_prompts_its_mlp_produces(
    tiny_bert_dir: Path, tmp_path: Path
) -> None:
    source = trained_checkpoint(tiny_bert_dir, tmp_path, {"num_virtual_tokens": 4, "reparameterize": True,
                                                          "reparam_hidden_size": 16})  # fmt: skip
    config = DeepPromptConfig(num_virtual_tokens=4, init="checkpoint", init_checkpoint=str(tmp_path))
    model = DeepPromptModel(AutoModel.from_pretrained(tiny_bert_dir), config)
    for name, prompt in model.prompt.raw().items():
        torch.testing.assert_close(prompt.detach(), source[name])


def test_another_backbone_or_missing_layers_are_refused(tiny_bert_dir: Path, tmp_path: Path) -> None:
    trained_checkpoint(tiny_bert_dir, tmp_path, {"num_virtual_tokens": 3, "layers": [0]})
    config = DeepPromptConfig(num_virtual_tokens=3, init="checkpoint", init_checkpoint=str(tmp_path))
    with pytest.raises(CheckpointError, match=r"no prompt for layer\(s\) \['self_1'\]"):
        DeepPromptModel(AutoModel.from_pretrained(tiny_bert_dir), config)
    other = AutoModel.from_pretrained(tiny_bert_dir)
    with torch.no_grad():
        other.embeddings.word_embeddings.weight.add_(0.01)
    with pytest.raises(CheckpointError, match="trained on backbone"):
        DeepPromptModel(other, DeepPromptConfig(num_virtual_tokens=3, layers=[0], init="checkpoint",
                                                init_checkpoint=str(tmp_path)))  # fmt: skip


def test_init_checkpoint_is_required() -> None:
    with pytest.raises(ValueError, match="init_checkpoint"):
        DeepPromptConfig(init="checkpoint")
