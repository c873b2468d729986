"""Fine-tuning methods, registered by name; the import order below is the order of every listing."""

from ptuning_v2.methods import core, prompt_tuning, ptuning_v1, prefix_tuning, ptuning_v2, lora  # noqa: F401, I001
from ptuning_v2.methods.registry import (
    METHODS,
    Method,
    backbone_sharing_methods,
    compared_methods,
    get_method,
    load_run_config,
    prompt_methods,
    register_method,
    resolve_run_config,
    with_method_defaults,
)

__all__ = [
    "METHODS",
    "Method",
    "backbone_sharing_methods",
    "compared_methods",
    "get_method",
    "load_run_config",
    "prompt_methods",
    "register_method",
    "resolve_run_config",
    "with_method_defaults",
]
