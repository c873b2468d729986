"""Run a task's metrics over pre-tokenised features, batch by batch, without gradients."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import nn

from ptuning_v2.tasks.base import Task, batches


def evaluate_split(
    task: Task,
    model: nn.Module,
    dataset: Any,
    features: list[dict[str, Any]],
    batch_size: int,
    device: torch.device | str,
    autocast: AbstractContextManager | None = None,
) -> dict[str, Any]:
    """The task's metrics on one split, with the model in eval mode (restored afterwards)."""
    was_training = model.training
    model.eval()
    with torch.no_grad(), autocast or nullcontext():
        metrics = task.evaluate(model, batches(task, features, batch_size, device), dataset, features)
    model.train(was_training)
    return metrics
