"""Fine-tuning methods, registered by name."""

from ptuning_v2.methods import core  # noqa: F401  (registers the methods)
from ptuning_v2.methods.registry import METHODS, Method, get_method, register_method

__all__ = ["METHODS", "Method", "get_method", "register_method"]
