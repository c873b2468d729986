"""What one forward call hands the prompted layers, and how a prefix joins their keys, values and mask.

Shared by both routes into attention: transformers' ``AttentionInterface`` (attention.py) and the
attention adapters of models whose attention is their own code (adapters/).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ptuning_v2.injection.slots import ProbeCall

PROMPTS_KWARG = "ptv2_prompts"
"""The keyword argument that carries one call's prompts from the model's ``forward`` to its layers."""


@dataclass(frozen=True)
class Prefix:
    """One slot's prefix for one call.

    ``key`` and ``value`` are ``[batch or 1, kv_heads, length, head_dim]``; ``mask`` (``[batch, length]``,
    True where attended) hides the unused positions of rows whose prompt is shorter than the longest in
    a mixed-task batch, or that have no prompt at this layer. ``None``: every position is attended.
    """

    key: torch.Tensor
    value: torch.Tensor
    mask: torch.Tensor | None = None


@dataclass(frozen=True)
class Delivery:
    """What one forward call hands the layers: each slot's prompt, and the injector that made them
    (hidden-mode hooks of another prompted model on the same backbone leave it alone)."""

    owner: object
    prompts: Mapping[str, Any]


class Recording(list[ProbeCall]):
    """Passed as ``ptv2_prompts`` to record every attention call (probe, text initialisation)."""


def rows(tensor: torch.Tensor, batch: int) -> torch.Tensor:
    """A per-row tensor for ``batch`` rows: generate() repeats each row for beams / returned sequences."""
    if tensor.shape[0] in (1, batch):
        return tensor
    return tensor.repeat_interleave(batch // tensor.shape[0], dim=0)


def prepend_tokens(prefix: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
    """``[prefix; states]`` along the tokens (dim 2) of ``[batch, heads, tokens, head_dim]`` tensors.

    Projections usually leave keys and values token-major in memory (``[batch, tokens, heads, dim]``,
    viewed transposed); concatenating in that layout copies whole token rows instead of one short
    row per head, about a third faster, and gives attention the same layout as without a prefix.
    """
    batch = states.shape[0]
    if states.transpose(1, 2).is_contiguous():
        parts = [prefix.transpose(1, 2).expand(batch, -1, -1, -1), states.transpose(1, 2)]
        return torch.cat(parts, dim=1).transpose(1, 2)
    return torch.cat([prefix.expand(batch, -1, -1, -1), states], dim=2)


def widen_mask(
    mask: torch.Tensor | None,
    length: int,
    q_len: int,
    kv_len: int,
    module: nn.Module,
    base: str,
    query: torch.Tensor,
    prefix_mask: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """Every query may attend to every (unmasked) prefix position; the rest of the mask is unchanged.

    ``mask`` is boolean (True: attended) or additive (0 or the dtype's minimum); so is the result.
    """
    causal = base == "sdpa" and q_len > 1 and getattr(module, "is_causal", False)
    if mask is None:
        if prefix_mask is None and not causal:
            return None
        # sdpa infers causality from a missing mask; with a prefix the shapes no longer imply it.
        # One op: the diagonal offset leaves every prefix column visible (kv_len >= q_len).
        total = length + kv_len
        visible = torch.ones(q_len, total, dtype=torch.bool, device=query.device)
        mask = visible.tril(total - q_len)[None, None] if causal else visible[None, None]
        if prefix_mask is None:
            return mask
        mask = mask[..., length:]  # the real keys' part; the prefix part comes from prefix_mask
        if base != "sdpa":  # eager implementations add the mask to the scores
            mask = torch.zeros(mask.shape, dtype=query.dtype, device=query.device)
    if mask.dim() == 2:  # flash-attention style padding mask [batch, keys]
        cols = prefix_mask.to(mask.dtype) if prefix_mask is not None else mask.new_ones(mask.shape[0], length)
        return torch.cat([cols.expand(mask.shape[0], -1), mask], dim=-1)
    if prefix_mask is None:
        fill = mask.new_ones if mask.dtype == torch.bool else mask.new_zeros
        return torch.cat([fill(*mask.shape[:-1], length), mask], dim=-1)
    if mask.dtype == torch.bool:
        cols = prefix_mask
    else:
        cols = torch.zeros(prefix_mask.shape, dtype=mask.dtype, device=mask.device)
        cols = cols.masked_fill(~prefix_mask, torch.finfo(mask.dtype).min)
    batch = max(mask.shape[0], cols.shape[0])
    shape = (batch, mask.shape[1], mask.shape[2])
    cols = cols[:, None, None, :].expand(*shape, length)
    return torch.cat([cols, mask.expand(*shape, mask.shape[-1])], dim=-1)
