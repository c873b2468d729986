"""Deep prompts on encoder-decoder models (T5, BART): encoder self-attention, decoder self-attention and
cross-attention prefixes, each switchable, each effective, and generate() with and without the cache."""

from __future__ import annotations

import pytest
import torch
from transformers import BartConfig, BartForConditionalGeneration, T5Config, T5ForConditionalGeneration

from ptuning_v2.config import DeepPromptConfig
from ptuning_v2.prompts.model import DeepPromptModel

VOCAB, PAD, EOS = 64, 0, 1
KINDS = ("self", "decoder_self", "cross")


def tiny_t5(attn: str = "sdpa") -> T5ForConditionalGeneration:
    torch.manual_seed(0)
    config = T5Config(
        vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
        relative_attention_num_buckets=8, dropout_rate=0.0, pad_token_id=PAD, eos_token_id=EOS,
        decoder_start_token_id=PAD, attn_implementation=attn,
    )  # fmt: skip
    return T5ForConditionalGeneration(config).eval()


def tiny_bart(attn: str = "sdpa") -> BartForConditionalGeneration:
    """Weights drawn with std 0.2 (not 0.02), so that every prefix visibly moves the logits."""
    torch.manual_seed(0)
    config = BartConfig(
        vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
        pad_token_id=PAD, bos_token_id=2, eos_token_id=EOS, decoder_start_token_id=EOS,
        forced_eos_token_id=None, init_std=0.2, attn_implementation=attn,
    )  # fmt: skip
    return BartForConditionalGeneration(config).eval()


MAKERS = {"t5": tiny_t5, "bart": tiny_bart}


def prompted(name: str, attn: str = "sdpa", attach_to: tuple[str, ...] = KINDS) -> DeepPromptModel:
    config = DeepPromptConfig(num_virtual_tokens=3, init_std=1.0, attach_to=list(attach_to))
    return DeepPromptModel(MAKERS[name](attn), config).eval()


def inputs() -> dict[str, torch.Tensor]:
    """Two sources of lengths 7 and 5 (right-padded) and decoder inputs of length 4."""
    torch.manual_seed(1)
    ids = torch.randint(3, VOCAB, (2, 7))
    mask = torch.ones_like(ids)
    ids[1, 5:], mask[1, 5:] = PAD, 0
    return {"input_ids": ids, "attention_mask": mask, "decoder_input_ids": torch.randint(3, VOCAB, (2, 4))}


@pytest.mark.parametrize("name", ["t5", "bart"])
def test_every_attention_kind_is_found_per_layer(name: str) -> None:
    model = prompted(name)
    assert [s.name for s in model.injector.slots] == [
        "self_0", "self_1", "decoder_self_0", "cross_0", "decoder_self_1", "cross_1",
    ]  # fmt: skip
    assert all(s.num_kv_heads == 4 and s.head_dim == 8 for s in model.injector.slots)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("name", ["t5", "bart"])
def test_each_kind_of_prefix_alone_changes_the_output(name: str, attn: str) -> None:
    batch = inputs()
    with torch.no_grad():
        plain = MAKERS[name](attn)(**batch).logits
        for kind in KINDS:
            model = prompted(name, attn, attach_to=(kind,))
            assert sorted(model.prompt.prompts) == [f"{kind}_0", f"{kind}_1"]
            assert (model(**batch).logits - plain).abs().max() > 1e-3, kind


@pytest.mark.parametrize("name", ["t5", "bart"])
def test_sdpa_and_eager_agree_with_every_prefix(name: str) -> None:
    batch = inputs()
    with torch.no_grad():
        sdpa, eager = prompted(name, "sdpa")(**batch).logits, prompted(name, "eager")(**batch).logits
    torch.testing.assert_close(sdpa, eager, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_t5_attention_matches_hand_computation(attn: str) -> None:
    """Prefix columns get no relative-position bias, are never masked, and T5 does not scale scores."""
    model = prompted("t5", attn)
    decoder = model.backbone.decoder.block
    modules = {
        "decoder_self_0": decoder[0].layer[0].SelfAttention,
        "cross_1": decoder[1].layer[1].EncDecAttention,
    }
    captured = {}
    handles = [
        module.register_forward_hook(
            lambda m, args, kwargs, out, name=name: captured.update({name: (args, kwargs, out[0])}),
            with_kwargs=True,
        )
        for name, module in modules.items()
    ]
    batch = inputs()
    with torch.no_grad():
        model(**batch)
    for handle in handles:
        handle.remove()
    b, heads, dim, k = 2, 4, 8, 3
    for name, module in modules.items():
        args, kwargs, output = captured[name]
        hidden = args[0] if args else kwargs["hidden_states"]
        source = kwargs.get("key_value_states")
        source = hidden if source is None else source
        q_len, kv_len = hidden.shape[1], source.shape[1]
        with torch.no_grad():
            q = module.q(hidden).view(b, q_len, heads, dim).transpose(1, 2)
            key = module.k(source).view(b, kv_len, heads, dim).transpose(1, 2)
            value = module.v(source).view(b, kv_len, heads, dim).transpose(1, 2)
            prompt = model.prompt.prompts[name].view(k, 2, heads, dim)
            key = torch.cat([prompt[:, 0].transpose(0, 1).expand(b, -1, -1, -1), key], dim=2)
            value = torch.cat([prompt[:, 1].transpose(0, 1).expand(b, -1, -1, -1), value], dim=2)
            scores = q @ key.transpose(-1, -2)
            if name.startswith("decoder_self"):
                bias = module.compute_bias(q_len, kv_len, device=q.device)
                scores = scores + torch.cat([torch.zeros(1, heads, q_len, k), bias], dim=-1)
                visible = torch.ones(q_len, kv_len, dtype=torch.bool).tril().expand(b, -1, -1)
            else:
                visible = batch["attention_mask"].bool()[:, None, :].expand(-1, q_len, -1)
            visible = torch.cat([torch.ones(b, q_len, k, dtype=torch.bool), visible], dim=-1)
            scores = scores.masked_fill(~visible[:, None], float("-inf"))
            reference = module.o((scores.softmax(-1) @ value).transpose(1, 2).reshape(b, q_len, -1))
        torch.testing.assert_close(output, reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["t5", "bart"])
def test_padded_batch_matches_examples_one_by_one(name: str) -> None:
    model = prompted(name)
    batch = inputs()
    with torch.no_grad():
        together = model(**batch).logits
        for row in range(2):
            keep = batch["attention_mask"][row].bool()
            alone = model(
                input_ids=batch["input_ids"][row : row + 1, keep],
                decoder_input_ids=batch["decoder_input_ids"][row : row + 1],
            ).logits
            torch.testing.assert_close(together[row : row + 1], alone, atol=1e-5, rtol=1e-5)


MODES = {
    "greedy": {"do_sample": False},
    "beam": {"do_sample": False, "num_beams": 3},
    "sample": {"do_sample": True, "top_k": 0, "temperature": 1.0},
}


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("name", ["t5", "bart"])
def test_cached_generation_equals_recomputation(name: str, mode: str, attn: str) -> None:
    model = prompted(name, attn)
    batch = {k: v for k, v in inputs().items() if k != "decoder_input_ids"}
    results = []
    for use_cache in (True, False):
        torch.manual_seed(7)
        results.append(
            model.generate(
                **batch,
                max_new_tokens=5,
                min_new_tokens=5,
                use_cache=use_cache,
                return_dict_in_generate=True,
                output_logits=True,
                output_scores=True,
                **MODES[mode],
            )  # fmt: skip
        )
    cached, recomputed = results
    assert torch.equal(cached.sequences, recomputed.sequences)
    for a, b in zip(cached.logits + cached.scores, recomputed.logits + recomputed.scores, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    plain = MAKERS[name](attn).generate(
        **batch, max_new_tokens=1, return_dict_in_generate=True, output_logits=True
    )
    assert (plain.logits[0] - cached.logits[0][:2]).abs().max() > 1e-3
