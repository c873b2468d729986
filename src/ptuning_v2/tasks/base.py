"""What every task family provides: features from data, a head, a loss, and its metrics."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from datasets import Dataset, DatasetDict
from torch import nn

from ptuning_v2.config import ConfigError, DataConfig, RunConfig, did_you_mean
from ptuning_v2.data import DataError, DataReport
from ptuning_v2.data.readers import SPLITS

BackboneKind = Literal["encoder", "causal_lm", "seq2seq"]


class Task(ABC):
    """A task family. Subclasses register themselves in ``TASKS`` by ``name``."""

    name: ClassVar[str]
    backbone_kind: ClassVar[BackboneKind] = "encoder"
    main_metric: ClassVar[str]
    higher_is_better: ClassVar[bool] = True
    data_family: ClassVar[str | None] = None
    """The ``task`` of the built-in data sets it reads, when not its own name (causal_lm reads seq2seq data)."""
    mixed_batches: ClassVar[bool] = True
    """One feature is one row of the backbone's batch, so features of several tasks can share one pass
    (a server's mixed-task batches); False for a task whose feature spans several rows."""
    option_defaults: ClassVar[dict[str, Any] | None] = None
    """The ``task_options`` the task takes, with their defaults: ``__init__`` checks them into
    ``self.options``. ``None``: the task reads them itself, or not at all."""

    def __init__(self, config: RunConfig, tokenizer: Any) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.report = DataReport()
        """What ``featurize`` and ``predict`` cut short; the recipe puts its own report here, so the
        counts of reading and of tokenising end up in one place."""
        if self.option_defaults is not None:
            self.options = read_task_options(config, self.option_defaults)

    @classmethod
    @abstractmethod
    def load_local(cls, data: DataConfig, report: DataReport | None = None) -> DatasetDict:
        """Read the user's own train/validation/test files in this task's format; what reading changed
        (e.g. labels stripped of spaces) is counted in ``report``."""

    @abstractmethod
    def prepare(self, splits: DatasetDict) -> None:
        """Learn what the data defines (e.g. the label set) and check every split against it."""

    @abstractmethod
    def featurize(self, dataset: Dataset, split: str) -> list[dict[str, Any]]:
        """Tokenised examples, ready for ``collate``."""

    @abstractmethod
    def collate(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Pad a list of features into a batch."""

    def pad_inputs(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """The backbone's inputs of ``features``, padded into a batch; the task collates the other keys."""
        return dict(self.tokenizer.pad([encoder_inputs(f) for f in features], return_tensors="pt"))

    @abstractmethod
    def build_model(self, encoder: nn.Module) -> nn.Module:
        """The trainable task model around an (adapted) backbone; its forward returns ``loss`` and ``logits``."""

    @abstractmethod
    def evaluate(
        self,
        model: nn.Module,
        batches: Iterable[dict[str, torch.Tensor]],
        dataset: Dataset,
        features: list[dict],
    ) -> dict[str, float]:
        """Metrics of ``model`` over the features of ``dataset``."""

    @torch.no_grad()
    def predict(self, model: nn.Module, texts: list[Any]) -> list[dict[str, Any]]:
        """Predictions for raw inputs, as JSON-serialisable dicts: the features of every input, run
        ``train.eval_batch_size`` features at a time, then decoded per input. A server batches the
        same two halves across tasks (one backbone pass for many tasks' requests)."""
        if not texts:
            return []
        features = self.predict_features(texts)
        return self.decode_predictions(texts, features, self.run_features(model, features))

    @torch.no_grad()
    def run_features(
        self, model: nn.Module, features: list[list[dict[str, Any]]]
    ) -> list[list[dict[str, torch.Tensor]]]:
        """The model outputs of every feature, grouped as ``features``, ``train.eval_batch_size`` at a time."""
        device = next(model.parameters()).device
        flat = [feature for group in features for feature in group]
        rows = [
            row
            for batch in batches(self, flat, self.config.train.eval_batch_size, device)
            for row in output_rows(model(batch))
        ]
        return group_rows(rows, features)

    def predict_features(self, texts: list[Any]) -> list[list[dict[str, Any]]]:
        """The features of each raw input, ready for ``collate`` (several when an input is cut into
        windows); malformed inputs raise ``DataError`` naming the input, cuts go to ``self.report``."""
        raise NotImplementedError(f"task {self.name!r} does not predict from features")

    def decode_predictions(
        self, texts: list[Any], features: list[list[dict[str, Any]]], outputs: list[list[dict[str, Any]]]
    ) -> list[dict[str, Any]]:
        """One prediction per input from the model outputs of its features (``outputs[i][j]``: the
        outputs of ``features[i][j]``, each tensor without its batch dimension)."""
        raise NotImplementedError(f"task {self.name!r} does not predict from features")

    def parse_input(self, line: str) -> Any:
        """One line of ``ptv2 predict`` input as ``predict`` takes it: a tab separates two parts
        (question and context, a sentence pair)."""
        return tuple(line.split("\t", 1)) if "\t" in line else line

    def state(self) -> dict[str, Any]:
        """What a checkpoint must store to rebuild this task (e.g. label names); by default nothing,
        for tasks that learn nothing from the data beyond the model."""
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore what ``state`` returned."""
        return None


TASKS: dict[str, type[Task]] = {}


def read_task_options(config: RunConfig, defaults: dict[str, Any]) -> dict[str, Any]:
    """``task_options`` over the task's defaults; an unknown key is an error, not silently ignored."""
    unknown = sorted(set(config.task_options) - set(defaults))
    if unknown:
        raise ConfigError(
            f"task_options: unknown option(s) {unknown} for task {config.task!r}; known: {sorted(defaults)}"
            + did_you_mean(unknown[0], defaults)
        )
    return {**defaults, **config.task_options}


def local_files(data: DataConfig) -> dict[str, str]:
    """The user's file of each split that has one, in split order; each must exist."""
    files = {split: getattr(data, split) for split in SPLITS if getattr(data, split)}
    for split, path in files.items():
        if not Path(path).is_file():
            what = "is a folder, not a file" if Path(path).is_dir() else "no such file"
            relative = "" if Path(path).is_absolute() else f"; relative paths are read from {Path.cwd()}"
            raise DataError(f"{what} (data.{split}{relative})", path)
    return files


def register_task(cls: type[Task]) -> type[Task]:
    TASKS[cls.name] = cls
    return cls


def get_task(name: str) -> type[Task]:
    if name not in TASKS:
        raise ConfigError(
            f"task: unknown task {name!r}; known tasks: {sorted(TASKS)}{did_you_mean(name, TASKS)}"
        )
    return TASKS[name]


def pooled(outputs: Any, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """One vector per example from an encoder's outputs."""
    hidden = outputs.last_hidden_state
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "mean":
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
    if pooling == "pooler":
        if getattr(outputs, "pooler_output", None) is None:
            raise ValueError(
                "head.pooling 'pooler' needs a backbone with a pooler layer; use 'cls' or 'mean'"
            )
        return outputs.pooler_output
    raise ValueError(f"head.pooling must be cls, mean or pooler, got {pooling!r}")


def batches(
    task: Task, features: list[dict[str, Any]], size: int, device: torch.device | str
) -> Iterator[dict[str, Any]]:
    """``features`` collated ``size`` at a time, in order, on ``device`` (evaluation and prediction)."""
    for start in range(0, len(features), size):
        batch = task.collate(features[start : start + size])
        yield {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def evaluate_split(
    task: Task,
    model: nn.Module,
    dataset: Any,
    features: list[dict[str, Any]],
    batch_size: int,
    device: torch.device | str,
    autocast: AbstractContextManager | None = None,
) -> dict[str, Any]:
    """The task's metrics on one split, batch by batch without gradients, with the model in eval mode
    (restored afterwards)."""
    was_training = model.training
    model.eval()
    with torch.no_grad(), autocast or nullcontext():
        metrics = task.evaluate(model, batches(task, features, batch_size, device), dataset, features)
    model.train(was_training)
    return metrics


def output_rows(outputs: dict[str, Any]) -> list[dict[str, torch.Tensor]]:
    """A batch's model outputs split into one dict per example (scalars such as the loss left out)."""
    per_example = {k: v for k, v in outputs.items() if isinstance(v, torch.Tensor) and v.dim() > 0}
    count = len(outputs["logits"])
    return [{k: v[i] for k, v in per_example.items()} for i in range(count)]


def group_rows(rows: list[Any], features: list[list[Any]]) -> list[list[Any]]:
    """Flat per-feature ``rows`` regrouped by input, as ``features`` is."""
    grouped, done = [], 0
    for group in features:
        grouped.append(rows[done : done + len(group)])
        done += len(group)
    return grouped


def unpadded(row: torch.Tensor, length: int, padding_side: str) -> torch.Tensor:
    """The positions of a padded token-level output ``row`` that belong to a feature of ``length`` tokens."""
    return row[-length:] if padding_side == "left" else row[:length]


def encoder_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """The keys of a batch (or of one feature) that the backbone itself takes."""
    return {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}


def token_states(outputs: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The encoder's last hidden states, one per input token; checked, because prompt positions that
    reached a token-level head would shift every label."""
    hidden = outputs.last_hidden_state
    if hidden.shape[1] != batch["input_ids"].shape[1]:
        raise RuntimeError(
            f"the encoder returned {hidden.shape[1]} positions for {batch['input_ids'].shape[1]} tokens; "
            "prompt positions must not reach a token-level head"
        )
    return hidden


class LinearHeadModel(nn.Module, ABC):
    """A task model whose head is dropout and one linear layer over features of the encoder's outputs
    (classification: one pooled vector per row; NER: every token's state).

    Over a mixed-task batch's shared pass, the heads of many such models run as one product
    (``heads_by_row``) instead of one small call per task: the heads of 32 tasks cost about what one does."""

    head: nn.Sequential

    @abstractmethod
    def head_input(self, outputs: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The features the linear layer reads, ``[rows, ..., hidden]``."""

    def head_input_key(self) -> tuple:
        """Models with equal keys compute the same ``head_input`` from the same outputs."""
        return (type(self),)

    def from_outputs(self, outputs: Any, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The head over encoder outputs computed elsewhere (a mixed-task batch's shared pass)."""
        logits = self.head(self.head_input(outputs, batch))
        result = {"logits": logits}
        if "labels" in batch:
            result["loss"] = self.loss(logits, batch["labels"])
        return result

    @abstractmethod
    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The training loss of ``logits`` against the batch's ``labels``."""


def heads_by_row(
    models: Sequence[nn.Module], owner: Sequence[int], outputs: Any, batch: dict[str, torch.Tensor]
) -> list[dict[str, torch.Tensor]]:
    """Row ``i``'s head outputs (``logits``, ...) by its own task model ``models[owner[i]]``, over one
    shared pass's ``outputs`` (inference: no loss, dropout off).

    Linear heads that read the same features (``LinearHeadModel``) run as one product whose columns are
    every model's labels side by side, and each row takes its own model's columns; any other model runs
    ``from_outputs`` on its own rows."""
    results: list[dict[str, torch.Tensor]] = [{} for _ in owner]
    groups: dict[tuple, list[int]] = {}
    for m, model in enumerate(models):
        if isinstance(model, LinearHeadModel):
            linear = model.head[-1]
            key = (*model.head_input_key(), linear.in_features, linear.weight.dtype)
        else:
            key = ("alone", m)
        groups.setdefault(key, []).append(m)
    rows_of: dict[int, list[int]] = {}
    for i, m in enumerate(owner):
        rows_of.setdefault(m, []).append(i)
    device = batch["input_ids"].device
    for group in groups.values():
        model = models[group[0]]
        if not isinstance(model, LinearHeadModel):
            rows = rows_of.get(group[0], [])
            index = torch.tensor(rows, device=device)
            own = type(outputs)(**{k: v[index] for k, v in outputs.items() if isinstance(v, torch.Tensor)})
            own_batch = {k: v[index] for k, v in batch.items() if isinstance(v, torch.Tensor)}
            head = model.from_outputs(own, own_batch)
            for j, row in enumerate(rows):
                results[row] = {k: v[j] for k, v in head.items() if k != "loss"}
            continue
        linears = [models[m].head[-1] for m in group]
        weight = torch.cat([linear.weight for linear in linears])
        bias = torch.cat([linear.bias for linear in linears])
        logits = nn.functional.linear(model.head_input(outputs, batch), weight, bias)
        start = 0
        for m, linear in zip(group, linears, strict=True):
            end = start + linear.out_features
            for row in rows_of.get(m, []):
                results[row] = {"logits": logits[row, ..., start:end]}
            start = end
    return results
