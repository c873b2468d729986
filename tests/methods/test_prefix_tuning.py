"""Prefix tuning: deep prefixes from an MLP; folding the MLP away must not change any output."""

from __future__ import annotations

import torch

from ptuning_v2.config import RunConfig
from ptuning_v2.methods import get_method
from ptuning_v2.models import load_backbone, load_tokenizer

LAYERS, HIDDEN, K, MLP = 2, 32, 4, 16


def build(model_dir, kind: str = "encoder"):
    run = RunConfig.from_dict(
        {"method": "prefix_tuning", "prompt": {"num_virtual_tokens": K, "reparam_hidden_size": MLP}}
    )
    assert run.prompt.reparameterize is False  # the method turns it on itself
    return get_method("prefix_tuning").build(load_backbone(str(model_dir), kind), run, None)


def test_trainable_parameters_are_embedding_and_mlp(tiny_bert_dir) -> None:
    model = build(tiny_bert_dir)
    width = LAYERS * 2 * HIDDEN  # a key and a value per layer
    expected = K * HIDDEN + (HIDDEN * MLP + MLP) + (MLP * width + width)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected


def test_fold_gives_identical_outputs_with_fewer_parameters(tiny_bert_dir) -> None:
    tokenizer = load_tokenizer(str(tiny_bert_dir))
    model = build(tiny_bert_dir).eval()
    batch = tokenizer(["a good film", "it was bad and boring"], padding=True, return_tensors="pt")
    with torch.no_grad():
        before = model(**batch).last_hidden_state
        plain = model.backbone(**batch).last_hidden_state
    model.prompt.fold()
    with torch.no_grad():
        after = model(**batch).last_hidden_state
    torch.testing.assert_close(after, before)
    assert not torch.allclose(before, plain)  # the prefixes do act
    assert sum(p.numel() for p in model.prompt.parameters()) == LAYERS * K * 2 * HIDDEN


def test_fold_keeps_causal_generation(tiny_llama_dir) -> None:
    tokenizer = load_tokenizer(str(tiny_llama_dir))
    model = build(tiny_llama_dir, "causal_lm").eval()
    ids = tokenizer("the film was good", add_special_tokens=False, return_tensors="pt")["input_ids"]
    before = model.generate(input_ids=ids, max_new_tokens=5, do_sample=False)
    model.prompt.fold()
    assert model.generate(input_ids=ids, max_new_tokens=5, do_sample=False).tolist() == before.tolist()


def test_train_and_reload_gives_the_same_predictions(train_and_reload, tiny_bert_dir) -> None:
    train_and_reload("prefix_tuning", tiny_bert_dir, {"reparam_hidden_size": MLP})
