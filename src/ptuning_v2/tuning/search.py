"""``ptv2 tune``: an Optuna search on the dev split, then the best config trained again and tested once.

The study lives in a database (SQLite ``OUTPUT_DIR/study.db`` unless ``storage`` names another), so
a search that stops resumes where it was, and several processes pointed at the same storage and
study name share the work. ``trials`` is the total the study should reach, not a count per call.

Every trial is one ``train_run`` with the searched fields set, on the config's seed, with the test
split left out; each dev evaluation is reported to the pruner, which stops trials that trail the
median of the finished ones at the same step. Trials keep their ``log.jsonl`` and ``metrics.json``
but not their weights; the best config is retrained in ``OUTPUT_DIR/best`` (same seed, so the same
run) and only that run sees the test split.
"""

from __future__ import annotations

import copy
import json
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from ptuning_v2.config import ConfigError, RunConfig
from ptuning_v2.methods import resolve_run_config
from ptuning_v2.tuning.report import plot_history, plot_importances, trial_rows, write_tables
from ptuning_v2.tuning.space import Param, apply_params, check_space, method_space, starting_point
from ptuning_v2.utils.io import write_json_atomic, write_text_atomic

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def default_storage(output_dir: Path) -> str:
    return f"sqlite:///{(output_dir / 'study.db').resolve()}"


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """An Optuna RDB storage with heartbeats: a trial whose process died is failed and tried once more."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url,
                heartbeat_interval=60,
                grace_period=180,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1),
            )
    except Exception as exc:  # SQLAlchemy raises many kinds for a bad URL or an unreachable server
        raise ConfigError(f"--storage {url!r}: {type(exc).__name__}: {exc}") from None


def _comparable(value: Any) -> Any:
    """As the storage gives it back (JSON), so a resumed study can be checked against this call."""
    return json.loads(json.dumps(value))


def open_study(
    storage: optuna.storages.BaseStorage,
    name: str,
    direction: str,
    identity: dict[str, Any],
    seed: int,
    trials: int,
    prune_after: int | None,
) -> optuna.Study:
    """Create the study or load it; a loaded one must be for the same config, space and metric."""
    probe = optuna.load_study(study_name=name, storage=storage) if name in _names(storage) else None
    seed += len(probe.trials) if probe else 0  # a resumed search must not replay its random start
    sampler = optuna.samplers.TPESampler(
        seed=seed, n_startup_trials=max(3, min(10, trials // 4)), multivariate=True
    )
    pruner = (
        optuna.pruners.MedianPruner(n_startup_trials=prune_after)
        if prune_after is not None
        else optuna.pruners.NopPruner()
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study = optuna.create_study(
            storage=storage,
            study_name=name,
            direction=direction,
            sampler=sampler,
            pruner=pruner,
            load_if_exists=True,
        )
    if study.direction.name.lower() != direction:
        raise ConfigError(
            f"study {name!r} was created to {study.direction.name.lower()} its metric, not to {direction}; "
            "use another --study-name"
        )
    stored = study.user_attrs.get("ptv2")
    if stored is None:
        study.set_user_attr("ptv2", _comparable(identity))
    elif stored != _comparable(identity):
        changed = sorted(k for k in identity if stored.get(k) != _comparable(identity[k]))
        raise ConfigError(
            f"study {name!r} was run with another {', '.join(changed)}; "
            "pass another --study-name or --output-dir to start a new search"
        )
    return study


def _names(storage: optuna.storages.BaseStorage) -> set[str]:
    return {s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}


def run_tuning(
    base: dict[str, Any],
    output_dir: str | Path,
    *,
    trials: int,
    timeout: float | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    seed: int | None = None,
    prune_after: int | None = 4,
    final: bool = True,
    source: str = "config",
    command: str | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Search, then write ``best.yaml``, ``trials.csv/.md``, the plots, ``tune.json`` and ``best/``.

    ``base`` is the run config as a dict (its ``tune:`` section, if any, changes the search space);
    ``prune_after=None`` turns pruning off, otherwise pruning starts once that many trials finished;
    ``final=False`` skips retraining the best config (extra workers of a shared study; compare).
    """
    if trials < 1:
        raise ConfigError(f"--trials must be at least 1, got {trials}")
    output_dir = Path(output_dir)
    base = copy.deepcopy(base)
    tune_section = base.pop("tune", None)
    reference = resolve_run_config(copy.deepcopy(base), source)
    space = method_space(reference.method, tune_section, source)
    check_space(space, base, source)
    from ptuning_v2.tasks import get_task  # importing tasks loads datasets; keep the CLI start fast

    task_cls = get_task(reference.task)
    metric = reference.train.metric_for_best or task_cls.main_metric
    direction = "maximize" if task_cls.higher_is_better else "minimize"
    output_dir.mkdir(parents=True, exist_ok=True)
    storage_url = storage or default_storage(output_dir)
    name = study_name or reference.method
    identity = {
        "config": base,
        "search space": {path: p.to_dict() for path, p in space.items()},
        "metric": metric,
    }
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(
        open_storage(storage_url),
        name,
        direction,
        identity,
        reference.train.seed if seed is None else seed,
        trials,
        prune_after,
    )
    if not study.trials:
        start = starting_point(space, reference)
        if start:
            study.enqueue_trial(start, skip_if_exists=True)  # workers starting together queue it once
    done = sum(t.state in FINISHED for t in study.trials)
    if done < trials:
        print(
            f"[tune] {reference.method}: {done} of {trials} trials done in study {name!r} ({storage_url})",
            file=sys.stderr,
            flush=True,
        )
        study.optimize(
            _objective(base, space, metric, output_dir, source),
            n_trials=trials - done,
            timeout=timeout,
            catch=(ConfigError,),
            callbacks=[
                optuna.study.MaxTrialsCallback(trials, states=FINISHED),
                lambda _, trial: _announce(trial, metric),
            ],
        )
    return write_outputs(
        study, base, space, metric, output_dir, storage_url, final, source, command, show_progress
    )


def _objective(base: dict[str, Any], space: dict[str, Param], metric: str, output_dir: Path, source: str):
    from ptuning_v2.training.recipe import train_run

    def objective(trial: optuna.Trial) -> float:
        params = {path: param.suggest(trial) for path, param in space.items()}
        directory = trial_dir(output_dir, trial.number)
        shutil.rmtree(directory, ignore_errors=True)

        def report(step: int, value: float) -> None:
            trial.report(value, step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"dev {metric} {value:.4f} at step {step}")

        try:
            run = resolve_run_config(apply_params(base, params), f"{source} (trial {trial.number})")
            metrics = train_run(run, directory, show_progress=False, on_evaluate=report, evaluate_test=False)
        except ConfigError as exc:
            trial.set_user_attr("error", str(exc))
            raise
        finally:
            for child in directory.iterdir() if directory.is_dir() else ():
                if child.is_dir():  # weights and resumable states: the best config is retrained instead
                    shutil.rmtree(child)
        for key in ("steps", "best_step", "train_seconds"):
            trial.set_user_attr(key, metrics[key])
        return float(metrics["dev"][metric])

    return objective


def trial_dir(output_dir: Path, number: int) -> Path:
    return output_dir / "trials" / f"trial_{number:04d}"


def _announce(trial: FrozenTrial, metric: str) -> None:
    if trial.state == TrialState.COMPLETE:
        outcome = f"dev {metric} {trial.value:.4f}"
    elif trial.state == TrialState.PRUNED:
        step = max(trial.intermediate_values, default=None)
        outcome = f"pruned at step {step}"
    else:
        outcome = f"{trial.state.name.lower()}: {trial.user_attrs.get('error', 'see the log above')}"
    params = ", ".join(f"{k}={_short(v)}" for k, v in trial.params.items())
    print(f"[tune] trial {trial.number}: {outcome} ({params})", file=sys.stderr, flush=True)


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def write_outputs(
    study: optuna.Study,
    base: dict[str, Any],
    space: dict[str, Param],
    metric: str,
    output_dir: Path,
    storage_url: str,
    final: bool,
    source: str,
    command: str | None,
    show_progress: bool,
) -> dict[str, Any]:
    """The tables, plots, best config and (with ``final``) the best config's test run."""
    trials = study.get_trials(deepcopy=False)
    rows = trial_rows(trials, list(space))
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = study.best_trial if complete else None
    write_tables(rows, list(space), metric, output_dir, best.number if best else None)
    notes = [plot_history(study, metric, output_dir / "optimisation_history.png")]
    notes.append(plot_importances(study, metric, output_dir / "param_importances.png"))
    if best is None:
        errors = [t.user_attrs["error"] for t in trials if "error" in t.user_attrs]
        raise ConfigError(
            f"no trial of study {study.study_name!r} finished"
            + (f"; the last error: {errors[-1]}" if errors else "")
        )
    best_config = {"method": base.get("method", RunConfig.method), **apply_params(base, best.params)}
    header = (
        f"# Best of {len(complete)} complete trials of `ptv2 tune` (study {study.study_name!r}): trial "
        f"{best.number}, dev {metric} {best.value:.4f}.\n# Train it: ptv2 train best.yaml --output-dir DIR\n"
    )
    write_text_atomic(output_dir / "best.yaml", header + yaml.safe_dump(best_config, sort_keys=False))
    summary_path = output_dir / "tune.json"
    previous = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.is_file() else {}
    summary: dict[str, Any] = {
        "command": command,
        "study_name": study.study_name,
        "storage": storage_url,
        "method": base.get("method", RunConfig.method),
        "metric": metric,
        "direction": study.direction.name.lower(),
        "search_space": {path: p.to_dict() for path, p in space.items()},
        "trials": {state.name.lower(): sum(t.state == state for t in trials) for state in TrialState},
        "best": {
            "number": best.number,
            "dev": best.value,
            "params": best.params,
            "steps": best.user_attrs.get("steps"),
        },
        "final": None,
        "notes": [note for note in notes if note],
    }
    if final:
        summary["final"] = final_run(
            best, best_config, output_dir, previous.get("final"), source, show_progress
        )
    write_json_atomic(summary_path, summary)
    return summary


def final_run(
    best: FrozenTrial,
    config: dict[str, Any],
    output_dir: Path,
    previous: dict[str, Any] | None,
    source: str,
    show_progress: bool,
) -> dict[str, Any]:
    """The best config trained again in ``OUTPUT_DIR/best`` and evaluated once on dev and test.

    A finished run of the same trial is read back, so re-running a complete search costs nothing.
    """
    from ptuning_v2.training.recipe import train_run

    directory = output_dir / "best"
    if previous and previous.get("trial") == best.number and (directory / "metrics.json").is_file():
        return previous
    shutil.rmtree(directory, ignore_errors=True)
    run = resolve_run_config(copy.deepcopy(config), f"{source} (best trial)")
    print(
        f"[tune] training the best config (trial {best.number}) in {directory}", file=sys.stderr, flush=True
    )
    metrics = train_run(run, directory, show_progress=show_progress)
    return {
        "trial": best.number,
        "run_dir": str(directory),
        "dev": metrics["dev"],
        "test": metrics["test"],
        "steps": metrics["steps"],
        "train_seconds": metrics["train_seconds"],
    }
