"""``ptv2 compare``: every method on one budget, each in its own process; a failure is a row, not a stop."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import optuna
import pytest
import yaml

from ptuning_v2.cli.main import main
from ptuning_v2.config import RunConfig
from ptuning_v2.experiments.report import markdown_report
from ptuning_v2.experiments.untuned import evaluate_untuned


@pytest.fixture
def config_path(tiny_bert_dir, sentiment_csvs, tmp_path) -> Path:
    """A two-step sentiment run on the tiny BERT, shared by every compared method."""
    config = {
        "model": str(tiny_bert_dir),
        "data": {k: str(v) for k, v in sentiment_csvs.items()}
        | {"columns": {"text": "review", "label": "sentiment"}},
        "prompt": {"num_virtual_tokens": 4},
        "train": {"max_steps": 2, "batch_size": 16, "max_length": 32},
    }
    path = tmp_path / "compare.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def test_compare_runs_each_method_and_reports_a_failure(config_path: Path, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    code = main(
        [
            "compare",
            str(config_path),
            "--methods",
            "ptuning_v2,prompt_tuning",
            "--output-dir",
            str(out),
            # 120 prompt positions + 32 tokens do not fit the tiny model's 128: this run must fail.
            "--method-set",
            "prompt_tuning:prompt.num_virtual_tokens=120",
        ]
    )
    assert code == 1
    result = json.loads((out / "comparison.json").read_text(encoding="utf-8"))
    ok, failed = result["methods"]
    assert (ok["method"], ok["status"], failed["method"], failed["status"]) == (
        "ptuning_v2",
        "ok",
        "prompt_tuning",
        "failed",
    )
    assert "ConfigError" in failed["error"] and "positions" in failed["error"]
    # the method's own defaults apply under the shared config: ptuning_v2's learning rate
    assert ok["lr"] == 5e-2 and ok["steps"] == 2
    assert ok["trainable_params"] == 2 * 4 * 2 * 32 + (32 * 2 + 2)  # layers * k * (key + value) + head
    assert ok["peak_rss_bytes"] > 50 * 2**20 and ok["checkpoint_bytes"] > 0
    assert 0 <= ok["test"]["accuracy"] <= 1
    assert result["budget"]["max_steps"] == 2 and result["metric"] == "accuracy"
    table = (out / "comparison.md").read_text(encoding="utf-8")
    assert table == markdown_report(result)
    assert "| prompt_tuning | failed |" in table and "| ptuning_v2 | ok |" in table
    assert "--method-set prompt_tuning:prompt.num_virtual_tokens=120" in table
    assert (out / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "runs" / "ptuning_v2" / "checkpoint" / "adapter.safetensors").is_file()
    assert "| prompt_tuning | failed |" in capsys.readouterr().out


def test_the_untuned_baseline_is_a_row_scored_on_test_without_training(config_path: Path, tmp_path) -> None:
    out = tmp_path / "out"
    args = ["compare", str(config_path), "--methods", "untuned,linear_probe", "--output-dir", str(out)]
    assert main(args) == 0
    result = json.loads((out / "comparison.json").read_text(encoding="utf-8"))
    untuned, probe = result["methods"]
    assert (untuned["method"], untuned["status"], probe["status"]) == ("untuned", "ok", "ok")
    assert untuned["trainable_params"] == 0 and untuned["steps"] == 0 and untuned["dev"] == {}
    assert "lr" not in untuned and not (out / "runs" / "untuned" / "checkpoint").exists()
    # the child's numbers are those of the same evaluation in this process (same seed, same head)
    stored = json.loads((out / "runs" / "untuned" / "run_config.json").read_text(encoding="utf-8"))
    assert untuned["test"] == evaluate_untuned(RunConfig.from_dict(stored), tmp_path / "again")["test"]
    table = (out / "comparison.md").read_text(encoding="utf-8")
    assert table == markdown_report(result)
    assert f"| untuned | ok | - | {untuned['test']['accuracy']:.4f} | 0 |" in table
    assert "untuned: the frozen backbone" in table


def test_progress_reaches_the_terminal_and_the_log(config_path: Path, tmp_path, capsys) -> None:
    from ptuning_v2.experiments.runner import read_base_config, run_comparison

    out = tmp_path / "out"
    result = run_comparison(
        read_base_config(config_path, []), ["linear_probe"], out, show_progress=True, source="c"
    )
    assert result["methods"][0]["status"] == "ok"
    log = (out / "runs" / "linear_probe" / "train.log").read_bytes().decode()  # "\r" kept as written
    assert "2/2" in log  # the child's progress bar reached its last step
    assert log in capsys.readouterr().err


def test_unknown_method_is_rejected_before_any_run(tmp_path, capsys) -> None:
    config_path = tmp_path / "c.yaml"
    config_path.write_text("train: {max_steps: 1}\n", encoding="utf-8")
    code = main(
        ["compare", str(config_path), "--methods", "ptuning_v2,bogus", "--output-dir", str(tmp_path / "o")]
    )
    assert code == 2
    assert "bogus" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_reuse_reads_back_unchanged_methods_and_retrains_changed_ones(
    config_path: Path, tmp_path, capsys
) -> None:
    out = tmp_path / "out"
    args = ["compare", str(config_path), "--methods", "ptuning_v2,linear_probe", "--output-dir", str(out)]
    assert main(args) == 0
    first = json.loads((out / "comparison.json").read_text(encoding="utf-8"))
    adapter = out / "runs" / "linear_probe" / "checkpoint" / "adapter.safetensors"
    trained_at = adapter.stat().st_mtime_ns

    assert main([*args, "--reuse", "--method-set", "ptuning_v2:train.lr=0.02"]) == 0
    second = json.loads((out / "comparison.json").read_text(encoding="utf-8"))
    (_, l_first), (p_second, l_second) = first["methods"], second["methods"]
    assert adapter.stat().st_mtime_ns == trained_at  # not trained again
    assert l_second == {**l_first, "reused": True}
    assert "reused" not in p_second and p_second["lr"] == 0.02
    assert "(`--reuse`): linear_probe." in (out / "comparison.md").read_text(encoding="utf-8")
    assert "linear_probe: ok (reused the finished run)" in capsys.readouterr().err


def test_seeds_give_mean_and_std_and_a_time_budget_stops_every_run(config_path: Path, tmp_path) -> None:
    out = tmp_path / "out"
    args = [
        "compare",
        str(config_path),
        "--methods",
        "linear_probe",
        "--output-dir",
        str(out),
        "--seeds",
        "2",
    ]
    args += ["--budget-seconds", "0.3", "--set", "train.max_steps=100000"]
    assert main(args) == 0
    result = json.loads((out / "comparison.json").read_text(encoding="utf-8"))
    (row,) = result["methods"]
    assert result["seeds"] == [42, 43] and row["seeds"] == [42, 43] and row["status"] == "ok"
    runs_dir = out / "runs" / "linear_probe"
    runs = [json.loads((runs_dir / f"seed_{s}" / "metrics.json").read_text()) for s in (42, 43)]
    accuracies = [m["test"]["accuracy"] for m in runs]
    assert [r["test"]["accuracy"] for r in row["runs"]] == accuracies
    assert row["test"]["accuracy"] == pytest.approx(statistics.fmean(accuracies))
    assert row["test_std"]["accuracy"] == pytest.approx(statistics.stdev(accuracies))
    assert row["steps"] == pytest.approx(statistics.fmean(m["steps"] for m in runs))
    # the budget: every run stopped at 0.3 s of optimisation (evaluation not counted), evaluated there
    assert result["budget"]["max_seconds"] == 0.3
    for seed, metrics in zip((42, 43), runs, strict=True):
        assert metrics["out_of_time"] is True and 1 <= metrics["steps"] < 100000
        # both are rounded to 0.01 s in metrics.json, so their difference may show up to 0.01 s short
        assert metrics["train_seconds"] - metrics["eval_seconds"] >= 0.3 - 0.01
        log = [
            json.loads(line) for line in (runs_dir / f"seed_{seed}" / "log.jsonl").read_text().splitlines()
        ]
        assert [r["step"] for r in log if r["type"] == "eval"][-1] == metrics["steps"]
    table = (out / "comparison.md").read_text(encoding="utf-8")
    assert f"{row['test']['accuracy']:.4f} ± {row['test_std']['accuracy']:.4f}" in table
    assert "seeds 42, 43" in table and "0.3 s of training each" in table and "--seeds 2" in table
    assert (out / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    adapter = runs_dir / "seed_43" / "checkpoint" / "adapter.safetensors"
    trained_at = adapter.stat().st_mtime_ns
    assert main([*args, "--reuse"]) == 0
    again = json.loads((out / "comparison.json").read_text(encoding="utf-8"))["methods"][0]
    assert adapter.stat().st_mtime_ns == trained_at and again["reused"] is True
    assert again["test"] == row["test"] and again["test_std"] == row["test_std"]


def test_tune_gives_every_method_its_trials_before_the_test_run(config_path: Path, tmp_path) -> None:
    out = tmp_path / "out"
    args = ["compare", str(config_path), "--methods", "linear_probe", "--output-dir", str(out), "--tune", "2"]
    assert main(args) == 0
    (row,) = json.loads((out / "comparison.json").read_text(encoding="utf-8"))["methods"]
    study = optuna.load_study(
        study_name="linear_probe", storage=f"sqlite:///{out / 'tune' / 'linear_probe' / 'study.db'}"
    )
    assert len(study.trials) == 2 and row["tuned"]["best_trial"] == study.best_trial.number
    head_lr = study.best_trial.params["train.head_lr"]
    assert row["tuned"]["params"] == {"train.head_lr": head_lr} and row["head_lr"] == head_lr
    run_config = json.loads((out / "runs" / "linear_probe" / "run_config.json").read_text(encoding="utf-8"))
    assert run_config["train"]["head_lr"] == head_lr and 0 <= row["test"]["accuracy"] <= 1
    assert not (out / "tune" / "linear_probe" / "best").exists()  # the comparison's run is the test run
    assert (
        f"linear_probe: trial {study.best_trial.number}, dev accuracy" in (out / "comparison.md").read_text()
    )


def test_a_failed_seed_fails_the_row_and_the_others_still_give_the_mean() -> None:
    from ptuning_v2.experiments.runner import aggregate

    ok = {
        "status": "ok",
        "lr": 0.01,
        "head_lr": 0.005,
        "trainable_params": 66,
        "steps": 4,
        "train_seconds": 2.0,
    }
    rows = [
        {**ok, "seed": 1, "dev": {"accuracy": 0.5, "per_class": {}}, "test": {"accuracy": 0.6}},
        {"status": "failed", "seed": 2, "lr": 0.01, "head_lr": 0.005, "error": "boom (exit status 1)"},
        {**ok, "seed": 3, "dev": {"accuracy": 0.7}, "test": {"accuracy": 0.8}, "train_seconds": 4.0},
    ]
    row = aggregate("linear_probe", rows)
    assert (row["status"], row["error"], row["finished_seeds"]) == (
        "failed",
        "seed 2: boom (exit status 1)",
        2,
    )
    assert row["test"] == {"accuracy": pytest.approx(0.7)} and row["test_std"]["accuracy"] == pytest.approx(
        0.1414, abs=1e-4
    )
    assert row["train_seconds"] == 3.0 and row["trainable_params"] == 66 and row["runs"] == rows
    assert "- linear_probe: seed 2: boom" in markdown_report(
        {
            "metric": "accuracy",
            "budget": {
                "seed": 1,
                "max_steps": 4,
                "batch_size": 16,
                "max_length": 32,
                "max_train_examples": None,
            }
            | {"max_eval_examples": None, "prompt_length": 4},
            "seeds": [1, 2, 3],
            "command": None,
            "task": "classification",
            "data": "d",
            "model": "m",
            "device": "cpu",
            "methods": [row],
        }
    )
