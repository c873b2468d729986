"""What a search leaves to read: the trials as CSV and Markdown, and two plots."""

from __future__ import annotations

import csv
import io
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from ptuning_v2.utils.io import atomic_write, write_text_atomic

COLUMNS = ("number", "state", "value", "steps", "last_step", "train_seconds", "started", "duration_s")


def trial_rows(trials: list[FrozenTrial], params: list[str]) -> list[dict[str, Any]]:
    """One flat row per trial: state, dev value, every searched field, steps and time."""
    rows = []
    for trial in trials:
        duration = trial.duration.total_seconds() if trial.duration else None
        rows.append(
            {
                "number": trial.number,
                "state": trial.state.name.lower(),
                "value": trial.value,
                **{path: trial.params.get(path) for path in params},
                "steps": trial.user_attrs.get("steps"),
                "last_step": max(trial.intermediate_values, default=None),
                "train_seconds": trial.user_attrs.get("train_seconds"),
                "started": trial.datetime_start.isoformat(timespec="seconds")
                if trial.datetime_start
                else None,
                "duration_s": None if duration is None else round(duration, 1),
                "error": trial.user_attrs.get("error"),
            }
        )
    return rows


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def write_tables(
    rows: list[dict[str, Any]], params: list[str], metric: str, output_dir: Path, best: int | None
) -> None:
    """``trials.csv`` (every field) and ``trials.md`` (best first, then by number)."""
    fields = [*COLUMNS[:3], *params, *COLUMNS[3:], "error"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(output_dir / "trials.csv", buffer.getvalue())
    states = {state: sum(r["state"] == state for r in rows) for state in ("complete", "pruned", "fail")}
    lines = [
        f"# Trials: dev {metric}",
        "",
        f"{len(rows)} trials: {states['complete']} complete, {states['pruned']} pruned (stopped at "
        f"`last step` by the median rule), {states['fail']} failed."
        + (f" Best: trial {best} (marked **)." if best is not None else ""),
        "",
        "| trial | state | dev " + metric + " | " + " | ".join(params) + " | steps | last step | time (s) |",
        "|" + "---|" * (len(params) + 6),
    ]
    order = sorted(rows, key=lambda r: (r["number"] != best, r["number"]))
    for row in order:
        number = f"**{row['number']}**" if row["number"] == best else str(row["number"])
        values = [_cell(row[p]) for p in params]
        lines.append(
            f"| {number} | {row['state']} | {_cell(row['value'])} | {' | '.join(values)} | "
            f"{_cell(row['steps'])} | {_cell(row['last_step'])} | {_cell(row['duration_s'])} |"
        )
    failed = [r for r in rows if r["error"]]
    if failed:
        lines += ["", "Failed trials:", ""] + [f"- trial {r['number']}: {r['error']}" for r in failed]
    write_text_atomic(output_dir / "trials.md", "\n".join(lines) + "\n")


def _save(axes: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    figure = axes.figure
    figure.set_size_inches(7, 4.5)
    figure.tight_layout()
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=120))
    plt.close(figure)


def plot_history(study: optuna.Study, metric: str, path: Path) -> str | None:
    """Dev metric of every complete trial and the best so far (Optuna's matplotlib plot)."""
    import matplotlib

    matplotlib.use("Agg")
    from optuna.visualization.matplotlib import plot_optimization_history

    if not any(t.state == TrialState.COMPLETE for t in study.trials):
        return f"{path.name}: no complete trial to plot"
    with warnings.catch_warnings(), matplotlib.rc_context():  # Optuna sets a global style; keep it here
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        _save(plot_optimization_history(study, target_name=f"dev {metric}"), path)
    return None


def plot_importances(study: optuna.Study, metric: str, path: Path) -> str | None:
    """fANOVA importance of each searched field for the dev metric; needs two complete trials that differ."""
    import matplotlib

    matplotlib.use("Agg")
    from optuna.visualization.matplotlib import plot_param_importances

    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    if len(complete) < 2:
        return f"{path.name}: parameter importances need at least 2 complete trials, have {len(complete)}"
    try:
        with warnings.catch_warnings(), matplotlib.rc_context():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            warnings.simplefilter("ignore", UserWarning)  # "importances will be equal": the plot shows it
            _save(plot_param_importances(study, target_name=f"dev {metric}"), path)
    except (ValueError, RuntimeError) as exc:  # e.g. every complete trial has the same parameters
        return f"{path.name}: not drawn ({exc})"
    return None
