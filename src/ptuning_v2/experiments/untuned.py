"""The untuned baseline: the frozen backbone with no prompt and no training, on the test split.

``ptv2 compare CONFIG --methods untuned,ptuning_v2`` puts it beside a trained method (same data,
templates and decoding). It is meaningful where the task adds no head of its own (``causal_lm``,
``seq2seq``: the backbone's language-model head); elsewhere the new head is untrained, so it is a
chance-level reference.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import set_seed

from ptuning_v2.config import RunConfig
from ptuning_v2.data import DataError
from ptuning_v2.experiments import UNTUNED
from ptuning_v2.methods.registry import freeze
from ptuning_v2.models import load_backbone, load_tokenizer
from ptuning_v2.tasks import get_task
from ptuning_v2.tasks.base import evaluate_split
from ptuning_v2.training.recipe import count_parameters, load_splits
from ptuning_v2.utils.io import write_json_atomic


def evaluate_untuned(run: RunConfig, output_dir: str | Path) -> dict[str, Any]:
    """Test metrics of the frozen backbone alone under ``run``'s task and data; writes ``metrics.json``
    with the keys of a training run's (nothing trained: no dev score, no steps, no checkpoint)."""
    set_seed(run.train.seed)  # a task head, where there is one, starts as the trained runs' would
    task_cls = get_task(run.task)
    splits = load_splits(run, task_cls)
    if "test" not in splits:
        raise DataError("the untuned baseline is scored on the test split, and the data has none")
    tokenizer = load_tokenizer(run.model)
    task = task_cls(run, tokenizer)
    task.prepare(splits)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    backbone = load_backbone(run.model, task_cls.backbone_kind, options=run.model_options)
    model = task.build_model(freeze(backbone)).to(device)
    features = task.featurize(splits["test"], "test")
    started = time.perf_counter()
    test = evaluate_split(task, model, splits["test"], features, run.train.eval_batch_size, device)
    _, total = count_parameters(model)
    metrics = {
        "method": UNTUNED,
        "task": run.task,
        "model": run.model,
        "data": run.data.name or run.data.train,
        "dev": {},
        "test": test,
        "trainable_params": 0,
        "total_params": total,
        "trainable_share": 0.0,
        "train_seconds": 0.0,
        "eval_seconds": round(time.perf_counter() - started, 2),
        "steps": 0,
        "train_examples": 0,
        "checkpoint_bytes": 0,
    }
    write_json_atomic(Path(output_dir) / "metrics.json", metrics)
    return metrics
