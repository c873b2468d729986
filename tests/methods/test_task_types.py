"""Every method under every encoder task head: one output row per real token, gradients only where trained."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset

from ptuning_v2.config import RunConfig
from ptuning_v2.data import NER_FEATURES, QA_FEATURES
from ptuning_v2.methods import get_method
from ptuning_v2.models import load_backbone, load_tokenizer
from ptuning_v2.tasks import get_task

METHODS = ["ptuning_v2", "prompt_tuning", "ptuning_v1", "prefix_tuning", "lora", "full", "linear_probe"]
CONTEXT = "john lives in paris and mary lives in london"

DATA = {
    "ner": (
        [
            {"id": "0", "tokens": ["John", "lives", "in", "Paris"], "ner_tags": ["B-PER", "O", "O", "B-LOC"]},
            {"id": "1", "tokens": ["Mary"], "ner_tags": ["B-PER"]},
        ],
        NER_FEATURES,
    ),
    "qa": (
        [
            {
                "id": "q",
                "title": "",
                "context": CONTEXT,
                "question": "where does mary live",
                "answers": {"text": ["london"], "answer_start": [CONTEXT.index("london")]},
            }
        ],
        QA_FEATURES,
    ),
}


def task_model(model_dir, task_name: str, method: str):
    run = RunConfig.from_dict(
        {
            "model": str(model_dir),
            "task": task_name,
            "method": method,
            "prompt": {"num_virtual_tokens": 5},
            "train": {"max_length": 64},
            "task_options": {"doc_stride": 16} if task_name == "qa" else {},
        }
    )
    tokenizer = load_tokenizer(str(model_dir))
    task = get_task(task_name)(run, tokenizer)
    rows, features = DATA[task_name]
    dataset = Dataset.from_list(rows, features=features)
    task.prepare({"train": dataset})
    encoder = get_method(method).build(load_backbone(str(model_dir), "encoder"), run, tokenizer)
    return task, task.build_model(encoder), dataset


@pytest.mark.parametrize("task_name", sorted(DATA))
@pytest.mark.parametrize("method", METHODS)
def test_token_level_heads_see_only_real_tokens(tiny_bert_dir, task_name: str, method: str) -> None:
    task, model, dataset = task_model(tiny_bert_dir, task_name, method)
    batch = task.collate(task.featurize(dataset, "train"))
    out = model(batch)
    assert out["logits"].shape[:2] == batch["input_ids"].shape
    out["loss"].backward()
    grads = {name: p.grad is not None for name, p in model.named_parameters()}
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert not {name for name, has in grads.items() if has} - trainable  # the frozen parts stay frozen
    assert all(grads[name] for name in trainable if name.startswith("head."))
    if method != "linear_probe":  # the method's own parameters learn too
        assert any(grads[name] for name in trainable if not name.startswith("head."))
    assert torch.isfinite(out["loss"])
