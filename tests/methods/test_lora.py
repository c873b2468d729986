"""LoRA through PEFT: the adapted model must equal the backbone with merged weights W + (alpha / r) B A."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from ptuning_v2.config import ConfigError, RunConfig
from ptuning_v2.methods import get_method
from ptuning_v2.methods.lora import ALPHA, RANK, lora_targets
from ptuning_v2.models import load_backbone, load_tokenizer

LAYERS, HIDDEN = 2, 32


def build(model_dir, kind: str = "encoder") -> nn.Module:
    run = RunConfig.from_dict({"method": "lora"})
    return get_method("lora").build(load_backbone(str(model_dir), kind), run, None)


def test_targets_follow_the_architecture(tiny_bert_dir, tiny_llama_dir) -> None:
    assert lora_targets(load_backbone(str(tiny_bert_dir), "encoder")) == ["query", "value"]
    assert lora_targets(load_backbone(str(tiny_llama_dir), "causal_lm")) == ["q_proj", "v_proj"]


def test_unknown_architectures_are_matched_by_projection_names() -> None:
    model = nn.Module()
    model.config = SimpleNamespace(model_type="not_in_peft")
    model.attn = nn.ModuleDict(
        {"q_proj": nn.Linear(4, 4), "k_proj": nn.Linear(4, 4), "v_proj": nn.Linear(4, 4)}
    )
    assert lora_targets(model) == ["q_proj", "v_proj"]
    model.attn = nn.ModuleDict({"mix": nn.Linear(4, 4)})
    with pytest.raises(ConfigError, match="no query/value projections"):
        lora_targets(model)


def test_trainable_parameters_are_the_low_rank_matrices(tiny_bert_dir) -> None:
    model = build(tiny_bert_dir)
    per_projection = RANK * HIDDEN + HIDDEN * RANK  # A is r x in, B is out x r
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert sum(p.numel() for p in trainable.values()) == LAYERS * 2 * per_projection
    assert all("lora_" in name for name in trainable)


def test_output_equals_the_backbone_with_merged_weights(tiny_bert_dir) -> None:
    tokenizer = load_tokenizer(str(tiny_bert_dir))
    model = build(tiny_bert_dir).eval()
    batch = tokenizer(["a good film", "it was bad and boring"], padding=True, return_tensors="pt")
    reference = load_backbone(str(tiny_bert_dir), "encoder")
    torch.testing.assert_close(model(**batch).last_hidden_state, reference(**batch).last_hidden_state)
    torch.manual_seed(1)
    modules = dict(model.named_modules())
    merged = {}
    for name, module in modules.items():
        if hasattr(module, "lora_B"):
            with torch.no_grad():
                module.lora_B["default"].weight.normal_(0, 0.5)
            a, b = module.lora_A["default"].weight, module.lora_B["default"].weight
            merged[name] = module.base_layer.weight + (ALPHA / RANK) * b @ a
    with torch.no_grad():
        for name, weight in merged.items():
            dict(reference.named_modules())[name].weight.copy_(weight)
        torch.testing.assert_close(model(**batch).last_hidden_state, reference(**batch).last_hidden_state)


def test_causal_lm_keeps_generate(tiny_llama_dir) -> None:
    tokenizer = load_tokenizer(str(tiny_llama_dir))
    model = build(tiny_llama_dir, "causal_lm").eval()
    ids = tokenizer("the film was good", add_special_tokens=False, return_tensors="pt")["input_ids"]
    reference = load_backbone(str(tiny_llama_dir), "causal_lm")
    expected = reference.generate(input_ids=ids, max_new_tokens=4, do_sample=False)
    assert model.generate(input_ids=ids, max_new_tokens=4, do_sample=False).tolist() == expected.tolist()


def test_train_and_reload_gives_the_same_predictions(train_and_reload, tiny_bert_dir) -> None:
    metrics = train_and_reload("lora", tiny_bert_dir)
    head = HIDDEN * 2 + 2
    assert metrics["trainable_params"] == LAYERS * 2 * 2 * RANK * HIDDEN + head


def test_target_modules_choose_the_adapted_layers(tiny_bert_dir) -> None:
    lora = {"rank": 2, "target_modules": ["query", "key", "dense"]}
    model = get_method("lora").build(
        load_backbone(str(tiny_bert_dir), "encoder"),
        RunConfig.from_dict({"method": "lora", "lora": lora}),
        None,
    )
    adapted = {n.split(".lora_A")[0] for n, _ in model.named_parameters() if ".lora_A" in n}
    assert {name.rsplit(".", 1)[-1] for name in adapted} == {"query", "key", "dense"}

    def low_rank(n_in: int, n_out: int) -> int:
        return 2 * n_in + n_out * 2  # A is r x in, B is out x r

    # per layer: query, key, the attention output's dense (32 -> 32), the intermediate (32 -> 64) and
    # the output dense (64 -> 32); plus the pooler's dense (32 -> 32)
    per_layer = 3 * low_rank(HIDDEN, HIDDEN) + low_rank(HIDDEN, 64) + low_rank(64, HIDDEN)
    expected = LAYERS * per_layer + low_rank(HIDDEN, HIDDEN)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected
    assert len(adapted) == LAYERS * 5 + 1


def test_an_unknown_target_module_names_the_models_linear_layers(tiny_bert_dir) -> None:
    run = RunConfig.from_dict({"method": "lora", "lora": {"target_modules": ["q_proj"]}})
    with pytest.raises(
        ConfigError, match=r"lora.target_modules: no linear layer named \['q_proj'\].*'query'"
    ):
        get_method("lora").build(load_backbone(str(tiny_bert_dir), "encoder"), run, None)
