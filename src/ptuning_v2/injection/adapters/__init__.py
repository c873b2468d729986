"""Attention adapters: deep prompts for models whose attention is their own code, one module each.

Adding an architecture: a module here with an ``AttentionAdapter`` subclass passed to
``register_adapter``, imported below.
"""

from ptuning_v2.injection.adapters import deberta, deberta_v2, mpnet
from ptuning_v2.injection.adapters.base import (
    ATTENTION_ADAPTERS,
    AttentionAdapter,
    adapter_for,
    install_adapter,
    register_adapter,
    uninstall_adapter,
)

__all__ = [
    "ATTENTION_ADAPTERS",
    "AttentionAdapter",
    "adapter_for",
    "deberta",
    "deberta_v2",
    "install_adapter",
    "mpnet",
    "register_adapter",
    "uninstall_adapter",
]
