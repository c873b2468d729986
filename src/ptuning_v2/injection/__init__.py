"""How deep prompts reach a frozen model: prefix keys/values or hidden-state vectors."""

from ptuning_v2.injection.attention import PrefixInjector
from ptuning_v2.injection.hidden import HiddenInjector
from ptuning_v2.injection.slots import AttentionSlot

Injector = PrefixInjector | HiddenInjector
INJECTORS: dict[str, type[PrefixInjector] | type[HiddenInjector]] = {
    "prefix": PrefixInjector,
    "hidden": HiddenInjector,
}

__all__ = ["INJECTORS", "AttentionSlot", "HiddenInjector", "Injector", "PrefixInjector"]
