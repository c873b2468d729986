"""P-Tuning v1: the prompt encoder's output enters the model exactly as a prompt-tuning prompt would."""

from __future__ import annotations

import pytest
import torch

from ptuning_v2.config import ConfigError, RunConfig
from ptuning_v2.methods import get_method
from ptuning_v2.models import load_backbone, load_tokenizer

HIDDEN, K, MLP = 32, 3, 16


def build(model_dir, method: str, ptuning_v1: dict | None = None, **prompt):
    run = RunConfig.from_dict(
        {
            "method": method,
            "prompt": {"num_virtual_tokens": K, "reparam_hidden_size": MLP, **prompt},
            "train": {"max_length": 64},
            "ptuning_v1": ptuning_v1 or {},
        }
    )
    return get_method(method).build(load_backbone(str(model_dir), "encoder"), run, None)


def lstm_params(h: int) -> int:
    """Two bidirectional layers of width h // 2: 4 gates x (input + recurrent weights + 2 biases)."""
    half = h // 2
    first = 4 * half * (h + half) + 8 * half
    second = 4 * half * (2 * half + half) + 8 * half
    return 2 * (first + second)


@pytest.mark.parametrize(("method", "lstm"), [("ptuning_v1", True), ("ptuning_v1_mlp", False)])
def test_trainable_parameters_are_the_prompt_encoder(tiny_bert_dir, method: str, lstm: bool) -> None:
    encoder = build(tiny_bert_dir, method)
    mlp = HIDDEN * MLP + MLP + MLP * HIDDEN + HIDDEN
    expected = K * HIDDEN + mlp + (lstm_params(HIDDEN) if lstm else 0)
    trainable = sum(p.numel() for p in encoder.parameters() if p.requires_grad)
    assert trainable == expected
    assert all(name.startswith("prompt.") for name, p in encoder.named_parameters() if p.requires_grad)


@pytest.mark.parametrize(("encoder", "lstm"), [(None, True), ("lstm", True), ("mlp", False)])
def test_the_ptuning_v1_section_sets_the_encoder_kind_and_width(tiny_bert_dir, encoder, lstm: bool) -> None:
    width = 8  # ptuning_v1.hidden_size wins over prompt.reparam_hidden_size (MLP)
    model = build(tiny_bert_dir, "ptuning_v1", {"encoder": encoder, "hidden_size": width})
    mlp = HIDDEN * width + width + width * HIDDEN + HIDDEN
    expected = K * HIDDEN + mlp + (lstm_params(HIDDEN) if lstm else 0)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected
    assert (model.prompt.lstm is not None) is lstm


def test_ptuning_v1_mlp_with_an_lstm_encoder_is_refused(tiny_bert_dir) -> None:
    with pytest.raises(ConfigError, match="has an MLP encoder, got 'lstm'"):
        build(tiny_bert_dir, "ptuning_v1_mlp", {"encoder": "lstm"})


def test_encoder_output_acts_as_a_soft_prompt(tiny_bert_dir) -> None:
    tokenizer = load_tokenizer(str(tiny_bert_dir))
    v1 = build(tiny_bert_dir, "ptuning_v1").eval()
    soft = build(tiny_bert_dir, "prompt_tuning").eval()
    with torch.no_grad():
        soft.prompt.embedding.copy_(v1.prompt())
    batch = tokenizer(["a good film", "it was bad and boring"], padding=True, return_tensors="pt")
    torch.testing.assert_close(v1(**batch).last_hidden_state, soft(**batch).last_hidden_state)


def test_gradients_reach_the_lstm_and_the_pseudo_token_embeddings(tiny_bert_dir) -> None:
    tokenizer = load_tokenizer(str(tiny_bert_dir))
    v1 = build(tiny_bert_dir, "ptuning_v1")
    batch = tokenizer(["a good film"], return_tensors="pt")
    v1(**batch).last_hidden_state.sum().backward()
    for name, param in v1.prompt.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in v1.backbone.parameters())


def test_text_init_is_rejected(tiny_bert_dir) -> None:
    with pytest.raises(ConfigError, match="init"):
        build(tiny_bert_dir, "ptuning_v1", init="text", init_text="good")


def test_train_and_reload_gives_the_same_predictions(train_and_reload, tiny_bert_dir) -> None:
    train_and_reload("ptuning_v1", tiny_bert_dir)
