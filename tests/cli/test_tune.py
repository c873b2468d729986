"""``ptv2 tune``: an Optuna search on dev in a resumable SQLite study, then the best config tested once."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from ptuning_v2.cli.main import main
from ptuning_v2.methods import load_run_config


def write_config(path: Path, model: Path, csvs: dict[str, Path], method: str, tune: dict, **train) -> Path:
    config = {
        "model": str(model),
        "method": method,
        "data": {k: str(v) for k, v in csvs.items()} | {"columns": {"text": "review", "label": "sentiment"}},
        "prompt": {"num_virtual_tokens": 4},
        "head": {"pooling": "mean"},
        "train": {"max_steps": 4, "eval_every": 2, "batch_size": 16, "max_length": 32} | train,
        "tune": tune,
    }
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def test_interrupted_search_resumes_and_the_best_config_is_tested_once(
    tiny_bert_dir, sentiment_csvs, tmp_path
) -> None:
    # A smaller space than the built-in one keeps the trials fast; the config's tune: section sets it.
    tune = {"ptuning_v2": {"prompt.num_virtual_tokens": {"choices": [2, 4]}, "prompt.reparameterize": None}}
    config = write_config(tmp_path / "c.yaml", tiny_bert_dir, sentiment_csvs, "ptuning_v2", tune)
    out = tmp_path / "tune"
    args = ["tune", str(config), "--output-dir", str(out), "--no-progress"]
    storage = f"sqlite:///{out / 'study.db'}"

    assert main([*args, "--trials", "2", "--no-final"]) == 0
    first = optuna.load_study(study_name="ptuning_v2", storage=storage).trials
    assert [t.state for t in first] == [TrialState.COMPLETE] * 2
    # trial 0 is the config as written; every dev evaluation (steps 2 and 4) reached the study
    assert first[0].params == {
        "train.lr": 5e-2,
        "train.head_lr": 5e-3,
        "prompt.num_virtual_tokens": 4,
        "prompt.dropout": 0.0,
    }
    assert sorted(first[0].intermediate_values) == [2, 4]
    assert not (out / "best").exists()

    assert main([*args, "--trials", "3"]) == 0  # the same storage: one more trial, not three
    study = optuna.load_study(study_name="ptuning_v2", storage=storage)
    trials = study.trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    for old, new in zip(first, trials, strict=False):
        assert (new.params, new.value, new.datetime_start, new.intermediate_values) == (
            old.params,
            old.value,
            old.datetime_start,
            old.intermediate_values,
        )
    assert trials[2].params != trials[0].params and trials[2].params != trials[1].params

    with open(out / "trials.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [(r["number"], r["state"]) for r in rows] == [
        ("0", "complete"),
        ("1", "complete"),
        ("2", "complete"),
    ]
    assert [float(r["value"]) for r in rows] == [t.value for t in trials]
    assert f"| **{study.best_trial.number}** | complete |" in (out / "trials.md").read_text()
    for name in ("optimisation_history.png", "param_importances.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # trials keep their logs and dev metrics, not their weights, and never see the test split
    trial = out / "trials" / "trial_0000"
    assert sorted(p.name for p in trial.iterdir()) == ["log.jsonl", "metrics.json"]
    assert json.loads((trial / "metrics.json").read_text())["test"] == {}

    best = study.best_trial
    run = load_run_config(out / "best.yaml")  # runnable as it stands
    assert (
        run.train.lr == best.params["train.lr"]
        and run.prompt.num_virtual_tokens == best.params["prompt.num_virtual_tokens"]
    )
    assert run.method == "ptuning_v2" and run.train.max_steps == 4
    final = json.loads((out / "best" / "metrics.json").read_text())
    assert final["dev"]["accuracy"] == pytest.approx(best.value)  # the same seeded run as the trial
    assert 0 <= final["test"]["accuracy"] <= 1
    summary = json.loads((out / "tune.json").read_text())
    assert summary["trials"]["complete"] == 3 and summary["final"]["trial"] == best.number
    assert summary["final"]["test"] == final["test"]


def test_a_trial_that_trails_the_median_is_pruned(tiny_bert_dir, sentiment_csvs, tmp_path) -> None:
    tune = {"linear_probe": {"train.head_lr": {"choices": [1e-6, 0.1]}}}
    config = write_config(
        tmp_path / "c.yaml", tiny_bert_dir, sentiment_csvs, "linear_probe", tune, max_steps=6, warmup_ratio=0
    )
    out = tmp_path / "tune"
    storage = f"sqlite:///{out / 'study.db'}"
    out.mkdir()
    queued = optuna.create_study(storage=storage, study_name="linear_probe", direction="maximize")
    queued.enqueue_trial({"train.head_lr": 0.1})  # learns: dev accuracy rises above chance by step 4
    queued.enqueue_trial({"train.head_lr": 1e-6})  # stays at chance
    args = [
        "tune",
        str(config),
        "--output-dir",
        str(out),
        "--trials",
        "2",
        "--prune-after",
        "1",
        "--no-final",
    ]
    assert main(args) == 0
    good, weak = optuna.load_study(study_name="linear_probe", storage=storage).trials
    assert good.state == TrialState.COMPLETE and sorted(good.intermediate_values) == [2, 4, 6]
    assert weak.state == TrialState.PRUNED and max(weak.intermediate_values) < 6
    assert max(weak.intermediate_values.values()) < good.intermediate_values[max(weak.intermediate_values)]
    assert "1 pruned" in (out / "trials.md").read_text()
