"""Fine-tuning methods as data: how each adapts a backbone, and the defaults that suit it.

Every method returns an encoder that is called like the backbone; task heads sit on top of it, so
all methods share one trainer, one data pipeline and one output contract.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ptuning_v2.config import RunConfig

BuildFn = Callable[[nn.Module, RunConfig, Any], nn.Module]


@dataclass(frozen=True)
class Method:
    name: str
    description: str
    build: BuildFn
    defaults: dict[str, Any] = field(default_factory=dict)
    """Config values (nested like the YAML) applied under the user's own values."""


METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known methods: {sorted(METHODS)}")
    return METHODS[name]


def freeze(model: nn.Module) -> nn.Module:
    for param in model.parameters():
        param.requires_grad_(False)
    return model
