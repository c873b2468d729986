"""Sequence classification (single sentences and sentence pairs) on a frozen, prompted encoder."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from datasets import Dataset, DatasetDict
from sklearn.metrics import precision_recall_fscore_support
from torch import nn

from ptuning_v2.config import ConfigError, DataConfig, did_you_mean
from ptuning_v2.data import DataError, DataReport, load_local_splits, truncated_rows
from ptuning_v2.tasks.base import (
    LinearHeadModel,
    Task,
    encoder_inputs,
    local_files,
    pooled,
    register_task,
)

COLUMNS = ("text", "text_pair", "label")
"""What ``data.columns`` maps for this task (our name -> the file's)."""


class ClassificationModel(LinearHeadModel):
    """Pooled encoder output -> dropout -> linear layer (the official P-Tuning v2 head)."""

    def __init__(
        self, encoder: nn.Module, hidden_size: int, num_labels: int, pooling: str, dropout: float
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden_size, num_labels))

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.from_outputs(self.encoder(**encoder_inputs(batch)), batch)

    def head_input(self, outputs: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return pooled(outputs, batch["attention_mask"], self.pooling)

    def head_input_key(self) -> tuple:
        return (type(self), self.pooling)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(logits.float(), labels)


def classification_metrics(gold: np.ndarray, pred: np.ndarray, labels: list[str]) -> dict[str, Any]:
    """Accuracy, macro-F1 and per-class precision / recall / F1 / support."""
    ids = list(range(len(labels)))
    p, r, f, s = precision_recall_fscore_support(gold, pred, labels=ids, zero_division=0)
    metrics: dict[str, Any] = {
        "accuracy": float((gold == pred).mean()) if len(gold) else 0.0,
        "macro_f1": float(np.mean(f)) if len(f) else 0.0,
        "per_class": {
            labels[i]: {
                "precision": float(p[i]),
                "recall": float(r[i]),
                "f1": float(f[i]),
                "support": int(s[i]),
            }
            for i in ids
        },
    }
    return metrics


@register_task
class ClassificationTask(Task):
    """Columns: ``text``, optional ``text_pair``, ``label`` (any strings; the label set comes from train)."""

    name = "classification"
    main_metric = "accuracy"

    def __init__(self, config: Any, tokenizer: Any) -> None:
        super().__init__(config, tokenizer)
        self.labels: list[str] = []
        self.pairs: bool | None = None
        """Trained on sentence pairs; None for checkpoints from before this was stored."""

    @classmethod
    def load_local(cls, data: DataConfig, report: DataReport | None = None) -> DatasetDict:
        unknown = sorted(set(data.columns) - set(COLUMNS))
        if unknown:  # a misspelt text_pair would train on single sentences without a word
            raise ConfigError(
                f"data.columns: task classification maps {list(COLUMNS)} to the file's columns, not "
                f"{unknown}" + did_you_mean(unknown[0], COLUMNS)
            )
        required = ["text", "label"] + (["text_pair"] if "text_pair" in data.columns else [])
        return load_local_splits(
            local_files(data), data.format, data.columns or None, required, report=report
        )

    def prepare(self, splits: DatasetDict) -> None:
        if "train" not in splits:
            raise DataError("no train split: the label set is read from the training data")
        for split_name, split in splits.items():
            missing = [c for c in ("text", "label") if c not in split.column_names]
            if missing:
                raise DataError(
                    f"the {split_name} split has no column(s) {missing} (it has {split.column_names})"
                )
        self.labels = sorted({str(label) for label in splits["train"]["label"]})
        self.pairs = "text_pair" in splits["train"].column_names
        limit = self.config.data.max_train_examples
        cut = f" after data.max_train_examples={limit} kept {len(splits['train'])}" if limit else ""
        if len(self.labels) < 2:
            raise DataError(
                f"the training data has {len(self.labels)} label(s){cut}; classification needs at least 2"
            )
        for split_name, split in splits.items():
            unseen = sorted({str(label) for label in split["label"]} - set(self.labels))
            if unseen:
                raise DataError(
                    f"the {split_name} split has label(s) {unseen} that the training data{cut} does not have; "
                    "a classifier has no output for them"
                    + ("; raise data.max_train_examples" if cut else ""),
                    field="label",
                )

    def featurize(self, dataset: Dataset, split: str) -> list[dict[str, Any]]:
        label_ids = {label: i for i, label in enumerate(self.labels)}
        pairs = list(dataset["text_pair"]) if "text_pair" in dataset.column_names else None
        max_length = self.config.train.max_length
        encoded = self.tokenizer(list(dataset["text"]), pairs, truncation=True, max_length=max_length)
        self.report.change(
            split, f"truncated to train.max_length={max_length} tokens", truncated_rows(encoded, max_length)
        )
        labels = list(dataset["label"]) if "label" in dataset.column_names else None
        unknown = sorted({str(label) for label in labels or []} - set(label_ids))
        if unknown:  # at evaluation: the file is the split's, the record the first row with one of them
            first = next(i for i, label in enumerate(labels or []) if str(label) in unknown)
            raise DataError(
                f"the {split} split has label(s) {unknown}; the model was trained on {self.labels}",
                file=getattr(self.config.data, split, None),
                record=f"row {first + 1}",
                field="label",
            )
        features = []
        for i in range(len(dataset)):
            feature = {key: encoded[key][i] for key in encoded}
            if labels is not None:
                feature["labels"] = label_ids[str(labels[i])]
            features.append(feature)
        return features

    def collate(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = dict(
            self.tokenizer.pad(
                [{k: v for k, v in f.items() if k != "labels"} for f in features], return_tensors="pt"
            )
        )
        if "labels" in features[0]:
            batch["labels"] = torch.tensor([f["labels"] for f in features], dtype=torch.long)
        return batch

    def build_model(self, encoder: nn.Module) -> nn.Module:
        head = self.config.head
        return ClassificationModel(
            encoder, encoder.config.hidden_size, len(self.labels), head.pooling, head.dropout
        )

    @torch.no_grad()
    def evaluate(
        self,
        model: nn.Module,
        batches: Iterable[dict[str, torch.Tensor]],
        dataset: Dataset,
        features: list[dict],
    ) -> dict[str, Any]:
        gold, pred = [], []
        for batch in batches:
            logits = model(batch)["logits"]
            pred.append(logits.argmax(-1).cpu())
            gold.append(batch["labels"].cpu())
        return classification_metrics(torch.cat(gold).numpy(), torch.cat(pred).numpy(), self.labels)

    def predict_features(self, texts: list[Any]) -> list[list[dict[str, Any]]]:
        """One feature per text (or sentence pair), cut to ``train.max_length`` tokens."""
        pairs = [isinstance(t, list | tuple) for t in texts]
        for i, (text, pair) in enumerate(zip(texts, pairs, strict=True)):
            if not (
                isinstance(text, str) or pair and len(text) == 2 and all(isinstance(x, str) for x in text)
            ):
                raise DataError("a classification input is a text or a pair of texts", record=str(i))
            if pair != pairs[0]:
                raise DataError("inputs mix single texts and sentence pairs; send them apart", record=str(i))
            if self.pairs is not None and pair != self.pairs:  # the other shape would answer, and be wrong
                raise DataError(
                    "this classifier was trained on sentence pairs: give two texts (TEXT<TAB>PAIR on a line)"
                    if self.pairs
                    else "this classifier was trained on single texts, not sentence pairs",
                    record=str(i),
                )
        if not texts:
            return []
        firsts = [t[0] if pair else t for t, pair in zip(texts, pairs, strict=True)]
        seconds = [t[1] for t in texts] if pairs[0] else None
        max_length = self.config.train.max_length
        encoded = self.tokenizer(firsts, seconds, truncation=True, max_length=max_length)
        self.report.change(
            "predict",
            f"truncated to train.max_length={max_length} tokens",
            truncated_rows(encoded, max_length),
        )
        return [[{key: encoded[key][i] for key in encoded}] for i in range(len(texts))]

    def decode_predictions(
        self, texts: list[Any], features: list[list[dict[str, Any]]], outputs: list[list[dict[str, Any]]]
    ) -> list[dict[str, Any]]:
        """The best label, its probability and every label's probability."""
        if not texts:
            return []
        probs = torch.stack([rows[0]["logits"] for rows in outputs]).float().softmax(-1).cpu()
        out = []
        for text, p in zip(texts, probs, strict=True):
            best = int(p.argmax())
            out.append(
                {
                    "text": text,
                    "label": self.labels[best],
                    "score": float(p[best]),
                    "probabilities": {label: float(v) for label, v in zip(self.labels, p, strict=True)},
                }
            )
        return out

    def parse_input(self, line: str) -> Any:
        """A tab separates a sentence pair only for a model trained on pairs; otherwise it is text."""
        return super().parse_input(line) if self.pairs is not False else line

    def state(self) -> dict[str, Any]:
        return {"labels": self.labels, "pairs": self.pairs}

    def load_state(self, state: dict[str, Any]) -> None:
        self.labels = list(state["labels"])
        self.pairs = state.get("pairs")
