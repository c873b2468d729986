"""Search spaces as data: for each method, the config fields (dotted paths) to search and their ranges.

Each method's built-in space (``search_space`` in its registry entry, methods/) is what ``ptv2 tune``
and ``ptv2 compare --tune`` search. A run config
changes them entry by entry in a ``tune:`` section keyed by method (training ignores that section)::

    tune:
      ptuning_v2:
        train.lr: {low: 1.0e-3, high: 1.0e-1, log: true}      # float (log-uniform)
        prompt.num_virtual_tokens: {choices: [16, 32, 64]}   # categorical
        prompt.dropout: null                                 # not searched
      lora:
        lora.rank: {low: 2, high: 32, log: true}             # int (both bounds are integers)

An entry is ``{low, high}`` (optional ``log: true``, ``step``, ``type: int|float``) or ``{choices: [...]}``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Literal

from ptuning_v2.config import ConfigError, RunConfig

_SPEC_KEYS = {"type", "low", "high", "log", "step", "choices"}


@dataclass(frozen=True)
class Param:
    """One searched config field: a float or int range, or a list of choices."""

    path: str
    kind: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Any) -> Any:
        """The value an Optuna trial proposes for this field."""
        if self.kind == "categorical":
            return trial.suggest_categorical(self.path, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(
                self.path, int(self.low), int(self.high), step=int(self.step or 1), log=self.log
            )
        return trial.suggest_float(self.path, self.low, self.high, step=self.step, log=self.log)

    def contains(self, value: Any) -> bool:
        if self.kind == "categorical":
            return any(value == c and type(value) is type(c) for c in self.choices)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.kind == "int" and not float(value).is_integer():
            return False
        return self.low <= value <= self.high

    def corners(self) -> list[Any]:
        """Values that stand for the whole range when checking the field accepts it."""
        if self.kind == "categorical":
            return list(self.choices)
        cast = int if self.kind == "int" else float
        return [cast(self.low), cast(self.high)]

    def to_dict(self) -> dict[str, Any]:
        if self.kind == "categorical":
            return {"choices": list(self.choices)}
        out: dict[str, Any] = {"type": self.kind, "low": self.low, "high": self.high, "log": self.log}
        return out | ({"step": self.step} if self.step is not None else {})


def _number(value: Any, where: str, key: str) -> float | int:
    """YAML reads ``1e-3`` as a string, so numbers given as strings are parsed."""
    if isinstance(value, bool):
        raise ConfigError(f"{where}: {key} must be a number, got {value!r}")
    if isinstance(value, int | float):
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {key} must be a number, got {value!r}") from None


def parse_param(path: str, spec: Any, where: str) -> Param:
    """One entry of a search space, checked; ``where`` names it in errors."""
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: expected {{low, high}} or {{choices: [...]}}, got {spec!r}")
    unknown = sorted(set(spec) - _SPEC_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(_SPEC_KEYS)}")
    if "choices" in spec:
        choices = spec["choices"]
        if set(spec) - {"choices", "type"} or spec.get("type", "categorical") != "categorical":
            raise ConfigError(f"{where}: choices cannot be combined with a range")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: choices must be a non-empty list, got {choices!r}")
        if any(isinstance(c, dict | list) for c in choices):
            raise ConfigError(f"{where}: choices must be scalars (numbers, strings, true/false, null)")
        return Param(path, "categorical", choices=tuple(choices))
    if "low" not in spec or "high" not in spec:
        raise ConfigError(f"{where}: a range needs both low and high (or give choices)")
    low, high = _number(spec["low"], where, "low"), _number(spec["high"], where, "high")
    kind = spec.get("type") or ("int" if isinstance(low, int) and isinstance(high, int) else "float")
    if kind not in ("int", "float"):
        raise ConfigError(f"{where}: type must be int or float for a range, got {kind!r}")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: log must be true or false, got {log!r}")
    step = None if spec.get("step") is None else _number(spec["step"], where, "step")
    if kind == "int" and not all(float(v).is_integer() for v in (low, high, step or 1)):
        raise ConfigError(f"{where}: an int range needs integer low, high and step")
    if not low < high:
        raise ConfigError(f"{where}: low ({low}) must be below high ({high})")
    if log and low <= 0:
        raise ConfigError(f"{where}: a log range needs low > 0, got {low}")
    if log and step is not None and kind == "float":
        raise ConfigError(f"{where}: a float range cannot be both log and stepped")
    if step is not None and step <= 0:
        raise ConfigError(f"{where}: step must be > 0, got {step}")
    return Param(path, kind, low=low, high=high, log=log, step=step)


def method_space(method: str, tune: Any, where: str) -> dict[str, Param]:
    """The built-in space of ``method`` with the config's ``tune.<method>`` entries over it."""
    if tune is None:
        tune = {}
    if not isinstance(tune, dict):
        raise ConfigError(f"{where}: tune must be a mapping of method -> search space, got {tune!r}")
    from ptuning_v2.methods import METHODS

    unknown = sorted(set(tune) - set(METHODS))
    if unknown:
        raise ConfigError(f"{where}: tune has unknown method(s) {unknown}; known: {sorted(METHODS)}")
    entries = dict(METHODS[method].search_space) if method in METHODS else {}
    own = tune.get(method) or {}
    if not isinstance(own, dict):
        raise ConfigError(f"{where}: tune.{method} must map config fields to ranges, got {own!r}")
    for path, spec in own.items():
        if spec is None:
            entries.pop(path, None)
        else:
            entries[path] = spec
    if not entries:
        raise ConfigError(f"{where}: no search space for method {method!r}; give one under tune.{method}")
    return {path: parse_param(path, spec, f"{where}: tune.{method}.{path}") for path, spec in entries.items()}


def set_path(data: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """Set the dotted ``path`` (e.g. ``train.lr``) of a nested config dict, in place."""
    *parents, leaf = path.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"tune: {path!r}: {part!r} is not a config section")
    node[leaf] = value
    return data


def get_path(data: dict[str, Any], path: str) -> Any:
    for part in path.split("."):
        data = data[part]
    return data


def apply_params(base: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """A copy of the config dict ``base`` with the searched fields set."""
    data = copy.deepcopy(base)
    for path, value in params.items():
        set_path(data, path, value)
    return data


def check_space(space: dict[str, Param], base: dict[str, Any], where: str) -> None:
    """Every range end and choice must make a valid config: a typo or a bad range fails before any trial."""
    from ptuning_v2.methods import resolve_run_config

    for path, param in space.items():
        for value in param.corners():
            try:
                resolve_run_config(apply_params(base, {path: value}), "config")
            except ConfigError as exc:
                raise ConfigError(f"{where}: tune.{base.get('method')}.{path} = {value!r}: {exc}") from None


def starting_point(space: dict[str, Param], run: RunConfig) -> dict[str, Any]:
    """The config's own values of the searched fields that lie in the space: the first trial tries them."""
    values = run.to_dict()
    out = {}
    for path, param in space.items():
        try:
            value = get_path(values, path)
        except (KeyError, TypeError):
            continue
        if param.contains(value):
            out[path] = value
    return out
