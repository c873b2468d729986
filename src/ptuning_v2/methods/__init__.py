"""Fine-tuning methods, registered by name."""

from ptuning_v2.methods import core, lora, prefix_tuning, prompt_tuning, ptuning_v1  # noqa: F401  (registers)
from ptuning_v2.methods.registry import METHODS, Method, get_method, register_method

__all__ = ["METHODS", "Method", "get_method", "register_method"]
