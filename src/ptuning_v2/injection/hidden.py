"""Hidden-state injection: trained vectors prepended to the input of each layer, removed after it.

This is the form of the method's tutorial material. The prompt vectors pass through the frozen
layer with the real tokens; only their influence on the real tokens (through attention) survives,
since their outputs are dropped and the next layer gets fresh vectors.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from ptuning_v2.injection.adapters import adapter_for
from ptuning_v2.injection.attention import install, uninstall
from ptuning_v2.injection.prefix import PROMPTS_KWARG, Delivery
from ptuning_v2.injection.slots import layer_of


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
        self.handles: list[RemovableHandle] = []
        # A model whose attention is its own code takes hidden prompts in its attention adapter, as the
        # keys and values the layer's own projections give them: all that reaches the real tokens.
        for slot in self.slots if adapter_for(model) is None else []:
            _, layer = layer_of(model, slot.module_path)
            self.handles.append(
                layer.register_forward_pre_hook(self._make_pre_hook(slot.name), with_kwargs=True)
            )
            self.handles.append(
                layer.register_forward_hook(self._make_post_hook(slot.name), with_kwargs=True)
            )

    def widths(self) -> dict[str, int]:
        return dict(self._widths)

    def _own_prompt(self, name: str, kwargs: dict) -> torch.Tensor | None:
        """This injector's prompt for layer ``name`` in this call; another model's delivery is not ours."""
        delivery = kwargs.get(PROMPTS_KWARG)
        if isinstance(delivery, Delivery) and delivery.owner is self:
            return delivery.prompts.get(name)
        return None

    def _make_pre_hook(self, name: str) -> Any:
        def pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
            prompt = self._own_prompt(name, kwargs)
            if prompt is None:
                return None
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

    def _make_post_hook(self, name: str) -> Any:
        def post_hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
            prompt = self._own_prompt(name, kwargs)
            if prompt is None:
                return None
            length = prompt.shape[-2]
            if isinstance(output, torch.Tensor):
                return output[:, length:]
            return (output[0][:, length:], *output[1:])

        return post_hook

    def deliver(
        self, prompts: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor] | None = None
    ) -> Delivery:
        """The ``ptv2_prompts`` argument for one call: ``[length, hidden]`` or ``[batch, length, hidden]``."""
        if masks:
            raise ValueError("prompts of different lengths in one batch need prompt.mode 'prefix'")
        return Delivery(self, dict(prompts))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []
        uninstall(self.model)

    @torch.no_grad()
    def capture(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The hidden states each prompted layer receives for ``inputs`` (one example)."""
        states = self.model(**inputs, output_hidden_states=True).hidden_states
        return {slot.name: states[slot.layer][0] for slot in self.slots}
