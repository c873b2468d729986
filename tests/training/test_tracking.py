"""TensorBoard logging through Accelerate, and one progress line per run in a captured log."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tiny_runs import sentiment_run

from ptuning_v2.methods import load_run_config
from ptuning_v2.training.recipe import train_run
from ptuning_v2.training.tracking import flatten_config, tracker_values


def test_tensorboard_events_and_one_summary_line(
    tiny_bert_dir: Path, sentiment_csvs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = load_run_config(
        None,
        sentiment_run(
            tiny_bert_dir,
            sentiment_csvs,
            "train.max_steps=6",
            "train.eval_every=3",
            "train.lr=5e-2",
            "prompt.num_virtual_tokens=4",
            "train.log_with=tensorboard",
        ),
    )
    train_run(run, tmp_path / "run", show_progress=True)

    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    loss = [(e.step, e.value) for e in events.Scalars("train/loss")]
    assert loss == [(r["step"], pytest.approx(r["loss"])) for r in log if r["type"] == "train"]
    dev = [(e.step, e.value) for e in events.Scalars("validation/accuracy")]
    assert dev == [(r["step"], pytest.approx(r["accuracy"])) for r in log if r["type"] == "eval"]
    assert {"train/lr", "validation/macro_f1"} <= set(events.Tags()["scalars"])
    (hparams_file,) = (tmp_path / "run" / "tensorboard").glob("*/hparams.yml")
    hparams = yaml.safe_load(hparams_file.read_text())
    assert hparams["train.lr"] == 5e-2 and hparams["train.max_steps"] == 6
    assert hparams["model"] == str(tiny_bert_dir) and hparams["data.columns.text"] == "review"

    err = capsys.readouterr().err
    # pytest's capture is not a terminal: no bar redraws (\r), one line for the run
    (line,) = [line for line in err.replace("\r", "\n").splitlines() if "ptuning_v2 classification" in line]
    best = max(r["accuracy"] for r in log if r["type"] == "eval")
    assert line.startswith("ptuning_v2 classification: 6/6 steps in ")
    assert f"best dev accuracy {best:.4f} at step " in line


def test_flat_hyper_parameters_and_tracker_scalars() -> None:
    flat = flatten_config({"train": {"lr": 0.01, "layer_lr_ranges": None, "x": [1, 2]}, "model": "m"})
    assert flat == {"train.lr": 0.01, "train.layer_lr_ranges": "null", "train.x": "[1, 2]", "model": "m"}
    record = {"type": "eval", "split": "validation", "step": 4, "f1": 0.5, "scheme": "IOB2", "ok": True}
    assert tracker_values(record) == {"validation/f1": 0.5}
