"""Find every attention call site of a transformers model, in execution order.

A probe forward runs with a recording attention function, so the discovery works for any model
that dispatches through ``AttentionInterface`` (BERT, RoBERTa, ELECTRA, DistilBERT, Llama, GPT-2,
T5, BART, ...) without a table of module names per architecture.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ptuning_v2.config import SlotKind


@dataclass(frozen=True)
class AttentionSlot:
    """One attention module that can receive a prefix."""

    kind: SlotKind
    layer: int
    module_path: str
    num_kv_heads: int
    head_dim: int

    @property
    def name(self) -> str:
        return f"{self.kind}_{self.layer}"

    @property
    def width(self) -> int:
        """Numbers per virtual token: a key and a value for each key/value head."""
        return 2 * self.num_kv_heads * self.head_dim


@dataclass(frozen=True)
class ProbeCall:
    """One attention call seen while recording: the module and the keys/values it attended over."""

    module: nn.Module
    query_len: int
    key: torch.Tensor
    value: torch.Tensor

    @property
    def key_len(self) -> int:
        return self.key.shape[2]


def probe_inputs(model: nn.Module, encoder_len: int = 5, decoder_len: int = 3) -> dict[str, torch.Tensor]:
    """Tiny inputs whose encoder and decoder lengths differ, so cross-attention can be told apart."""
    device = next(model.parameters()).device
    ids = torch.full((1, encoder_len), 1, dtype=torch.long, device=device)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if getattr(model.config, "is_encoder_decoder", False):
        inputs["decoder_input_ids"] = torch.full((1, decoder_len), 1, dtype=torch.long, device=device)
    if getattr(model.config, "use_cache", False):
        inputs["use_cache"] = False
    return inputs


def layer_of(model: nn.Module, attention_path: str) -> tuple[str, nn.Module]:
    """The ancestor of an attention module that is an item of a ``ModuleList`` (the transformer layer)."""
    modules = dict(model.named_modules())
    parts = attention_path.split(".")
    for end in range(len(parts) - 1, 0, -1):
        parent = modules[".".join(parts[: end - 1])] if end > 1 else model
        if isinstance(parent, nn.ModuleList):
            path = ".".join(parts[:end])
            return path, modules[path]
    raise ValueError(f"no layer list found above attention module {attention_path}")


def slots_from_probe(model: nn.Module, calls: list[ProbeCall], encoder_len: int = 5) -> list[AttentionSlot]:
    """Turn the recorded calls into named slots, numbering layers within each kind."""
    paths = {id(module): path for path, module in model.named_modules()}
    is_enc_dec = bool(getattr(model.config, "is_encoder_decoder", False))
    slots: list[AttentionSlot] = []
    seen: set[int] = set()
    counters: dict[str, int] = {}
    for call in calls:
        if id(call.module) in seen:
            raise ValueError(
                f"{type(model).__name__} shares one attention module across layers "
                f"({paths[id(call.module)]}), so per-layer prompts cannot be told apart; ALBERT-style "
                "weight sharing is not supported"
            )
        seen.add(id(call.module))
        if is_enc_dec and call.query_len != encoder_len:
            kind: SlotKind = "cross" if call.key_len == encoder_len else "decoder_self"
        else:
            kind = "self"
        layer = counters.get(kind, 0)
        counters[kind] = layer + 1
        heads, dim = call.key.shape[1], call.key.shape[3]
        slots.append(AttentionSlot(kind, layer, paths[id(call.module)], heads, dim))
    if not slots:
        raise ValueError(
            f"{type(model).__name__} never called transformers' attention interface, so deep prompts cannot "
            "be injected into it (models such as MPNet and DeBERTa-v2 compute attention in their own code)"
        )
    return slots
