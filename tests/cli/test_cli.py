"""The command line: output contract, predictions, and one clear message for bad input."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from tiny_runs import sentiment_run
from transformers import BertConfig, BertModel

from ptuning_v2.cli.main import main


def train_args(model_dir: Path, csvs: dict[str, Path], out: Path, *extra: str) -> list[str]:
    sets = sentiment_run(model_dir, csvs, "train.max_steps=4", "train.eval_every=2", *extra)
    return ["train", "--no-progress", "--output-dir", str(out)] + [a for s in sets for a in ("--set", s)]


def test_train_eval_predict_round_trip(tiny_bert_dir, sentiment_csvs, tmp_path, capsys, monkeypatch) -> None:
    assert main(train_args(tiny_bert_dir, sentiment_csvs, tmp_path / "run")) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["method"] == "ptuning_v2" and "accuracy" in printed["test"]
    checkpoint = tmp_path / "run" / "checkpoint"

    assert main(["eval", str(checkpoint), "--output-dir", str(tmp_path / "eval")]) == 0
    evaluated = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    trained = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert evaluated["test"]["accuracy"] == trained["test"]["accuracy"]
    capsys.readouterr()

    assert main(["predict", str(checkpoint), "the movie was great", "awful film"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["text"] for line in lines] == ["the movie was great", "awful film"]
    assert all(
        line["label"] in {"pos", "neg"} and abs(sum(line["probabilities"].values()) - 1) < 1e-5
        for line in lines
    )

    monkeypatch.setattr("sys.stdin", io.StringIO("good\n\nbad\n"))
    assert main(["predict", str(checkpoint)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("broken", "content", "expected"),
    [
        ("train", "review,stars\ngood movie,5\n", ["train.csv", "label"]),
        ("test", "review,sentiment\ngood movie,pos\nbad movie,meh\n", ["test.csv", "line 3", "meh"]),
        ("validation", "", ["validation.csv", "empty"]),
    ],
)
def test_bad_csv_ends_with_one_clear_message(
    tiny_bert_dir, sentiment_csvs, tmp_path, capsys, broken, content, expected
) -> None:
    csvs = dict(sentiment_csvs)
    csvs[broken] = write(tmp_path / f"{broken}.csv", content)
    assert main(train_args(tiny_bert_dir, csvs, tmp_path / "run")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("ptv2 train: error:")
    for fragment in expected:
        assert fragment in err


def test_config_errors_name_the_field(tmp_path, capsys) -> None:
    config = write(tmp_path / "run.yaml", "train:\n  lr: fast\n")
    assert main(["train", str(config), "--output-dir", str(tmp_path)]) == 2
    assert "train.lr: expected a number, got 'fast'" in capsys.readouterr().err
    config = write(tmp_path / "run2.yaml", "trian:\n  lr: 0.1\n")
    assert main(["train", str(config), "--output-dir", str(tmp_path)]) == 2
    assert "unknown field(s) ['trian']; did you mean train?" in capsys.readouterr().err


def test_checkpoint_refuses_a_different_backbone(tiny_bert_dir, sentiment_csvs, tmp_path, capsys) -> None:
    assert main(train_args(tiny_bert_dir, sentiment_csvs, tmp_path / "run")) == 0
    other = tmp_path / "other_bert"
    config = BertConfig.from_pretrained(tiny_bert_dir)
    BertModel(config).save_pretrained(other)  # same architecture, different weights
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json"):
        if (tiny_bert_dir / name).exists():
            (other / name).write_bytes((tiny_bert_dir / name).read_bytes())
    meta_path = tmp_path / "run" / "checkpoint" / "ptv2_checkpoint.json"
    meta = json.loads(meta_path.read_text())
    meta["run_config"]["model"] = str(other)
    meta_path.write_text(json.dumps(meta))
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "run" / "checkpoint"), "good"]) == 2
    assert "weights differ" in capsys.readouterr().err
