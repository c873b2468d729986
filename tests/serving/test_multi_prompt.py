"""Many prompts on one backbone: mixed-task batches give each row what its task gives alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from ptuning_v2.benchmarks.multitask import random_checkpoint
from ptuning_v2.checkpoint import CheckpointError
from ptuning_v2.models import load_backbone, load_tokenizer
from ptuning_v2.serving.multi_prompt import MultiPromptModel, UnknownTaskError

TEXTS = [
    "the movie was good",
    "a bad plot",
    "john went to paris with mary",
    "what a fine and very funny film",
]


def make_checkpoint(
    model_dir: Path,
    directory: Path,
    task: str,
    prompt: dict[str, Any],
    state: dict[str, Any],
    seed: int,
    head: dict[str, Any] | None = None,
) -> Path:
    """A checkpoint folder as training writes it, with random prompts and head (large, so they matter)."""
    torch.manual_seed(seed)
    options = {"doc_stride": 32} if task == "qa" else {}
    prompt = {**prompt, "init_std": 0.5}
    return random_checkpoint(str(model_dir), directory / "checkpoint", task, prompt, state, options, head)


@pytest.fixture(scope="module")
def encoder_tasks(tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("encoder_tasks")
    ner_state = {"labels": ["B-LOC", "B-PER", "I-LOC", "I-PER", "O"], "scheme": "IOB2"}
    return {
        "sentiment": make_checkpoint(tiny_bert_dir, root / "sentiment", "classification",
                                     {"num_virtual_tokens": 8}, {"labels": ["neg", "pos"]}, 1),
        "topic": make_checkpoint(tiny_bert_dir, root / "topic", "classification",  # no prompt at layer 0
                                 {"num_virtual_tokens": 32, "layers": [1]}, {"labels": ["a", "b", "c"]}, 2),
        "entities": make_checkpoint(tiny_bert_dir, root / "entities", "ner", {"num_virtual_tokens": 5},
                                    ner_state, 3),
        "answers": make_checkpoint(tiny_bert_dir, root / "answers", "qa", {"num_virtual_tokens": 6}, {}, 4),
        "averaged": make_checkpoint(tiny_bert_dir, root / "averaged", "classification",  # mean pooling
                                    {"num_virtual_tokens": 8}, {"labels": ["x", "y", "z", "w"]}, 7,
                                    {"pooling": "mean"}),
        "reparam": make_checkpoint(tiny_bert_dir, root / "reparam", "classification",  # prompts from an MLP
                                   {"num_virtual_tokens": 8, "reparameterize": True}, {"labels": ["p", "q"]}, 8),
    }  # fmt: skip


def encode(multi: MultiPromptModel, texts: list[str]) -> dict[str, torch.Tensor]:
    return dict(multi.tokenizer(texts, padding=True, return_tensors="pt"))


def alone(multi: MultiPromptModel, task: str, texts: list[str]) -> torch.Tensor:
    with torch.no_grad():
        return multi.tasks[task].model(encode(multi, texts))["logits"]


@pytest.mark.parametrize(
    "tasks",
    [
        ["sentiment", "topic", "topic", "sentiment"],  # (a) k = 8 and k = 32 (on layer 1 only)
        ["sentiment", "entities", "topic", "entities"],  # (b) classification and NER rows interleaved
        ["answers", "entities", "sentiment", "answers"],  # extractive QA (start/end scores per token) too
        ["averaged", "topic", "sentiment", "averaged"],  # two poolings: two products of linear heads
        ["topic", "topic", "topic", "topic"],  # one task: its prompt broadcast, not gathered
        ["reparam", "sentiment", "reparam", "averaged"],  # an MLP's prompts in the bank beside parameters
    ],
)
def test_mixed_batch_rows_equal_each_task_alone(encoder_tasks: dict[str, Path], tasks: list[str]) -> None:
    multi = MultiPromptModel.from_checkpoints(encoder_tasks)
    mixed = multi.run(encode(multi, TEXTS), tasks)
    lengths = encode(multi, TEXTS)["attention_mask"].sum(-1)
    for name in set(tasks):
        rows = [i for i, t in enumerate(tasks) if t == name]
        expected = alone(multi, name, [TEXTS[i] for i in rows])
        assert (
            expected.shape[-1]
            == {"sentiment": 2, "topic": 3, "entities": 5, "answers": 2, "averaged": 4, "reparam": 2}[name]
        )
        for j, row in enumerate(rows):
            got, want = mixed[row]["logits"], expected[j]
            if name in ("entities", "answers"):  # per token: compare the row's real tokens
                got, want = got[: lengths[row]], want[: lengths[row]]
            assert (got - want).abs().max() <= 1e-5
    # and the prompts matter: the same text under two tasks' prompts differs
    a = multi.run(encode(multi, TEXTS[:1] * 2), ["sentiment", "topic"])
    assert a[0]["logits"].shape != a[1]["logits"].shape or not torch.allclose(a[0]["logits"], a[1]["logits"])


def test_served_prompts_are_held_once_in_the_bank(encoder_tasks: dict[str, Path]) -> None:
    """A task's prompt parameters view its rows of the bank (no second copy), and a delivery works with
    grad mode on: what it gathers carries no gradient."""
    multi = MultiPromptModel.from_checkpoints({n: encoder_tasks[n] for n in ("sentiment", "topic")})
    tables = {table.untyped_storage().data_ptr() for table in multi.bank.tables.values()}
    params = multi.tasks["sentiment"].encoder.prompt.prompts.values()
    assert params and all(p.untyped_storage().data_ptr() in tables for p in params)
    assert torch.is_grad_enabled()
    delivery = multi.delivery(["sentiment", "topic", "sentiment"])
    assert delivery.prompts and not any(p.key.requires_grad for p in delivery.prompts.values())


def test_linear_heads_of_a_mixed_batch_run_as_one_product(
    encoder_tasks: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Classification and NER heads never run task by task in a mixed batch (32 small calls cost more than
    the prompts do); the QA head, not a linear head, still does."""
    multi = MultiPromptModel.from_checkpoints(encoder_tasks)
    tasks = ["sentiment", "entities", "topic", "answers"]
    want = multi.run(encode(multi, TEXTS), tasks)
    calls: list[str] = []
    for name in ("sentiment", "entities", "topic", "answers"):
        model = multi.tasks[name].model
        own = model.from_outputs
        monkeypatch.setattr(
            model, "from_outputs", lambda *a, own=own, name=name: calls.append(name) or own(*a)
        )
    got = multi.run(encode(multi, TEXTS), tasks)
    assert calls == ["answers"]
    for g, w in zip(got, want, strict=True):
        assert torch.equal(g["logits"], w["logits"])


def test_add_and_remove_at_run_time(
    encoder_tasks: dict[str, Path], tiny_bert_dir: Path, tmp_path: Path
) -> None:
    multi = MultiPromptModel.from_checkpoints([encoder_tasks["sentiment"]])
    assert list(multi.tasks) == ["sentiment"]
    backbone = multi.backbone
    before = alone(multi, "sentiment", TEXTS)
    multi.add("topic", encoder_tasks["topic"])
    assert multi.backbone is backbone and multi.tasks["topic"].prompt_length == 32
    multi.remove("sentiment")
    with pytest.raises(UnknownTaskError, match="unknown task 'sentiment'"):
        multi.run(encode(multi, TEXTS[:1]), ["sentiment"])
    multi.add("sentiment", encoder_tasks["sentiment"])
    torch.testing.assert_close(alone(multi, "sentiment", TEXTS), before, atol=0, rtol=0)
    with pytest.raises(ValueError, match="already loaded"):
        multi.add("topic", encoder_tasks["topic"])
    # a prompt made for another backbone is refused
    other = tmp_path / "other_bert"
    changed = load_backbone(str(tiny_bert_dir), "encoder")
    with torch.no_grad():
        changed.embeddings.word_embeddings.weight.mul_(1.01)
    changed.save_pretrained(other)
    load_tokenizer(str(tiny_bert_dir)).save_pretrained(other)
    foreign = make_checkpoint(other, tmp_path / "foreign", "classification", {"num_virtual_tokens": 4},
                              {"labels": ["x", "y"]}, 4)  # fmt: skip
    with pytest.raises(CheckpointError, match="trained on backbone"):
        multi.add("foreign", foreign)
    multi.close()
    assert not hasattr(backbone, "_ptv2_installs")


def test_a_delivery_outlives_its_task_and_its_rows_reused(encoder_tasks: dict[str, Path]) -> None:
    """A batch's prompts are copies: removing its task and loading another into the freed rows of the bank
    while the batch runs changes nothing the batch reads, and the removed task's model keeps its prompt."""
    multi = MultiPromptModel.from_checkpoints({n: encoder_tasks[n] for n in ("sentiment", "averaged")})
    one = multi.delivery(["sentiment"] * 4).prompts
    mixed = multi.delivery(["sentiment", "averaged", "sentiment", "averaged"]).prompts
    read = {slot: (one[slot].key.clone(), mixed[slot].key.clone()) for slot in one}
    removed = multi.tasks["sentiment"].encoder.prompt.prompts
    own = {slot: p.detach().clone() for slot, p in removed.items()}
    multi.remove("sentiment")
    multi.add("again", encoder_tasks["averaged"])  # same shapes: into the rows "sentiment" had
    assert {row for _, row in multi.bank.places["again"].values()} == {0}
    for slot, (one_key, mixed_key) in read.items():
        assert torch.equal(one[slot].key, one_key) and torch.equal(mixed[slot].key, mixed_key)
    for slot, prompt in removed.items():
        assert torch.equal(prompt.detach(), own[slot])


@pytest.fixture(scope="module")
def decoder_tasks(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("decoder_tasks")
    return {
        "short": make_checkpoint(tiny_llama_dir, root / "short", "causal_lm", {"num_virtual_tokens": 3}, {}, 5),
        "long": make_checkpoint(tiny_llama_dir, root / "long", "causal_lm",
                                {"num_virtual_tokens": 12, "layers": [0]}, {}, 6),
    }  # fmt: skip


@pytest.mark.parametrize("beams", [1, 2])
def test_mixed_left_padded_generation_equals_each_task_alone(
    decoder_tasks: dict[str, Path], beams: int
) -> None:
    multi = MultiPromptModel.from_checkpoints(decoder_tasks)
    multi.tokenizer.padding_side = "left"
    texts = ["the movie was", "a very long and boring story about", "paris is", "i like the"]
    tasks = ["short", "long", "long", "short"]
    options = {"max_new_tokens": 6, "do_sample": False, "num_beams": beams,
               "pad_token_id": multi.tokenizer.pad_token_id}  # fmt: skip
    mixed = multi.generate(encode(multi, texts), tasks, **options)
    for name in ("short", "long"):
        rows = [i for i, t in enumerate(tasks) if t == name]
        batch = encode(multi, [texts[i] for i in rows])
        batch.pop("token_type_ids")
        out = multi.tasks[name].encoder.generate(**batch, **options)[:, batch["input_ids"].shape[1] :]
        assert [mixed[i] for i in rows] == out.tolist()
    assert mixed[0] != mixed[1] or mixed[2] != mixed[3]  # the two tasks' prompts do differ in effect


@pytest.mark.slow
def test_mixed_generation_on_the_real_smollm2(tmp_path: Path) -> None:
    torch.manual_seed(0)
    checkpoints = {
        name: random_checkpoint("smollm2", tmp_path / name, "causal_lm", {"num_virtual_tokens": length}, {})
        for name, length in (("short", 4), ("long", 16))
    }
    multi = MultiPromptModel.from_checkpoints(checkpoints)
    with torch.no_grad():  # prompts large enough to change what the model says
        for entry in multi.tasks.values():
            for param in entry.encoder.prompt.parameters():
                param.normal_(0, 1.0)
    multi.tokenizer.padding_side = "left"
    texts = ["The capital of France is", "Write one word about the sea:", "2 + 2 =", "My favourite colour is"]
    tasks = ["short", "long", "long", "short"]
    options = {"max_new_tokens": 8, "do_sample": False, "pad_token_id": multi.tokenizer.pad_token_id}
    mixed = multi.generate(encode(multi, texts), tasks, **options)
    for name in ("short", "long"):
        rows = [i for i, t in enumerate(tasks) if t == name]
        batch = encode(multi, [texts[i] for i in rows])
        out = multi.tasks[name].encoder.generate(**batch, **options)[:, batch["input_ids"].shape[1] :]
        assert [mixed[i] for i in rows] == out.tolist()
