"""The trainable part of P-Tuning v2: one prompt matrix per prompted layer.

Each prompted layer ``s`` owns a ``[length_s, width_s]`` matrix. In prefix mode ``width`` is
``2 * kv_heads * head_dim`` (a key and a value per key/value head, the layout PEFT uses too); in
hidden mode it is the hidden size. How the matrices reach the model is the injector's business.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import nn
from torch.nn.utils import skip_init

from ptuning_v2.config import DeepPromptConfig
from ptuning_v2.prompts.transfer import fit_length

_FILLED_LATER: ContextVar[bool] = ContextVar("ptv2_prompts_filled_later", default=False)


@contextmanager
def filled_from_checkpoint() -> Iterator[None]:
    """Prompts built in this block get no initial values: no random draw, no text run, no source checkpoint
    read, because a checkpoint's tensors overwrite every one of them right after. A server loads tasks all
    the time (the random draw alone was about a third of a load), and a checkpoint trained from another one
    (``prompt.init: checkpoint``) then loads where that other one is not."""
    token = _FILLED_LATER.set(True)
    try:
        yield
    finally:
        _FILLED_LATER.reset(token)


def filled_later() -> bool:
    """Inside ``filled_from_checkpoint``: skip every initialisation."""
    return _FILLED_LATER.get()


def _initial(shape: tuple[int, int], std: float) -> torch.Tensor:
    """Random with ``std`` (0 for the inits that set values later: the draw keeps a run's random stream)."""
    return torch.empty(shape) if filled_later() else torch.randn(shape) * std


class DeepPrompt(nn.Module):
    """Per-layer prompt tensors, optionally produced by a prefix-tuning style MLP."""

    def __init__(
        self, config: DeepPromptConfig, shapes: dict[str, tuple[int, int]], hidden_size: int
    ) -> None:
        super().__init__()
        self.config = config
        self.shapes = dict(shapes)
        self.hidden_size = hidden_size
        self.dropout = nn.Dropout(config.dropout)
        # (parameters, their versions/addresses, prompts) of the last forward without autograd in eval mode
        self._cache: tuple[list[nn.Parameter], list[tuple], dict[str, torch.Tensor]] | None = None
        if config.reparameterize:
            if config.init != "random":
                raise ValueError("prompt.reparameterize supports prompt.init='random' only")
            max_len = max((n for n, _ in shapes.values()), default=0)
            total_width = sum(w for _, w in shapes.values())
            self.embedding = nn.Parameter(_initial((max_len, hidden_size), config.init_std))
            linear = (lambda *sizes: skip_init(nn.Linear, *sizes)) if filled_later() else nn.Linear
            self.mlp = nn.Sequential(
                linear(hidden_size, config.reparam_hidden_size),
                nn.Tanh(),
                linear(config.reparam_hidden_size, total_width),
            )
            self.prompts = nn.ParameterDict()
        else:
            std = config.init_std if config.init == "random" else 0.0
            self.prompts = nn.ParameterDict(
                {name: nn.Parameter(_initial((n, w), std)) for name, (n, w) in shapes.items()}
            )

    def raw(self) -> dict[str, torch.Tensor]:
        """Prompt matrices before dropout."""
        if not self.config.reparameterize:
            return dict(self.prompts.items())
        flat = self.mlp(self.embedding)
        out, start = {}, 0
        for name, (n, w) in self.shapes.items():
            out[name] = flat[:n, start : start + w]
            start += w
        return out

    def forward(self) -> dict[str, torch.Tensor]:
        """The prompts after dropout. In eval mode without autograd (inference) they are computed once
        and reused until a parameter changes: in place (optimizer step, ``load_state_dict``: the version
        counter moves), or replaced (``fold``, ``.to``)."""
        if self.training or torch.is_grad_enabled():
            return {name: self.dropout(t) for name, t in self.raw().items()}
        params = list(self.parameters())
        state = [(p._version, p.data_ptr(), p.dtype, p.device) for p in params]
        cache = self._cache
        fresh = cache is not None and cache[1] == state and all(map(operator.is_, cache[0], params))
        if not fresh:
            cache = self._cache = (params, state, self.raw())
        return dict(cache[2])

    @torch.no_grad()
    def fold(self) -> None:
        """Replace the MLP by the prompts it produces: same outputs, fewer parameters at inference."""
        if not self.config.reparameterize:
            return
        values = {name: t.detach().clone() for name, t in self.raw().items()}
        del self.embedding, self.mlp
        self.prompts = nn.ParameterDict({name: nn.Parameter(t) for name, t in values.items()})
        self.config.reparameterize = False

    @torch.no_grad()
    def init_from(self, states: dict[str, torch.Tensor]) -> None:
        """Initialise each prompt from states a text produced (``[tokens, width]``), tiled to length."""
        for name, (_, w) in self.shapes.items():
            state = states[name]
            if state.shape[-1] != w or state.shape[0] == 0:
                raise ValueError(f"text state for {name} has shape {tuple(state.shape)}, expected [*, {w}]")
        self.load_prompts({name: fit_length(states[name], n) for name, (n, _) in self.shapes.items()})

    @torch.no_grad()
    def load_prompts(self, prompts: dict[str, torch.Tensor]) -> None:
        """Set every prompt matrix (``[length, width]`` each, shapes as in ``self.shapes``)."""
        if self.config.reparameterize:
            raise ValueError("prompts produced by the reparameterisation MLP cannot be set directly")
        for name, tensor in prompts.items():
            self.prompts[name].copy_(tensor.to(self.prompts[name].dtype))

    def num_virtual_tokens(self) -> int:
        return sum(n for n, _ in self.shapes.values())
