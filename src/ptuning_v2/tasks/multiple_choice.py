"""Multiple choice (COPA / SWAG style): every choice scored by the encoder, a softmax over the choices.

Each choice is encoded as the pair (context + question, choice); the pooled state goes through
Linear(hidden, 1), and the scores of one example's choices form its logits. Examples may have
different numbers of choices: missing ones are padded and masked out of the softmax.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import torch
from datasets import Dataset, DatasetDict, Features, List, Value
from torch import nn

from ptuning_v2.config import ConfigError, DataConfig
from ptuning_v2.data import DataError, DataReport, truncated_flags
from ptuning_v2.data.readers import read_jsonl_objects
from ptuning_v2.tasks.base import Task, encoder_inputs, local_files, pooled, register_task

MC_FEATURES = Features(
    {
        "id": Value("string"),
        "context": Value("string"),
        "question": Value("string"),
        "choices": List(Value("string")),
        "label": Value("int64"),
    }
)
_FIELDS = ("id", "context", "question", "choices", "label")


def read_multiple_choice(path: str, columns: dict[str, str]) -> list[dict[str, Any]]:
    """Rows of a JSONL file: ``question``, optional ``context``, ``choices`` (2 or more strings), ``label``.

    ``label`` is the 0-based index of the right choice (absent for unlabelled inputs: -1);
    ``columns`` maps these names to the file's keys.
    """
    unknown = sorted(set(columns) - set(_FIELDS))
    if unknown:
        raise ConfigError(f"data.columns: task multiple_choice knows {list(_FIELDS)}, not {unknown}")
    key = {name: columns.get(name, name) for name in _FIELDS}
    rows = []
    for line, obj in read_jsonl_objects(path):
        question = obj.get(key["question"])
        if not isinstance(question, str):
            raise DataError("expected a question (a string)", path, line, key["question"])
        context = obj.get(key["context"], "")
        if not isinstance(context, str):
            raise DataError("expected a string", path, line, key["context"])
        choices = obj.get(key["choices"])
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
            raise DataError("expected a list of at least 2 strings", path, line, key["choices"])
        label = obj.get(key["label"], -1)
        if isinstance(label, bool) or not isinstance(label, int) or not -1 <= label < len(choices):
            raise DataError(
                f"expected the index (0 to {len(choices) - 1}) of the right choice, found {label!r}",
                path,
                line,
                key["label"],
            )
        rows.append(
            {
                "id": str(obj.get(key["id"], line)),
                "context": context,
                "question": question,
                "choices": choices,
                "label": label,
            }
        )
    if not rows:
        raise DataError("file is empty", path)
    return rows


class MultipleChoiceModel(nn.Module):
    """Pooled encoder output of each (context + question, choice) pair -> dropout -> Linear(hidden, 1)."""

    def __init__(self, encoder: nn.Module, hidden_size: int, pooling: str, dropout: float) -> None:
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden_size, 1))

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.from_outputs(self.encoder(**encoder_inputs(batch)), batch)

    def from_outputs(self, outputs: Any, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The head over encoder outputs computed elsewhere (one row per (example, choice) pair)."""
        mask = batch["choice_mask"]
        scores = self.head(pooled(outputs, batch["attention_mask"], self.pooling)).float()
        logits = scores.view(mask.shape).masked_fill(~mask, torch.finfo(torch.float32).min)
        result = {"logits": logits}
        if "labels" in batch:
            result["loss"] = nn.functional.cross_entropy(logits, batch["labels"])
        return result


@register_task
class MultipleChoiceTask(Task):
    """JSONL rows with ``question``, optional ``context``, ``choices`` and ``label`` (index of the right one)."""

    name = "multiple_choice"
    main_metric = "accuracy"
    mixed_batches = False  # a feature is every choice of one item, several rows
    option_defaults = {}

    @classmethod
    def load_local(cls, data: DataConfig, report: DataReport | None = None) -> DatasetDict:
        if data.format not in (None, "jsonl"):
            raise ConfigError(f"data.format: task multiple_choice reads 'jsonl', got {data.format!r}")
        return DatasetDict(
            {
                split: Dataset.from_list(read_multiple_choice(path, data.columns), features=MC_FEATURES)
                for split, path in local_files(data).items()
            }
        )

    def prepare(self, splits: DatasetDict) -> None:
        for split_name, split in splits.items():
            for row_id, label in zip(split["id"], split["label"], strict=True):
                if label < 0:
                    raise DataError(
                        f"the {split_name} split needs a label on every row", record=row_id, field="label"
                    )

    def _encode(self, rows: list[dict[str, Any]], split: str) -> list[dict[str, Any]]:
        firsts, seconds, owners = [], [], []
        for i, row in enumerate(rows):
            first = f"{row.get('context', '')} {row['question']}".strip()
            for choice in row["choices"]:
                firsts.append(first)
                seconds.append(choice)
                owners.append(i)
        max_length = self.config.train.max_length
        encoded = self.tokenizer(firsts, seconds, truncation=True, max_length=max_length)
        cut = {
            owner for owner, flag in zip(owners, truncated_flags(encoded, max_length), strict=True) if flag
        }
        self.report.change(split, f"truncated to train.max_length={max_length} tokens", len(cut))
        features: list[dict[str, Any]] = [{"choices": []} for _ in rows]
        for j, owner in enumerate(owners):
            features[owner]["choices"].append({k: encoded[k][j] for k in encoded})
        for feature, row in zip(features, rows, strict=True):
            if row.get("label", -1) >= 0:
                feature["labels"] = row["label"]
        return features

    def featurize(self, dataset: Dataset, split: str) -> list[dict[str, Any]]:
        return self._encode(list(dataset), split)

    def collate(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(f["choices"]) for f in features)
        flat = []
        for f in features:  # a missing choice repeats the first one; choice_mask hides its score
            flat.extend(f["choices"] + [f["choices"][0]] * (width - len(f["choices"])))
        batch = dict(self.tokenizer.pad(flat, return_tensors="pt"))
        batch["choice_mask"] = torch.tensor(
            [[c < len(f["choices"]) for c in range(width)] for f in features], dtype=torch.bool
        )
        if "labels" in features[0]:
            batch["labels"] = torch.tensor([f["labels"] for f in features], dtype=torch.long)
        return batch

    def build_model(self, encoder: nn.Module) -> nn.Module:
        head = self.config.head
        return MultipleChoiceModel(encoder, encoder.config.hidden_size, head.pooling, head.dropout)

    @torch.no_grad()
    def evaluate(
        self,
        model: nn.Module,
        batches: Iterable[dict[str, torch.Tensor]],
        dataset: Dataset,
        features: list[dict],
    ) -> dict[str, Any]:
        correct = total = 0
        for batch in batches:
            pred = model(batch)["logits"].argmax(-1)
            correct += int((pred == batch["labels"]).sum())
            total += len(pred)
        return {"accuracy": correct / total if total else 0.0, "examples": total}

    def predict_features(self, texts: list[Any]) -> list[list[dict[str, Any]]]:
        """One feature per item (all its choices); items are ``{"question", "choices", "context"?}``
        objects or their JSON text."""
        rows = [parse_item(item, i) for i, item in enumerate(texts)]
        return [[feature] for feature in self._encode(rows, "predict")] if rows else []

    def decode_predictions(
        self, texts: list[Any], features: list[list[dict[str, Any]]], outputs: list[list[dict[str, Any]]]
    ) -> list[dict[str, Any]]:
        """The best choice, its index and every choice's probability."""
        out = []
        for i, (item, (row,)) in enumerate(zip(texts, outputs, strict=True)):
            parsed = parse_item(item, i)
            p = row["logits"].softmax(-1).cpu()[: len(parsed["choices"])]
            best = int(p.argmax())
            out.append(
                {
                    "question": parsed["question"],
                    "choice": parsed["choices"][best],
                    "label": best,
                    "probabilities": [float(v) for v in p],
                }
            )
        return out


def parse_item(item: Any, index: int) -> dict[str, Any]:
    """One prediction input as a row: a dict, or a JSON object on one line."""
    if isinstance(item, str):
        try:
            item = json.loads(item)
        except json.JSONDecodeError:
            item = None
    choices = item.get("choices") if isinstance(item, dict) else None
    if (
        not isinstance(item, dict)
        or not isinstance(item.get("question"), str)
        or not isinstance(choices, list)
        or len(choices) < 2
        or not all(isinstance(c, str) for c in choices)
    ):
        raise DataError(
            'a multiple-choice input is a JSON object {"question": ..., "choices": [2 or more strings]}',
            record=str(index),
        )
    return {"question": item["question"], "context": str(item.get("context", "")), "choices": choices}
