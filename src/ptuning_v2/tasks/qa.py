"""Extractive question answering (SQuAD v1.1 / v2.0): a start and an end score per context token.

A context longer than ``train.max_length`` is cut into overlapping windows (``doc_stride`` tokens
shared by neighbours); each window is one feature. Training labels a window that does not hold the
whole answer (or any window of an unanswerable question) with the ``[CLS]`` position, as BERT did.
Evaluation gathers every window of a question: the best span over all windows (start + end score,
end not before start, at most ``max_answer_length`` tokens, both inside the context) is the answer,
unless (SQuAD v2) the null score minus the best span score exceeds ``null_score_diff_threshold``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from datasets import Dataset, DatasetDict
from torch import nn

from ptuning_v2.config import ConfigError, DataConfig, RunConfig
from ptuning_v2.data import DataError, DataReport, load_local_squad
from ptuning_v2.evaluation.squad import squad_metrics
from ptuning_v2.tasks.base import (
    Task,
    encoder_inputs,
    local_files,
    register_task,
    token_states,
    unpadded,
)

OPTIONS: dict[str, Any] = {
    "doc_stride": 128,
    "max_answer_length": 30,
    "n_best": 20,
    "version_2_with_negative": False,
    "null_score_diff_threshold": 0.0,
}


@dataclass
class Candidate:
    """A scored answer span, in characters of the context."""

    score: float
    start: int
    end: int


def window_candidates(
    start_logits: np.ndarray, end_logits: np.ndarray, offsets: np.ndarray, n_best: int, max_answer_length: int
) -> list[Candidate]:
    """Spans of one window from its ``n_best`` best starts and ends (offsets -1 mark non-context tokens)."""
    starts = np.argsort(-start_logits, kind="stable")[:n_best]
    ends = np.argsort(-end_logits, kind="stable")[:n_best]
    out = []
    for s in starts:
        if offsets[s, 0] < 0:
            continue
        for e in ends:
            if offsets[e, 0] < 0 or e < s or e - s + 1 > max_answer_length:
                continue
            out.append(
                Candidate(float(start_logits[s] + end_logits[e]), int(offsets[s, 0]), int(offsets[e, 1]))
            )
    return out


def decode_answer(
    windows: list[tuple[np.ndarray, np.ndarray, np.ndarray, int]],
    n_best: int,
    max_answer_length: int,
    version_2: bool,
    null_threshold: float,
) -> tuple[Candidate | None, list[Candidate], float]:
    """(answer or None for no answer, n-best spans over all windows, null score).

    ``windows`` holds ``(start_logits, end_logits, offsets, cls_index)`` per window. The null score is
    the lowest ``[CLS]`` start + end score over the windows (the window most sure there is an answer).
    """
    spans: list[Candidate] = []
    null = float("inf")
    for start_logits, end_logits, offsets, cls in windows:
        spans.extend(window_candidates(start_logits, end_logits, offsets, n_best, max_answer_length))
        null = min(null, float(start_logits[cls] + end_logits[cls]))
    spans.sort(key=lambda c: c.score, reverse=True)
    spans = spans[:n_best]
    if not spans:
        return None, spans, null
    if version_2 and null - spans[0].score > null_threshold:
        return None, spans, null
    return spans[0], spans, null


class QuestionAnsweringModel(nn.Module):
    """Per-token encoder states -> Linear(hidden, 2): start and end scores; padding never scores."""

    def __init__(self, encoder: nn.Module, hidden_size: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(hidden_size, 2)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.from_outputs(self.encoder(**encoder_inputs(batch)), batch)

    def from_outputs(self, outputs: Any, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The head over encoder outputs computed elsewhere (a mixed-task batch's shared pass)."""
        hidden = token_states(outputs, batch)
        logits = self.head(hidden).float()
        padding = batch["attention_mask"].unsqueeze(-1) == 0
        logits = logits.masked_fill(padding, torch.finfo(logits.dtype).min)
        result = {"logits": logits}
        if "start_positions" in batch:
            loss_fn = nn.functional.cross_entropy
            result["loss"] = (
                loss_fn(logits[..., 0], batch["start_positions"])
                + loss_fn(logits[..., 1], batch["end_positions"])
            ) / 2
        return result


@register_task
class QuestionAnsweringTask(Task):
    """Columns ``id``, ``context``, ``question``, ``answers {text, answer_start}`` (the squad schema)."""

    name = "qa"
    main_metric = "f1"
    option_defaults = OPTIONS

    def __init__(self, config: RunConfig, tokenizer: Any) -> None:
        super().__init__(config, tokenizer)
        if not getattr(tokenizer, "is_fast", False):
            raise ConfigError(f"task qa needs a fast tokenizer (offset mappings); {config.model!r} has none")
        specials = tokenizer.num_special_tokens_to_add(pair=True)
        if self.options["doc_stride"] + specials + 1 >= config.train.max_length:
            raise ConfigError(
                f"task_options.doc_stride ({self.options['doc_stride']}) leaves no room for the question in "
                f"train.max_length ({config.train.max_length}); lower it"
            )

    @classmethod
    def load_local(cls, data: DataConfig, report: DataReport | None = None) -> DatasetDict:
        """SQuAD-format JSON files (v1.1, or v2.0 with ``is_impossible``); nothing is cut (long contexts
        become several windows)."""
        if data.format not in (None, "json", "squad"):
            raise ConfigError(f"data.format: task qa reads SQuAD JSON, got {data.format!r}")
        return load_local_squad(local_files(data))

    def prepare(self, splits: DatasetDict) -> None:
        if self.options["version_2_with_negative"]:
            return
        for split_name, split in splits.items():
            for qid, answers in zip(split["id"], split["answers"], strict=True):
                if not answers["text"]:
                    raise DataError(
                        f"the {split_name} split has an unanswerable question; set "
                        "task_options.version_2_with_negative: true for SQuAD v2 data",
                        file=getattr(self.config.data, split_name, None),
                        record=qid,
                    )

    def _windows(self, questions: list[str], contexts: list[str], ids: list[str]) -> list[dict[str, Any]]:
        """Tokenised windows, each with its example index, context offsets and ``[CLS]`` position."""
        max_length, stride = self.config.train.max_length, self.options["doc_stride"]
        room = max_length - self.tokenizer.num_special_tokens_to_add(pair=True) - stride
        question_ids = self.tokenizer(questions, add_special_tokens=False)["input_ids"]
        for qid, tokens in zip(ids, question_ids, strict=True):
            if len(tokens) >= room:
                raise DataError(
                    f"the question is {len(tokens)} tokens: with train.max_length {max_length} and "
                    f"task_options.doc_stride {stride} no context fits beside it",
                    record=qid,
                )
        encoded = self.tokenizer(
            questions,
            contexts,
            truncation="only_second",
            max_length=max_length,
            stride=stride,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
        )
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in encoded]
        cls_id = self.tokenizer.cls_token_id
        features = []
        for i, example in enumerate(encoded["overflow_to_sample_mapping"]):
            sequence_ids = encoded.sequence_ids(i)
            offsets = np.array(encoded["offset_mapping"][i], dtype=np.int32).reshape(-1, 2)
            offsets[[s != 1 for s in sequence_ids]] = -1
            input_ids = encoded["input_ids"][i]
            features.append(
                {
                    **{k: encoded[k][i] for k in keys},
                    "example_index": example,
                    "offsets": offsets,
                    "cls_index": input_ids.index(cls_id) if cls_id in input_ids else 0,
                }
            )
        return features

    def featurize(self, dataset: Dataset, split: str) -> list[dict[str, Any]]:
        """Windows sorted by length (evaluation batches then pad little), labelled with the answer span."""
        features = self._windows(
            [q.lstrip() for q in dataset["question"]], list(dataset["context"]), list(dataset["id"])
        )
        answers = list(dataset["answers"])
        for feature in features:
            feature["start_positions"], feature["end_positions"] = answer_positions(
                feature["offsets"], answers[feature["example_index"]], feature["cls_index"]
            )
        features.sort(key=lambda f: len(f["input_ids"]))
        return features

    def collate(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self.pad_inputs(features)
        if "start_positions" in features[0]:
            for key in ("start_positions", "end_positions"):
                batch[key] = torch.tensor([f[key] for f in features], dtype=torch.long)
        return batch

    def build_model(self, encoder: nn.Module) -> nn.Module:
        return QuestionAnsweringModel(encoder, encoder.config.hidden_size)

    def _decode(
        self, model: nn.Module, batches: Iterable[dict[str, torch.Tensor]], features: list[dict], count: int
    ) -> list[tuple[Candidate | None, list[Candidate], float]]:
        """Run the model over the windows and decode one answer per example."""
        windows: list[list[tuple[np.ndarray, np.ndarray, np.ndarray, int]]] = [[] for _ in range(count)]
        left = self.tokenizer.padding_side == "left"
        done = 0
        for batch in batches:
            logits = model(batch)["logits"].cpu().numpy()
            for row in logits:
                feature = features[done]
                length = len(feature["input_ids"])
                row = row[-length:] if left else row[:length]
                windows[feature["example_index"]].append(
                    (row[:, 0], row[:, 1], feature["offsets"], feature["cls_index"])
                )
                done += 1
        o = self.options
        return [
            decode_answer(
                w,
                o["n_best"],
                o["max_answer_length"],
                o["version_2_with_negative"],
                o["null_score_diff_threshold"],
            )
            for w in windows
        ]

    @torch.no_grad()
    def evaluate(
        self,
        model: nn.Module,
        batches: Iterable[dict[str, torch.Tensor]],
        dataset: Dataset,
        features: list[dict],
    ) -> dict[str, Any]:
        """Official SQuAD EM / F1 (percent) over the questions, not the windows."""
        decoded = self._decode(model, batches, features, len(dataset))
        contexts = list(dataset["context"])
        predictions = {
            qid: "" if best is None else contexts[i][best.start : best.end]
            for i, (qid, (best, _, _)) in enumerate(zip(dataset["id"], decoded, strict=True))
        }
        references = {qid: a["text"] for qid, a in zip(dataset["id"], dataset["answers"], strict=True)}
        metrics: dict[str, Any] = squad_metrics(
            predictions, references, self.options["version_2_with_negative"]
        )
        metrics["windows"] = len(features)
        return metrics

    def predict_features(self, texts: list[Any]) -> list[list[dict[str, Any]]]:
        """The windows of each ``(question, context)`` pair (or ``{"question", "context"}`` dict)."""
        pairs = [question_context(item, i) for i, item in enumerate(texts)]
        windows = self._windows(
            [q.lstrip() for q, _ in pairs], [c for _, c in pairs], [str(i) for i in range(len(pairs))]
        )
        grouped: list[list[dict[str, Any]]] = [[] for _ in pairs]
        for window in windows:
            grouped[window["example_index"]].append(window)
        return grouped

    def decode_predictions(
        self, texts: list[Any], features: list[list[dict[str, Any]]], outputs: list[list[dict[str, Any]]]
    ) -> list[dict[str, Any]]:
        """The answer of each pair: the best span over its windows.

        ``answer`` is ``""`` when the model predicts no answer (SQuAD v2); ``start`` / ``end`` are
        character offsets in the context; ``n_best`` lists the best spans with their softmax share.
        """
        o = self.options
        out = []
        for i, (windows, rows) in enumerate(zip(features, outputs, strict=True)):
            question, context = question_context(texts[i], i)
            scored = []
            for feature, row in zip(windows, rows, strict=True):
                logits = unpadded(row["logits"], len(feature["input_ids"]), self.tokenizer.padding_side)
                logits = logits.cpu().numpy()
                scored.append((logits[:, 0], logits[:, 1], feature["offsets"], feature["cls_index"]))
            best, spans, null = decode_answer(
                scored,
                o["n_best"],
                o["max_answer_length"],
                o["version_2_with_negative"],
                o["null_score_diff_threshold"],
            )
            scores = np.array([c.score for c in spans], dtype=np.float64)
            shares = (
                np.exp(scores - scores.max()) / np.exp(scores - scores.max()).sum() if len(spans) else scores
            )
            out.append(
                {
                    "question": question,
                    "answer": "" if best is None else context[best.start : best.end],
                    "start": None if best is None else best.start,
                    "end": None if best is None else best.end,
                    "null_score": null,
                    "n_best": [
                        {
                            "text": context[c.start : c.end],
                            "start": c.start,
                            "end": c.end,
                            "score": c.score,
                            "probability": float(p),
                        }
                        for c, p in zip(spans, shares, strict=True)
                    ],
                }
            )
        return out


def question_context(item: Any, index: int) -> tuple[str, str]:
    if (
        isinstance(item, dict)
        and isinstance(item.get("question"), str)
        and isinstance(item.get("context"), str)
    ):
        return item["question"], item["context"]
    if isinstance(item, list | tuple) and len(item) == 2 and all(isinstance(x, str) for x in item):
        return item[0], item[1]
    raise DataError(
        'a QA input is a (question, context) pair: QUESTION<TAB>CONTEXT, or {"question", "context"}',
        record=str(index),
    )


def answer_positions(offsets: np.ndarray, answers: dict[str, list], cls_index: int) -> tuple[int, int]:
    """Token positions of the first gold answer in one window, or ``(cls, cls)`` if it is not all inside."""
    if not answers["text"]:
        return cls_index, cls_index
    start_char = answers["answer_start"][0]
    end_char = start_char + len(answers["text"][0])
    context = np.nonzero(offsets[:, 0] >= 0)[0]
    if len(context) == 0:
        return cls_index, cls_index
    first, last = int(context[0]), int(context[-1])
    if offsets[first, 0] > start_char or offsets[last, 1] < end_char:
        return cls_index, cls_index
    start = first
    while start <= last and offsets[start, 0] <= start_char:
        start += 1
    end = last
    while end >= first and offsets[end, 1] >= end_char:
        end -= 1
    return start - 1, end + 1
