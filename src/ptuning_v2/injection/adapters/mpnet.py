"""MPNet (model type ``mpnet``, e.g. all-mpnet-base-v2): attention with a prefix.

MPNet adds a relative position bias (T5-style buckets, computed once by the encoder) to the scores of
the real tokens; the prefix columns get none, and the padding mask is widened as for BERT.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers.models.mpnet.modeling_mpnet import MPNetSelfAttention

from ptuning_v2.injection.adapters.base import (
    AttentionAdapter,
    mask_prefixed_scores_,
    prefixed,
    register_adapter,
)
from ptuning_v2.injection.prefix import Prefix


def _heads(states: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """``[batch, tokens, heads * head_dim]`` as ``[batch, heads, tokens, head_dim]``."""
    return states.view(*states.shape[:2], -1, module.attention_head_size).transpose(1, 2)


class MPNetAdapter(AttentionAdapter):
    model_types = ("mpnet",)
    attention = MPNetSelfAttention

    def key_value(self, module: nn.Module, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _heads(module.k(states), module), _heads(module.v(states), module)

    def forward(
        self,
        module: nn.Module,
        prefix: Prefix,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_bias: torch.Tensor | None = None,
        output_attentions: bool = False,
        **kwargs: object,
    ) -> tuple[torch.Tensor, ...]:
        query = _heads(module.q(hidden_states), module)
        key, value = self.key_value(module, hidden_states)
        # the prefixed keys are not held, and the scale is applied in place: peak memory
        scores = torch.matmul(query, prefixed(key, prefix.key).transpose(-1, -2))
        scores = scores.div_(math.sqrt(module.attention_head_size))
        if position_bias is not None:
            scores[..., prefix.key.shape[2] :] += position_bias  # real keys only
        scores = mask_prefixed_scores_(scores, attention_mask, prefix)
        probs = module.dropout(nn.functional.softmax(scores, dim=-1))
        context = torch.matmul(probs, prefixed(value, prefix.value))
        output = module.o(context.transpose(1, 2).reshape(*hidden_states.shape[:2], -1))
        return (output, probs) if output_attentions else (output,)


register_adapter(MPNetAdapter())
