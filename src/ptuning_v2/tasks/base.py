"""What every task family provides: features from data, a head, a loss, and its metrics."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any, ClassVar, Literal

import torch
from datasets import Dataset, DatasetDict
from torch import nn

from ptuning_v2.config import ConfigError, DataConfig, RunConfig
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
    option_defaults: ClassVar[dict[str, Any] | None] = None
    """The ``task_options`` the task takes, with their defaults: ``__init__`` checks them into
    ``self.options``. ``None``: the task reads them itself, or not at all."""

    def __init__(self, config: RunConfig, tokenizer: Any) -> None:
        self.config = config
        self.tokenizer = tokenizer
        if self.option_defaults is not None:
            self.options = read_task_options(config, self.option_defaults)

    @classmethod
    @abstractmethod
    def load_local(cls, data: DataConfig) -> DatasetDict:
        """Read the user's own train/validation/test files in this task's format."""

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

    @abstractmethod
    def predict(self, model: nn.Module, texts: list[Any]) -> list[dict[str, Any]]:
        """Predictions for raw inputs, as JSON-serialisable dicts."""

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
        )
    return {**defaults, **config.task_options}


def local_files(data: DataConfig) -> dict[str, str]:
    """The user's file of each split that has one, in split order."""
    return {split: getattr(data, split) for split in SPLITS if getattr(data, split)}


def register_task(cls: type[Task]) -> type[Task]:
    TASKS[cls.name] = cls
    return cls


def get_task(name: str) -> type[Task]:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {sorted(TASKS)}")
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


def encoder_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """The keys of a batch (or of one feature) that the backbone itself takes."""
    return {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}


def token_states(encoder: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The encoder's last hidden states, one per input token; checked, because prompt positions that
    reached a token-level head would shift every label."""
    hidden = encoder(**encoder_inputs(batch)).last_hidden_state
    if hidden.shape[1] != batch["input_ids"].shape[1]:
        raise RuntimeError(
            f"the encoder returned {hidden.shape[1]} positions for {batch['input_ids'].shape[1]} tokens; "
            "prompt positions must not reach a token-level head"
        )
    return hidden
