"""Fine-tuning methods as data: how each adapts a backbone, the defaults and search space that suit it.

Every method returns an encoder that is called like the backbone; task heads sit on top of it, so
all methods share one trainer, one data pipeline and one output contract.

This registry is the only list of methods: ``ptv2 compare``, ``params``, ``suggest-config``,
``recommend`` and ``tune`` read it. It is also where a run config meets its method: the config
module is the schema only, and :func:`load_run_config` / :func:`resolve_run_config` put the method's
defaults under the user's values and run the method's own config check.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from torch import nn

from ptuning_v2.config import (
    ConfigError,
    RunConfig,
    apply_overrides,
    deep_merge,
    did_you_mean,
    longest_prompt,
    read_config_file,
)

BuildFn = Callable[[nn.Module, RunConfig, Any], nn.Module]
CheckFn = Callable[[RunConfig], None]


@dataclass(frozen=True)
class Method:
    name: str
    description: str
    build: BuildFn
    defaults: Mapping[str, Any] = field(default_factory=dict)
    """Config values this method sets differently, by dotted field (``{"train.lr": 1e-3}``); the user's
    own values win. Checked against the run config's types when the method is registered."""
    task_defaults: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Per task family, values over :attr:`defaults` (``{"ner": {"train.lr": 5e-2}}``): what the sweeps
    found best for that family (docs/tuning.md "Sweeps"); the user's own values still win."""
    prompt: Literal["deep", "input"] | None = None
    """Where the method's trained prompt sits (it reads ``prompt.num_virtual_tokens``), or None."""
    search_space: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """``ptv2 tune``'s built-in space: dotted field -> ``{low, high[, log]}`` or ``{choices}``."""
    compared: bool = True
    """Whether ``ptv2 compare`` runs it by default (variants of another method are not)."""
    check: CheckFn | None = None
    """A config check that needs no model, run when a config is resolved (before any data is read)."""
    shares_backbone: bool = False
    """Whether it leaves every backbone weight as it was, so several tasks can share one backbone
    (multi-task training, ``MultiPromptModel``)."""

    def defaults_for(self, task: str) -> dict[str, Any]:
        """The dotted defaults for a run of ``task``: :attr:`defaults` with the task family's over them."""
        return {**self.defaults, **self.task_defaults.get(task, {})}

    def defaults_tree(self, task: str | None = None) -> dict[str, Any]:
        """:meth:`defaults_for` ``task`` (:attr:`defaults` alone without one) nested like the YAML
        (``{"train": {"lr": 1e-3}}``)."""
        tree: dict[str, Any] = {}
        for path, value in (self.defaults_for(task) if task else self.defaults).items():
            *parents, leaf = path.split(".")
            node = tree
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = copy.deepcopy(value)
        return tree


METHODS: dict[str, Method] = {}
"""Every method by name, in registration order: the order of every listing (compare's rows, params)."""


def register_method(method: Method) -> Method:
    """Add ``method``; its defaults must make a valid run config for every task family they name (a typo
    fails at import, not in a run)."""
    for task in [None, *method.task_defaults]:
        source = f"method {method.name} defaults" + (f" for {task}" if task else "")
        try:
            RunConfig.from_dict({**method.defaults_tree(task), "method": method.name}, source)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
    METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known methods: {sorted(METHODS)}")
    return METHODS[name]


def compared_methods() -> list[str]:
    """The methods ``ptv2 compare`` runs when none are named."""
    return [name for name, method in METHODS.items() if method.compared]


def backbone_sharing_methods() -> list[str]:
    """The methods whose tasks can share one frozen backbone."""
    return [name for name, method in METHODS.items() if method.shares_backbone]


def prompt_methods() -> list[str]:
    """The methods that train a prompt (and so read ``prompt.num_virtual_tokens``)."""
    return [name for name, method in METHODS.items() if method.prompt is not None]


def with_method_defaults(data: dict[str, Any]) -> dict[str, Any]:
    """Put the chosen method's defaults for the run's task family (e.g. its learning rate) under the values
    the user set."""
    name = data.get("method", RunConfig.method)
    if not isinstance(name, str):
        raise ConfigError(f"method: expected a method name, got {name!r}; known methods: {sorted(METHODS)}")
    try:
        method = get_method(name)
    except ValueError as exc:
        raise ConfigError(f"method: {exc}{did_you_mean(name, METHODS)}") from exc
    task = data.get("task", RunConfig.task)
    return deep_merge(method.defaults_tree(task if isinstance(task, str) else None), data)


def resolve_run_config(data: dict[str, Any], source: str = "config") -> RunConfig:
    """The run config of ``data`` (nested like the YAML) with its method's defaults and check applied."""
    run = RunConfig.from_dict(with_method_defaults(data), source)
    check = get_method(run.method).check
    if check is not None:
        try:
            check(run)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from exc
    return run


def load_run_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML run config (or start from defaults), apply ``--set`` overrides and method defaults."""
    data = read_config_file(path) if path is not None else {}
    data.pop("tune", None)  # the search space of ``ptv2 tune``; training does not use it
    data = apply_overrides(data, overrides or [])
    return resolve_run_config(data, str(path) if path is not None else "defaults")


def check_deep_prompt(run: RunConfig) -> None:
    """The deep-prompt methods' check: a prompt of no tokens trains only the head (a linear probe)."""
    if longest_prompt(run.prompt) == 0:
        raise ConfigError(
            f"prompt.num_virtual_tokens: method {run.method} with a prompt of 0 tokens trains only the head; "
            "set prompt.num_virtual_tokens >= 1, or use method: linear_probe"
        )


def freeze(model: nn.Module) -> nn.Module:
    for param in model.parameters():
        param.requires_grad_(False)
    return model
