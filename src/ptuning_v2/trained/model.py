"""A task model: a method's encoder under a task's head, built new for a run or rebuilt from a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ptuning_v2.checkpoint import CheckpointError, TrainedCheckpoint, as_checkpoint
from ptuning_v2.config import RunConfig
from ptuning_v2.methods import get_method
from ptuning_v2.models import backbone_fingerprint, load_backbone, load_tokenizer
from ptuning_v2.prompts.deep_prompt import DeepPrompt, filled_from_checkpoint
from ptuning_v2.tasks import Task, get_task


def build_model(run: RunConfig, task: Task, backbone: nn.Module, tokenizer: Any) -> nn.Module:
    """``run``'s method turns ``backbone`` into an encoder (trained parameters marked), under ``task``'s head."""
    encoder = get_method(run.method).build(backbone, run, tokenizer)
    if run.train.gradient_checkpointing:  # after the method: prompted, MPNet can be checkpointed too
        backbone.activation_checkpointing_enable()
    return task.build_model(encoder)


def load_trained(
    checkpoint: str | Path | TrainedCheckpoint,
    device: str | torch.device | None = None,
    run: RunConfig | None = None,
) -> tuple[Task, nn.Module]:
    """Rebuild a trained task model from a checkpoint (a folder, or one already read), checking the
    backbone's fingerprint.

    ``run`` replaces the stored run config (e.g. to evaluate on other data); the model part must match.
    """
    checkpoint = as_checkpoint(checkpoint)
    run = run or checkpoint.run()
    task_cls = get_task(run.task)
    tokenizer = load_tokenizer(run.model)
    backbone = load_backbone(run.model, task_cls.backbone_kind, options=run.model_options)
    task, model = attach_trained(checkpoint, backbone, tokenizer, backbone_fingerprint(backbone), run)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return task, model.to(device).eval()


def attach_trained(
    checkpoint: str | Path | TrainedCheckpoint,
    backbone: nn.Module,
    tokenizer: Any,
    fingerprint: str,
    run: RunConfig | None = None,
) -> tuple[Task, nn.Module]:
    """A checkpoint's task and task model around ``backbone`` (whose fingerprint must match): several
    prompted checkpoints can share one backbone this way."""
    checkpoint = as_checkpoint(checkpoint)
    run = run or checkpoint.run()
    checkpoint.check_fingerprint(fingerprint)
    task = get_task(run.task)(run, tokenizer)
    try:
        task.load_state(checkpoint.meta["task_state"])
    except (KeyError, TypeError) as exc:
        raise CheckpointError(
            f"{checkpoint.directory}: its stored task state does not fit task {run.task!r} (no {exc})"
        ) from None
    with filled_from_checkpoint():  # no initial prompt values: load_into sets every trained tensor
        model = build_model(run, task, backbone, tokenizer)
    checkpoint.load_into(model)
    for module in model.modules():  # an MLP reparameterisation is only needed for training
        if isinstance(module, DeepPrompt):
            module.fold()
    return task, model
