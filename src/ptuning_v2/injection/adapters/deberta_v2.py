"""DeBERTa-v2 and DeBERTa-v3 (model type ``deberta-v2``): disentangled attention with a prefix.

As in the official P-Tuning v2 DeBERTa-v2 model, the relative-position terms (content-to-position,
position-to-content) stay between real tokens, computed by the module's own code; the prefix columns
get the content score alone (the official code pads the relative attention with zeros there).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.models.deberta_v2.modeling_deberta_v2 import DisentangledSelfAttention, scaled_size_sqrt

from ptuning_v2.injection.adapters.base import (
    AttentionAdapter,
    mask_prefixed_scores_,
    prefixed,
    register_adapter,
)
from ptuning_v2.injection.prefix import Prefix


def _heads(states: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """``[batch, tokens, heads * head_dim]`` as ``[batch, heads, tokens, head_dim]``."""
    return states.view(*states.shape[:2], module.num_attention_heads, -1).transpose(1, 2)


class DebertaV2Adapter(AttentionAdapter):
    model_types = ("deberta-v2",)
    attention = DisentangledSelfAttention

    def key_value(self, module: nn.Module, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _heads(module.key_proj(states), module), _heads(module.value_proj(states), module)

    def forward(
        self,
        module: nn.Module,
        prefix: Prefix,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor,
        output_attentions: bool = False,
        query_states: torch.Tensor | None = None,
        relative_pos: torch.Tensor | None = None,
        rel_embeddings: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        heads = module.num_attention_heads
        queries = hidden_states if query_states is None else query_states
        # [batch * heads, tokens, head_dim], the layout of the module's relative-position code
        query_layer = module.transpose_for_scores(module.query_proj(queries), heads)
        key_layer = module.transpose_for_scores(module.key_proj(hidden_states), heads)
        scale_factor = 1 + sum(kind in module.pos_att_type for kind in ("c2p", "p2c"))
        scale = scaled_size_sqrt(query_layer, scale_factor).to(dtype=query_layer.dtype)
        batch = hidden_states.shape[0]
        query = query_layer.view(batch, heads, *query_layer.shape[1:])
        key = key_layer.view(batch, heads, *key_layer.shape[1:])
        # the prefixed keys are not held: peak memory
        scores = torch.matmul(query, prefixed(key, prefix.key).transpose(-1, -2) / scale)
        if module.relative_attention:
            rel_embeddings = module.pos_dropout(rel_embeddings)
            bias = module.disentangled_attention_bias(
                query_layer, key_layer, relative_pos, rel_embeddings, scale_factor
            )
            scores[..., prefix.key.shape[2] :] += bias.view(batch, heads, *bias.shape[1:])  # real keys only
        scores = mask_prefixed_scores_(scores, attention_mask.bool(), prefix)
        probs = module.dropout(nn.functional.softmax(scores, dim=-1))
        value = _heads(module.value_proj(hidden_states), module)
        context = torch.matmul(probs, prefixed(value, prefix.value))
        context = context.transpose(1, 2).reshape(batch, context.shape[2], -1)
        return context, probs if output_attentions else None


register_adapter(DebertaV2Adapter())
