"""The prefix engine against hand-written reference computations on a tiny BERT."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import BertConfig, BertModel

from ptuning_v2.config import DeepPromptConfig
from ptuning_v2.prompts.model import DeepPromptModel


def tiny_bert(attn: str = "sdpa") -> BertModel:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=32,
        attention_probs_dropout_prob=0.0,
        hidden_dropout_prob=0.0,
        attn_implementation=attn,
    )
    return BertModel(config).eval()


def inputs() -> dict[str, torch.Tensor]:
    ids = torch.tensor([[2, 7, 9, 11, 3, 0], [2, 5, 6, 3, 0, 0]])
    return {"input_ids": ids, "attention_mask": (ids != 0).long()}


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_zero_length_prompt_is_the_plain_model_exactly(attn: str) -> None:
    plain = tiny_bert(attn)
    expected = plain(**inputs()).last_hidden_state
    prompted = DeepPromptModel(tiny_bert(attn), DeepPromptConfig(num_virtual_tokens=0)).eval()
    assert torch.equal(prompted(**inputs()).last_hidden_state, expected)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_attention_output_matches_hand_computation(attn: str) -> None:
    model = DeepPromptModel(tiny_bert(attn), DeepPromptConfig(num_virtual_tokens=3, init_std=0.5)).eval()
    layer = 1
    attention = model.backbone.encoder.layer[layer].attention.self
    captured = {}

    def hook(module, args, kwargs, output):
        captured["hidden"] = args[0] if args else kwargs["hidden_states"]
        captured["out"] = output[0]

    handle = attention.register_forward_hook(hook, with_kwargs=True)
    batch = inputs()
    model(**batch)
    handle.remove()

    hidden, heads, dim = captured["hidden"], 2, 8
    b, n, _ = hidden.shape

    def split(x: torch.Tensor) -> torch.Tensor:
        return x.view(b, n, heads, dim).transpose(1, 2)

    q, k, v = split(attention.query(hidden)), split(attention.key(hidden)), split(attention.value(hidden))
    prompt = model.prompt.prompts[
        f"self_{layer}"
    ].detach()  # [3, 2 * heads * dim], key block then value block
    pk = prompt[:, : heads * dim].view(3, heads, dim).transpose(0, 1)
    pv = prompt[:, heads * dim :].view(3, heads, dim).transpose(0, 1)
    k = torch.cat([pk.expand(b, -1, -1, -1), k], dim=2)
    v = torch.cat([pv.expand(b, -1, -1, -1), v], dim=2)
    scores = q @ k.transpose(-1, -2) / math.sqrt(dim)
    visible = torch.cat([torch.ones(b, 3, dtype=torch.bool), batch["attention_mask"].bool()], dim=1)
    scores = scores.masked_fill(~visible[:, None, None, :], float("-inf"))
    reference = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, heads * dim)
    torch.testing.assert_close(captured["out"], reference, atol=1e-5, rtol=1e-5)


def test_prefix_changes_output_and_padding_does_not_leak() -> None:
    model = DeepPromptModel(tiny_bert(), DeepPromptConfig(num_virtual_tokens=4, init_std=0.5)).eval()
    plain = tiny_bert()
    batch = inputs()
    together = model(**batch).last_hidden_state
    assert not torch.allclose(together, plain(**batch).last_hidden_state, atol=1e-3)
    for row in range(2):
        length = int(batch["attention_mask"][row].sum())
        alone = model(input_ids=batch["input_ids"][row : row + 1, :length]).last_hidden_state
        torch.testing.assert_close(together[row : row + 1, :length], alone, atol=1e-5, rtol=1e-5)


def test_only_prompt_parameters_train_and_backbone_gets_no_grad() -> None:
    model = DeepPromptModel(tiny_bert(), DeepPromptConfig(num_virtual_tokens=2))
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"prompt.prompts.self_{i}" for i in range(3)}
    model(**inputs()).last_hidden_state.sum().backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.prompt.parameters())


def test_prefix_is_broadcast_not_copied_per_example() -> None:
    model = DeepPromptModel(tiny_bert(), DeepPromptConfig(num_virtual_tokens=2)).eval()
    seen = []
    from ptuning_v2.injection import attention as attention_module

    original = attention_module.prepend_prefix

    def spy(module, base, query, key, value, mask, prefix, kwargs):
        seen.append(prefix.key.shape[0])
        return original(module, base, query, key, value, mask, prefix, kwargs)

    attention_module.prepend_prefix = spy
    try:
        model(**inputs())
    finally:
        attention_module.prepend_prefix = original
    assert seen == [1, 1, 1]  # one prefix per layer, shared by the batch of 2


def test_hidden_mode_matches_hand_computation() -> None:
    model = DeepPromptModel(
        tiny_bert(), DeepPromptConfig(num_virtual_tokens=2, mode="hidden", init_std=0.5)
    ).eval()
    layer_module = model.backbone.encoder.layer[0]
    captured = {}
    handle = layer_module.register_forward_hook(lambda module, args, output: captured.update(out=output))
    batch = inputs()
    model(**batch)
    handle.remove()
    plain = tiny_bert()
    embeddings = plain.embeddings(input_ids=batch["input_ids"])
    prompt = model.prompt.prompts["self_0"].detach()
    hidden = torch.cat([prompt.expand(2, -1, -1), embeddings], dim=1)
    visible = torch.cat([torch.ones(2, 2), batch["attention_mask"].float()], dim=1)
    mask = (1.0 - visible[:, None, None, :]) * torch.finfo(torch.float32).min
    reference = plain.encoder.layer[0](hidden, mask)[:, 2:]
    torch.testing.assert_close(captured["out"], reference, atol=1e-5, rtol=1e-5)
