"""Attention adapters (models whose attention is their own code) against hand-written references.

DeBERTa (v1), DeBERTa-v2/v3 and MPNet on tiny random configs, prefix and hidden mode. Each reference
computes one layer's self-attention from its captured input with the prompt's keys and values in front:
content scores everywhere, the relative-position terms (DeBERTa's c2p and p2c, MPNet's bias) between real
tokens only, none on the prompt columns, and the padding mask widened as for BERT. In hidden mode the
prompt's keys and values are the layer's own projections of the prompt vectors, which is what the real
tokens see of vectors passing through the layer with them. Each reference is first checked against the
plain model without a prompt.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from transformers import (
    DebertaConfig,
    DebertaModel,
    DebertaV2Config,
    DebertaV2Model,
    MPNetConfig,
    MPNetModel,
)
from transformers.models.mpnet.modeling_mpnet import MPNetEncoder

from ptuning_v2.config import DeepPromptConfig
from ptuning_v2.injection.adapters.base import mask_prefixed_scores_
from ptuning_v2.injection.prefix import Prefix
from ptuning_v2.prompts.model import DeepPromptModel

HEADS, DIM = 2, 8
COMMON = {
    "vocab_size": 50,
    "hidden_size": HEADS * DIM,
    "num_hidden_layers": 3,
    "num_attention_heads": HEADS,
    "intermediate_size": 32,
    "max_position_embeddings": 64,
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
}
DISENTANGLED = {"relative_attention": True, "pos_att_type": ["p2c", "c2p"]}
CONFIGS = {
    "deberta": lambda: DebertaModel(DebertaConfig(**COMMON, **DISENTANGLED)),
    # DeBERTa-v2 as released: separate position projections, no buckets
    "deberta_v2": lambda: DebertaV2Model(
        DebertaV2Config(**COMMON, **DISENTANGLED, position_biased_input=False, share_att_key=False)
    ),
    # DeBERTa-v3 as released: log buckets, position keys shared with content keys, normed embeddings
    "deberta_v3": lambda: DebertaV2Model(
        DebertaV2Config(
            **COMMON,
            **DISENTANGLED,
            position_biased_input=False,
            position_buckets=16,
            share_att_key=True,
            norm_rel_ebd="layer_norm",
        )
    ),
    "mpnet": lambda: MPNetModel(MPNetConfig(**COMMON)),
}
IDS = torch.tensor([[2, 7, 9, 11, 3, 4], [2, 5, 6, 3, 0, 0]])
MASK = (IDS != 0).long()
LAYER = 1


def tiny(family: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return CONFIGS[family]().eval()


def heads(x: torch.Tensor) -> torch.Tensor:
    """``[..., tokens, HEADS * DIM]`` as ``[..., HEADS, tokens, DIM]``."""
    return x.view(*x.shape[:-1], HEADS, DIM).transpose(-2, -3)


@dataclass
class Layer:
    """One layer's attention written out by hand: projections and its relative-position terms."""

    query: Callable[[torch.Tensor], torch.Tensor]
    key: Callable[[torch.Tensor], torch.Tensor]
    value: Callable[[torch.Tensor], torch.Tensor]
    position_scores: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    """(query, key) of the real tokens -> the unscaled relative-position scores between them."""
    scale: float
    output: Callable[[torch.Tensor], torch.Tensor] = lambda context: context


def disentangled(rel_key: torch.Tensor, rel_query: torch.Tensor, center: int, tokens: int) -> Callable:
    """c2p[i, j] = q_i . Kr(i - j) and p2c[i, j] = k_j . Qr(i - j), with Kr(d) = rel_key[center + d]
    (``[HEADS, 2 * center, DIM]``): DeBERTa's disentangled terms for relative distances < ``center``."""
    distance = torch.arange(tokens)[:, None] - torch.arange(tokens)[None, :]
    kr, qr = rel_key[:, center + distance], rel_query[:, center + distance]  # [HEADS, i, j, DIM]

    def scores(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        c2p = torch.einsum("bhid,hijd->bhij", q, kr)
        p2c = torch.einsum("bhjd,hijd->bhij", k, qr)
        return c2p + p2c

    return scores


def hand_layer(family: str, backbone: torch.nn.Module, tokens: int) -> Layer:
    config = backbone.config
    if family == "mpnet":
        attention = backbone.encoder.layer[LAYER].attention.attn
        distance = torch.arange(tokens)[None, :] - torch.arange(tokens)[:, None]
        bucket = MPNetEncoder.relative_position_bucket(distance, num_buckets=32)
        bias = backbone.encoder.relative_attention_bias(bucket).permute(2, 0, 1)  # [HEADS, i, j]
        return Layer(
            lambda h: heads(attention.q(h)),
            lambda h: heads(attention.k(h)),
            lambda h: heads(attention.v(h)),
            lambda q, k: bias * math.sqrt(DIM),  # added after the 1/sqrt(d) scaling
            math.sqrt(DIM),
            attention.o,
        )
    attention = backbone.encoder.layer[LAYER].attention.self
    rel = backbone.encoder.get_rel_embedding()
    scale = math.sqrt(DIM * 3)  # content, c2p and p2c share one scale
    if family == "deberta":
        weights = attention.in_proj.weight.view(HEADS, 3, DIM, -1)  # per head: query, key, value rows
        center = config.max_position_embeddings
        position = disentangled(
            heads(attention.pos_proj(rel)), heads(attention.pos_q_proj(rel)), center, tokens
        )
        return Layer(
            lambda h: heads(h @ weights[:, 0].reshape(-1, h.shape[-1]).T + attention.q_bias),
            lambda h: heads(h @ weights[:, 1].reshape(-1, h.shape[-1]).T),
            lambda h: heads(h @ weights[:, 2].reshape(-1, h.shape[-1]).T + attention.v_bias),
            position,
            scale,
        )
    shared = config.share_att_key
    rel_key = (attention.key_proj if shared else attention.pos_key_proj)(rel)
    rel_query = (attention.query_proj if shared else attention.pos_query_proj)(rel)
    center = attention.pos_ebd_size
    assert tokens < center // 2  # log buckets start at half the bucket count
    return Layer(
        lambda h: heads(attention.query_proj(h)),
        lambda h: heads(attention.key_proj(h)),
        lambda h: heads(attention.value_proj(h)),
        disentangled(heads(rel_key), heads(rel_query), center, tokens),
        scale,
    )


def reference(layer: Layer, hidden: torch.Tensor, prompt_key: torch.Tensor, prompt_value: torch.Tensor):
    """The layer's attention output for ``hidden`` with ``[HEADS, length, DIM]`` prompt keys/values in
    front of the real ones; padding keys masked."""
    q, k, v = layer.query(hidden), layer.key(hidden), layer.value(hidden)
    batch = hidden.shape[0]
    real = (q @ k.transpose(-1, -2) + layer.position_scores(q, k)) / layer.scale
    prompt = q @ prompt_key.transpose(-1, -2) / layer.scale  # no position term
    scores = torch.cat([prompt, real], dim=-1)
    visible = torch.cat([torch.ones(batch, prompt_key.shape[1], dtype=torch.bool), MASK.bool()], dim=1)
    scores = scores.masked_fill(~visible[:, None, None, :], float("-inf"))
    values = torch.cat([prompt_value.expand(batch, -1, -1, -1), v], dim=2)
    context = (scores.softmax(-1) @ values).transpose(1, 2).reshape(batch, hidden.shape[1], -1)
    return layer.output(context)


def attention_module(family: str, backbone: torch.nn.Module) -> torch.nn.Module:
    layer = backbone.encoder.layer[LAYER].attention
    return layer.attn if family == "mpnet" else layer.self


def run_capturing(family: str, model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's attention input (hidden states) and output for the batch."""
    backbone = model.backbone if isinstance(model, DeepPromptModel) else model
    captured = {}

    def hook(module, args, kwargs, output):
        captured["hidden"] = args[0] if args else kwargs["hidden_states"]
        captured["out"] = output[0]

    handle = attention_module(family, backbone).register_forward_hook(hook, with_kwargs=True)
    with torch.no_grad():
        model(input_ids=IDS, attention_mask=MASK)
    handle.remove()
    return captured["hidden"], captured["out"]


def real_rows(x: torch.Tensor) -> torch.Tensor:
    """The real tokens' rows (what padding rows attend to is a convention of each model)."""
    return x[MASK.bool()]


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_hand_reference_is_the_plain_model_without_prompt(family: str) -> None:
    backbone = tiny(family)
    hidden, out = run_capturing(family, backbone)
    layer = hand_layer(family, backbone, IDS.shape[1])
    empty = torch.zeros(HEADS, 0, DIM)
    with torch.no_grad():
        expected = reference(layer, hidden, empty, empty)
    torch.testing.assert_close(real_rows(out), real_rows(expected), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", sorted(CONFIGS))
@pytest.mark.parametrize("mode", ["prefix", "hidden"])
def test_prompted_attention_matches_hand_computation(family: str, mode: str) -> None:
    model = DeepPromptModel(tiny(family), DeepPromptConfig(num_virtual_tokens=3, mode=mode, init_std=0.5))
    model.eval()
    hidden, out = run_capturing(family, model)
    layer = hand_layer(family, model.backbone, IDS.shape[1])
    prompt = model.prompt.prompts[f"self_{LAYER}"].detach()
    with torch.no_grad():
        if mode == "prefix":  # [3, key then value, HEADS * DIM]
            prompt_key, prompt_value = heads(prompt[:, : HEADS * DIM]), heads(prompt[:, HEADS * DIM :])
        else:  # [3, hidden]: the layer's own projections
            prompt_key, prompt_value = layer.key(prompt), layer.value(prompt)
        expected = reference(layer, hidden, prompt_key, prompt_value)
        plain = reference(layer, hidden, prompt_key[:, :0], prompt_value[:, :0])
    torch.testing.assert_close(real_rows(out), real_rows(expected), atol=1e-5, rtol=1e-5)
    change = (real_rows(out) - real_rows(plain)).abs().max()
    assert change > 0.1 * real_rows(plain).abs().max()  # the prompt matters


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_prompted_attention_runs_under_bfloat16_autocast(family: str) -> None:
    """Masked scores take the minimum of the scores' own dtype: transformers' DeBERTa (v1) attention fills
    bf16 scores with float32's minimum and fails under CPU autocast, and so did its adapter."""
    model = DeepPromptModel(tiny(family), DeepPromptConfig(num_virtual_tokens=3, init_std=0.5)).eval()
    with torch.no_grad():
        expected = model(input_ids=IDS, attention_mask=MASK).last_hidden_state
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(input_ids=IDS, attention_mask=MASK).last_hidden_state
    torch.testing.assert_close(real_rows(out.float()), real_rows(expected), atol=0.05, rtol=0.05)


def test_masking_in_place_keeps_bf16_scores_finite() -> None:
    """float32's minimum in an additive mask rounds to -inf in bf16 scores (a fully hidden row would then
    be NaN); it is clamped to the scores' own minimum. ``prefix.mask`` hides prefix columns per row."""
    empty = torch.zeros(2, 1, 2, 4)
    prefix = Prefix(empty, empty, mask=torch.tensor([[True, True], [True, False]]))
    scores = torch.zeros(2, 1, 3, 2 + 3, dtype=torch.bfloat16)
    mask = torch.zeros(2, 1, 1, 3)
    mask[:, ..., -1] = torch.finfo(torch.float32).min
    out = mask_prefixed_scores_(scores, mask, prefix)
    lowest = torch.finfo(torch.bfloat16).min
    assert out is scores and torch.isfinite(scores).all()
    assert (scores[..., -1] == lowest).all() and (scores[..., 2:4] == 0).all()
    assert (
        (scores[0, ..., :2] == 0).all()
        and (scores[1, ..., 0] == 0).all()
        and (scores[1, ..., 1] == lowest).all()
    )


def test_prompt_keys_and_values_of_a_text_are_what_the_layer_computes() -> None:
    """Text initialisation (and slot discovery) record each layer's keys and values through the adapter."""
    model = DeepPromptModel(tiny("deberta_v3"), DeepPromptConfig(num_virtual_tokens=2, mode="prefix"))
    captured = model.injector.capture({"input_ids": IDS[:1], "attention_mask": MASK[:1]})
    hidden, _ = run_capturing("deberta_v3", model.backbone)
    layer = hand_layer("deberta_v3", model.backbone, IDS.shape[1])
    with torch.no_grad():
        key, value = layer.key(hidden[:1])[0], layer.value(hidden[:1])[0]  # [HEADS, tokens, DIM]
    expected = torch.cat([key.transpose(0, 1).flatten(1), value.transpose(0, 1).flatten(1)], dim=-1)
    torch.testing.assert_close(captured[f"self_{LAYER}"], expected, atol=1e-6, rtol=1e-6)
    assert [slot.name for slot in model.injector.slots] == ["self_0", "self_1", "self_2"]
    assert {(slot.num_kv_heads, slot.head_dim) for slot in model.injector.slots} == {(HEADS, DIM)}
