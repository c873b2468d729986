"""What every task family provides: features from data, a head, a loss, and its metrics."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any, ClassVar, Literal

import torch
from datasets import Dataset, DatasetDict
from torch import nn

from ptuning_v2.config import DataConfig, RunConfig

BackboneKind = Literal["encoder", "causal_lm", "seq2seq"]


class Task(ABC):
    """A task family. Subclasses register themselves in ``TASKS`` by ``name``."""

    name: ClassVar[str]
    backbone_kind: ClassVar[BackboneKind] = "encoder"
    main_metric: ClassVar[str]
    higher_is_better: ClassVar[bool] = True
    data_family: ClassVar[str | None] = None
    """The ``task`` of the built-in data sets it reads, when not its own name (causal_lm reads seq2seq data)."""

    def __init__(self, config: RunConfig, tokenizer: Any) -> None:
        self.config = config
        self.tokenizer = tokenizer

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

    @abstractmethod
    def state(self) -> dict[str, Any]:
        """What a checkpoint must store to rebuild this task (e.g. label names)."""

    @abstractmethod
    def load_state(self, state: dict[str, Any]) -> None:
        """Restore what ``state`` returned."""


TASKS: dict[str, type[Task]] = {}


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


def encoder_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The keys of a batch that the backbone itself takes."""
    return {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
