"""``ptv2 tune-summary``: many stored studies read back into one table."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from ptuning_v2.cli.main import main
from ptuning_v2.config import ConfigError
from ptuning_v2.tuning.search import open_storage, open_study
from ptuning_v2.tuning.summary import summarise

LR = FloatDistribution(1e-3, 1e-1, log=True)
LENGTH = CategoricalDistribution([8, 16, 32])


def make_study(directory: Path, data: str, task: str, method: str, trials: list[tuple]) -> None:
    """A stored study as ``ptv2 tune`` leaves it; each trial is (lr, length, dev value, state)."""
    directory.mkdir(parents=True)
    storage = open_storage(f"sqlite:///{directory / 'study.db'}")
    config = {"data": {"name": data}, "task": task, "method": method}
    identity = {"config": config, "search space": {}, "metric": "accuracy"}
    study = open_study(storage, method, "maximize", identity, seed=0, trials=4, prune_after=4)
    for lr, length, value, state in trials:
        study.add_trial(
            create_trial(
                params={"train.lr": lr, "prompt.num_virtual_tokens": length},
                distributions={"train.lr": LR, "prompt.num_virtual_tokens": LENGTH},
                value=value if state == TrialState.COMPLETE else None,
                intermediate_values={50: value} if state == TrialState.PRUNED else {},
                state=state,
            )
        )


def test_every_study_is_one_row_with_its_first_and_best_trials(tmp_path) -> None:
    done, pruned = TrialState.COMPLETE, TrialState.PRUNED
    make_study(
        tmp_path / "rt" / "ptuning_v2",
        "rotten_tomatoes",
        "classification",
        "ptuning_v2",
        [(1e-2, 16, 0.70, done), (3e-2, 8, 0.75, done), (2e-3, 32, 0.60, pruned), (5e-2, 16, 0.74, done)],
    )
    make_study(tmp_path / "trec" / "ptuning_v2", "trec6", "classification", "ptuning_v2",
               [(1e-2, 16, 0.50, pruned), (2e-2, 32, 0.90, done), (3e-2, 8, 0.85, done)])  # fmt: skip
    rows = summarise(tmp_path)
    assert [(r.data, r.method) for r in rows] == [("rotten_tomatoes", "ptuning_v2"), ("trec6", "ptuning_v2")]
    rt, trec = rows
    assert (rt.complete, rt.pruned, rt.first_dev, rt.best_dev, rt.best_trial) == (3, 1, 0.70, 0.75, 1)
    assert [p["train.lr"] for p in rt.top_params] == [3e-2, 5e-2, 1e-2]
    assert trec.first_dev is None and trec.best_params == {"train.lr": 2e-2, "prompt.num_virtual_tokens": 32}

    assert main(["tune-summary", str(tmp_path)]) == 0
    table = (tmp_path / "summary.md").read_text(encoding="utf-8")
    assert (
        "| rotten_tomatoes | ptuning_v2 | accuracy | 4 (1) | 0.7000 | 0.7500 (trial 1) | lr 0.03, " in table
    )
    # the same values tried on both data sets: one row, each data set's dev and the mean; a pruned trial is "-"
    assert "| lr 0.03, num_virtual_tokens 8 | 0.7500 | 0.8500 | 0.8000 (2) |" in table
    assert "| lr 0.01, num_virtual_tokens 16 |" not in table
    stored = json.loads((tmp_path / "summary.json").read_text(encoding="utf-8"))
    assert stored["command"] == f"ptv2 tune-summary {tmp_path}"
    assert [s["best_dev"] for s in stored["studies"]] == [0.75, 0.90]


def test_a_folder_without_studies_or_finished_trials_is_one_line(tmp_path) -> None:
    with pytest.raises(ConfigError, match="no study found"):
        summarise(tmp_path)
    make_study(tmp_path / "rt" / "lora", "rotten_tomatoes", "classification", "lora",
               [(1e-2, 16, 0.5, TrialState.PRUNED)])  # fmt: skip
    with pytest.raises(ConfigError, match="no complete trial yet"):
        summarise(tmp_path)
    assert optuna.get_all_study_summaries(open_storage(f"sqlite:///{tmp_path / 'rt/lora/study.db'}"))
