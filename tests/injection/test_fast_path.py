"""The fast path of prefix injection: layout-preserving concatenation, and no mask where none is needed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from ptuning_v2.config import DeepPromptConfig
from ptuning_v2.injection import attention
from ptuning_v2.injection.attention import prepend_tokens
from ptuning_v2.models import load_backbone
from ptuning_v2.prompts.model import DeepPromptModel


@pytest.mark.parametrize("token_major", [True, False])
@pytest.mark.parametrize("prefix_batch", [1, 3])
def test_prepend_tokens_equals_concatenation(token_major: bool, prefix_batch: int) -> None:
    torch.manual_seed(0)
    states = torch.randn(3, 7, 4, 5).transpose(1, 2) if token_major else torch.randn(3, 4, 7, 5)
    # a prefix as the injector makes it: a key/value view of a [tokens, 2 * heads * dim] prompt
    prompt = torch.randn(prefix_batch, 2, 2 * 4 * 5)
    prefix = prompt.view(prefix_batch, 2, 2, 4, 5).permute(2, 0, 3, 1, 4)[0]
    out = prepend_tokens(prefix, states)
    assert torch.equal(out, torch.cat([prefix.expand(3, -1, -1, -1), states], dim=2))
    # token-major input stays token-major: whole token rows were copied
    assert out.transpose(1, 2).is_contiguous() == token_major


def test_encoder_without_padding_keeps_the_maskless_sdpa_call(tiny_bert_dir: Path, monkeypatch) -> None:
    """No padding: the prompted model calls sdpa with no mask (its fastest kernel), like the plain model."""
    calls = []
    sdpa = ALL_ATTENTION_FUNCTIONS["sdpa"]

    def spy(module, query, key, value, attention_mask, **kwargs):
        calls.append((attention_mask, key.shape[2], key.transpose(1, 2).is_contiguous()))
        return sdpa(module, query, key, value, attention_mask, **kwargs)

    model = DeepPromptModel(
        load_backbone(str(tiny_bert_dir), "encoder"), DeepPromptConfig(num_virtual_tokens=3)
    )
    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS._global_mapping, "sdpa", spy)
    ids = torch.tensor([[2, 10, 11, 12, 3]])
    with torch.inference_mode():
        model(input_ids=ids, attention_mask=torch.ones_like(ids))
    assert calls == [(None, 3 + 5, True)] * 2  # both layers: no mask, prefix added, token-major keys


@pytest.mark.parametrize("name", ["bert", "llama"])
def test_outputs_and_prompt_gradients_are_bitwise_those_of_a_plain_concatenation(
    name: str, tiny_bert_dir: Path, tiny_llama_dir: Path, monkeypatch
) -> None:
    model_dir, kind = (tiny_bert_dir, "encoder") if name == "bert" else (tiny_llama_dir, "causal_lm")
    ids = torch.tensor([[2, 10, 11, 12, 13, 3], [2, 14, 15, 3, 0, 0]])
    results = []
    for concatenate in (prepend_tokens, lambda p, s: torch.cat([p.expand(s.shape[0], -1, -1, -1), s], dim=2)):
        monkeypatch.setattr(attention, "prepend_tokens", concatenate)
        torch.manual_seed(0)
        config = DeepPromptConfig(num_virtual_tokens=4, init_std=0.5)
        model = DeepPromptModel(load_backbone(str(model_dir), kind), config).eval()
        out = model(input_ids=ids, attention_mask=(ids != 0).long())
        out = out.last_hidden_state if kind == "encoder" else out.logits
        out.square().mean().backward()
        results.append((out.detach(), [p.grad for p in model.prompt.parameters()]))
    (out_a, grads_a), (out_b, grads_b) = results
    assert torch.equal(out_a, out_b)
    assert all(torch.equal(a, b) for a, b in zip(grads_a, grads_b, strict=True))
