"""DeBERTa (v1, model type ``deberta``): disentangled attention with a prefix.

The relative-position terms stay between real tokens, computed by the module's own code; the prefix
columns get the content score alone, as in the official P-Tuning v2 DeBERTa model. (The official model
also shifts the absolute positions of the real tokens by the prefix length; here they keep theirs, as
for every other architecture: the prefix has no position.)
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.models.deberta.modeling_deberta import DisentangledSelfAttention, scaled_size_sqrt

from ptuning_v2.injection.adapters.base import (
    AttentionAdapter,
    mask_prefixed_scores_,
    prefixed,
    register_adapter,
)
from ptuning_v2.injection.prefix import Prefix


class DebertaAdapter(AttentionAdapter):
    model_types = ("deberta",)
    attention = DisentangledSelfAttention

    def key_value(self, module: nn.Module, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _, key, value = module.transpose_for_scores(module.in_proj(states)).chunk(3, dim=-1)
        return key, value + module.transpose_for_scores(module.v_bias[None, None, :])

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
        query, _, _ = module.transpose_for_scores(
            module.in_proj(hidden_states if query_states is None else query_states)
        ).chunk(3, dim=-1)
        key, value = self.key_value(module, hidden_states)
        query = query + module.transpose_for_scores(module.q_bias[None, None, :])
        scale_factor = 1 + len(module.pos_att_type)
        query = query / scaled_size_sqrt(query, scale_factor).to(dtype=query.dtype)
        scores = torch.matmul(query, prefixed(key, prefix.key).transpose(-1, -2))
        if module.relative_attention and rel_embeddings is not None and relative_pos is not None:
            rel_embeddings = module.pos_dropout(rel_embeddings)
            bias = module.disentangled_att_bias(query, key, relative_pos, rel_embeddings, scale_factor)
            scores[..., prefix.key.shape[2] :] += bias  # real keys only
        if module.head_logits_proj is not None:  # talking heads mix the prefix columns too
            scores = module.head_logits_proj(scores.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        scores = mask_prefixed_scores_(scores, attention_mask.bool(), prefix)
        probs = module.dropout(nn.functional.softmax(scores, dim=-1))
        if module.head_weights_proj is not None:
            probs = module.head_weights_proj(probs.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        context = torch.matmul(probs, prefixed(value, prefix.value))
        context = context.permute(0, 2, 1, 3).reshape(*hidden_states.shape[:2], -1)
        return context, probs if output_attentions else None


register_adapter(DebertaAdapter())
