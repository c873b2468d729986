"""Token classification (NER): one label per word, read off the word's first subword.

Words are tokenised into subwords; only the first subword of each word carries the word's label
(the rest get -100 and never reach the loss or the metric). Prompt positions never reach either:
prefix injection adds keys/values only, and hidden-state injection drops its vectors after every
layer, so the encoder's output has exactly one state per input token (checked in ``forward``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset, DatasetDict
from torch import nn

from ptuning_v2.config import ConfigError, DataConfig, RunConfig
from ptuning_v2.data import (
    NER_FEATURES,
    DataError,
    DataReport,
    detect_tag_scheme,
    read_conll,
    read_jsonl_tagged,
)
from ptuning_v2.data.readers import TagScheme
from ptuning_v2.evaluation.ner import entity_spans, ner_metrics
from ptuning_v2.tasks.base import (
    LinearHeadModel,
    Task,
    encoder_inputs,
    local_files,
    register_task,
    token_states,
    unpadded,
)

IGNORE = -100
# Words for raw-text prediction: runs of word characters (joined by - ' . inside, as in "U.S" or
# "Hewlett-Packard"), and every other non-space character alone, close to CoNLL's tokenisation.
_WORD = re.compile(r"\w+(?:[-'’.]\w+)*|\S")


def split_words(text: str) -> list[tuple[str, int, int]]:
    """``(word, start, end)`` character spans of the words of raw text."""
    return [(m.group(), m.start(), m.end()) for m in _WORD.finditer(text)]


class TokenClassificationModel(LinearHeadModel):
    """Per-token encoder states -> dropout -> linear layer over the tag set."""

    def __init__(self, encoder: nn.Module, hidden_size: int, num_labels: int, dropout: float) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden_size, num_labels))

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.from_outputs(self.encoder(**encoder_inputs(batch)), batch)

    def head_input(self, outputs: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return token_states(outputs, batch)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(
            logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE
        )


@register_task
class NerTask(Task):
    """Columns ``tokens`` and ``ner_tags`` (tag strings); the tag set and scheme come from the data."""

    name = "ner"
    main_metric = "f1"
    option_defaults = {}

    def __init__(self, config: RunConfig, tokenizer: Any) -> None:
        super().__init__(config, tokenizer)
        self.labels: list[str] = []
        self.scheme: TagScheme = "IOB2"

    @classmethod
    def load_local(cls, data: DataConfig, report: DataReport | None = None) -> DatasetDict:
        """CoNLL files (``data.format: conll``) or JSONL with ``tokens`` and ``tags`` (``jsonl``).

        Without ``data.format`` the extension decides: ``.jsonl`` / ``.ndjson`` are JSONL, anything
        else CoNLL. ``data.columns`` picks the CoNLL columns by number, e.g. ``{tokens: 0, ner_tags: 3}``
        (default: the first and the last).
        """
        if data.format not in (None, "conll", "jsonl"):
            raise ConfigError(f"data.format: task ner reads 'conll' or 'jsonl', got {data.format!r}")
        columns = conll_columns(data.columns)
        splits = {}
        for split, path in local_files(data).items():
            fmt = data.format or ("jsonl" if Path(path).suffix.lower() in (".jsonl", ".ndjson") else "conll")
            if fmt == "jsonl" and data.columns:
                raise ConfigError(
                    "data.columns picks CoNLL columns; a JSONL file needs the keys tokens and tags"
                )
            rows = read_jsonl_tagged(path) if fmt == "jsonl" else read_conll(path, *columns)
            splits[split] = Dataset.from_list(rows, features=NER_FEATURES)
        return DatasetDict(splits)

    def prepare(self, splits: DatasetDict) -> None:
        if "train" not in splits:
            raise DataError("no train split: the tag set is read from the training data")
        self.labels = sorted({tag for tags in splits["train"]["ner_tags"] for tag in tags})
        known = set(self.labels)
        for split_name, split in splits.items():
            for row_id, tags in zip(split["id"], split["ner_tags"], strict=True):
                unseen = sorted(set(tags) - known)
                if unseen:
                    raise DataError(
                        f"the {split_name} split has tag(s) {unseen} that never occur in the training data",
                        file=getattr(self.config.data, split_name, None),
                        record=row_id,
                        field="ner_tags",
                    )
        self.scheme = detect_tag_scheme([tags for split in splits.values() for tags in split["ner_tags"]])

    def _encode(self, words: list[list[str]]) -> Any:
        return self.tokenizer(
            words, is_split_into_words=True, truncation=True, max_length=self.config.train.max_length
        )

    def featurize(self, dataset: Dataset, split: str) -> list[dict[str, Any]]:
        """One feature per sentence (``sentence`` is its row), sorted by length so batches pad little."""
        label_ids = {label: i for i, label in enumerate(self.labels)}
        encoded = self._encode(list(dataset["tokens"]))
        all_tags = list(dataset["ner_tags"])
        unknown = sorted({tag for tags in all_tags for tag in tags} - set(label_ids))
        if unknown:
            raise DataError(
                f"the {split} split has tag(s) {unknown}; the model was trained on {self.labels}",
                field="ner_tags",
            )
        features = []
        for i, tags in enumerate(all_tags):
            word_ids = encoded.word_ids(i)
            positions = first_subword_positions(word_ids, len(tags))
            feature = {key: encoded[key][i] for key in encoded}
            labels = [IGNORE] * len(word_ids)
            for word, position in enumerate(positions):
                if position >= 0:
                    labels[position] = label_ids[tags[word]]
            feature["labels"] = labels
            feature["word_positions"] = positions
            feature["sentence"] = i
            features.append(feature)
        self.report.change(
            split,
            f"truncated to train.max_length={self.config.train.max_length} tokens (cut words count as O)",
            sum(min(f["word_positions"], default=0) < 0 for f in features),
        )
        features.sort(key=lambda f: len(f["input_ids"]))
        return features

    def collate(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self.pad_inputs(features)
        if "labels" in features[0]:
            width = batch["input_ids"].shape[1]
            left = self.tokenizer.padding_side == "left"
            batch["labels"] = torch.tensor(
                [
                    [IGNORE] * (width - len(f["labels"])) + f["labels"]
                    if left
                    else f["labels"] + [IGNORE] * (width - len(f["labels"]))
                    for f in features
                ],
                dtype=torch.long,
            )
        return batch

    def build_model(self, encoder: nn.Module) -> nn.Module:
        return TokenClassificationModel(
            encoder, encoder.config.hidden_size, len(self.labels), self.config.head.dropout
        )

    def _word_tags(self, logits: torch.Tensor, features: list[dict[str, Any]]) -> list[list[str]]:
        """Each word's predicted tag (from its first subword); words cut off by truncation get ``O``."""
        best = logits.argmax(-1).cpu().tolist()
        return [
            [self.labels[row[p]] if p >= 0 else "O" for p in f["word_positions"]]
            for row, f in zip(best, features, strict=True)
        ]

    @torch.no_grad()
    def evaluate(
        self,
        model: nn.Module,
        batches: Iterable[dict[str, torch.Tensor]],
        dataset: Dataset,
        features: list[dict],
    ) -> dict[str, Any]:
        pred: list[list[str]] = [[] for _ in range(len(dataset))]
        done = 0
        for batch in batches:
            logits = model(batch)["logits"]
            chunk = features[done : done + len(logits)]
            for feature, tags in zip(chunk, self._word_tags(logits, chunk), strict=True):
                pred[feature["sentence"]] = tags
            done += len(logits)
        gold = [list(tags) for tags in dataset["ner_tags"]]
        metrics = ner_metrics(gold, pred, self.scheme)
        metrics["truncated_words"] = sum(p < 0 for f in features for p in f["word_positions"])
        return metrics

    def predict_features(self, texts: list[Any]) -> list[list[dict[str, Any]]]:
        """One feature per text: its words (``split_words``) tokenised, with each word's first subword."""
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise DataError("an NER input is a text", record=str(i))
        if not texts:
            return []
        spans = [split_words(text) for text in texts]
        encoded = self._encode([[w for w, _, _ in words] or [""] for words in spans])
        features = [
            [
                {
                    **{k: encoded[k][i] for k in encoded},
                    "word_positions": first_subword_positions(encoded.word_ids(i), len(words)),
                }
            ]
            for i, words in enumerate(spans)
        ]
        self.report.change(
            "predict",
            f"truncated to train.max_length={self.config.train.max_length} tokens (cut words get no entity)",
            sum(min(feature["word_positions"], default=0) < 0 for (feature,) in features),
        )
        return features

    def decode_predictions(
        self, texts: list[Any], features: list[list[dict[str, Any]]], outputs: list[list[dict[str, Any]]]
    ) -> list[dict[str, Any]]:
        """Entities of raw texts: type, text and character offsets ``[start, end)`` in the input."""
        out = []
        for text, (feature,), (rows,) in zip(texts, features, outputs, strict=True):
            logits = unpadded(rows["logits"], len(feature["input_ids"]), self.tokenizer.padding_side)
            (word_tags,) = self._word_tags(logits.unsqueeze(0), [feature])
            words = split_words(text)
            entities = []
            for kind, first, last in entity_spans(word_tags, self.scheme):
                begin, end = words[first][1], words[last - 1][2]
                entities.append({"type": kind, "text": text[begin:end], "start": begin, "end": end})
            out.append({"text": text, "entities": entities})
        return out

    def parse_input(self, line: str) -> Any:
        """A line is one text: a tab is only a space between words."""
        return line

    def state(self) -> dict[str, Any]:
        return {"labels": self.labels, "scheme": self.scheme}

    def load_state(self, state: dict[str, Any]) -> None:
        self.labels = list(state["labels"])
        self.scheme = state["scheme"]


def conll_columns(columns: dict[str, Any]) -> tuple[int, int]:
    """(token column, tag column) from ``data.columns``; numbers count from 0, negative from the end."""
    unknown = sorted(set(columns) - {"tokens", "ner_tags"})
    if unknown:
        raise ConfigError(f"data.columns: task ner knows 'tokens' and 'ner_tags', not {unknown}")
    picked = []
    for name, default in (("tokens", 0), ("ner_tags", -1)):
        value = columns.get(name, default)
        text = str(value).strip()
        if isinstance(value, bool) or not text.removeprefix("-").isdigit():
            raise ConfigError(f"data.columns.{name}: expected a column number, got {value!r}")
        picked.append(int(text))
    return picked[0], picked[1]


def first_subword_positions(word_ids: list[int | None], num_words: int) -> list[int]:
    """Token position of each word's first subword; -1 for a word with no token left (truncated)."""
    positions = [-1] * num_words
    previous = None
    for position, word in enumerate(word_ids):
        if word is not None and word != previous:
            positions[word] = position
        previous = word
    return positions
