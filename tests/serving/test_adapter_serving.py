"""Models whose attention is their own code (DeBERTa-v2, MPNet) served like BERT: mixed-task batches give
each row what its task gives alone, and ``ptv2 serve``'s app answers from them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from ptuning_v2.benchmarks.multitask import random_checkpoint
from ptuning_v2.serving.app import create_app
from ptuning_v2.serving.multi_prompt import MultiPromptModel

TEXTS = [
    "the movie was good",
    "a bad plot",
    "john went to paris with mary",
    "what a fine and very funny film",
]


@pytest.fixture(params=["deberta_v2", "mpnet"])
def model_dir(request: pytest.FixtureRequest, tiny_deberta_v2_dir: Path, tiny_mpnet_dir: Path) -> Path:
    return {"deberta_v2": tiny_deberta_v2_dir, "mpnet": tiny_mpnet_dir}[request.param]


def checkpoints(model_dir: Path, root: Path) -> dict[str, Path]:
    """Two classification tasks with random prompts and heads: k = 3 at every layer, k = 7 at layer 1 only."""
    made = {}
    for seed, (name, prompt, labels) in enumerate(
        [
            ("sentiment", {"num_virtual_tokens": 3}, ["neg", "pos"]),
            ("topic", {"num_virtual_tokens": 7, "layers": [1]}, ["a", "b", "c"]),
        ]
    ):
        torch.manual_seed(seed)
        made[name] = random_checkpoint(
            str(model_dir), root / name / "checkpoint", "classification", {**prompt, "init_std": 0.5},
            {"labels": labels},
        )  # fmt: skip
    return made


def test_mixed_batch_rows_equal_each_task_alone(model_dir: Path, tmp_path: Path) -> None:
    multi = MultiPromptModel.from_checkpoints(checkpoints(model_dir, tmp_path))
    tasks = ["sentiment", "topic", "topic", "sentiment"]
    mixed = multi.run(dict(multi.tokenizer(TEXTS, padding=True, return_tensors="pt")), tasks)
    for name in set(tasks):
        rows = [i for i, t in enumerate(tasks) if t == name]
        batch = dict(multi.tokenizer([TEXTS[i] for i in rows], padding=True, return_tensors="pt"))
        with torch.no_grad():
            expected = multi.tasks[name].model(batch)["logits"]
        for j, row in enumerate(rows):
            torch.testing.assert_close(mixed[row]["logits"], expected[j], atol=1e-5, rtol=1e-5)
    backbone = multi.backbone
    multi.close()
    assert not hasattr(backbone, "_ptv2_installs")


def test_serve_app_answers_each_task(model_dir: Path, tmp_path: Path) -> None:
    multi = MultiPromptModel.from_checkpoints(checkpoints(model_dir, tmp_path))
    with TestClient(create_app(multi)) as client:
        assert client.get("/health").json()["tasks"] == 2
        for name, labels in (("sentiment", {"neg", "pos"}), ("topic", {"a", "b", "c"})):
            response = client.post(f"/v1/tasks/{name}/predict", json={"inputs": TEXTS})
            assert response.status_code == 200, response.text
            outputs = response.json()["outputs"]
            assert len(outputs) == len(TEXTS) and {out["label"] for out in outputs} <= labels
    multi.close()
