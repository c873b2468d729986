"""Extractive QA: sliding windows, span decoding, SQuAD v2 null answers, and the CLI contract."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset

from ptuning_v2.cli.main import main
from ptuning_v2.config import RunConfig
from ptuning_v2.data import QA_FEATURES, DataError, load_local_squad
from ptuning_v2.models import load_tokenizer
from ptuning_v2.tasks.base import evaluate_split
from ptuning_v2.tasks.qa import QuestionAnsweringTask, decode_answer
from ptuning_v2.trained.model import load_trained
from ptuning_v2.training.recipe import load_splits

# "Paris is the capital of France." with a 2-token question: [CLS] q q [SEP] paris is the capital of
# france . [SEP]; offsets -1 mark the tokens outside the context.
CONTEXT = "Paris is the capital of France."
OFFSETS = np.array(
    [[-1, -1]] * 4 + [[0, 5], [6, 8], [9, 12], [13, 20], [21, 23], [24, 30], [30, 31]] + [[-1, -1]],
    dtype=np.int32,
)


def logits(**scores: float) -> np.ndarray:
    names = ["cls", "q1", "q2", "sep", "paris", "is", "the", "capital", "of", "france", "dot", "sep2"]
    out = np.zeros(len(names), dtype=np.float32)
    for name, value in scores.items():
        out[names.index(name)] = value
    return out


def test_span_decoding_on_known_offsets() -> None:
    # Question tokens score highest but are outside the context; an end before its start is no span.
    start = logits(cls=2, q1=9, paris=5, capital=3, france=1)
    end = logits(cls=2, q2=9, paris=4, france=4.5)
    window = (start, end, OFFSETS, 0)
    best, spans, null = decode_answer(
        [window], n_best=20, max_answer_length=30, version_2=False, null_threshold=0
    )
    assert CONTEXT[best.start : best.end] == "Paris is the capital of France" and best.score == 9.5
    assert [CONTEXT[c.start : c.end] for c in spans[:3]] == [
        "Paris is the capital of France",
        "Paris",
        "capital of France",
    ]
    assert null == 4.0
    # At most 3 tokens: the whole sentence (6 tokens) is out, "Paris" (5 + 4) wins.
    best, _, _ = decode_answer([window], n_best=20, max_answer_length=3, version_2=False, null_threshold=0)
    assert CONTEXT[best.start : best.end] == "Paris" and best.score == 9.0


def test_null_answer_uses_the_lowest_null_score_over_windows_and_the_threshold() -> None:
    sure = (logits(cls=10, paris=5), logits(cls=10, paris=4), OFFSETS, 0)  # null 20, best span 9
    unsure = (logits(cls=1, france=2), logits(cls=1, france=2), OFFSETS, 0)  # null 2, best span 4
    best, _, null = decode_answer([sure, unsure], 20, 30, version_2=True, null_threshold=0.0)
    assert null == 2.0 and CONTEXT[best.start : best.end] == "Paris"  # 2 - 9 < 0: answer
    best, _, _ = decode_answer([sure], 20, 30, version_2=True, null_threshold=0.0)
    assert best is None  # 20 - 9 = 11 > 0: no answer
    best, _, _ = decode_answer([sure], 20, 30, version_2=True, null_threshold=11.5)
    assert CONTEXT[best.start : best.end] == "Paris"
    best, _, _ = decode_answer([sure], 20, 30, version_2=False, null_threshold=0.0)
    assert CONTEXT[best.start : best.end] == "Paris"  # SQuAD v1.1 always answers


def make_task(model_dir: Path, max_length: int, **options: object) -> QuestionAnsweringTask:
    run = RunConfig.from_dict(
        {"model": str(model_dir), "task": "qa", "train": {"max_length": max_length}, "task_options": options}
    )
    return QuestionAnsweringTask(run, load_tokenizer(str(model_dir)))


def test_windows_cover_the_context_and_hold_the_answer(tiny_bert_dir) -> None:
    words = ("the river in the city is good and the story of the film is about a movie " * 3).split()
    context = " ".join(words + ["acme", "corp", "is", "in", "london"])
    answer_start = context.index("acme corp")
    data = Dataset.from_list(
        [
            {
                "id": "q",
                "title": "",
                "context": context,
                "question": "who is in london",
                "answers": {"text": ["acme corp"], "answer_start": [answer_start]},
            }
        ],
        features=QA_FEATURES,
    )
    task = make_task(tiny_bert_dir, max_length=24, doc_stride=6)
    features = sorted(
        task.featurize(data, "train"), key=lambda f: f["offsets"][f["offsets"][:, 0] >= 0][0, 0]
    )
    assert len(features) > 3 and all(len(f["input_ids"]) <= 24 for f in features)
    spans = [[tuple(o) for o in f["offsets"] if o[0] >= 0] for f in features]
    single = task.tokenizer(context, return_offsets_mapping=True, add_special_tokens=False)["offset_mapping"]
    assert sorted({s for window in spans for s in window}) == sorted(
        single
    )  # every context token is in a window
    for left, right in zip(spans, spans[1:], strict=False):
        assert left[-6:] == right[:6]  # neighbours share doc_stride tokens
    holding = 0
    for feature in features:
        start, end = feature["start_positions"], feature["end_positions"]
        if start == feature["cls_index"]:
            assert end == start
            continue
        holding += 1
        offsets = feature["offsets"]
        assert context[offsets[start, 0] : offsets[end, 1]] == "acme corp"
    assert holding >= 1


PARAGRAPHS = [  # no digit 8 or 9: the tiny test vocabulary gives them ids beyond its embedding table
    (
        "The Golden Gate Bridge opened in 1937 and spans the strait between San Francisco Bay and the Pacific.",
        "When did the Golden Gate Bridge open?",
        "1937",
    ),
    (
        "Mount Fuji is 3,776 metres tall and is the highest mountain in Japan.",
        "How tall is Mount Fuji?",
        "3,776 metres",
    ),
    (
        "Marie Curie was the first woman to win a Nobel Prize, and the first person to win two.",
        "Who was the first woman to win a Nobel Prize?",
        "Marie Curie",
    ),
    (
        "The Amazon river flows through Brazil, Peru and Colombia into the Atlantic Ocean.",
        "Into which ocean does the Amazon flow?",
        "the Atlantic Ocean",
    ),
]


def squad_file(path: Path, with_unanswerable: bool) -> Path:
    """Real-looking questions on their paragraph; with ``with_unanswerable`` also on the next paragraph."""
    paragraphs = []
    for i, (context, _, _) in enumerate(PARAGRAPHS):
        qas = []
        _, question, answer = PARAGRAPHS[i]
        qas.append(
            {
                "id": f"a{i}",
                "question": question,
                "answers": [{"text": answer, "answer_start": context.index(answer)}],
            }
        )
        if with_unanswerable:
            other = PARAGRAPHS[(i - 1) % len(PARAGRAPHS)][1]  # a question about another paragraph
            qas.append({"id": f"u{i}", "question": other, "answers": [], "is_impossible": True})
        paragraphs.append({"context": context, "qas": qas})
    path.write_text(json.dumps({"version": "v2.0", "data": [{"title": "t", "paragraphs": paragraphs}]}))
    return path


def qa_args(model_dir: Path, files: dict[str, Path], out: Path, *extra: str) -> list[str]:
    sets = [
        f"model={model_dir}",
        "task=qa",
        *(f"data.{split}={path}" for split, path in files.items()),
        "train.batch_size=4",
        "train.max_steps=4",
        "train.max_length=48",
        "task_options.doc_stride=16",
        "prompt.num_virtual_tokens=4",
        *extra,
    ]
    return ["train", "--no-progress", "--output-dir", str(out)] + [a for s in sets for a in ("--set", s)]


def test_unanswerable_questions_null_threshold_end_to_end(tiny_bert_dir, tmp_path, capsys) -> None:
    path = squad_file(tmp_path / "v2.json", with_unanswerable=True)
    files = {"train": path, "validation": path, "test": path}
    args = qa_args(tiny_bert_dir, files, tmp_path / "run", "task_options.version_2_with_negative=true")
    assert main(args) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    test = metrics["test"]
    assert test["total"] == 8 and test["has_ans_total"] == test["no_ans_total"] == 4
    assert test["windows"] > test["total"]  # 48-token windows: every question spans several
    assert {"exact_match", "f1", "no_ans_f1", "has_ans_f1"} <= set(metrics["dev"])

    task, model = load_trained(tmp_path / "run" / "checkpoint")
    splits = load_splits(task.config, type(task))
    features = task.featurize(splits["test"], "test")
    for threshold, expected in ((-1e9, (0.0, 100.0)), (1e9, (None, 0.0))):
        task.options["null_score_diff_threshold"] = threshold
        scores = evaluate_split(task, model, splits["test"], features, 8, "cpu")
        if expected[0] is not None:
            assert scores["has_ans_exact_match"] == expected[0]
        assert scores["no_ans_exact_match"] == expected[1]
    capsys.readouterr()

    context, question, _ = PARAGRAPHS[0]
    assert main(["predict", str(tmp_path / "run" / "checkpoint"), f"{question}\t{context}"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    result = json.loads(line)
    assert result["answer"] == ("" if result["start"] is None else context[result["start"] : result["end"]])
    assert abs(sum(c["probability"] for c in result["n_best"]) - 1) < 1e-6


def test_unanswerable_needs_version_2(tiny_bert_dir, tmp_path, capsys) -> None:
    path = squad_file(tmp_path / "v2.json", with_unanswerable=True)
    assert main(qa_args(tiny_bert_dir, {"train": path}, tmp_path / "run")) == 2
    err = capsys.readouterr().err
    assert f"{path}: record 'u0'" in err and "version_2_with_negative" in err


def test_squad_v1_train_writes_exact_match_and_f1(tiny_bert_dir, tmp_path) -> None:
    path = squad_file(tmp_path / "v1.json", with_unanswerable=False)
    assert main(qa_args(tiny_bert_dir, {"train": path, "test": path}, tmp_path / "run")) == 0
    test = json.loads((tmp_path / "run" / "metrics.json").read_text())["test"]
    assert test["total"] == 4 and 0 <= test["exact_match"] <= test["f1"] <= 100


def test_predict_names_the_line_of_an_input_without_its_context(tiny_bert_dir, tmp_path, capsys) -> None:
    path = squad_file(tmp_path / "v1.json", with_unanswerable=False)
    assert main(qa_args(tiny_bert_dir, {"train": path}, tmp_path / "run")) == 0
    context, question, _ = PARAGRAPHS[0]
    inputs = tmp_path / "inputs.txt"
    inputs.write_text(f"{question}\t{context}\n\n{question} but no tab\n", encoding="utf-8")
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "run" / "checkpoint"), "--file", str(inputs)]) == 2
    err = capsys.readouterr().err
    assert f"{inputs}: line 3: a QA input is a (question, context) pair: QUESTION<TAB>CONTEXT" in err
    assert main(["predict", str(tmp_path / "run" / "checkpoint"), f"{question}\t{context}", "no tab"]) == 2
    assert "record 'text 2': a QA input is a (question, context) pair" in capsys.readouterr().err


def test_answer_at_a_wrong_offset_names_file_and_question(tiny_bert_dir, tmp_path, capsys) -> None:
    path = squad_file(tmp_path / "bad.json", with_unanswerable=False)
    data = json.loads(path.read_text())
    data["data"][0]["paragraphs"][1]["qas"][0]["answers"][0]["answer_start"] += 2
    path.write_text(json.dumps(data))
    assert main(qa_args(tiny_bert_dir, {"train": path}, tmp_path / "run")) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "record 'a1'" in err and "answer_start" in err


def test_a_question_too_long_for_the_window_is_reported(tiny_bert_dir, tmp_path) -> None:
    task = make_task(tiny_bert_dir, max_length=24, doc_stride=16)
    splits = load_local_squad({"train": squad_file(tmp_path / "v1.json", with_unanswerable=False)})
    with pytest.raises(DataError, match="record 'a0'.*no context fits"):
        task.featurize(splits["train"], "train")
