"""Sequence classification (single sentences and sentence pairs) on a frozen, prompted encoder."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from datasets import Dataset, DatasetDict
from sklearn.metrics import precision_recall_fscore_support
from torch import nn

from ptuning_v2.config import DataConfig
from ptuning_v2.data import DataError, load_local_splits
from ptuning_v2.tasks.base import Task, encoder_inputs, local_files, pooled, register_task


class ClassificationModel(nn.Module):
    """Pooled encoder output -> dropout -> linear layer (the official P-Tuning v2 head)."""

    def __init__(
        self, encoder: nn.Module, hidden_size: int, num_labels: int, pooling: str, dropout: float
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden_size, num_labels))

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        outputs = self.encoder(**encoder_inputs(batch))
        logits = self.head(pooled(outputs, batch["attention_mask"], self.pooling))
        result = {"logits": logits}
        if "labels" in batch:
            result["loss"] = nn.functional.cross_entropy(logits.float(), batch["labels"])
        return result


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

    @classmethod
    def load_local(cls, data: DataConfig) -> DatasetDict:
        required = ["text", "label"] + (["text_pair"] if "text_pair" in data.columns else [])
        return load_local_splits(local_files(data), data.format, data.columns or None, required)

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
        if len(self.labels) < 2:
            raise DataError(
                f"the training data has {len(self.labels)} label(s); classification needs at least 2"
            )

    def featurize(self, dataset: Dataset, split: str) -> list[dict[str, Any]]:
        label_ids = {label: i for i, label in enumerate(self.labels)}
        pairs = list(dataset["text_pair"]) if "text_pair" in dataset.column_names else None
        encoded = self.tokenizer(
            list(dataset["text"]), pairs, truncation=True, max_length=self.config.train.max_length
        )
        labels = list(dataset["label"]) if "label" in dataset.column_names else None
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

    @torch.no_grad()
    def predict(self, model: nn.Module, texts: list[Any]) -> list[dict[str, Any]]:
        device = next(model.parameters()).device
        out = []
        for start in range(0, len(texts), self.config.train.eval_batch_size):
            chunk = texts[start : start + self.config.train.eval_batch_size]
            firsts = [t[0] if isinstance(t, list | tuple) else t for t in chunk]
            seconds = [t[1] for t in chunk] if isinstance(chunk[0], list | tuple) else None
            enc = self.tokenizer(
                firsts,
                seconds,
                truncation=True,
                max_length=self.config.train.max_length,
                padding=True,
                return_tensors="pt",
            ).to(device)
            probs = model(dict(enc))["logits"].float().softmax(-1).cpu()
            for text, p in zip(chunk, probs, strict=True):
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

    def state(self) -> dict[str, Any]:
        return {"labels": self.labels}

    def load_state(self, state: dict[str, Any]) -> None:
        self.labels = list(state["labels"])
