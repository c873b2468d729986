"""NER: label alignment, prompt positions kept out, seqeval metrics, predicted character offsets, CLI."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from torch import nn

from ptuning_v2.cli.main import main
from ptuning_v2.config import ConfigError, RunConfig
from ptuning_v2.data import NER_FEATURES, DataError
from ptuning_v2.evaluation.ner import entity_spans, ner_metrics
from ptuning_v2.methods import get_method
from ptuning_v2.models import load_backbone, load_tokenizer
from ptuning_v2.tasks.ner import IGNORE, NerTask, conll_columns, first_subword_positions, split_words

TAGS = ["B-LOC", "B-PER", "I-PER", "O"]


def make_task(model_dir: Path, **train: object) -> NerTask:
    run = RunConfig.from_dict({"model": str(model_dir), "task": "ner", "train": dict(train)})
    task = NerTask(run, load_tokenizer(str(model_dir)))
    task.labels = list(TAGS)
    return task


def test_first_subword_carries_the_label_and_the_rest_are_ignored(tiny_bert_dir) -> None:
    task = make_task(tiny_bert_dir)
    data = Dataset.from_list(
        [{"id": "0", "tokens": ["John", "lives", "in", "Paris"], "ner_tags": ["B-PER", "O", "O", "B-LOC"]}],
        features=NER_FEATURES,
    )
    (feature,) = task.featurize(data, "train")
    pieces = task.tokenizer.convert_ids_to_tokens(feature["input_ids"])
    # "lives" is not in the tiny vocabulary: WordPiece spells it l ##i ##v ##e ##s.
    assert pieces == ["[CLS]", "john", "l", "##i", "##v", "##e", "##s", "in", "paris", "[SEP]"]
    per, o, loc = TAGS.index("B-PER"), TAGS.index("O"), TAGS.index("B-LOC")
    assert feature["labels"] == [IGNORE, per, o, IGNORE, IGNORE, IGNORE, IGNORE, o, loc, IGNORE]
    assert feature["word_positions"] == [1, 2, 7, 8]


def test_truncated_words_have_no_position_and_count_as_o(tiny_bert_dir) -> None:
    assert first_subword_positions([None, 0, 0, 1, None], 3) == [1, 3, -1]
    task = make_task(tiny_bert_dir, max_length=5)
    data = Dataset.from_list(
        [{"id": "0", "tokens": ["the", "lives", "paris"], "ner_tags": ["O", "O", "B-LOC"]}],
        features=NER_FEATURES,
    )
    (feature,) = task.featurize(data, "test")
    assert feature["word_positions"] == [1, 2, -1]
    assert feature["labels"] == [IGNORE, 3, 3, IGNORE, IGNORE]


@pytest.mark.parametrize("mode", ["prefix", "hidden"])
def test_prompt_positions_never_reach_loss_or_logits(tiny_bert_dir, mode) -> None:
    run = RunConfig.from_dict(
        {"model": str(tiny_bert_dir), "task": "ner", "prompt": {"num_virtual_tokens": 5, "mode": mode}}
    )
    tokenizer = load_tokenizer(str(tiny_bert_dir))
    task = NerTask(run, tokenizer)
    task.labels = list(TAGS)
    encoder = get_method("ptuning_v2").build(load_backbone(str(tiny_bert_dir), "encoder"), run, tokenizer)
    model = task.build_model(encoder).eval()
    data = Dataset.from_list(
        [
            {"id": "0", "tokens": ["John", "lives", "in", "Paris"], "ner_tags": ["B-PER", "O", "O", "B-LOC"]},
            {"id": "1", "tokens": ["Mary"], "ner_tags": ["B-PER"]},
        ],
        features=NER_FEATURES,
    )
    batch = task.collate(task.featurize(data, "train"))
    out = model(batch)
    assert (
        out["logits"].shape[:2] == batch["input_ids"].shape
    )  # one score row per real token, none for prompts
    keep = batch["labels"] != IGNORE
    assert int(keep.sum()) == 5
    expected = nn.functional.cross_entropy(out["logits"][keep], batch["labels"][keep])
    torch.testing.assert_close(out["loss"], expected)


def test_seqeval_metrics_by_scheme() -> None:
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    pred = [["B-PER", "I-PER", "O", "O"], ["B-ORG", "B-LOC"]]
    metrics = ner_metrics(gold, pred, "IOB2")
    # gold: PER, LOC, ORG; predicted: PER, ORG, LOC(wrong place) -> 2 right of 3 and 3.
    assert metrics["precision"] == pytest.approx(2 / 3) and metrics["recall"] == pytest.approx(2 / 3)
    assert metrics["per_type"]["LOC"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert metrics["per_type"]["PER"]["f1"] == 1.0 and metrics["entities"] == 3

    # IOB1: an I- tag after O starts an entity (conlleval reads it so).
    iob1 = ner_metrics([["I-PER", "I-PER", "O", "I-LOC"]], [["I-PER", "I-PER", "O", "I-LOC"]], "IOB1")
    assert iob1["f1"] == 1.0 and iob1["entities"] == 2 and iob1["seqeval_mode"] == "conlleval"

    # BIOES strict: an entity must end with E- (or be an S-): a B- without its E- is no entity.
    bioes = ner_metrics([["B-PER", "E-PER", "S-LOC"]], [["B-PER", "I-PER", "S-LOC"]], "BIOES")
    assert bioes["precision"] == 1.0 and bioes["recall"] == 0.5 and bioes["seqeval_mode"] == "strict"
    assert entity_spans(["B-PER", "E-PER", "O", "S-LOC"], "BIOES") == [("PER", 0, 2), ("LOC", 3, 4)]
    assert entity_spans(["I-PER", "I-PER", "B-PER", "O"], "IOB1") == [("PER", 0, 2), ("PER", 2, 3)]


class TagByWord(nn.Module):
    """A stand-in model that tags a token by its id: a known answer for the offset arithmetic."""

    def __init__(self, tokenizer, task: NerTask, rules: dict[str, str]) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.table = torch.full((len(tokenizer),), task.labels.index("O"))
        for word, tag in rules.items():
            self.table[tokenizer.convert_tokens_to_ids(word)] = task.labels.index(tag)

    def forward(self, batch):
        return {"logits": nn.functional.one_hot(self.table[batch["input_ids"]], 4).float()}


def test_predict_returns_entities_with_character_offsets(tiny_bert_dir) -> None:
    task = make_task(tiny_bert_dir)
    task.scheme = "IOB2"
    # "Marys" is "mary" + "##s": the word takes its first subword's tag, "##s" -> B-LOC is never read.
    model = TagByWord(
        task.tokenizer, task, {"john": "B-PER", "mary": "B-PER", "paris": "B-LOC", "##s": "B-LOC"}
    )
    text = "John  met Mary in Paris, then Marys."
    assert [w for w, _, _ in split_words(text)] == [
        "John",
        "met",
        "Mary",
        "in",
        "Paris",
        ",",
        "then",
        "Marys",
        ".",
    ]
    assert task.tokenizer.tokenize("Marys") == ["mary", "##s"]
    (result,) = task.predict(model, [text])
    assert result["entities"] == [
        {"type": "PER", "text": "John", "start": 0, "end": 4},
        {"type": "PER", "text": "Mary", "start": 10, "end": 14},
        {"type": "LOC", "text": "Paris", "start": 18, "end": 23},
        {"type": "PER", "text": "Marys", "start": 30, "end": 35},
    ]
    assert all(text[e["start"] : e["end"]] == e["text"] for e in result["entities"])


def test_conll_columns_come_from_data_columns() -> None:
    assert conll_columns({}) == (0, -1)
    assert conll_columns({"tokens": 0, "ner_tags": "3"}) == (0, 3)
    with pytest.raises(ConfigError, match="ner_tags"):
        conll_columns({"ner_tags": "last"})
    with pytest.raises(ConfigError, match="label"):
        conll_columns({"label": 1})


NAMES, CITIES = ["john", "mary"], ["paris", "london", "berlin"]
FILLER = [
    "the",
    "a",
    "is",
    "was",
    "in",
    "at",
    "with",
    "from",
    "good",
    "bad",
    "movie",
    "film",
    "story",
    "city",
    "river",
]


def synthetic_sentences(n: int, seed: int) -> list[tuple[list[str], list[str]]]:
    """Sentences whose tags follow the words: names are PER, cities LOC, 'acme corp' is ORG."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        tokens, tags = [], []
        for _ in range(rng.randint(3, 8)):
            kind = rng.random()
            if kind < 0.2:
                tokens.append(rng.choice(NAMES).capitalize())
                tags.append("B-PER")
            elif kind < 0.35:
                tokens.append(rng.choice(CITIES).capitalize())
                tags.append("B-LOC")
            elif kind < 0.45:
                tokens += ["Acme", "Corp"]
                tags += ["B-ORG", "I-ORG"]
            else:
                tokens.append(rng.choice(FILLER))
                tags.append("O")
        out.append((tokens, tags))
    return out


def write_conll(path: Path, sentences: list[tuple[list[str], list[str]]]) -> Path:
    lines = ["-DOCSTART- -X- -X- O", ""]
    for tokens, tags in sentences:
        lines += [f"{token} NNP B-NP {tag}" for token, tag in zip(tokens, tags, strict=True)] + [""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def ner_args(model_dir: Path, files: dict[str, Path], out: Path, *extra: str) -> list[str]:
    sets = [
        f"model={model_dir}",
        "task=ner",
        *(f"data.{split}={path}" for split, path in files.items()),
        "train.batch_size=16",
        "train.max_steps=30",
        "train.eval_every=15",
        "train.warmup_ratio=0",
        "train.head_lr=3e-2",
        "train.lr=3e-2",
        "prompt.num_virtual_tokens=4",
        *extra,
    ]
    return ["train", "--no-progress", "--output-dir", str(out)] + [a for s in sets for a in ("--set", s)]


def test_ptv2_train_ner_learns_and_writes_the_contract(tiny_bert_dir, tmp_path, capsys) -> None:
    files = {
        "train": write_conll(tmp_path / "train.txt", synthetic_sentences(160, 0)),
        "validation": write_conll(tmp_path / "valid.txt", synthetic_sentences(40, 1)),
    }
    tagged = synthetic_sentences(40, 2)
    files["test"] = tmp_path / "test.jsonl"
    files["test"].write_text(
        "\n".join(json.dumps({"tokens": t, "tags": g}) for t, g in tagged) + "\n", encoding="utf-8"
    )
    assert main(ner_args(tiny_bert_dir, files, tmp_path / "run")) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for split in ("dev", "test"):
        assert {"f1", "precision", "recall", "per_type"} <= set(metrics[split])
        assert metrics[split]["scheme"] == "IOB2" and set(metrics[split]["per_type"]) == {"LOC", "ORG", "PER"}
    assert metrics["test"]["f1"] > 0.9, metrics["test"]
    capsys.readouterr()

    assert main(["predict", str(tmp_path / "run" / "checkpoint"), "Mary met John in Berlin."]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    entities = json.loads(line)["entities"]
    assert {(e["type"], e["text"], e["start"]) for e in entities} == {
        ("PER", "Mary", 0),
        ("PER", "John", 9),
        ("LOC", "Berlin", 17),
    }


def test_bad_conll_line_is_reported_with_file_and_line(tiny_bert_dir, tmp_path, capsys) -> None:
    train = tmp_path / "train.txt"
    train.write_text("John NNP B-NP B-PER\nlives VBZ B-VP O\nParis\n", encoding="utf-8")
    assert main(ner_args(tiny_bert_dir, {"train": train}, tmp_path / "run")) == 2
    err = capsys.readouterr().err
    assert str(train) in err and "line 3" in err and "columns" in err


def test_dev_tag_unseen_in_training_is_an_error(tiny_bert_dir, tmp_path) -> None:
    task = make_task(tiny_bert_dir)
    splits = {
        "train": Dataset.from_list(
            [{"id": "a", "tokens": ["x"], "ner_tags": ["B-PER"]}], features=NER_FEATURES
        ),
        "validation": Dataset.from_list(
            [{"id": "b", "tokens": ["y"], "ner_tags": ["B-LOC"]}], features=NER_FEATURES
        ),
    }
    with pytest.raises(DataError, match=r"record 'b'.*validation split has tag\(s\) \['B-LOC'\]"):
        task.prepare(splits)


def test_an_unseen_dev_tag_names_the_dev_file(tiny_bert_dir, tmp_path, capsys) -> None:
    train = write_conll(tmp_path / "train.txt", synthetic_sentences(8, 0))
    dev = tmp_path / "dev.txt"
    dev.write_text("Acme B-WEIRD\nrocks O\n", encoding="utf-8")
    assert main(ner_args(tiny_bert_dir, {"train": train, "validation": dev}, tmp_path / "run")) == 2
    err = capsys.readouterr().err
    assert f"{dev}: record '0': field 'ner_tags': the validation split has tag(s) ['B-WEIRD']" in err
