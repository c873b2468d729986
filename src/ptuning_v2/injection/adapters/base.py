"""Deep prompts for models whose attention is their own code rather than transformers' AttentionInterface.

DeBERTa, DeBERTa-v2/v3 and MPNet compute attention in their own modules, and their ``forward`` does
not pass keyword arguments down to their layers, so neither half of the usual route (attention.py)
reaches them. Each such architecture gets an ``AttentionAdapter``: one short module that writes its
self-attention with a prefix in front of the keys and values. Everything else is shared, here:

- The call's ``ptv2_prompts`` is taken out of the root module's keyword arguments by a forward
  pre-hook and kept in a context variable until the call returns. Context variables are per thread,
  so prompted models sharing the backbone may run from several threads.
- Each attention module's ``forward`` is replaced on the instance (the class is untouched) by one that
  reads that delivery: a ``Recording`` records the keys and values (slot discovery, text
  initialisation), a ``Prefix`` goes in front of the keys and values, and a hidden-mode prompt goes
  there as the keys and values the layer's own projections make of it (all of a hidden-mode prompt
  that reaches the real tokens, since its own outputs are dropped). Without one it is the original.
- Each layer's ``forward`` is replaced by one that, when gradient checkpointing is on, checkpoints a
  function that restores the delivery before running the layer: the backward-time recompute comes
  after the call has returned and must see the same prompts. Layers transformers cannot checkpoint
  (MPNet's) get the flag that ``activation_checkpointing_enable`` looks for, so they can be.
- Removal deletes exactly what was added.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import partial
from types import MethodType
from typing import Any

import torch
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer

from ptuning_v2.injection.prefix import PROMPTS_KWARG, Delivery, Prefix, Recording, prepend_tokens, rows
from ptuning_v2.injection.slots import ProbeCall, layer_of


class AttentionAdapter(ABC):
    """How prefixes enter one architecture's own self-attention module (whose first argument is the
    hidden states). Register an instance with ``register_adapter``."""

    model_types: tuple[str, ...]
    """The ``config.model_type`` values this adapter serves."""
    attention: type[nn.Module]
    """The self-attention module of each layer."""

    @abstractmethod
    def key_value(self, module: nn.Module, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The keys and values ``module`` makes of ``states`` (``[batch, tokens, hidden]``), each
        ``[batch, heads, tokens, head_dim]``, exactly as its attention uses them."""

    @abstractmethod
    def forward(self, module: nn.Module, prefix: Prefix, *args: Any, **kwargs: Any) -> Any:
        """``module``'s forward, returning what it returns, with ``prefix`` in front of its keys and
        values: prefix columns get the content score only (no position bias) and ``prefix.mask``."""


ATTENTION_ADAPTERS: dict[str, AttentionAdapter] = {}


def register_adapter(adapter: AttentionAdapter) -> AttentionAdapter:
    for model_type in adapter.model_types:
        ATTENTION_ADAPTERS[model_type] = adapter
    return adapter


def adapter_for(model: nn.Module) -> AttentionAdapter | None:
    """The adapter of the model's architecture, or None when its attention goes through transformers'."""
    return ATTENTION_ADAPTERS.get(getattr(model.config, "model_type", ""))


def prefixed(states: torch.Tensor, prefix_states: torch.Tensor) -> torch.Tensor:
    """``[prefix_states ; states]`` along the tokens of ``[batch, heads, tokens, head_dim]`` keys or values.

    Adapters take one product of the queries with the prefixed keys and add the position terms and the
    mask to the real keys' columns in place (``mask_prefixed_scores_``): one ``[batch, heads, queries,
    keys]`` tensor a layer before the softmax. Scoring the prefix apart, concatenating and adding out of
    place made five (docs/results.md, under Cost: what that cost MPNet)."""
    return prepend_tokens(rows(prefix_states, states.shape[0]).to(states.dtype), states)


def mask_prefixed_scores_(scores: torch.Tensor, mask: torch.Tensor | None, prefix: Prefix) -> torch.Tensor:
    """``scores`` (``[batch, heads, queries, length + keys]``) masked in place: the real keys' columns by
    the self-attention ``mask`` (boolean, True where attended, or additive; broadcastable; or None), the
    prefix columns by ``prefix.mask``, which hides the unused positions of shorter prompts."""
    length = prefix.key.shape[2]
    real = scores[..., length:]
    if mask is not None and mask.dtype == torch.bool:
        real.masked_fill_(~mask, torch.finfo(scores.dtype).min)
    elif mask is not None:  # additive: a wider dtype's minimum would turn to -inf in bf16 scores
        real += mask.clamp(min=torch.finfo(scores.dtype).min)
    if prefix.mask is not None:
        hidden = ~rows(prefix.mask, scores.shape[0])[:, None, None, :]
        scores[..., :length].masked_fill_(hidden, torch.finfo(scores.dtype).min)
    return scores


_DELIVERIES: ContextVar[tuple[Any, ...]] = ContextVar("ptv2_deliveries", default=())
"""The ``ptv2_prompts`` of the backbone calls running in this thread, innermost last."""


def _current_delivery() -> Any:
    stack = _DELIVERIES.get()
    return stack[-1] if stack else None


@contextmanager
def _delivering(delivery: Any) -> Iterator[None]:
    token = _DELIVERIES.set((*_DELIVERIES.get(), delivery))
    try:
        yield
    finally:
        _DELIVERIES.reset(token)


def _take_delivery(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    _DELIVERIES.set((*_DELIVERIES.get(), kwargs.pop(PROMPTS_KWARG, None)))
    return args, kwargs


def _end_delivery(module: nn.Module, args: tuple, output: Any) -> None:
    _DELIVERIES.set(_DELIVERIES.get()[:-1])


def _attention_forward(adapter: AttentionAdapter, module: nn.Module, *args: Any, **kwargs: Any) -> Any:
    delivery = _current_delivery()
    hidden = args[0] if args else kwargs["hidden_states"]
    if isinstance(delivery, Recording):
        key, value = adapter.key_value(module, hidden)
        delivery.append(ProbeCall(module, hidden.shape[1], key.detach(), value.detach()))
    elif isinstance(delivery, Delivery):
        prompt = delivery.prompts.get(getattr(module, "_ptv2_slot", None))
        if isinstance(prompt, torch.Tensor):  # hidden mode: [length, hidden] or [batch, length, hidden]
            states = prompt.to(hidden.dtype)
            prompt = Prefix(*adapter.key_value(module, states if states.dim() == 3 else states[None]))
        if isinstance(prompt, Prefix):
            return adapter.forward(module, prompt, *args, **kwargs)
    return type(module).forward(module, *args, **kwargs)


def _replay(delivery: Any, forward: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    with _delivering(delivery):
        return forward(*args, **kwargs)


def _layer_forward(layer: nn.Module, forward: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """The layer's own forward; checkpointed as transformers would (non-reentrant: the prompts reach the
    layer outside its arguments), with the call's delivery restored for the recompute."""
    if layer.gradient_checkpointing and layer.training and torch.is_grad_enabled():
        run = partial(_replay, _current_delivery(), forward, **kwargs)
        return layer._gradient_checkpointing_func(run, *args)
    return forward(*args, **kwargs)


def _unchecked_forward(layer: nn.Module) -> Callable[..., Any]:
    """The layer class's forward without transformers' checkpointing wrapper, bound to ``layer``."""
    forward = type(layer).forward
    if isinstance(layer, GradientCheckpointingLayer):
        forward = forward.__wrapped__
    return MethodType(forward, layer)


_CHECKPOINTING_ATTRIBUTES = ("gradient_checkpointing", "_gradient_checkpointing_func")
"""What ``activation_checkpointing_enable`` sets on a layer."""


def install_adapter(model: nn.Module, adapter: AttentionAdapter) -> None:
    """Route ``model``'s prompts through ``adapter`` (see the module's docstring); ``uninstall_adapter``
    undoes it."""
    undo: list[Callable[[], Any]] = [
        model.register_forward_pre_hook(_take_delivery, with_kwargs=True).remove,
        model.register_forward_hook(_end_delivery, always_call=True).remove,
    ]
    layers: dict[int, nn.Module] = {}
    for path, module in model.named_modules():
        if isinstance(module, adapter.attention):
            module.forward = partial(_attention_forward, adapter, module)
            undo.append(partial(vars(module).pop, "forward"))
            layer = layer_of(model, path)[1]
            layers[id(layer)] = layer
    for layer in layers.values():
        layer.forward = partial(_layer_forward, layer, _unchecked_forward(layer))
        undo.append(partial(vars(layer).pop, "forward"))
        if not hasattr(layer, "gradient_checkpointing"):
            layer.gradient_checkpointing = False
            undo += [partial(vars(layer).pop, name, None) for name in _CHECKPOINTING_ATTRIBUTES]
    if not model.supports_gradient_checkpointing:  # checkpointable while prompted, and only then
        model.supports_gradient_checkpointing = True
        undo.append(partial(vars(model).pop, "supports_gradient_checkpointing"))
        if not hasattr(model, "_require_grads_hooks"):
            undo.append(partial(_drop_input_grad_hooks, model))
    model._ptv2_adapter_undo = undo


def _drop_input_grad_hooks(model: nn.Module) -> None:
    """Take back the input-embedding hooks ``activation_checkpointing_enable`` adds along with checkpointing."""
    model.disable_input_require_grads()
    vars(model).pop("_require_grads_hooks", None)


def uninstall_adapter(model: nn.Module) -> None:
    """Give the model back exactly as ``install_adapter`` found it."""
    for step in reversed(vars(model).pop("_ptv2_adapter_undo")):
        step()
