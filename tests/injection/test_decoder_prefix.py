"""Deep prompts on decoder-only models (Llama with grouped-query attention, GPT-2): attention by hand,
positions, left padding, and generate() with and without the KV cache."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import DynamicCache, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from ptuning_v2.config import DeepPromptConfig
from ptuning_v2.prompts.model import DeepPromptModel, mask_positions

VOCAB, PAD, EOS = 64, 0, 1


def tiny_llama(attn: str = "sdpa") -> LlamaForCausalLM:
    """4 query heads sharing 2 key/value heads (grouped-query attention), head_dim 8."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, max_position_embeddings=128, pad_token_id=PAD, eos_token_id=EOS,
        bos_token_id=2, attn_implementation=attn,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval()


def tiny_gpt2(attn: str = "sdpa") -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=128, pad_token_id=PAD,
        eos_token_id=EOS, bos_token_id=2, attn_implementation=attn,
    )  # fmt: skip
    return GPT2LMHeadModel(config).eval()


MAKERS = {"llama": tiny_llama, "gpt2": tiny_gpt2}


def prompted(make, attn: str = "sdpa", **options) -> DeepPromptModel:
    config = DeepPromptConfig(**{"num_virtual_tokens": 3, "init_std": 1.0, **options})
    return DeepPromptModel(make(attn), config).eval()


def left_padded() -> dict[str, torch.Tensor]:
    """Three prompts of lengths 6, 4 and 2, left-padded to 6."""
    torch.manual_seed(1)
    ids = torch.randint(3, VOCAB, (3, 6))
    mask = torch.ones_like(ids)
    for row, pad in ((1, 2), (2, 4)):
        ids[row, :pad], mask[row, :pad] = PAD, 0
    return {"input_ids": ids, "attention_mask": mask}


def rows(batch: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """Each example alone, without its padding."""
    out = []
    for row in range(batch["input_ids"].shape[0]):
        keep = batch["attention_mask"][row].bool()
        out.append({k: v[row : row + 1, keep] for k, v in batch.items()})
    return out


# ---------------------------------------------------------------------------------------------- engine


def test_grouped_query_attention_gets_one_key_and_value_per_kv_head() -> None:
    model = prompted(tiny_llama)
    assert [(s.name, s.num_kv_heads, s.head_dim) for s in model.injector.slots] == [
        ("self_0", 2, 8),
        ("self_1", 2, 8),
    ]
    assert {n: tuple(p.shape) for n, p in model.prompt.prompts.items()} == {
        "self_0": (3, 32),
        "self_1": (3, 32),
    }


def rope(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotary embedding written out: pairs (i, i + d/2) rotated by position * theta^(-2i/d)."""
    dim = x.shape[-1]
    inv_freq = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    angles = positions[:, None, :, None].float() * inv_freq  # [batch, 1, tokens, dim/2]
    cos, sin = torch.cat([angles.cos(), angles.cos()], -1), torch.cat([angles.sin(), angles.sin()], -1)
    half = dim // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("offset", ["none", "prefix"])
def test_llama_attention_matches_hand_computation(attn: str, offset: str) -> None:
    """Unrotated prefix keys per kv head; real tokens rotated at 0..n-1 (+k with offset 'prefix')."""
    model = prompted(tiny_llama, attn, position_offset=offset)
    captured: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    handles = []
    for index, layer in enumerate(model.backbone.model.layers):

        def hook(module, args, kwargs, output, index=index):
            captured[index] = (kwargs["hidden_states"] if "hidden_states" in kwargs else args[0], output[0])

        handles.append(layer.self_attn.register_forward_hook(hook, with_kwargs=True))
    batch = left_padded()
    with torch.no_grad():
        model(**batch)
    for handle in handles:
        handle.remove()

    mask = batch["attention_mask"].bool()
    b, n = mask.shape
    k, heads, kv_heads, dim = 3, 4, 2, 8
    positions = mask_positions(batch["attention_mask"]) + (k if offset == "prefix" else 0)
    theta = model.backbone.config.rope_parameters["rope_theta"]
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    visible = torch.cat([torch.ones(b, n, k, dtype=torch.bool), causal & mask[:, None, :]], dim=-1)
    for index, layer in enumerate(model.backbone.model.layers):
        attention, (hidden, output) = layer.self_attn, captured[index]
        with torch.no_grad():
            q = attention.q_proj(hidden).view(b, n, heads, dim).transpose(1, 2)
            key = attention.k_proj(hidden).view(b, n, kv_heads, dim).transpose(1, 2)
            value = attention.v_proj(hidden).view(b, n, kv_heads, dim).transpose(1, 2)
            q, key = rope(q, positions, theta), rope(key, positions, theta)
            prompt = model.prompt.prompts[f"self_{index}"].view(k, 2, kv_heads, dim)
            key = torch.cat([prompt[:, 0].transpose(0, 1).expand(b, -1, -1, -1), key], dim=2)
            value = torch.cat([prompt[:, 1].transpose(0, 1).expand(b, -1, -1, -1), value], dim=2)
            # each kv head serves heads / kv_heads consecutive query heads
            key, value = key.repeat_interleave(2, dim=1), value.repeat_interleave(2, dim=1)
            scores = (q @ key.transpose(-1, -2) / math.sqrt(dim)).masked_fill(~visible[:, None], -math.inf)
            reference = attention.o_proj((scores.softmax(-1) @ value).transpose(1, 2).reshape(b, n, -1))
        torch.testing.assert_close(output[mask], reference[mask], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_offset_prefix_equals_the_prefix_passed_as_a_cache(name: str) -> None:
    """Prefix tuning's own definition: keys/values in the cache, real tokens after them (positions k..)."""
    model = prompted(MAKERS[name], position_offset="prefix")
    plain = MAKERS[name]()
    batch = {"input_ids": left_padded()["input_ids"][:1]}
    batch["attention_mask"] = torch.ones_like(batch["input_ids"])
    cache = DynamicCache(config=plain.config)
    for layer in range(2):
        slot = model.injector.slots[layer]
        kv = model.prompt.prompts[f"self_{layer}"].detach().view(1, 3, 2, slot.num_kv_heads, slot.head_dim)
        cache.update(kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2), layer)
    mask = torch.cat([torch.ones(1, 3, dtype=torch.long), batch["attention_mask"]], dim=1)
    with torch.no_grad():
        expected = plain(input_ids=batch["input_ids"], attention_mask=mask, cache=cache).logits
        ours = model(**batch).logits
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_left_padded_batch_matches_examples_one_by_one(name: str, attn: str) -> None:
    model = prompted(MAKERS[name], attn)
    batch = left_padded()
    with torch.no_grad():
        together = model(**batch).logits
        plain = MAKERS[name](attn)(**batch).logits
        for row, alone in enumerate(rows(batch)):
            keep = batch["attention_mask"][row].bool()
            torch.testing.assert_close(together[row, keep], model(**alone).logits[0], atol=1e-5, rtol=1e-5)
    assert (together - plain).abs().max() > 1e-2  # the prompt is really there


# ------------------------------------------------------------------------------------------ generation


def generate(model: DeepPromptModel, batch: dict[str, torch.Tensor], **options) -> object:
    torch.manual_seed(7)  # sampling draws the same numbers in both runs
    return model.generate(
        **batch, max_new_tokens=6, min_new_tokens=6, pad_token_id=PAD, eos_token_id=EOS,
        return_dict_in_generate=True, output_logits=True, output_scores=True, **options,
    )  # fmt: skip


MODES = {
    "greedy": {"do_sample": False},
    "beam": {"do_sample": False, "num_beams": 3},
    "sample": {"do_sample": True, "top_k": 0, "temperature": 1.0},
}


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_cached_generation_equals_recomputation(name: str, mode: str) -> None:
    model = prompted(MAKERS[name])
    batch = left_padded()
    cached = generate(model, batch, use_cache=True, **MODES[mode])
    recomputed = generate(model, batch, use_cache=False, **MODES[mode])
    assert torch.equal(cached.sequences, recomputed.sequences)
    for a, b in zip(cached.logits, recomputed.logits, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    for a, b in zip(cached.scores, recomputed.scores, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    plain = MAKERS[name]().generate(
        **batch, max_new_tokens=1, pad_token_id=PAD, return_dict_in_generate=True, output_logits=True
    )
    assert (plain.logits[0] - cached.logits[0][: len(batch["input_ids"])]).abs().max() > 1e-2


@pytest.mark.parametrize("offset", ["none", "prefix"])
@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_left_padded_generation_matches_examples_one_by_one(name: str, offset: str) -> None:
    model = prompted(MAKERS[name], position_offset=offset)
    batch = left_padded()
    together = generate(model, batch, do_sample=False)
    for row, alone in enumerate(rows(batch)):
        single = generate(model, alone, do_sample=False)
        new = together.sequences[row, batch["input_ids"].shape[1] :]
        assert torch.equal(new, single.sequences[0, alone["input_ids"].shape[1] :])
        for a, b in zip(together.logits, single.logits, strict=True):
            torch.testing.assert_close(a[row], b[0], atol=1e-5, rtol=1e-5)


def test_generation_positions_follow_the_forward_pass() -> None:
    """With offset 'prefix', generate() shifts positions exactly like forward: step-one logits agree."""
    model = prompted(tiny_llama, position_offset="prefix")
    batch = left_padded()
    first = generate(model, batch, do_sample=False).logits[0]
    with torch.no_grad():
        torch.testing.assert_close(first, model(**batch).logits[:, -1], atol=1e-5, rtol=1e-5)


def test_offset_prefix_is_refused_for_models_that_do_not_generate_left_to_right() -> None:
    from transformers import BertConfig, BertModel

    bert = BertModel(BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2))
    with pytest.raises(ValueError, match="decoder-only"):
        DeepPromptModel(bert, DeepPromptConfig(num_virtual_tokens=2, position_offset="prefix"))
