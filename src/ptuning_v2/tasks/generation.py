"""Text generation: ``causal_lm`` (decoder-only) and ``seq2seq`` (encoder-decoder) on a frozen LM.

There is no task head: the backbone's own language-model head stays frozen and the prompt (or the
adapted weights of another method) is all that trains. The loss is the cross-entropy of the target
tokens only. Evaluation generates text (greedy by default) and scores it with BLEU and ROUGE, and
reports the perplexity of the references under teacher forcing.

Options (``task_options``; every one optional):

- ``source_template`` / ``target_template``: Python format strings over the data's columns, e.g.
  ``"Summarise the {aspect} of this paper: {source}\\n"``; defaults ``"{source}\\n"`` (causal_lm),
  ``"{source}"`` (seq2seq) and ``"{target}"``.
- ``max_source_length`` (384): tokens kept of the ``source`` column (the template adds a few more).
- ``max_target_length`` (128): tokens kept of the target in training and perplexity.
- ``max_new_tokens`` (64): the generation budget.
- ``chat_template`` (false, causal_lm): wrap the prompt as a user turn of the tokenizer's chat template
  (a served conversation keeps its earlier turns before it: ``chat_features``).
- ``generation``: decoding options passed to ``generate()``: ``num_beams``, ``do_sample``,
  ``temperature``, ``top_k``, ``top_p``, ``repetition_penalty``, ``no_repeat_ngram_size``,
  ``length_penalty``, ``min_new_tokens``, ``early_stopping``. Sampling is seeded with ``train.seed``.

Batches for causal_lm are left-padded, so prompts end at the same column (batched generation) and
targets are the last tokens (only their logits are computed).
"""

from __future__ import annotations

import json
import math
import string
import threading
from abc import abstractmethod
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import torch
from datasets import Dataset, DatasetDict
from torch import nn

from ptuning_v2.config import ConfigError, DataConfig, RunConfig
from ptuning_v2.data import DataError, DataReport, load_local_splits, truncated_rows
from ptuning_v2.evaluation.generation import text_metrics
from ptuning_v2.prompts.model import mask_positions
from ptuning_v2.tasks.base import Task, batches, group_rows, local_files, register_task

IGNORE = -100
DECODING_OPTIONS = frozenset(
    {
        "num_beams",
        "do_sample",
        "temperature",
        "top_k",
        "top_p",
        "repetition_penalty",
        "no_repeat_ngram_size",
        "length_penalty",
        "min_new_tokens",
        "early_stopping",
    }
)


SAMPLING = threading.Lock()
"""Held by a sampled generation: seeded sampling draws from torch's one global generator, so sampled
generations take turns; greedy ones (and beam search) draw nothing and run beside them."""


@contextmanager
def seeded(seed: int, decoding: Mapping[str, Any]) -> Iterator[None]:
    """Around a ``generate()`` call with ``decoding`` options: when they sample, the global generator seeded
    with ``seed`` for the call alone (its state is restored after it), one sampled call at a time."""
    if not decoding.get("do_sample"):
        yield
        return
    with SAMPLING, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@dataclass
class GenerationOptions:
    """``task_options`` of the generation tasks, checked field by field."""

    source_template: str | None = None
    target_template: str = "{target}"
    max_source_length: int = 384
    max_target_length: int = 128
    max_new_tokens: int = 64
    chat_template: bool = False
    generation: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_task_options(cls, options: dict[str, Any]) -> GenerationOptions:
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ConfigError(f"task_options: unknown option(s) {unknown}; known: {sorted(known)}")
        parsed = cls(**options)
        for name in ("max_source_length", "max_target_length", "max_new_tokens"):
            value = getattr(parsed, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"task_options.{name}: expected a positive integer, got {value!r}")
        for name in ("source_template", "target_template"):
            value = getattr(parsed, name)
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"task_options.{name}: expected a string, got {value!r}")
            if value is not None:
                template_fields(value, f"task_options.{name}")
        if not isinstance(parsed.chat_template, bool):
            raise ConfigError(
                f"task_options.chat_template: expected true or false, got {parsed.chat_template!r}"
            )
        if not isinstance(parsed.generation, dict):
            raise ConfigError(f"task_options.generation: expected a mapping, got {parsed.generation!r}")
        bad = sorted(set(parsed.generation) - DECODING_OPTIONS)
        if bad:
            raise ConfigError(
                f"task_options.generation: unknown option(s) {bad}; known: {sorted(DECODING_OPTIONS)}"
            )
        return parsed


def template_fields(template: str, where: str) -> set[str]:
    """The column names a format string uses."""
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:
        raise ConfigError(f"{where}: invalid template {template!r}: {exc}") from None
    if "" in names or any(not n.isidentifier() for n in names):
        raise ConfigError(f"{where}: template fields must be column names like {{source}}, got {template!r}")
    return names


def pad(rows: list[list[int]], value: int, left: bool) -> torch.Tensor:
    width = max((len(r) for r in rows), default=0)
    return torch.tensor(
        [[value] * (width - len(r)) + r if left else r + [value] * (width - len(r)) for r in rows],
        dtype=torch.long,
    )


def target_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the positions whose label is not ``IGNORE`` (logits already aligned)."""
    return nn.functional.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE
    )


class CausalLMModel(nn.Module):
    """A decoder-only LM (plain or prompted) scored on its target tokens; generates from prompts."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        labels = batch["labels"]
        # Left padding puts every target at the end: only the last `keep` positions need logits.
        keep = int((labels != IGNORE).sum(-1).max()) + 1
        outputs = self.encoder(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            position_ids=mask_positions(batch["attention_mask"]),
            logits_to_keep=keep,
            use_cache=False,
        )
        logits = outputs.logits
        return {"logits": logits, "loss": target_nll(logits[:, :-1], labels[:, -keep + 1 :])}

    @torch.no_grad()
    def generate(self, batch: dict[str, torch.Tensor], **options: Any) -> list[list[int]]:
        """New token ids per example (the prompt cut off)."""
        ids = batch["prompt_input_ids"]
        out = self.encoder.generate(input_ids=ids, attention_mask=batch["prompt_attention_mask"], **options)
        return out[:, ids.shape[1] :].tolist()


class Seq2SeqModel(nn.Module):
    """An encoder-decoder LM (plain or prompted) scored on its target tokens; generates from sources."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        labels = batch["labels"]
        config = self.encoder.config
        # The decoder reads the target shifted right behind its start token (as T5 and BART train).
        start = torch.full_like(labels[:, :1], config.decoder_start_token_id)
        decoder_input_ids = torch.cat([start, labels[:, :-1]], dim=1)
        decoder_input_ids = decoder_input_ids.masked_fill(decoder_input_ids == IGNORE, config.pad_token_id)
        outputs = self.encoder(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            decoder_input_ids=decoder_input_ids,
            use_cache=False,
        )
        return {"logits": outputs.logits, "loss": target_nll(outputs.logits, labels)}

    @torch.no_grad()
    def generate(self, batch: dict[str, torch.Tensor], **options: Any) -> list[list[int]]:
        """Generated decoder token ids per example."""
        out = self.encoder.generate(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **options
        )
        return out.tolist()


class GenerationTask(Task):
    """Shared by both generation tasks: data with ``source`` and ``target`` columns, text metrics."""

    main_metric: ClassVar[str] = "rougeL"
    default_source_template: ClassVar[str]

    def __init__(self, config: RunConfig, tokenizer: Any) -> None:
        super().__init__(config, tokenizer)
        self.options = GenerationOptions.from_task_options(config.task_options)
        self.source_template = self.options.source_template or self.default_source_template
        self._cut: Counter[str] = Counter()  # what ``encode`` truncated since the last ``featurize``
        if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None:
            raise ConfigError(
                f"model {config.model!r}: its tokenizer needs an end-of-text token for generation"
            )

    @classmethod
    def load_local(cls, data: DataConfig, report: DataReport | None = None) -> DatasetDict:
        return load_local_splits(
            local_files(data),
            data.format,
            data.columns or None,
            ["source", "target"],
            check_labels=False,
            report=report,
        )

    def prepare(self, splits: DatasetDict) -> None:
        needed = (
            template_fields(self.source_template, "task_options.source_template")
            | template_fields(self.options.target_template, "task_options.target_template")
            | {"source", "target"}
        )
        for split_name, split in splits.items():
            missing = sorted(needed - set(split.column_names))
            if missing:
                raise DataError(
                    f"the {split_name} split has no column(s) {missing} that the templates need "
                    f"(it has {split.column_names})",
                    file=getattr(self.config.data, split_name, None),
                )

    # ---- text -> token ids -------------------------------------------------------------------
    def truncated_source(self, row: dict[str, Any]) -> dict[str, Any]:
        """``row`` with its source cut to ``max_source_length`` tokens (cut in the text, at a token end);
        a row without one is left as it is (the template says whether it needs one)."""
        if "source" not in row:
            return row
        source = str(row["source"])
        offsets = self.tokenizer(source, add_special_tokens=False, return_offsets_mapping=True)[
            "offset_mapping"
        ]
        if len(offsets) > self.options.max_source_length:
            source = source[: offsets[self.options.max_source_length - 1][1]]
            self._cut[
                f"sources truncated to task_options.max_source_length={self.options.max_source_length}"
            ] += 1
        return {**row, "source": source}

    def cut_target(self, ids: list[int]) -> list[int]:
        """Target token ids cut to ``max_target_length``, counted when cut."""
        if len(ids) > self.options.max_target_length:
            self._cut[self.target_cut_reason()] += 1
        return ids[: self.options.max_target_length]

    def target_cut_reason(self) -> str:
        return f"targets truncated to task_options.max_target_length={self.options.max_target_length}"

    def _flush_cuts(self, split: str) -> None:
        for reason, count in self._cut.items():
            self.report.change(split, reason, count)
        self._cut.clear()

    def source_text(self, row: dict[str, Any]) -> str:
        """The model's input text for ``row``: its source cut to length, through ``source_template``."""
        return self.format(self.source_template, self.truncated_source(row), "task_options.source_template")

    def format(self, template: str, row: dict[str, Any], where: str) -> str:
        try:
            return template.format(**row)
        except KeyError as exc:
            raise DataError(
                f"{where} needs the field {exc.args[0]!r}, which the input does not have"
            ) from None

    def featurize(self, dataset: Dataset, split: str) -> list[dict[str, Any]]:
        features = [self.encode(row) for row in dataset]
        self._flush_cuts(split)
        return features

    @abstractmethod
    def encode(self, row: dict[str, Any]) -> dict[str, Any]:
        """Token ids of one row (its target too when the row has one)."""

    # ---- evaluation --------------------------------------------------------------------------
    def decoding(self) -> dict[str, Any]:
        return {
            "max_new_tokens": self.options.max_new_tokens,
            "pad_token_id": self.tokenizer.pad_token_id,
            "eos_token_id": self.tokenizer.eos_token_id,
            "do_sample": False,
            **self.options.generation,
        }

    def generate_ids(
        self,
        model: nn.Module,
        batch: dict[str, torch.Tensor],
        decoding: dict[str, Any] | None = None,
        seed: int | None = None,
    ) -> list[list[int]]:
        """New token ids per example; sampling is seeded with ``seed`` (default ``train.seed``) batch by
        batch. ``decoding`` replaces ``self.decoding()`` (a server's per-request settings)."""
        decoding = self.decoding() if decoding is None else decoding
        with seeded(self.config.train.seed if seed is None else seed, decoding):
            return model.generate(batch, **decoding)

    def generate_texts(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> list[str]:
        ids = self.generate_ids(model, batch)
        return [text.strip() for text in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]

    @torch.no_grad()
    def evaluate(
        self,
        model: nn.Module,
        batches: Iterable[dict[str, torch.Tensor]],
        dataset: Dataset,
        features: list[dict],
    ) -> dict[str, Any]:
        predictions: list[str] = []
        nll, tokens = 0.0, 0
        for batch in batches:
            count = int((batch["labels"] != IGNORE).sum())
            nll += float(model(batch)["loss"]) * count
            tokens += count
            predictions.extend(self.generate_texts(model, batch))
        references = [
            self.format(self.options.target_template, row, "task_options.target_template") for row in dataset
        ]
        mean_nll = nll / max(tokens, 1)
        return {
            **text_metrics(predictions, references),
            "loss": mean_nll,
            "perplexity": math.exp(min(mean_nll, 50.0)),
            "examples": len(predictions),
            "samples": [
                {"prediction": p, "reference": r}
                for p, r in zip(predictions[:3], references[:3], strict=True)
            ],
        }

    @torch.no_grad()
    def run_features(
        self, model: nn.Module, features: list[list[dict[str, Any]]]
    ) -> list[list[dict[str, Any]]]:
        """``{"token_ids": [...]}`` generated for every feature, ``train.eval_batch_size`` at a time."""
        device = next(model.parameters()).device
        flat = [feature for group in features for feature in group]
        rows = [
            {"token_ids": ids}
            for batch in batches(self, flat, self.config.train.eval_batch_size, device)
            for ids in self.generate_ids(model, batch)
        ]
        return group_rows(rows, features)

    def predict_features(self, texts: list[Any]) -> list[list[dict[str, Any]]]:
        """One feature per input: its prompt (or source) token ids. Inputs: a source text, or a JSON object
        (or dict) with the columns the template uses."""
        features = []
        for i, text in enumerate(texts):
            try:
                row = self.input_row(text)
            except DataError as exc:
                raise DataError(exc.problem, field=exc.field, record=str(i)) from None
            features.append([self.encode(row)])
        self._flush_cuts("predict")
        return features

    def decode_predictions(
        self, texts: list[Any], features: list[list[dict[str, Any]]], outputs: list[list[dict[str, Any]]]
    ) -> list[dict[str, Any]]:
        """The generated text of each input; ``outputs[i][0]["token_ids"]`` are its new token ids."""
        return [
            {
                "input": self.input_row(text),
                "generated": self.tokenizer.decode(rows[0]["token_ids"], skip_special_tokens=True).strip(),
            }
            for text, rows in zip(texts, outputs, strict=True)
        ]

    @staticmethod
    def input_row(text: Any) -> dict[str, Any]:
        """A prediction input as a row of columns; a column's value is a text, as in the data files."""
        if isinstance(text, tuple | list):
            text = "\t".join(text)
        row = text
        if isinstance(text, str) and text.lstrip().startswith("{"):
            try:
                row = json.loads(text)
            except json.JSONDecodeError as exc:
                raise DataError(f"input looks like a JSON object but is not valid JSON: {exc}") from None
        if not isinstance(row, dict):
            return {"source": text}
        for column, value in row.items():
            if not isinstance(value, str):
                raise DataError(f"expected a text, got {type(value).__name__} {value!r}", field=column)
        return row


@register_task
class CausalLMTask(GenerationTask):
    """Decoder-only generation: prompt text, then the target, then end-of-text; loss on the target only."""

    name = "causal_lm"
    backbone_kind = "causal_lm"
    data_family = "seq2seq"
    default_source_template = "{source}\n"

    def __init__(self, config: RunConfig, tokenizer: Any) -> None:
        super().__init__(config, tokenizer)
        if self.options.chat_template and not getattr(tokenizer, "chat_template", None):
            raise ConfigError(
                f"task_options.chat_template: the tokenizer of {config.model!r} has no chat template"
            )
        bos = tokenizer.bos_token_id
        # Start with BOS exactly when the tokenizer itself starts texts with it (Llama 2/3 do, SmolLM2 does not).
        self.bos = [bos] if bos is not None and tokenizer("a")["input_ids"][:1] == [bos] else []

    def prompt_ids(self, row: dict[str, Any]) -> list[int]:
        text = self.source_text(row)
        if self.options.chat_template:
            return self.chat_ids([{"role": "user", "content": text}])
        return self.bos + self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def chat_ids(self, turns: list[dict[str, str]]) -> list[int]:
        """A conversation in the tokenizer's chat template, ending with the assistant's turn to speak."""
        text = self.tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def chat_features(self, turns: list[dict[str, str]]) -> list[list[dict[str, Any]]]:
        """The one feature of a conversation for a task with ``chat_template``: its last turn (the user's) is the
        task's input and becomes the prompt as in training (through ``source_template``); the earlier
        turns go into the chat template as they are. A conversation of one user turn is ``predict``'s input."""
        *history, last = turns
        turn = {"role": "user", "content": self.source_text(self.input_row(last["content"]))}
        ids = self.chat_ids([*history, turn])
        self._flush_cuts("predict")
        return [[{"prompt_ids": ids}]]

    def encode(self, row: dict[str, Any]) -> dict[str, Any]:
        feature: dict[str, Any] = {"prompt_ids": self.prompt_ids(row)}
        if "target" in row and row["target"] is not None:
            target = self.format(self.options.target_template, row, "task_options.target_template")
            ids = self.tokenizer(target, add_special_tokens=False)["input_ids"]
            feature["target_ids"] = self.cut_target(ids) + [self.tokenizer.eos_token_id]
        return feature

    def collate(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        pad_id = self.tokenizer.pad_token_id
        prompts = [f["prompt_ids"] for f in features]
        batch = {"prompt_input_ids": pad(prompts, pad_id, left=True)}
        batch["prompt_attention_mask"] = pad([[1] * len(p) for p in prompts], 0, left=True)
        if "target_ids" in features[0]:
            full = [f["prompt_ids"] + f["target_ids"] for f in features]
            batch["input_ids"] = pad(full, pad_id, left=True)
            batch["attention_mask"] = pad([[1] * len(s) for s in full], 0, left=True)
            batch["labels"] = pad(
                [[IGNORE] * len(f["prompt_ids"]) + f["target_ids"] for f in features], IGNORE, left=True
            )
        return batch

    def build_model(self, encoder: nn.Module) -> nn.Module:
        return CausalLMModel(encoder)


@register_task
class Seq2SeqTask(GenerationTask):
    """Encoder-decoder generation: the source into the encoder, the target out of the decoder."""

    name = "seq2seq"
    backbone_kind = "seq2seq"
    default_source_template = "{source}"

    def __init__(self, config: RunConfig, tokenizer: Any) -> None:
        super().__init__(config, tokenizer)
        if self.options.chat_template:
            raise ConfigError("task_options.chat_template applies to task causal_lm only")

    def encode(self, row: dict[str, Any]) -> dict[str, Any]:
        feature: dict[str, Any] = {"input_ids": self.tokenizer(self.source_text(row))["input_ids"]}
        if "target" in row and row["target"] is not None:
            target = self.format(self.options.target_template, row, "task_options.target_template")
            limit = self.options.max_target_length
            encoded = self.tokenizer(text_target=target, truncation=True, max_length=limit)
            if truncated_rows(encoded, limit):
                self._cut[self.target_cut_reason()] += 1
            feature["labels"] = encoded["input_ids"]
        return feature

    def collate(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        inputs = [f["input_ids"] for f in features]
        batch = {
            "input_ids": pad(inputs, self.tokenizer.pad_token_id, left=False),
            "attention_mask": pad([[1] * len(i) for i in inputs], 0, left=False),
        }
        if "labels" in features[0]:
            batch["labels"] = pad([f["labels"] for f in features], IGNORE, left=False)
        return batch

    def build_model(self, encoder: nn.Module) -> nn.Module:
        return Seq2SeqModel(encoder)
