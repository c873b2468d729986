"""Prefix injection: trained keys and values prepended at every attention layer.

This is the official P-Tuning v2 form. Rather than PEFT's ``past_key_values`` route (which BERT-family
models reject in transformers 5.x) or copies of model code, the backbone's attention implementation
is swapped for a thin wrapper registered in transformers' ``AttentionInterface``. The wrapper looks up
the prefix of the calling module, concatenates it in front of the keys and values (after rotary
embeddings, so the prompt has no position and real tokens keep theirs), widens the mask, and hands
over to the original implementation (sdpa, eager, flash, ...). With no active prompt it is the
original implementation, call for call.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from ptuning_v2.injection.slots import AttentionSlot, ProbeCall, probe_inputs, slots_from_probe

PREFIX = "ptv2_"

# slot name -> (keys, values), each [batch or 1, kv_heads, length, head_dim]; or a probe list.
_ACTIVE: ContextVar[dict[str, tuple[torch.Tensor, torch.Tensor]] | list[ProbeCall] | None] = ContextVar(
    "ptv2_active_prefixes", default=None
)


def _base_function(module: nn.Module, base: str) -> Callable[..., Any]:
    if base == "eager":
        # Eager attention is defined per model file (T5 does not scale, Llama repeats kv heads, ...).
        return sys.modules[type(module).__module__].eager_attention_forward
    return ALL_ATTENTION_FUNCTIONS[base]


def _make_prefixed_attention(base: str) -> Callable[..., Any]:
    def prefixed_attention(
        module: nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        active = _ACTIVE.get()
        slot = getattr(module, "_ptv2_slot", None)
        if isinstance(active, list):
            active.append(ProbeCall(module, query.shape[2], key.detach(), value.detach()))
        elif active is not None and slot in active:
            prefix_key, prefix_value = active[slot]
            key, value, attention_mask, kwargs = prepend_prefix(
                module, base, query, key, value, attention_mask, prefix_key, prefix_value, kwargs
            )
        return _base_function(module, base)(module, query, key, value, attention_mask, **kwargs)

    prefixed_attention.__name__ = f"{PREFIX}{base}"
    return prefixed_attention


def prepend_prefix(
    module: nn.Module,
    base: str,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    prefix_key: torch.Tensor,
    prefix_value: torch.Tensor,
    kwargs: dict[str, Any],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, dict[str, Any]]:
    """Concatenate the prefix in front of keys/values and widen the mask (and T5's position bias)."""
    length = prefix_key.shape[2]
    q_len, kv_len = query.shape[2], key.shape[2]
    key = prepend_tokens(prefix_key.to(key.dtype), key)
    value = prepend_tokens(prefix_value.to(value.dtype), value)
    attention_mask = widen_mask(attention_mask, length, q_len, kv_len, module, base, query)
    bias = kwargs.get("position_bias")
    if bias is not None:
        zeros = bias.new_zeros(*bias.shape[:-1], length)
        kwargs = {**kwargs, "position_bias": torch.cat([zeros, bias], dim=-1)}
    return key, value, attention_mask, kwargs


def prepend_tokens(prefix: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
    """``[prefix; states]`` along the tokens (dim 2) of ``[batch, heads, tokens, head_dim]`` tensors.

    Projections usually leave keys and values token-major in memory (``[batch, tokens, heads, dim]``,
    viewed transposed); concatenating in that layout copies whole token rows instead of one short
    row per head, about a third faster, and gives attention the same layout as without a prefix.
    """
    batch = states.shape[0]
    if states.transpose(1, 2).is_contiguous():
        rows = [prefix.transpose(1, 2).expand(batch, -1, -1, -1), states.transpose(1, 2)]
        return torch.cat(rows, dim=1).transpose(1, 2)
    return torch.cat([prefix.expand(batch, -1, -1, -1), states], dim=2)


def widen_mask(
    mask: torch.Tensor | None,
    length: int,
    q_len: int,
    kv_len: int,
    module: nn.Module,
    base: str,
    query: torch.Tensor,
) -> torch.Tensor | None:
    """Every query may attend to every prefix position; the rest of the mask is unchanged."""
    if mask is None:
        # sdpa infers causality from a missing mask; with a prefix the shapes no longer imply it.
        if base == "sdpa" and q_len > 1 and getattr(module, "is_causal", False):
            # One op: the diagonal offset leaves every prefix column visible (kv_len >= q_len).
            total = length + kv_len
            visible = torch.ones(q_len, total, dtype=torch.bool, device=query.device)
            return visible.tril(total - q_len)[None, None]
        return None
    if mask.dim() == 2:  # flash-attention style padding mask [batch, keys]
        return torch.cat([mask.new_ones(mask.shape[0], length), mask], dim=-1)
    if mask.dtype == torch.bool:
        return torch.cat([mask.new_ones(*mask.shape[:-1], length), mask], dim=-1)
    return torch.cat([mask.new_zeros(*mask.shape[:-1], length), mask], dim=-1)


def _implementation_name(base: str) -> str:
    name = PREFIX + base
    if name not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(name, _make_prefixed_attention(base))
    if name not in ALL_MASK_ATTENTION_FUNCTIONS:
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[base])
    return name


def install(model: nn.Module) -> list[AttentionSlot]:
    """Route the model's attention through the prefix wrapper and name every attention slot."""
    current = model.config._attn_implementation
    base = current.removeprefix(PREFIX) if current else "eager"
    if base not in ALL_MASK_ATTENTION_FUNCTIONS:
        raise ValueError(f"attention implementation {base!r} is not supported for prefix injection")
    model.set_attn_implementation(_implementation_name(base))
    calls: list[ProbeCall] = []
    token = _ACTIVE.set(calls)
    try:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            model(**probe_inputs(model))
        model.train(was_training)
    finally:
        _ACTIVE.reset(token)
    slots = slots_from_probe(model, calls)
    modules = dict(model.named_modules())
    for slot in slots:
        modules[slot.module_path]._ptv2_slot = slot.name
    return slots


@contextmanager
def active_prefixes(prefixes: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> Iterator[None]:
    """Make ``prefixes`` (slot name -> keys, values) visible to the attention wrapper in this context."""
    token = _ACTIVE.set(prefixes)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


@contextmanager
def recording() -> Iterator[list[ProbeCall]]:
    """Record attention calls (used to capture the keys and values that a text produces)."""
    calls: list[ProbeCall] = []
    token = _ACTIVE.set(calls)
    try:
        yield calls
    finally:
        _ACTIVE.reset(token)


class PrefixInjector:
    """Deep prompts as per-layer prefix keys/values (the official P-Tuning v2 form)."""

    mode = "prefix"

    def __init__(self, model: nn.Module, attach_to: list[str]) -> None:
        self.model = model
        self.all_slots = install(model)
        self.slots = [slot for slot in self.all_slots if slot.kind in attach_to]

    def widths(self) -> dict[str, int]:
        return {slot.name: slot.width for slot in self.slots}

    @contextmanager
    def activate(self, prompts: dict[str, torch.Tensor]) -> Iterator[None]:
        """Prompts are ``[length, width]`` (shared by the batch) or ``[batch, length, width]`` (per example)."""
        heads = {slot.name: (slot.num_kv_heads, slot.head_dim) for slot in self.slots}
        prefixes = {}
        for name, tensor in prompts.items():
            h, d = heads[name]
            batched = tensor if tensor.dim() == 3 else tensor.unsqueeze(0)
            kv = batched.view(batched.shape[0], batched.shape[1], 2, h, d).permute(2, 0, 3, 1, 4)
            prefixes[name] = (kv[0], kv[1])
        with active_prefixes(prefixes):
            yield

    @torch.no_grad()
    def capture(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The keys and values each slot computes for ``inputs`` (one example), as ``[tokens, width]``."""
        with recording() as calls:
            self.model(**inputs)
        out = {}
        for call in calls:
            name = getattr(call.module, "_ptv2_slot", None)
            if name is not None and name not in out:
                kv = torch.stack([call.key[0], call.value[0]])  # [2, heads, tokens, dim]
                out[name] = kv.permute(2, 0, 1, 3).reshape(kv.shape[2], -1)
        return out
