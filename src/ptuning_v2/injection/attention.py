"""Prefix injection: trained keys and values prepended at every attention layer.

This is the official P-Tuning v2 form. Rather than PEFT's ``past_key_values`` route (which BERT-family
models reject in transformers 5.x) or copies of model code, the backbone's attention implementation
is swapped for a thin wrapper registered in transformers' ``AttentionInterface``. The wrapper finds
the prefix of the calling module in the call's own keyword arguments (``ptv2_prompts``, which
transformers 5 forwards from the model's ``forward`` down to attention), concatenates it in front of
the keys and values (after rotary embeddings, so the prompt has no position and real tokens keep
theirs), widens the mask, and hands over to the original implementation (sdpa, eager, flash, ...).

Because the prompts travel with the call, a checkpointed layer's recompute in the backward pass
replays them, two prompted models can share one backbone from two threads, and a call without
``ptv2_prompts`` is the original implementation, call for call.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from ptuning_v2.injection.adapters import adapter_for, install_adapter, uninstall_adapter
from ptuning_v2.injection.prefix import (
    PROMPTS_KWARG,
    Delivery,
    Prefix,
    Recording,
    prepend_tokens,
    rows,
    widen_mask,
)
from ptuning_v2.injection.slots import AttentionSlot, ProbeCall, probe_inputs, slots_from_probe

PREFIX = "ptv2_"


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
        delivery = kwargs.pop(PROMPTS_KWARG, None)
        if isinstance(delivery, Recording):
            delivery.append(ProbeCall(module, query.shape[2], key.detach(), value.detach()))
        elif isinstance(delivery, Delivery):
            prefix = delivery.prompts.get(getattr(module, "_ptv2_slot", None))
            if isinstance(prefix, Prefix):
                key, value, attention_mask, kwargs = prepend_prefix(
                    module, base, query, key, value, attention_mask, prefix, kwargs
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
    prefix: Prefix,
    kwargs: dict[str, Any],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, dict[str, Any]]:
    """Concatenate the prefix in front of keys/values and widen the mask (and T5's position bias)."""
    batch = key.shape[0]
    length = prefix.key.shape[2]
    q_len, kv_len = query.shape[2], key.shape[2]
    key = prepend_tokens(rows(prefix.key, batch).to(key.dtype), key)
    value = prepend_tokens(rows(prefix.value, batch).to(value.dtype), value)
    prefix_mask = None if prefix.mask is None else rows(prefix.mask, batch)
    attention_mask = widen_mask(attention_mask, length, q_len, kv_len, module, base, query, prefix_mask)
    bias = kwargs.get("position_bias")
    if bias is not None:
        zeros = bias.new_zeros(*bias.shape[:-1], length)
        kwargs = {**kwargs, "position_bias": torch.cat([zeros, bias], dim=-1)}
    return key, value, attention_mask, kwargs


def _implementation_name(base: str) -> str:
    name = PREFIX + base
    if name not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(name, _make_prefixed_attention(base))
    if name not in ALL_MASK_ATTENTION_FUNCTIONS:
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[base])
    return name


def _accept_prompts_in_generate(model: nn.Module) -> None:
    """generate() refuses keyword arguments the model's signature does not name; ours it forwards."""
    if "_validate_model_kwargs" in vars(model) or not hasattr(model, "_validate_model_kwargs"):
        return
    validate = model._validate_model_kwargs

    def validate_model_kwargs(model_kwargs: dict[str, Any]) -> None:
        model_kwargs.pop(PROMPTS_KWARG, None)
        validate(model_kwargs)

    model._validate_model_kwargs = validate_model_kwargs


def _route_attention(model: nn.Module) -> None:
    """Switch the model's attention implementation to its ``ptv2_`` wrapper (``uninstall`` switches back)."""
    current = model.config._attn_implementation
    base = current.removeprefix(PREFIX) if current else "eager"
    if base not in ALL_MASK_ATTENTION_FUNCTIONS:
        raise ValueError(f"attention implementation {base!r} is not supported for prefix injection")
    model._ptv2_original_attention = current
    model.set_attn_implementation(_implementation_name(base))
    _accept_prompts_in_generate(model)


def install(model: nn.Module) -> list[AttentionSlot]:
    """Route the model's attention through the prefix wrapper (or, for a model whose attention is its
    own code, through its architecture's adapter) and name every attention slot.

    Several prompted models may share one backbone: each install counts, and ``uninstall`` restores
    the backbone when the last one is removed. Only the first install runs the probe forward; later ones
    reuse its slots and change nothing the backbone's running calls read (a server adds prompts this
    way, cheaply, while another thread runs batches).
    """
    if not getattr(model, "_ptv2_installs", 0):
        adapter = adapter_for(model)
        if adapter is None:
            _route_attention(model)
        else:
            install_adapter(model, adapter)
        model._ptv2_installs = 0
        model._ptv2_slots = probe_slots(model)
    model._ptv2_installs += 1
    return list(model._ptv2_slots)


def probe_slots(model: nn.Module) -> list[AttentionSlot]:
    """Every attention slot of ``model``, found by a probe forward; each slot's module is tagged."""
    calls = Recording()
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(**probe_inputs(model), **{PROMPTS_KWARG: calls})
    model.train(was_training)
    slots = slots_from_probe(model, calls)
    modules = dict(model.named_modules())
    for slot in slots:
        modules[slot.module_path]._ptv2_slot = slot.name
    return slots


def uninstall(model: nn.Module) -> None:
    """Undo one ``install``; the last one gives the backbone back its own attention, as it was."""
    model._ptv2_installs -= 1
    if model._ptv2_installs:
        return
    for module in model.modules():
        if "_ptv2_slot" in vars(module):
            del module._ptv2_slot
    if "_ptv2_original_attention" in vars(model):
        vars(model).pop("_validate_model_kwargs", None)
        model.set_attn_implementation(vars(model).pop("_ptv2_original_attention"))
    else:
        uninstall_adapter(model)
    del model._ptv2_installs, model._ptv2_slots


def to_key_value(
    prompt: torch.Tensor | tuple[torch.Tensor, torch.Tensor], slot: AttentionSlot
) -> tuple[torch.Tensor, torch.Tensor]:
    """A ``[length, width]`` or ``[batch, length, width]`` prompt (width = key and value of every kv head),
    or the keys and the values of a per-row prompt apart (``[batch, length, kv_heads * head_dim]`` each), as
    key and value views ``[batch or 1, kv_heads, length, head_dim]``."""
    if isinstance(prompt, tuple):
        key, value = (t.view(*t.shape[:2], slot.num_kv_heads, slot.head_dim).transpose(1, 2) for t in prompt)
        return key, value
    batched = prompt if prompt.dim() == 3 else prompt.unsqueeze(0)
    kv = batched.view(batched.shape[0], batched.shape[1], 2, slot.num_kv_heads, slot.head_dim)
    kv = kv.permute(2, 0, 3, 1, 4)
    return kv[0], kv[1]


class PrefixInjector:
    """Deep prompts as per-layer prefix keys/values (the official P-Tuning v2 form)."""

    mode = "prefix"

    def __init__(self, model: nn.Module, attach_to: list[str]) -> None:
        self.model = model
        self.all_slots = install(model)
        self.slots = [slot for slot in self.all_slots if slot.kind in attach_to]

    def widths(self) -> dict[str, int]:
        return {slot.name: slot.width for slot in self.slots}

    def deliver(
        self,
        prompts: Mapping[str, torch.Tensor | tuple[torch.Tensor, torch.Tensor]],
        masks: Mapping[str, torch.Tensor] | None = None,
    ) -> Delivery:
        """The ``ptv2_prompts`` argument for one call. A slot's prompt is ``[length, width]`` (shared by the
        batch) or ``[batch, length, width]`` (per row, with an optional ``[batch, length]`` mask), or the keys
        and the values of per-row prompts apart, ``[batch, length, kv_heads * head_dim]`` each: a mixed-task
        batch's, gathered by ``MultiPromptModel`` with each row contiguous, so joining them to the real keys
        copies whole rows."""
        by_name = {slot.name: slot for slot in self.slots}
        masks = masks or {}
        prefixes = {
            name: Prefix(*to_key_value(prompt, by_name[name]), masks.get(name))
            for name, prompt in prompts.items()
        }
        return Delivery(self, prefixes)

    def remove(self) -> None:
        uninstall(self.model)

    @torch.no_grad()
    def capture(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The keys and values each slot computes for ``inputs`` (one example), as ``[tokens, width]``."""
        calls = Recording()
        self.model(**inputs, **{PROMPTS_KWARG: calls})
        out = {}
        for call in calls:
            name = getattr(call.module, "_ptv2_slot", None)
            if name is not None and name not in out:
                kv = torch.stack([call.key[0], call.value[0]])  # [2, heads, tokens, dim]
                out[name] = kv.permute(2, 0, 1, 3).reshape(kv.shape[2], -1)
        return out
