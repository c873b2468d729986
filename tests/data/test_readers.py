"""Readers for user files: values come through intact and every problem names its file and line."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import pytest

from ptuning_v2.config import DataConfig
from ptuning_v2.data.errors import DataError
from ptuning_v2.data.readers import (
    detect_tag_scheme,
    load_local_splits,
    load_local_squad,
    load_table,
    read_conll,
    read_jsonl_tagged,
    read_squad,
)
from ptuning_v2.tasks.ner import NerTask


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------ DataError


def test_data_error_formats_every_known_part() -> None:
    e = DataError("label 'neutral' was not seen in training", file="train.csv", line=7, field="label")
    assert str(e) == "train.csv: line 7: field 'label': label 'neutral' was not seen in training"
    assert str(DataError("bad offset", file="dev.json", record="q1")) == "dev.json: record 'q1': bad offset"
    assert str(DataError("unknown")) == "unknown"
    assert isinstance(e, ValueError)


def test_data_error_survives_pickling() -> None:
    e = pickle.loads(pickle.dumps(DataError("empty value", file="a.csv", line=3, field="text")))
    assert (str(e), e.file, e.line, e.field) == (
        "a.csv: line 3: field 'text': empty value",
        "a.csv",
        3,
        "text",
    )


# ---------------------------------------------------------------------------------------------- tables


def test_csv_with_column_mapping_keeps_values_and_other_columns(tmp_path: Path) -> None:
    path = write(
        tmp_path / "reviews.csv",
        'id,review,sentiment\n1,"Great, really",pos\n2,"said ""meh""\nthen left",neg\n',
    )
    ds = load_table(path, columns={"text": "review", "label": "sentiment"})
    assert ds.column_names == ["text", "label", "id"]
    assert ds["text"] == ["Great, really", 'said "meh"\nthen left']
    assert ds["label"] == ["pos", "neg"]
    assert ds["id"] == ["1", "2"]  # CSV values stay strings


def test_tsv_by_extension_and_labels_stay_strings(tmp_path: Path) -> None:
    path = write(tmp_path / "data.tsv", "text\tlabel\nfirst\t01\n\nsecond\t2\n")
    ds = load_table(path, required=["text", "label"])
    assert ds["label"] == ["01", "2"]
    assert ds.features["label"].dtype == "string"


def test_jsonl_labels_become_strings(tmp_path: Path) -> None:
    path = write(
        tmp_path / "d.jsonl",
        '{"text": "a", "label": 1, "score": 0.5}\n\n{"text": "b", "label": 0, "score": 2}\n',
    )
    ds = load_table(path, required=["text", "label"])
    assert ds["label"] == ["1", "0"]
    assert ds["score"] == [0.5, 2.0]


def test_fmt_overrides_extension(tmp_path: Path) -> None:
    path = write(tmp_path / "data.txt", "text\tlabel\nx\ty\n")
    assert load_table(path, fmt="tsv")["label"] == ["y"]
    with pytest.raises(DataError, match=r"data\.txt: cannot tell the format"):
        load_table(path)


def test_missing_column_names_file_column_and_what_it_has(tmp_path: Path) -> None:
    path = write(tmp_path / "train.csv", "id,review\n1,good\n")
    with pytest.raises(DataError) as info:
        load_table(path, columns={"text": "review", "label": "sentiment"})
    msg = str(info.value)
    assert msg.startswith(str(path))
    assert "missing column 'sentiment' (for 'label')" in msg
    assert "the file has columns: id, review" in msg


@pytest.mark.parametrize("content", ["", "\n\n", "text,label\n", "text,label\n\n"])
def test_empty_csv_is_an_error(tmp_path: Path, content: str) -> None:
    path = write(tmp_path / "train.csv", content)
    with pytest.raises(DataError, match=r"train\.csv: file is empty"):
        load_table(path, required=["text"])


def test_empty_jsonl_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"e\.jsonl: file is empty"):
        load_table(write(tmp_path / "e.jsonl", "\n"))


def test_bad_json_line_names_its_line(tmp_path: Path) -> None:
    path = write(tmp_path / "train.jsonl", '{"text": "a", "label": "x"}\n\n{"text": "b", "label": }\n')
    with pytest.raises(DataError, match=r"train\.jsonl: line 3: not valid JSON"):
        load_table(path)


def test_jsonl_line_that_is_not_an_object(tmp_path: Path) -> None:
    path = write(tmp_path / "t.jsonl", '{"text": "a"}\n["text", "b"]\n')
    with pytest.raises(DataError, match=r"t\.jsonl: line 2: expected a JSON object, found list"):
        load_table(path)


def test_empty_required_value_names_line_and_file_column(tmp_path: Path) -> None:
    # line 4, not row 3: the quoted value on line 2 spans two lines
    path = write(tmp_path / "train.csv", 'review,sentiment\n"two\nlines",pos\n   ,neg\n')
    with pytest.raises(DataError) as info:
        load_table(path, columns={"text": "review", "label": "sentiment"})
    assert str(info.value) == f"{path}: line 4: field 'review': empty value (our 'text')"


def test_empty_value_in_optional_column_is_kept(tmp_path: Path) -> None:
    path = write(tmp_path / "a.csv", "text,label,note\nx,y,\n")
    assert load_table(path, required=["text", "label"])["note"] == [""]


def test_missing_jsonl_key_in_required_column(tmp_path: Path) -> None:
    path = write(tmp_path / "v.jsonl", '{"text": "a", "label": "p"}\n{"text": "b"}\n')
    with pytest.raises(DataError, match=r"v\.jsonl: line 2: field 'label': empty value"):
        load_table(path, required=["text", "label"])


def test_wrong_field_count_is_an_error_not_a_shift(tmp_path: Path) -> None:
    path = write(tmp_path / "train.csv", "text,label\nhello, world,pos\n")
    with pytest.raises(DataError, match=r"train\.csv: line 2: expected 2 fields .* found 3"):
        load_table(path)


def test_unclosed_quote_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path / "train.csv", 'text,label\nok,pos\n"never closed,neg\nmore,pos\n')
    with pytest.raises(DataError, match=r"train\.csv: line 3: bad quoting"):
        load_table(path)


def test_mapping_onto_an_existing_column_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path / "a.csv", "text,review,label\nx,y,z\n")
    with pytest.raises(DataError, match="already has a column 'text'"):
        load_table(path, columns={"text": "review"})


def test_list_label_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path / "a.jsonl", '{"text": "a", "label": ["x", "y"]}\n')
    with pytest.raises(DataError, match=r"a\.jsonl: line 1: field 'label': a label must be one value"):
        load_table(path)


def test_mixed_types_in_a_column_name_both_lines(tmp_path: Path) -> None:
    path = write(tmp_path / "a.jsonl", '{"text": "a", "n": 1}\n{"text": "b", "n": "two"}\n')
    with pytest.raises(
        DataError, match=r"a\.jsonl: line 2: field 'n': holds a string here but a number on line 1"
    ):
        load_table(path)


def test_invalid_utf8_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "latin.csv"
    path.write_bytes("text,label\ngood,pos\ncaf\xe9,pos\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin\.csv: line 3: byte 0xe9 is not valid UTF-8"):
        load_table(path)


def test_utf8_bom_is_not_part_of_the_first_column(tmp_path: Path) -> None:
    path = tmp_path / "bom.csv"
    path.write_bytes("text,label\nx,y\n".encode("utf-8-sig"))
    assert load_table(path, required=["text"]).column_names == ["text", "label"]


def test_load_local_splits(tmp_path: Path) -> None:
    files = {
        "train": write(tmp_path / "train.csv", "review,stars\na,pos\nb,neg\n"),
        "validation": write(tmp_path / "dev.csv", "review,stars\nc,neg\n"),
    }
    dd = load_local_splits(files, columns={"text": "review", "label": "stars"})
    assert list(dd) == ["train", "validation"]
    assert dd["validation"][0] == {"text": "c", "label": "neg"}


def test_label_unseen_in_training_names_file_and_line(tmp_path: Path) -> None:
    files = {
        "train": write(tmp_path / "train.csv", "text,label\na,pos\nb,neg\n"),
        "test": write(tmp_path / "test.csv", "text,label\nc,neg\nd,neutral\n"),
    }
    with pytest.raises(DataError) as info:
        load_local_splits(files, required=["text", "label"])
    assert str(info.value) == (
        f"{files['test']}: line 3: field 'label': label 'neutral' was not seen in training ({files['train']})"
    )
    assert len(load_local_splits(files, check_labels=False)["test"]) == 2


def test_unknown_split_name(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown split 'dev'; splits are: train, validation, test"):
        load_local_splits({"dev": tmp_path / "x.csv"})


# ------------------------------------------------------------------------------------------------ CoNLL

CONLL = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER


-DOCSTART- -X- -X- O
Rome NNP B-NP B-LOC
"""


def test_read_conll_sentences_tags_and_docstart(tmp_path: Path) -> None:
    rows = read_conll(write(tmp_path / "train.txt", CONLL))
    assert rows == [
        {"id": "0", "tokens": ["EU", "rejects", "German"], "ner_tags": ["B-ORG", "O", "B-MISC"]},
        {"id": "1", "tokens": ["Peter", "Blackburn"], "ner_tags": ["B-PER", "I-PER"]},
        {"id": "2", "tokens": ["Rome"], "ner_tags": ["B-LOC"]},
    ]


def test_read_conll_other_columns_and_crlf(tmp_path: Path) -> None:
    path = write(tmp_path / "t.conll", "EU\tB-NP\tB-ORG\r\nsays\tB-VP\tO\r\n")
    assert read_conll(path, token_col=0, label_col=1)[0]["ner_tags"] == ["B-NP", "B-VP"]


def test_read_conll_too_few_columns(tmp_path: Path) -> None:
    path = write(tmp_path / "train.txt", "EU B-ORG\nrejects O\n\nlonely\n")
    with pytest.raises(DataError, match=r"train\.txt: line 4: expected at least 2 columns .* found 1"):
        read_conll(path)


def test_read_conll_token_with_space_is_caught(tmp_path: Path) -> None:
    path = write(tmp_path / "train.txt", "New NNP B-LOC\nYork City NNP I-LOC\n")
    with pytest.raises(DataError, match=r"train\.txt: line 2: found 4 columns but line 1 has 3"):
        read_conll(path)


@pytest.mark.parametrize("content", ["", "\n\n", "-DOCSTART- -X- O\n\n"])
def test_read_conll_empty(tmp_path: Path, content: str) -> None:
    with pytest.raises(DataError, match=r"empty\.txt: (file is empty|no sentences)"):
        read_conll(write(tmp_path / "empty.txt", content))


def test_read_jsonl_tagged(tmp_path: Path) -> None:
    path = write(
        tmp_path / "t.jsonl",
        '{"tokens": ["EU", "rejects"], "tags": ["B-ORG", "O"]}\n{"id": 7, "tokens": ["x"], "tags": ["O"]}\n',
    )
    assert read_jsonl_tagged(path) == [
        {"id": "0", "tokens": ["EU", "rejects"], "ner_tags": ["B-ORG", "O"]},
        {"id": "7", "tokens": ["x"], "ner_tags": ["O"]},
    ]


def test_read_jsonl_tagged_length_mismatch(tmp_path: Path) -> None:
    path = write(
        tmp_path / "t.jsonl", '{"tokens": ["a"], "tags": ["O"]}\n{"tokens": ["a", "b"], "tags": ["O"]}\n'
    )
    with pytest.raises(DataError, match=r"t\.jsonl: line 2: 2 tokens but 1 tags"):
        read_jsonl_tagged(path)


def test_a_malformed_tag_names_its_file_and_line(tmp_path: Path) -> None:
    conll = write(tmp_path / "t.conll", "EU B-ORG\nrejects O\n\nBob PER\n")
    with pytest.raises(DataError, match=r"t\.conll: line 4: field 'tag': tag 'PER' is neither 'O' nor B-"):
        read_conll(conll)
    jsonl = write(
        tmp_path / "t.jsonl", '{"tokens": ["a"], "tags": ["O"]}\n{"tokens": ["Bob"], "tags": ["b-per"]}\n'
    )
    with pytest.raises(DataError, match=r"t\.jsonl: line 2: field 'tags': tag 'b-per' is neither"):
        read_jsonl_tagged(jsonl)


@pytest.mark.parametrize("token", ["", " "])
def test_a_blank_token_is_refused_not_silently_untagged(tmp_path: Path, token: str) -> None:
    path = write(
        tmp_path / "t.jsonl", json.dumps({"tokens": ["Bob", token], "tags": ["B-PER", "B-LOC"]}) + "\n"
    )
    with pytest.raises(DataError, match=r"t\.jsonl: line 1: field 'tokens': token 1 is empty or only spaces"):
        read_jsonl_tagged(path)


def test_load_local_ner_mixes_conll_and_jsonl(tmp_path: Path) -> None:
    dd = NerTask.load_local(
        DataConfig(
            train=str(write(tmp_path / "train.txt", CONLL)),
            test=str(write(tmp_path / "test.jsonl", '{"tokens": ["Rome"], "tags": ["B-LOC"]}\n')),
        )
    )
    assert {k: len(v) for k, v in dd.items()} == {"train": 3, "test": 1}
    assert dd["test"][0]["ner_tags"] == ["B-LOC"]


@pytest.mark.parametrize(
    ("tags", "scheme"),
    [
        (["B-PER", "I-PER", "O", "B-LOC"], "IOB2"),
        ([["I-PER", "I-PER", "O"], ["O", "I-LOC", "B-LOC"]], "IOB1"),
        (["B-PER", "I-PER", "O", "I-LOC"], "IOB1"),  # I- after O starts an entity
        (["B-PER", "I-LOC"], "IOB1"),  # I- of another type starts an entity
        (["B-PER", "E-PER", "S-LOC"], "BIOES"),
        ([["O"], ["O", "O"]], "IOB2"),
        ([], "IOB2"),
    ],
)
def test_detect_tag_scheme(tags: list, scheme: str) -> None:
    assert detect_tag_scheme(tags) == scheme


def test_detect_tag_scheme_per_sentence_start() -> None:
    # As one flat list "I-PER" would continue "B-PER"; as two sentences it starts an entity.
    assert detect_tag_scheme(["B-PER", "I-PER"]) == "IOB2"
    assert detect_tag_scheme([["B-PER"], ["I-PER"]]) == "IOB1"


def test_detect_tag_scheme_rejects_unknown_tags() -> None:
    with pytest.raises(DataError, match="tag 'PER' is neither"):
        detect_tag_scheme(["PER", "O"])


# ------------------------------------------------------------------------------------------------ SQuAD


def squad_file(tmp_path: Path, qas: list[dict], version: str = "1.1") -> Path:
    context = "Denver Broncos won Super Bowl 50 in 2016."
    data = {"version": version, "data": [{"title": "SB50", "paragraphs": [{"context": context, "qas": qas}]}]}
    return write(tmp_path / "dev.json", json.dumps(data))


def test_read_squad_keeps_offsets_and_all_answers(tmp_path: Path) -> None:
    qas = [
        {
            "id": "q1",
            "question": "Who won?",
            "answers": [
                {"text": "Denver Broncos", "answer_start": 0},
                {"text": "Broncos", "answer_start": 7},
            ],
        }
    ]
    rows = read_squad(squad_file(tmp_path, qas))
    assert rows == [
        {
            "id": "q1",
            "title": "SB50",
            "context": "Denver Broncos won Super Bowl 50 in 2016.",
            "question": "Who won?",
            "answers": {"text": ["Denver Broncos", "Broncos"], "answer_start": [0, 7]},
        }
    ]


def test_read_squad_v2_impossible_gets_empty_answers(tmp_path: Path) -> None:
    qas = [
        {"id": "q2", "question": "Who lost?", "answers": [], "is_impossible": True,
         "plausible_answers": [{"text": "Denver", "answer_start": 0}]},
        {"id": "q3", "question": "When?", "answers": [{"text": "2016", "answer_start": 36}], "is_impossible": False},
    ]  # fmt: skip
    rows = read_squad(squad_file(tmp_path, qas, version="v2.0"))
    assert [r["answers"] for r in rows] == [
        {"text": [], "answer_start": []},
        {"text": ["2016"], "answer_start": [36]},
    ]


def test_read_squad_bad_offset_names_file_and_question(tmp_path: Path) -> None:
    qas = [{"id": "q9", "question": "When?", "answers": [{"text": "2016", "answer_start": 35}]}]
    path = squad_file(tmp_path, qas)
    with pytest.raises(DataError) as info:
        read_squad(path)
    assert (
        str(info.value)
        == f"{path}: record 'q9': answer '2016' is not at answer_start 35 (the context has ' 201' there)"
    )


@pytest.mark.parametrize(
    ("qa", "words"),
    [
        (
            {"answers": [{"text": "", "answer_start": 0}]},
            "answer '' at answer_start 0: an answer is a non-empty span",
        ),
        ({"answers": [{"text": "", "answer_start": -1}]}, "answer '' at answer_start -1"),
        ({"answers": [{"text": " ", "answer_start": 6}]}, "answer ' ' at answer_start 6"),
        ({"answers": [{"text": "Denver", "answer_start": -41}]}, "answer 'Denver' at answer_start -41"),
        ({"answers": [], "is_impossible": "false"}, "is_impossible: expected true or false, got 'false'"),
    ],
)
def test_read_squad_refuses_answers_that_are_no_span(tmp_path: Path, qa: dict, words: str) -> None:
    path = squad_file(tmp_path, [{"id": "q1", "question": "Who?", **qa}])
    with pytest.raises(DataError, match=re.escape(f"{path}: record 'q1': {words}")):
        read_squad(path)


def test_read_squad_duplicate_id_and_missing_answers(tmp_path: Path) -> None:
    q = {"id": "q1", "question": "Who?", "answers": [{"text": "Denver", "answer_start": 0}]}
    with pytest.raises(DataError, match="record 'q1': question id appears twice"):
        read_squad(squad_file(tmp_path, [q, q]))
    with pytest.raises(DataError, match="record 'q5': no answers"):
        read_squad(squad_file(tmp_path, [{"id": "q5", "question": "Who?", "answers": []}]))
    with pytest.raises(DataError, match="record 'q6': missing key 'question'"):
        read_squad(squad_file(tmp_path, [{"id": "q6", "answers": []}]))


def test_read_squad_not_squad(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"x\.json: missing key 'data'"):
        read_squad(write(tmp_path / "x.json", '{"version": "1.1"}'))
    with pytest.raises(DataError, match=r"y\.json: line 2: not valid JSON"):
        read_squad(write(tmp_path / "y.json", '{"data":\n ]}'))


def test_load_local_squad(tmp_path: Path) -> None:
    qas = [{"id": "q1", "question": "Who won?", "answers": [{"text": "Denver Broncos", "answer_start": 0}]}]
    dd = load_local_squad({"validation": squad_file(tmp_path, qas)})
    assert dd["validation"][0]["answers"] == {"text": ["Denver Broncos"], "answer_start": [0]}
