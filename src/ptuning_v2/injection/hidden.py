"""Hidden-state injection: trained vectors prepended to the input of each layer, removed after it.

This is the form of the method's tutorial material. The prompt vectors pass through the frozen
layer with the real tokens; only their influence on the real tokens (through attention) survives,
since their outputs are dropped and the next layer gets fresh vectors.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch
from torch import nn

from ptuning_v2.injection.attention import install

_ACTIVE: ContextVar[dict[str, torch.Tensor] | None] = ContextVar("ptv2_hidden_prompts", default=None)


def _layer_of(model: nn.Module, attention_path: str) -> tuple[str, nn.Module]:
    """The ancestor of an attention module that is an item of a ``ModuleList`` (the transformer layer)."""
    modules = dict(model.named_modules())
    parts = attention_path.split(".")
    for end in range(len(parts) - 1, 0, -1):
        parent = modules[".".join(parts[: end - 1])] if end > 1 else model
        if isinstance(parent, nn.ModuleList):
            path = ".".join(parts[:end])
            return path, modules[path]
    raise ValueError(f"no layer list found above attention module {attention_path}")


def widen_square_mask(mask: torch.Tensor | None, length: int) -> torch.Tensor | None:
    """Prompt positions see everything and are seen by everything."""
    if mask is None:
        return None
    if mask.dim() != 4:
        raise ValueError(f"hidden mode expects a 4-d attention mask, got shape {tuple(mask.shape)}")
    fill = mask.new_ones if mask.dtype == torch.bool else mask.new_zeros
    batch, heads, q_len, _ = mask.shape
    mask = torch.cat([fill(batch, heads, q_len, length), mask], dim=-1)
    if q_len == 1:  # a mask broadcast over queries
        return mask
    return torch.cat([fill(batch, heads, length, mask.shape[-1]), mask], dim=-2)


class HiddenInjector:
    """Deep prompts as per-layer hidden-state vectors (encoder models)."""

    mode = "hidden"

    def __init__(self, model: nn.Module, attach_to: list[str]) -> None:
        config = model.config
        generative = getattr(config, "is_encoder_decoder", False) or getattr(config, "is_decoder", False)
        if generative or model.can_generate():
            raise ValueError("prompt.mode 'hidden' supports encoder models; use mode 'prefix' for decoders")
        self.model = model
        hidden = config.hidden_size
        self.slots = [slot for slot in install(model) if slot.kind in attach_to]
        self._widths = {slot.name: hidden for slot in self.slots}
        self.layers: dict[str, nn.Module] = {}
        for slot in self.slots:
            _, layer = _layer_of(model, slot.module_path)
            self.layers[slot.name] = layer
            layer.register_forward_pre_hook(self._make_pre_hook(slot.name), with_kwargs=True)
            layer.register_forward_hook(self._make_post_hook(slot.name))

    def widths(self) -> dict[str, int]:
        return dict(self._widths)

    @staticmethod
    def _make_pre_hook(name: str) -> Any:
        def pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
            active = _ACTIVE.get()
            if active is None or name not in active:
                return None
            prompt = active[name]
            hidden = args[0] if args else kwargs["hidden_states"]
            prompt = prompt.to(hidden.dtype).expand(hidden.shape[0], -1, -1)
            hidden = torch.cat([prompt, hidden], dim=1)
            length = prompt.shape[1]
            if args:
                args = (hidden, *args[1:])
            else:
                kwargs = {**kwargs, "hidden_states": hidden}
            if len(args) > 1:
                args = (args[0], widen_square_mask(args[1], length), *args[2:])
            elif "attention_mask" in kwargs:
                kwargs = {**kwargs, "attention_mask": widen_square_mask(kwargs["attention_mask"], length)}
            return args, kwargs

        return pre_hook

    @staticmethod
    def _make_post_hook(name: str) -> Any:
        def post_hook(module: nn.Module, args: tuple, output: Any) -> Any:
            active = _ACTIVE.get()
            if active is None or name not in active:
                return None
            length = active[name].shape[-2]
            if isinstance(output, torch.Tensor):
                return output[:, length:]
            return (output[0][:, length:], *output[1:])

        return post_hook

    @contextmanager
    def activate(self, prompts: dict[str, torch.Tensor]) -> Iterator[None]:
        token = _ACTIVE.set(prompts)
        try:
            yield
        finally:
            _ACTIVE.reset(token)

    @torch.no_grad()
    def capture(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The hidden states each prompted layer receives for ``inputs`` (one example)."""
        states = self.model(**inputs, output_hidden_states=True).hidden_states
        return {slot.name: states[slot.layer][0] for slot in self.slots}
