"""``ptv2 plot``: curves read from the logs the trainer writes, drawn into a real image file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image
from tiny_runs import sentiment_run

from ptuning_v2.cli.main import main
from ptuning_v2.methods import load_run_config
from ptuning_v2.training.curves import read_curve
from ptuning_v2.training.recipe import train_run

RESULTS = Path(__file__).resolve().parents[2] / "results" / "understanding"


@pytest.fixture()
def tiny_run(tiny_bert_dir: Path, sentiment_csvs: dict[str, Path], tmp_path: Path) -> Path:
    """A real (tiny) training run: log.jsonl, metrics.json and checkpoint/ as `ptv2 train` leaves them."""
    run = load_run_config(
        None,
        sentiment_run(
            tiny_bert_dir,
            sentiment_csvs,
            "train.max_steps=8",
            "train.eval_every=2",
            "prompt.num_virtual_tokens=4",
        ),
    )
    train_run(run, tmp_path / "rt", show_progress=False)
    return tmp_path / "rt"


def test_curves_hold_the_logged_points(tiny_run: Path) -> None:
    log = [json.loads(line) for line in (tiny_run / "log.jsonl").read_text().splitlines()]
    curve = read_curve(tiny_run)
    assert (curve.label, curve.metric) == ("ptuning_v2", "accuracy")  # from the run's config and task
    assert curve.loss == [(r["step"], r["loss"]) for r in log if r["type"] == "train"]
    assert curve.dev == [(r["step"], r["accuracy"]) for r in log if r["type"] == "eval"]
    assert [step for step, _ in curve.dev] == [2, 4, 6, 8]
    committed = read_curve(RESULTS / "conll2003_full_log.jsonl")  # a log file with its X_metrics.json
    assert (committed.label, committed.metric) == ("full", "f1") and len(committed.dev) == 4


def test_plot_several_runs_into_the_first_runs_folder(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    second = tmp_path / "again"
    shutil.copytree(tiny_run, second)  # a resumed run repeats steps: the later record wins
    with open(second / "log.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"type": "train", "step": 8, "epoch": 1, "loss": 0.125, "lr": 0.0}) + "\n")
    assert read_curve(second).loss[-1] == (8, 0.125)

    assert main(["plot", str(tiny_run), str(second), str(RESULTS / "conll2003_ptuning_v2_log.jsonl")]) == 0
    image = tiny_run / "training_curves.png"
    with Image.open(image) as png:
        assert png.format == "PNG" and png.size[0] > 800 and png.size[1] > 300
        png.verify()
    assert sorted(p.name for p in tiny_run.iterdir() if p.name.startswith(".")) == []  # no temp file left
    out = capsys.readouterr().out
    assert "ptuning_v2 (rt): 8 loss points, 4 dev points" in out and f"wrote {image}" in out

    assert main(["plot", str(tiny_run), "--output", str(tmp_path / "figs" / "curves.svg")]) == 0
    assert (tmp_path / "figs" / "curves.svg").read_text().lstrip().startswith("<?xml")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no log.jsonl here"),
        ("", "no training records"),
        ('{"type": "train", "step": 1, "loss": 0.5}\nnot json\n', "log.jsonl: line 2: not a JSON record"),
    ],
)
def test_bad_input_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, content: str | None, message: str
) -> None:
    if content is not None:
        (tmp_path / "log.jsonl").write_text(content, encoding="utf-8")
    assert main(["plot", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ptv2 plot: error: ") and message in err
    assert not (tmp_path / "training_curves.png").exists()


def test_a_log_cut_short_by_a_kill_still_plots(tiny_run: Path, tmp_path: Path, capsys) -> None:
    shutil.copytree(tiny_run, tmp_path / "run")
    log = tmp_path / "run" / "log.jsonl"
    log.write_text(log.read_text(encoding="utf-8") + '{"type": "train", "st', encoding="utf-8")
    assert main(["plot", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    assert f"[log] {log}: line " in err and "is cut short (the run was killed); left out" in err


def test_a_metric_the_run_did_not_log_is_refused_with_those_it_did(tiny_run: Path, capsys) -> None:
    assert main(["plot", str(tiny_run), "--metric", "acuracy"]) == 2
    err = capsys.readouterr().err
    assert "--metric acuracy: the dev records have [" in err and "did you mean 'accuracy'?" in err


def test_output_must_be_an_image_format(tiny_run: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["plot", str(tiny_run), "--output", str(tiny_run / "curves.txt")]) == 2
    assert "must end in one of .png, .svg, .pdf" in capsys.readouterr().err
