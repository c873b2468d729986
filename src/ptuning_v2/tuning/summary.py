"""Many searches side by side: ``ptv2 tune-summary DIR`` reads every study under ``DIR`` (one per data set and
method, as ``DIR/<data set>/<method>/study.db``) and writes one table of what each search found.

This is how the built-in defaults are chosen (docs/tuning.md, "Sweeps"): each row shows the dev value of
the config as written (a study's first trial: the method's defaults at the time) next to the best trial's,
with the best values, so a default can be checked against every data set at once.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from ptuning_v2.config import ConfigError
from ptuning_v2.tuning.search import open_storage
from ptuning_v2.utils.io import write_json_atomic, write_text_atomic


@dataclass
class StudyRow:
    data: str
    task: str
    method: str
    metric: str
    complete: int
    pruned: int
    first_dev: float | None
    """Dev value of trial 0, the config as written (``None`` if it was pruned or failed)."""
    best_dev: float
    best_trial: int
    best_params: dict[str, Any]
    top_params: list[dict[str, Any]]
    """The values of the best three complete trials, best first: how sharp the optimum is."""
    complete_trials: list[tuple[dict[str, Any], float]]
    """Every complete trial's values and dev value."""
    study: str


def read_study(directory: Path) -> StudyRow:
    """The row of the study stored in ``directory/study.db``."""
    storage = open_storage(f"sqlite:///{directory / 'study.db'}")
    names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    if len(names) != 1:
        raise ConfigError(f"{directory / 'study.db'}: expected one study, found {names}")
    study = optuna.load_study(study_name=names[0], storage=storage)
    identity = study.user_attrs.get("ptv2") or {}
    config = identity.get("config") or {}
    trials = study.get_trials(deepcopy=False)
    complete = sorted(
        (t for t in trials if t.state == TrialState.COMPLETE),
        key=lambda t: t.value,
        reverse=study.direction == optuna.study.StudyDirection.MAXIMIZE,
    )
    if not complete:
        raise ConfigError(f"{directory / 'study.db'}: no complete trial yet")
    first = next((t for t in trials if t.number == 0), None)
    return StudyRow(
        data=(config.get("data") or {}).get("name") or directory.parent.name,
        task=config.get("task", "classification"),
        method=config.get("method", directory.name),
        metric=identity.get("metric", "?"),
        complete=len(complete),
        pruned=sum(t.state == TrialState.PRUNED for t in trials),
        first_dev=first.value if first is not None and first.state == TrialState.COMPLETE else None,
        best_dev=complete[0].value,
        best_trial=complete[0].number,
        best_params=complete[0].params,
        top_params=[t.params for t in complete[:3]],
        complete_trials=[(t.params, t.value) for t in complete],
        study=str(directory),
    )


def summarise(root: Path) -> list[StudyRow]:
    """Every study under ``root``, by data set then method."""
    directories = sorted(p.parent for p in root.glob("*/*/study.db"))
    if not directories:
        raise ConfigError(f"{root}: no study found (expected {root}/<data set>/<method>/study.db)")
    return [read_study(d) for d in directories]


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2g}" if value < 0.1 or value != round(value, 2) else f"{value:g}"
    return str(value)


def _params(params: dict[str, Any]) -> str:
    return ", ".join(f"{path.split('.')[-1]} {_value(v)}" for path, v in params.items()) or "-"


def markdown(rows: list[StudyRow], command: str) -> str:
    lines = [
        "# Sweeps: what each search found",
        "",
        f"Command: `{command}`",
        "",
        "Dev values; *as written* is trial 0, the config as written (the defaults when the search ran); "
        "the best three trials' values show how sharp the optimum is.",
        "",
        "| data set | method | metric | trials (pruned) | dev as written | best dev | best values | 2nd, 3rd |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        first = "-" if r.first_dev is None else f"{r.first_dev:.4f}"
        others = " / ".join(_params(p) for p in r.top_params[1:]) or "-"
        lines.append(
            f"| {r.data} | {r.method} | {r.metric} | {r.complete + r.pruned} ({r.pruned}) | {first} | "
            f"{r.best_dev:.4f} (trial {r.best_trial}) | {_params(r.best_params)} | {others} |"
        )
    for (task, method), group in _families(rows).items():
        lines += shared_configs(task, method, group)
    return "\n".join(lines) + "\n"


def shared_configs(task: str, method: str, group: list[StudyRow]) -> list[str]:
    """A table of the values tried on more than one data set of a family (searches with the same sampler
    seed start from the same points), with each data set's dev value and their mean: the evidence for one
    default across the family."""
    if len(group) < 2:
        return []
    seen: dict[str, dict[str, float]] = {}
    for row in group:
        for params, value in row.complete_trials:
            seen.setdefault(_params(params), {})[row.data] = value
    shared = sorted(
        ((k, v) for k, v in seen.items() if len(v) > 1),
        key=lambda kv: -sum(kv[1].values()) / len(kv[1]),
    )
    if not shared:
        return []
    names = [r.data for r in group]
    lines = [
        "",
        f"{task}, {method}: values tried on more than one data set (dev; - where not run or pruned), "
        "best mean first:",
        "",
        f"| values | {' | '.join(names)} | mean |",
        "|---|" + "---|" * (len(names) + 1),
    ]
    for key, values in shared:
        cells = " | ".join("-" if n not in values else f"{values[n]:.4f}" for n in names)
        lines.append(f"| {key} | {cells} | {sum(values.values()) / len(values):.4f} ({len(values)}) |")
    return lines


def _families(rows: list[StudyRow]) -> dict[tuple[str, str], list[StudyRow]]:
    families: dict[tuple[str, str], list[StudyRow]] = {}
    for row in rows:
        families.setdefault((row.task, row.method), []).append(row)
    return families


def write_summary(root: Path, output_dir: Path, command: str) -> list[StudyRow]:
    rows = summarise(root)
    write_json_atomic(output_dir / "summary.json", {"command": command, "studies": [asdict(r) for r in rows]})
    write_text_atomic(output_dir / "summary.md", markdown(rows, command))
    return rows
