"""Input-layer prompts: k trained vectors in front of the word embeddings of a frozen backbone.

Prompt tuning (Lester et al.) trains the k vectors directly; P-Tuning v1 (Liu et al.) produces
them with a prompt encoder. Both go through :class:`InputPromptModel`, which differs from the
backbone in one place: ``inputs_embeds = cat(prompt, word_embeddings(input_ids))``, with the
attention mask (and token type ids, and causal-LM labels) widened to match.

Positions: the prompt is part of the input sequence, so on models with absolute position
embeddings (BERT, BART) the prompt takes positions ``0..k-1`` and real tokens start at ``k``; on
rotary models (Llama) it takes the first k rotary positions. This is the original methods' layout
(and PEFT's); it also means ``train.max_length + k`` must fit the model's position table.

Outputs are cut back to the real tokens (``last_hidden_state``, causal-LM ``logits``, hidden states,
attentions; the pooler is re-run on the first real token), so task heads for pooling, token
labels and QA offsets see exactly the positions they would see on the plain backbone.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ptuning_v2.config import ConfigError, DeepPromptConfig, RunConfig
from ptuning_v2.methods.registry import freeze
from ptuning_v2.prompts.deep_prompt import filled_later

_SEQUENCE_KEYS = ("last_hidden_state", "logits")
_ENCODER_KEYS = ("encoder_last_hidden_state",)


def is_encoder_decoder(backbone: nn.Module) -> bool:
    return bool(getattr(backbone.config, "is_encoder_decoder", False))


def check_input_prompt_config(run: RunConfig, backbone: nn.Module) -> None:
    """Input-layer methods use ``num_virtual_tokens`` only; per-layer options would be silently ignored."""
    prompt = run.prompt
    if prompt.layers is not None or prompt.layer_lengths is not None or prompt.length_schedule != "constant":
        raise ConfigError(
            f"method {run.method}: the prompt sits at the input layer only, so prompt.layers, "
            "prompt.layer_lengths and prompt.length_schedule do not apply; use prompt.num_virtual_tokens"
        )
    if prompt.num_virtual_tokens < 1:
        raise ConfigError(f"method {run.method}: prompt.num_virtual_tokens must be >= 1")
    max_positions = getattr(backbone.config, "max_position_embeddings", None)
    if max_positions is not None and run.train.max_length + prompt.num_virtual_tokens > max_positions:
        raise ConfigError(
            f"method {run.method}: the prompt takes positions in the input, and train.max_length "
            f"({run.train.max_length}) + prompt.num_virtual_tokens ({prompt.num_virtual_tokens}) exceeds the "
            f"model's {max_positions} positions; lower one of them"
        )


class InputPromptModel(nn.Module):
    """A frozen backbone with a prompt at its input; call it exactly as the backbone (and ``generate``).

    ``prompt`` is any module whose ``forward()`` returns the ``[k, hidden]`` prompt vectors; it holds
    the only trainable parameters.
    """

    def __init__(self, backbone: nn.Module, prompt: nn.Module, dropout: float = 0.0) -> None:
        super().__init__()
        self.backbone = freeze(backbone)
        self.prompt = prompt
        self.dropout = nn.Dropout(dropout)

    @property
    def config(self) -> Any:
        """The backbone's config, so task heads treat prompted and plain backbones alike."""
        return self.backbone.config

    def _prompted(self, inputs: dict[str, Any]) -> tuple[dict[str, Any], int]:
        """The backbone's inputs with the prompt in front; also the prompt length."""
        inputs = dict(inputs)
        input_ids = inputs.pop("input_ids", None)
        embeds = inputs.pop("inputs_embeds", None)
        if embeds is None:
            if input_ids is None:
                raise ValueError("the prompted model needs input_ids or inputs_embeds")
            embeds = self.backbone.get_input_embeddings()(input_ids)
        batch, length = embeds.shape[:2]
        prompt = self.dropout(self.prompt()).to(embeds.dtype)
        k = prompt.shape[0]
        inputs["inputs_embeds"] = torch.cat([prompt.unsqueeze(0).expand(batch, -1, -1), embeds], dim=1)
        mask = inputs.get("attention_mask")
        if mask is None:
            mask = torch.ones(batch, length, dtype=torch.long, device=embeds.device)
        inputs["attention_mask"] = torch.cat([mask.new_ones(batch, k), mask], dim=1)
        if inputs.get("token_type_ids") is not None:
            types = inputs["token_type_ids"]
            inputs["token_type_ids"] = torch.cat([types.new_zeros(batch, k), types], dim=1)
        if inputs.get("position_ids") is not None:
            positions = inputs["position_ids"]
            prompt_positions = torch.arange(k, device=positions.device).expand(batch, -1)
            inputs["position_ids"] = torch.cat([prompt_positions, positions + k], dim=1)
        if inputs.get("labels") is not None and not is_encoder_decoder(self.backbone):
            labels = inputs["labels"]
            inputs["labels"] = torch.cat([labels.new_full((batch, k), -100), labels], dim=1)
        return inputs, k

    def _strip(self, outputs: Any, k: int) -> Any:
        """Drop the prompt positions from every per-token output of the (encoder) sequence."""
        if is_encoder_decoder(self.backbone):
            for key in _ENCODER_KEYS:
                if outputs.get(key) is not None:
                    outputs[key] = outputs[key][:, k:]
            states = ("encoder_hidden_states",)
            attentions = ("encoder_attentions",)
        else:
            for key in _SEQUENCE_KEYS:
                if outputs.get(key) is not None:
                    outputs[key] = outputs[key][:, k:]
            states, attentions = ("hidden_states",), ("attentions",)
        for key in states:
            if outputs.get(key) is not None:
                outputs[key] = tuple(h[:, k:] for h in outputs[key])
        for key in attentions:
            if outputs.get(key) is not None:
                outputs[key] = tuple(a[..., k:, k:] for a in outputs[key])
        pooler = getattr(self.backbone, "pooler", None)
        if pooler is not None and outputs.get("pooler_output") is not None:
            outputs["pooler_output"] = pooler(outputs["last_hidden_state"])
        return outputs

    def forward(self, **inputs: Any) -> Any:
        prompted, k = self._prompted(inputs)
        return self._strip(self.backbone(**prompted), k)

    @torch.no_grad()
    def generate(self, **kwargs: Any) -> Any:
        """The backbone's ``generate`` with the prompt in front; returns what the plain backbone would.

        Decoder-only models get ``input_ids`` alongside the prompted embeddings, so the returned
        sequences are the input ids followed by the new tokens (no prompt positions), as without a prompt.
        """
        input_ids = kwargs.get("input_ids")
        prompted, _ = self._prompted(kwargs)
        if input_ids is not None and not is_encoder_decoder(self.backbone):
            prompted["input_ids"] = input_ids
        return self.backbone.generate(**prompted)


class SoftPrompt(nn.Module):
    """Prompt tuning's k trained vectors, initialised randomly, at zero, or from a text's embeddings."""

    def __init__(self, config: DeepPromptConfig, embeddings: nn.Embedding, tokenizer: Any) -> None:
        super().__init__()
        k, hidden = config.num_virtual_tokens, embeddings.embedding_dim
        weight = embeddings.weight
        if filled_later():  # a checkpoint's values come next
            init = torch.empty(k, hidden)
        elif config.init == "text":
            if tokenizer is None:
                raise ValueError("prompt.init 'text' needs the backbone's tokenizer")
            ids = tokenizer(config.init_text, add_special_tokens=False)["input_ids"]
            if not ids:
                raise ConfigError(f"prompt.init_text {config.init_text!r} has no tokens")
            ids = torch.tensor((ids * k)[:k], device=weight.device)
            init = embeddings(ids).detach().clone().float()
        else:
            std = config.init_std if config.init == "random" else 0.0
            init = torch.randn(k, hidden) * std
        self.embedding = nn.Parameter(init.to(weight.device))

    def forward(self) -> torch.Tensor:
        return self.embedding
