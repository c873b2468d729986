"""Multiple choice: one score per choice, a masked softmax over choices, and a tiny model that learns."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from torch import nn

from ptuning_v2.cli.main import main
from ptuning_v2.config import RunConfig
from ptuning_v2.methods import get_method
from ptuning_v2.models import load_backbone, load_tokenizer
from ptuning_v2.tasks.multiple_choice import MC_FEATURES, MultipleChoiceTask

POSITIVE, NEGATIVE = ["good", "great", "fun", "best"], ["bad", "awful", "boring", "worst", "terrible"]


def test_each_choice_scored_and_padding_choices_masked(tiny_bert_dir) -> None:
    run = RunConfig.from_dict({"model": str(tiny_bert_dir), "task": "multiple_choice", "method": "full"})
    tokenizer = load_tokenizer(str(tiny_bert_dir))
    task = MultipleChoiceTask(run, tokenizer)
    model = task.build_model(
        get_method("full").build(load_backbone(str(tiny_bert_dir), "encoder"), run, tokenizer)
    )
    model.eval()
    rows = [
        {
            "id": "0",
            "context": "the movie",
            "question": "was it",
            "choices": ["good", "bad", "awful"],
            "label": 0,
        },
        {"id": "1", "context": "", "question": "the film is", "choices": ["boring", "fun"], "label": 1},
    ]
    features = task.featurize(Dataset.from_list(rows, features=MC_FEATURES), "test")
    assert [len(f["choices"]) for f in features] == [3, 2]
    assert (
        tokenizer.decode(features[0]["choices"][1]["input_ids"]) == "[CLS] the movie was it [SEP] bad [SEP]"
    )
    batch = task.collate(features)
    assert batch["input_ids"].shape[0] == 6 and batch["choice_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    out = model(batch)
    assert out["logits"].shape == (2, 3)
    probs = out["logits"].softmax(-1)
    assert probs[1, 2] == 0 and torch.allclose(probs.sum(-1), torch.ones(2))
    # Each score is the head on that choice's own pooled state: recompute the second example's choices alone.
    alone = task.collate([features[1]])
    torch.testing.assert_close(model(alone)["logits"][0], out["logits"][1, :2], atol=1e-5, rtol=1e-5)
    expected = nn.functional.cross_entropy(out["logits"], torch.tensor([0, 1]))
    torch.testing.assert_close(out["loss"], expected)


def write_items(path: Path, n: int, seed: int) -> Path:
    """The right choice is the one positive word among 3 or 4 choices."""
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        wrong = rng.sample(NEGATIVE, rng.choice([2, 3]))
        choices = [rng.choice(POSITIVE), *wrong]
        rng.shuffle(choices)
        lines.append(
            json.dumps(
                {
                    "id": f"q{i}",
                    "premise": "the movie was",
                    "question": "which is it",
                    "choices": choices,
                    "label": next(j for j, c in enumerate(choices) if c in POSITIVE),
                }
            )
        )
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def mc_args(model_dir: Path, files: dict[str, Path], out: Path, *extra: str) -> list[str]:
    sets = [
        f"model={model_dir}",
        "task=multiple_choice",
        "method=full",
        "data.columns={context: premise}",
        *(f"data.{split}={path}" for split, path in files.items()),
        "train.batch_size=8",
        "train.max_steps=40",
        "train.lr=1e-3",
        "train.head_lr=1e-3",
        "train.eval_every=20",
        *extra,
    ]
    return ["train", "--no-progress", "--output-dir", str(out)] + [a for s in sets for a in ("--set", s)]


def test_tiny_model_learns_a_trivial_rule(tiny_bert_dir, tmp_path, capsys) -> None:
    files = {
        split: write_items(tmp_path / f"{split}.jsonl", n, seed)
        for split, n, seed in (("train", 96, 0), ("validation", 32, 1), ("test", 48, 2))
    }
    assert main(mc_args(tiny_bert_dir, files, tmp_path / "run")) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["test"]["examples"] == 48
    assert metrics["test"]["accuracy"] >= 0.9  # chance is 1/3 or 1/4
    capsys.readouterr()

    item = json.dumps({"question": "the story was", "choices": ["awful", "great", "boring"]})
    assert main(["predict", str(tmp_path / "run" / "checkpoint"), item]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["choice"] == "great" and result["label"] == 1
    assert sum(result["probabilities"]) == pytest.approx(1.0)


def test_label_out_of_range_names_file_and_line(tiny_bert_dir, tmp_path, capsys) -> None:
    train = tmp_path / "train.jsonl"
    train.write_text(
        '{"premise": "p", "question": "q", "choices": ["a", "b"], "label": 1}\n'
        '{"premise": "p", "question": "q", "choices": ["a", "b"], "label": 2}\n',
        encoding="utf-8",
    )
    assert main(mc_args(tiny_bert_dir, {"train": train}, tmp_path / "run")) == 2
    err = capsys.readouterr().err
    assert str(train) in err and "line 2" in err and "field 'label'" in err
