"""Readers for the user's own data: CSV/TSV/JSONL tables, CoNLL and tagged JSONL for NER, SQuAD JSON.

Every problem raises a DataError naming the file and line (or question id). A bad row stops loading
instead of being skipped: silently dropping rows changes the data set that results are reported on.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from datasets import Dataset, DatasetDict, Features, List, Value

from ptuning_v2.data.errors import DataError
from ptuning_v2.data.report import DataReport

SPLITS = ("train", "validation", "test")
TABLE_FORMATS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
TagScheme = Literal["IOB1", "IOB2", "BIOES"]

# Column schemas shared with the built-in data sets, so task code sees one layout whatever the source.
NER_FEATURES = Features(
    {"id": Value("string"), "tokens": List(Value("string")), "ner_tags": List(Value("string"))}
)
QA_FEATURES = Features(
    {
        "id": Value("string"),
        "title": Value("string"),
        "context": Value("string"),
        "question": Value("string"),
        "answers": {"text": List(Value("string")), "answer_start": List(Value("int32"))},
    }
)

_COLUMN_SEP = re.compile(r"[ \t]+")  # ASCII only: str.split() would also split tokens on U+00A0


def read_text(path: str | Path) -> str:
    """Decode a file as UTF-8 (a BOM is dropped); a bad byte is reported with its line, not guessed at."""
    return decode_utf8(Path(path).read_bytes(), path)


def decode_utf8(raw: bytes, path: str | Path) -> str:
    """``raw`` as UTF-8 text (a BOM is dropped); a DataError names the line of the first bad byte."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(
            f"byte {raw[e.start]:#04x} is not valid UTF-8; save the file as UTF-8", path, line
        ) from None


def _lines(text: str) -> list[str]:
    """Split on newlines only: str.splitlines() would also break lines on U+2028 or \\x85 inside text."""
    return [line.rstrip("\r") for line in text.split("\n")]


# ---------------------------------------------------------------------------------------------- tables


def table_format(path: str | Path, fmt: str | None = None) -> str:
    """``fmt`` if given, else the format implied by the file extension."""
    if fmt is not None:
        fmt = fmt.lower()
        if fmt not in set(TABLE_FORMATS.values()):
            raise DataError(f"unknown table format {fmt!r}; use one of: csv, tsv, jsonl", path)
        return fmt
    suffix = Path(path).suffix.lower()
    if suffix not in TABLE_FORMATS:
        known = ", ".join(TABLE_FORMATS)
        raise DataError(f"cannot tell the format from the extension {suffix!r} ({known}); pass fmt=", path)
    return TABLE_FORMATS[suffix]


def _read_delimited(path: str | Path, text: str, delimiter: str) -> tuple[list[str], list[tuple[int, dict]]]:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    header: list[str] | None = None
    header_line = 0
    rows: list[tuple[int, dict]] = []
    start = 1
    while True:
        line = start
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            raise DataError(f"bad quoting ({e})", path, line) from None
        start = reader.line_num + 1
        if all(not f.strip() for f in fields):
            continue  # blank line: carries no data
        if header is None:
            header, header_line = [f.strip() for f in fields], line
            _check_separator(path, header, delimiter, line)
            for i, name in enumerate(header):
                if not name:
                    raise DataError(f"column {i + 1} of the header has no name", path, line)
                if header.index(name) != i:
                    raise DataError(f"column {name!r} appears twice in the header", path, line)
            continue
        if len(fields) != len(header):
            sep = "tab" if delimiter == "\t" else repr(delimiter)
            raise DataError(
                f"expected {len(header)} fields like the header (line {header_line}), found {len(fields)};"
                f" quote values that contain the separator {sep}",
                path,
                line,
            )
        rows.append((line, dict(zip(header, fields, strict=True))))
    return header or [], rows


def _check_separator(path: str | Path, header: list[str], delimiter: str, line: int) -> None:
    """A one-column header that holds the other separator: the file was read with the wrong one."""
    other, name, fmt = ("\t", "tab", "tsv") if delimiter == "," else (",", "comma", "csv")
    if len(header) == 1 and other in header[0]:
        raise DataError(
            f"the header has no {'comma' if delimiter == ',' else 'tab'} but has {name}s: the file looks "
            f"{name}-separated; name it .{fmt} or set data.format: {fmt}",
            path,
            line,
        )


def read_jsonl_objects(path: str | Path) -> list[tuple[int, dict]]:
    """``(line, object)`` for each non-blank line; a line that is not a JSON object is an error."""
    rows = []
    for line, raw in enumerate(_lines(read_text(path)), start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as e:
            raise DataError(f"not valid JSON ({e.msg} at column {e.colno})", path, line) from None
        if not isinstance(row, dict):
            raise DataError(f"expected a JSON object, found {type(row).__name__}", path, line)
        rows.append((line, row))
    return rows


def _is_empty(value: Any) -> bool:
    if isinstance(value, str):
        return not value.strip()
    return value is None or value == [] or value == {}


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return {str: "string", list: "list", dict: "object"}.get(type(value), type(value).__name__)


def _read_table_rows(
    path: str | Path,
    fmt: str | None,
    columns: Mapping[str, str] | None,
    required: Iterable[str] | None,
    report: DataReport | None = None,
    split: str = "",
) -> tuple[list[str], list[tuple[int, dict]]]:
    """Rows renamed to our standard column names, each with the line it starts on.

    Spaces around a label are dropped (``"pos "`` is ``"pos"``, not a class of its own) and counted
    in ``report``.
    """
    fmt = table_format(path, fmt)
    if fmt == "jsonl":
        rows = read_jsonl_objects(path)
        names = list(dict.fromkeys(name for _, row in rows for name in row))
    else:
        names, rows = _read_delimited(path, read_text(path), "," if fmt == "csv" else "\t")
    if not rows:
        raise DataError("file is empty" if not names else "file is empty: a header but no rows", path)

    mapping = dict(columns or {})
    required = list(mapping) if required is None else list(required)
    have = ", ".join(names)
    for ours in required:
        theirs = mapping.get(ours, ours)
        if theirs not in names:
            via = f" (for {ours!r})" if theirs != ours else ""
            raise DataError(f"missing column {theirs!r}{via}; the file has columns: {have}", path)
    mapping = {ours: theirs for ours, theirs in mapping.items() if theirs in names}
    renamed = set(mapping.values())
    for ours, theirs in mapping.items():
        if ours != theirs and ours in names and ours not in renamed:
            raise DataError(
                f"column {theirs!r} is mapped to {ours!r}, but the file already has a column {ours!r}", path
            )
    kept = [n for n in names if n not in renamed]
    out_names = list(mapping) + kept

    first_kind: dict[str, tuple[str, int]] = {}
    out: list[tuple[int, dict]] = []
    for line, row in rows:
        new = {ours: row.get(theirs) for ours, theirs in mapping.items()}
        new.update((n, row.get(n)) for n in kept)
        for ours in required:
            if _is_empty(new[ours]):
                theirs = mapping.get(ours, ours)
                raise DataError(
                    "empty value" + (f" (our {ours!r})" if theirs != ours else ""), path, line, theirs
                )
        for ours in ("text", "text_pair"):  # what a tokenizer reads: a number or a list is no text
            if new.get(ours) is not None and not isinstance(new[ours], str):
                raise DataError(
                    f"expected a text, found a {_kind(new[ours])}", path, line, mapping.get(ours, ours)
                )
        if new.get("label") is not None and not isinstance(new["label"], str):
            if isinstance(new["label"], list | dict):
                raise DataError(
                    f"a label must be one value, found a {_kind(new['label'])}", path, line, "label"
                )
            new["label"] = json.dumps(new["label"])  # labels are strings: 1 -> "1", true -> "true"
        if isinstance(new.get("label"), str) and new["label"] != new["label"].strip():
            new["label"] = new["label"].strip()
            if report is not None:
                report.change(split, "labels stripped of surrounding spaces")
        for name, value in new.items():
            if value is None:
                continue
            seen = first_kind.setdefault(name, (_kind(value), line))
            if seen[0] != _kind(value):
                raise DataError(
                    f"holds a {_kind(value)} here but a {seen[0]} on line {seen[1]}", path, line, name
                )
        out.append((line, new))
    return out_names, out


def _to_dataset(path: str | Path, names: list[str], rows: list[tuple[int, dict]]) -> Dataset:
    records = [{n: row.get(n) for n in names} for _, row in rows]
    if all(isinstance(v, str) or v is None for r in records for v in r.values()):
        return Dataset.from_list(records, features=Features({n: Value("string") for n in names}))
    try:
        return Dataset.from_list(records)
    except (TypeError, ValueError) as e:  # pyarrow's errors derive from these
        raise DataError(f"cannot build a table from the rows: {e}", path) from None


def load_table(
    path: str | Path,
    fmt: str | None = None,
    columns: Mapping[str, str] | None = None,
    required: Iterable[str] | None = None,
) -> Dataset:
    """Load one CSV, TSV or JSONL file into a Dataset with our standard column names.

    ``columns`` maps our names to the file's (``{"text": "review", "label": "sentiment"}``); other
    columns are kept under their own names. ``required`` (default: the keys of ``columns``) must
    exist and be non-empty on every row. ``label`` values are always strings.
    """
    names, rows = _read_table_rows(path, fmt, columns, required)
    return _to_dataset(path, names, rows)


def _check_split_names(files: Mapping[str, Any]) -> None:
    if not files:
        raise DataError("no data files given; pass at least a train file")
    unknown = [s for s in files if s not in SPLITS]
    if unknown:
        raise DataError(f"unknown split {unknown[0]!r}; splits are: {', '.join(SPLITS)}")


def load_local_splits(
    files: Mapping[str, str | Path],
    fmt: str | None = None,
    columns: Mapping[str, str] | None = None,
    required: Iterable[str] | None = None,
    check_labels: bool = True,
    report: DataReport | None = None,
) -> DatasetDict:
    """Load ``{"train": path, "validation": path, "test": path}`` tables into a DatasetDict.

    With ``check_labels``, a ``label`` in validation/test that never occurs in train is an error
    (with its file and line): a classifier cannot predict a class it has no output for. Labels
    stripped of spaces are counted in ``report``.
    """
    _check_split_names(files)
    required = None if required is None else list(required)
    loaded = {
        split: _read_table_rows(path, fmt, columns, required, report, split) for split, path in files.items()
    }
    if check_labels and "train" in loaded:
        train_labels = {row.get("label") for _, row in loaded["train"][1]}
        for split, (_, rows) in loaded.items():
            if split == "train":
                continue
            for line, row in rows:
                label = row.get("label")
                if label is not None and label not in train_labels:
                    raise DataError(
                        f"label {label!r} was not seen in training ({files['train']})",
                        files[split],
                        line,
                        "label",
                    )
    return DatasetDict(
        {split: _to_dataset(files[split], *loaded[split]) for split in SPLITS if split in loaded}
    )


# ------------------------------------------------------------------------------------------------- NER


def _columns_needed(index: int) -> int:
    return index + 1 if index >= 0 else -index


def read_conll(path: str | Path, token_col: int = 0, label_col: int = -1) -> list[dict[str, Any]]:
    """Read CoNLL: one token per line, space/tab separated columns, a blank line between sentences.

    ``-DOCSTART-`` lines are skipped. Returns ``{"id", "tokens", "ner_tags"}`` per sentence, tags as in
    the file. Every token line must have as many columns as the first one: a token containing a space
    would otherwise shift the columns and read a wrong tag without any error.
    """
    needed = max(_columns_needed(token_col), _columns_needed(label_col), 2)
    sentences: list[dict[str, Any]] = []
    tokens: list[str] = []
    tags: list[str] = []
    width: tuple[int, int] | None = None  # (columns, line) of the first token line
    any_line = False

    def flush() -> None:
        if tokens:
            sentences.append({"id": str(len(sentences)), "tokens": list(tokens), "ner_tags": list(tags)})
            tokens.clear()
            tags.clear()

    for line, raw in enumerate(_lines(read_text(path)), start=1):
        stripped = raw.strip(" \t")
        if not stripped:
            flush()
            continue
        any_line = True
        if stripped.startswith("-DOCSTART-"):
            flush()
            continue
        parts = _COLUMN_SEP.split(stripped)
        if len(parts) < needed:
            raise DataError(
                f"expected at least {needed} columns (token and tag), found {len(parts)}", path, line
            )
        if width is None:
            width = (len(parts), line)
            if token_col % len(parts) == label_col % len(parts):
                raise DataError(
                    f"token_col={token_col} and label_col={label_col} are the same column", path, line
                )
        elif len(parts) != width[0]:
            raise DataError(
                f"found {len(parts)} columns but line {width[1]} has {width[0]}; does a token contain a space?",
                path,
                line,
            )
        problem = tag_problem(parts[label_col])
        if problem:
            raise DataError(problem, path, line, "tag")
        tokens.append(parts[token_col])
        tags.append(parts[label_col])
    flush()
    if not sentences:
        raise DataError("no sentences: only -DOCSTART- lines" if any_line else "file is empty", path)
    return sentences


def read_jsonl_tagged(path: str | Path) -> list[dict[str, Any]]:
    """Read JSONL with ``tokens`` and ``tags`` (or ``ner_tags``) lists of equal length per line.

    Returns the same ``{"id", "tokens", "ner_tags"}`` rows as :func:`read_conll`; ``id`` is taken from
    the line when present.
    """
    sentences: list[dict[str, Any]] = []
    for line, row in read_jsonl_objects(path):
        tag_key = "tags" if "tags" in row else "ner_tags"
        for key in ("tokens", tag_key):
            value = row.get(key)
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise DataError(
                    "expected a list of strings", path, line, key if key in row else "tokens/tags"
                )
        if not row["tokens"]:
            raise DataError("empty sentence", path, line, "tokens")
        blank = next((i for i, token in enumerate(row["tokens"]) if not token.strip()), None)
        if blank is not None:  # it has no subword to carry its tag: the tag would be lost without a word
            raise DataError(f"token {blank} is empty or only spaces; a token is a word", path, line, "tokens")
        problem = next(filter(None, map(tag_problem, row[tag_key])), None)
        if problem:
            raise DataError(problem, path, line, tag_key)
        if len(row["tokens"]) != len(row[tag_key]):
            raise DataError(
                f"{len(row['tokens'])} tokens but {len(row[tag_key])} tags; they must pair up", path, line
            )
        sentences.append(
            {"id": str(row.get("id", len(sentences))), "tokens": row["tokens"], "ner_tags": row[tag_key]}
        )
    if not sentences:
        raise DataError("file is empty", path)
    return sentences


def tag_problem(tag: str) -> str | None:
    """What is wrong with one NER tag, or None: a tag is ``O`` or B-/I-/E-/S- and an entity type."""
    prefix, sep, entity = tag.partition("-")
    if tag == "O" or sep and entity and prefix in ("B", "I", "E", "S"):
        return None
    return f"tag {tag!r} is neither 'O' nor B-/I-/E-/S- followed by an entity type"


def detect_tag_scheme(tags: Sequence[str] | Sequence[Sequence[str]]) -> TagScheme:
    """``"BIOES"`` if any S-/E- tag, ``"IOB1"`` if an I- tag starts an entity, else ``"IOB2"``.

    Accepts one tag sequence or a list of sentences (sentence starts matter for IOB1). seqeval calls
    BIOES ``IOBES``; a metric must pick the matching scheme or entities get split or merged.
    """
    sequences = [tags] if tags and isinstance(tags[0], str) else tags
    prefixes: set[str] = set()
    starts_with_inside = False
    for sequence in sequences:
        previous: str | None = None  # entity type of the previous tag, None after O or at the start
        for tag in sequence:
            if tag == "O":
                previous = None
                continue
            problem = tag_problem(tag)
            if problem:
                raise DataError(problem)
            prefix, _, entity = tag.partition("-")
            prefixes.add(prefix)
            if prefix == "I" and previous != entity:
                starts_with_inside = True
            previous = entity
    if prefixes & {"E", "S"}:
        return "BIOES"
    return "IOB1" if starts_with_inside else "IOB2"


# -------------------------------------------------------------------------------------------------- QA


def _key(obj: Any, key: str, path: str | Path, record: str | None, kind: type | tuple[type, ...]) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise DataError(f"missing key {key!r}", path, record=record)
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise DataError(f"{key!r} has the wrong type ({type(value).__name__})", path, record=record)
    return value


def read_squad(path: str | Path) -> list[dict[str, Any]]:
    """Read SQuAD v1.1/v2.0 JSON into ``{"id", "title", "context", "question", "answers"}`` rows.

    ``answers`` is ``{"text": [...], "answer_start": [...]}`` with the original character offsets;
    v2 ``is_impossible`` questions get empty lists. Every answer must be the exact context slice at
    its offset, since a wrong offset trains the model on the wrong span without any other symptom.
    """
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise DataError(f"not valid JSON ({e.msg} at column {e.colno})", path, e.lineno) from None
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for article in _key(data, "data", path, None, list):
        title = str(article.get("title", "")) if isinstance(article, dict) else ""
        for paragraph in _key(article, "paragraphs", path, title or None, list):
            context = _key(paragraph, "context", path, title or None, str)
            for qa in _key(paragraph, "qas", path, title or None, list):
                qid = str(_key(qa, "id", path, title or None, (str, int)))
                if qid in seen:
                    raise DataError("question id appears twice", path, record=qid)
                seen.add(qid)
                question = _key(qa, "question", path, qid, str)
                texts: list[str] = []
                starts: list[int] = []
                impossible = qa.get("is_impossible", False)
                if not isinstance(impossible, bool):  # "false" would read as true
                    raise DataError(
                        f"is_impossible: expected true or false, got {impossible!r}", path, record=qid
                    )
                if not impossible:
                    answers = _key(qa, "answers", path, qid, list)
                    if not answers:
                        raise DataError(
                            "no answers, and the question is not marked is_impossible", path, record=qid
                        )
                    for answer in answers:
                        text = _key(answer, "text", path, qid, str)
                        start = _key(answer, "answer_start", path, qid, int)
                        if not text.strip() or start < 0:  # an empty span trains on the wrong tokens
                            raise DataError(
                                f"answer {text!r} at answer_start {start}: an answer is a non-empty span "
                                "of the context (an unanswerable question is marked is_impossible)",
                                path,
                                record=qid,
                            )
                        found = context[start : start + len(text)]
                        if found != text:
                            raise DataError(
                                f"answer {text!r} is not at answer_start {start} (the context has {found!r} there)",
                                path,
                                record=qid,
                            )
                        texts.append(text)
                        starts.append(start)
                rows.append(
                    {
                        "id": qid,
                        "title": title,
                        "context": context,
                        "question": question,
                        "answers": {"text": texts, "answer_start": starts},
                    }
                )
    if not rows:
        raise DataError("no questions", path)
    return rows


def load_local_squad(files: Mapping[str, str | Path]) -> DatasetDict:
    """QA splits from SQuAD-format JSON files, in the squad schema."""
    _check_split_names(files)
    return DatasetDict(
        {
            split: Dataset.from_list(read_squad(files[split]), features=QA_FEATURES)
            for split in SPLITS
            if split in files
        }
    )
