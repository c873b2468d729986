"""P-Tuning v1 (Liu et al., 2021, "GPT Understands, Too"): an input-layer prompt made by a prompt encoder.

The k prompt vectors are not trained directly: a bidirectional LSTM and an MLP (``ptuning_v1``), or an
MLP alone (``ptuning_v1_mlp``, or ``ptuning_v1.encoder: mlp``), map k trained pseudo-token embeddings
to them, which couples the vectors and eases optimisation. The prompt then enters the model exactly as
in prompt tuning. ``ptuning_v1.hidden_size`` is the MLP's hidden width (default
``prompt.reparam_hidden_size``).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from ptuning_v2.config import ConfigError, RunConfig
from ptuning_v2.methods.input_prompt import InputPromptModel, check_input_prompt_config
from ptuning_v2.methods.registry import BuildFn, Method, register_method

EncoderKind = Literal["lstm", "mlp"]


class PromptEncoder(nn.Module):
    """Pseudo-token embeddings -> (bi-LSTM) -> MLP -> ``[k, hidden]`` prompt vectors."""

    def __init__(self, k: int, hidden: int, kind: EncoderKind, mlp_hidden: int, init_std: float) -> None:
        super().__init__()
        self.embedding = nn.Parameter(torch.randn(k, hidden) * init_std)
        self.lstm = (
            nn.LSTM(hidden, hidden // 2, num_layers=2, bidirectional=True, batch_first=True)
            if kind == "lstm"
            else None
        )
        width = 2 * (hidden // 2) if kind == "lstm" else hidden
        self.mlp = nn.Sequential(nn.Linear(width, mlp_hidden), nn.ReLU(), nn.Linear(mlp_hidden, hidden))

    def forward(self) -> torch.Tensor:
        states = self.embedding
        if self.lstm is not None:
            states = self.lstm(states.unsqueeze(0))[0].squeeze(0)
        return self.mlp(states)


def check_mlp_encoder(run: RunConfig) -> None:
    """``ptuning_v1_mlp`` with ``ptuning_v1.encoder: lstm`` contradicts itself."""
    if run.ptuning_v1.encoder not in (None, "mlp"):
        raise ConfigError(
            f"ptuning_v1.encoder: method {run.method} has an MLP encoder, got {run.ptuning_v1.encoder!r}; "
            "use method ptuning_v1 for the LSTM"
        )


def _builder(method_kind: EncoderKind) -> BuildFn:
    def build(backbone: nn.Module, config: RunConfig, tokenizer: Any) -> nn.Module:
        prompt = config.prompt
        check_input_prompt_config(config, backbone)
        if prompt.init != "random":
            raise ConfigError(
                f"method {config.method}: the prompt encoder supports prompt.init 'random' only"
            )
        hidden = backbone.get_input_embeddings().embedding_dim
        width = config.ptuning_v1.hidden_size or prompt.reparam_hidden_size
        if method_kind == "mlp":
            check_mlp_encoder(config)
        kind = config.ptuning_v1.encoder or method_kind
        encoder = PromptEncoder(prompt.num_virtual_tokens, hidden, kind, width, prompt.init_std)
        device = backbone.get_input_embeddings().weight.device
        return InputPromptModel(backbone, encoder.to(device), prompt.dropout)

    return build


_DEFAULTS = {"train.lr": 1e-3, "train.head_lr": 5e-3}
_SPACE = {"train.lr": {"low": 1e-4, "high": 3e-2, "log": True}}
register_method(
    Method(
        "ptuning_v1",
        "P-Tuning v1: input-layer prompt from a bi-LSTM + MLP prompt encoder (Liu et al., 2021)",
        _builder("lstm"),
        _DEFAULTS,
        prompt="input",
        search_space=_SPACE,
    )
)
register_method(
    Method(
        "ptuning_v1_mlp",
        "P-Tuning v1 with an MLP-only prompt encoder (ptuning_v1 with ptuning_v1.encoder: mlp)",
        _builder("mlp"),
        _DEFAULTS,
        prompt="input",
        search_space=_SPACE,
        compared=False,
        check=check_mlp_encoder,
    )
)
