"""A frozen backbone with deep prompts: the backbone's own forward, prompts active inside it."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from ptuning_v2.injection import INJECTORS
from ptuning_v2.prompts.config import DeepPromptConfig
from ptuning_v2.prompts.deep_prompt import DeepPrompt


def mask_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that count real tokens only, as ``generate()`` makes them: with left padding the
    real tokens still sit at 0..n-1 (a prefix with no position makes absolute positions matter)."""
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.masked_fill(attention_mask == 0, 0)


class DeepPromptModel(nn.Module):
    """Wraps a transformers model; call it exactly as the model (``forward`` and ``generate``).

    The backbone is frozen here; only ``self.prompt`` holds trainable parameters.
    """

    def __init__(self, backbone: nn.Module, config: DeepPromptConfig, tokenizer: Any = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.prompt_config = config
        self.refuse_checkpointing()
        for param in backbone.parameters():
            param.requires_grad_(False)
        self.injector = INJECTORS[config.mode](backbone, config.attach_to)
        shapes: dict[str, tuple[int, int]] = {}
        widths = self.injector.widths()
        for kind in ("self", "decoder_self", "cross"):
            kind_slots = [slot for slot in self.injector.slots if slot.kind == kind]
            lengths = config.lengths(len(kind_slots)) if kind_slots else {}
            for slot in kind_slots:
                if slot.layer in lengths:
                    shapes[slot.name] = (lengths[slot.layer], widths[slot.name])
        hidden = (
            getattr(backbone.config, "hidden_size", None) or backbone.config.get_text_config().hidden_size
        )
        self.prompt = DeepPrompt(config, shapes, hidden)
        # Decoder-only language models get position ids from the mask (plus the optional offset).
        self.decoder_only = (
            backbone.can_generate()
            and not getattr(backbone.config, "is_encoder_decoder", False)
            and "position_ids" in inspect.signature(backbone.forward).parameters
        )
        if config.position_offset == "prefix" and not self.decoder_only:
            raise ValueError("prompt.position_offset 'prefix' applies to decoder-only language models only")
        longest = max((n for n, _ in shapes.values()), default=0)
        self.position_offset = longest if config.position_offset == "prefix" else 0
        if config.init == "text":
            self.init_from_text(config.init_text or "", tokenizer)

    @property
    def config(self) -> Any:
        """The backbone's config, so task heads treat prompted and plain backbones alike."""
        return self.backbone.config

    def init_from_text(self, text: str, tokenizer: Any) -> None:
        """Start each layer's prompt from the keys/values (or hidden states) that ``text`` produces."""
        if tokenizer is None:
            raise ValueError("prompt.init 'text' needs the backbone's tokenizer")
        device = next(self.backbone.parameters()).device
        inputs = dict(tokenizer(text, return_tensors="pt").to(device))
        if getattr(self.backbone.config, "is_encoder_decoder", False):
            inputs["decoder_input_ids"] = inputs["input_ids"]
        was_training = self.backbone.training
        self.backbone.eval()
        states = self.injector.capture(inputs)
        self.backbone.train(was_training)
        self.prompt.init_from(states)

    def with_positions(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """Decoder-only models: position ids of the real tokens (from the mask unless given), shifted by
        ``position_offset``; other models: ``inputs`` unchanged."""
        if not self.decoder_only:
            return inputs
        positions = inputs.get("position_ids")
        if positions is None:
            mask = inputs.get("attention_mask")
            if mask is None and not self.position_offset:
                return inputs  # the backbone's own positions are already 0..n-1
            tokens = inputs["input_ids"] if inputs.get("input_ids") is not None else inputs["inputs_embeds"]
            if mask is None:
                cache = inputs.get("cache", inputs.get("past_key_values"))
                past = cache.get_seq_length() if cache is not None else 0
                mask = torch.ones(tokens.shape[0], past + tokens.shape[1], device=tokens.device)
            positions = mask_positions(mask)[:, -tokens.shape[1] :]
        return {**inputs, "position_ids": positions + self.position_offset}

    def refuse_checkpointing(self) -> None:
        """Prompts reach the layers through a context variable, set only while ``forward`` runs: the
        backward-time recompute of a checkpointed layer would run without them (wrong gradients, or a
        recompute that does not match the forward pass)."""
        if self.backbone.is_activation_checkpointing:
            raise ValueError(
                "gradient (activation) checkpointing is on in the backbone, and deep prompts do not support "
                "it: turn it off (backbone.activation_checkpointing_disable())"
            )

    def forward(self, **inputs: Any) -> Any:
        if torch.is_grad_enabled():  # a backward pass may follow; the check walks every module
            self.refuse_checkpointing()
        with self.injector.activate(self.prompt()):
            return self.backbone(**self.with_positions(inputs))

    @torch.no_grad()
    def generate(self, **kwargs: Any) -> Any:
        with self.injector.activate(self.prompt()):
            return self.backbone.generate(**self.with_positions(kwargs))
