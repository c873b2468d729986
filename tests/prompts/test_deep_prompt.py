"""Prompt configuration, per-layer lengths, initialisation, reparameterisation and dropout."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertModel

from ptuning_v2.config import DeepPromptConfig
from ptuning_v2.prompts.model import DeepPromptModel


def tiny_bert(layers: int = 4) -> BertModel:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=99,
        hidden_size=16,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=32,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return BertModel(config).eval()


IDS = {"input_ids": torch.tensor([[2, 8, 9, 10, 3]])}


def test_adaptive_schedule_follows_the_formula() -> None:
    config = DeepPromptConfig(
        num_virtual_tokens=20, length_schedule="adaptive", task_complexity=1.0, max_length=100
    )
    lengths = config.lengths(12)
    for layer, length in lengths.items():
        expected = round(20 * (0.8 + 0.4) * (1 + 0.5 * math.sin(math.pi * layer / 12)))
        assert length == expected
    assert lengths[0] == 24 and lengths[6] == 36  # edges shortest, the middle longest


def test_schedule_is_clipped_and_explicit_lengths_win() -> None:
    clipped = DeepPromptConfig(
        num_virtual_tokens=20, length_schedule="adaptive", min_length=22, max_length=25
    )
    assert set(clipped.lengths(6).values()) <= {22, 23, 24, 25}
    explicit = DeepPromptConfig(layers=[0, -1], layer_lengths=[3, 5])
    assert explicit.lengths(4) == {0: 3, 3: 5}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"layers": [0, 9]}, "model has 4 layers"),
        ({"layers": [0, 1], "layer_lengths": [1]}, "layer_lengths has 1 entries"),
        ({"layer_lengths": [1, 2]}, "model has 4 layers"),
    ],
)
def test_bad_layer_options_name_the_field(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DeepPromptConfig(**kwargs).lengths(4)


def test_invalid_options_are_rejected_at_construction() -> None:
    with pytest.raises(ValueError, match="prompt.init_text"):
        DeepPromptConfig(init="text")
    with pytest.raises(ValueError, match="prompt.mode"):
        DeepPromptConfig(mode="middle")
    with pytest.raises(ValueError, match="unknown prompt option"):
        DeepPromptConfig.from_dict({"num_tokens": 3})


def test_per_layer_lengths_shape_the_parameters() -> None:
    model = DeepPromptModel(tiny_bert(), DeepPromptConfig(layers=[1, 3], layer_lengths=[2, 6]))
    shapes = {name: tuple(p.shape) for name, p in model.prompt.prompts.items()}
    assert shapes == {"self_1": (2, 32), "self_3": (6, 32)}  # width: key + value of 2 heads x 8 dims
    out = model(**IDS).last_hidden_state
    assert out.shape == (1, 5, 16)


def test_zero_init_and_random_init() -> None:
    zero = DeepPromptModel(tiny_bert(), DeepPromptConfig(num_virtual_tokens=3, init="zero"))
    assert all(torch.count_nonzero(p) == 0 for p in zero.prompt.parameters())
    rand = DeepPromptModel(tiny_bert(), DeepPromptConfig(num_virtual_tokens=3, init_std=0.1))
    stds = [float(p.detach().std()) for p in rand.prompt.parameters()]
    assert all(0.05 < s < 0.2 for s in stds)


def test_text_init_copies_the_keys_and_values_the_text_produces(tiny_bert_dir) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    backbone = BertModel.from_pretrained(tiny_bert_dir).eval()
    config = DeepPromptConfig(num_virtual_tokens=7, init="text", init_text="great movie")
    model = DeepPromptModel(backbone, config, tokenizer)
    encoded = tokenizer("great movie", return_tensors="pt")  # [CLS] great movie [SEP] = 4 tokens
    attention = backbone.encoder.layer[1].attention.self
    captured = {}
    handle = attention.register_forward_hook(lambda m, a, o: captured.update(h=a[0]))
    with torch.no_grad():
        backbone(**encoded)
    handle.remove()
    hidden = captured["h"][0]
    keys = attention.key(hidden)  # [4, 32]
    values = attention.value(hidden)
    prompt = model.prompt.prompts["self_1"].detach()
    tiled = torch.cat([keys, keys])[:7], torch.cat([values, values])[:7]
    torch.testing.assert_close(prompt[:, :32], tiled[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(prompt[:, 32:], tiled[1], atol=1e-5, rtol=1e-5)


def test_text_init_needs_a_tokenizer() -> None:
    with pytest.raises(ValueError, match="tokenizer"):
        DeepPromptModel(tiny_bert(), DeepPromptConfig(init="text", init_text="hi"))


def test_reparameterisation_folds_into_identical_prefixes() -> None:
    model = DeepPromptModel(
        tiny_bert(), DeepPromptConfig(num_virtual_tokens=4, reparameterize=True, reparam_hidden_size=24)
    ).eval()
    names = {name for name, p in model.named_parameters() if p.requires_grad}
    assert names == {
        "prompt.embedding",
        "prompt.mlp.0.weight",
        "prompt.mlp.0.bias",
        "prompt.mlp.2.weight",
        "prompt.mlp.2.bias",
    }
    before = model(**IDS).last_hidden_state
    model.prompt.fold()
    assert not model.prompt.config.reparameterize
    assert {name for name, _ in model.prompt.named_parameters()} == {f"prompts.self_{i}" for i in range(4)}
    torch.testing.assert_close(model(**IDS).last_hidden_state, before, atol=1e-6, rtol=1e-6)


def test_prompt_dropout_only_in_training() -> None:
    model = DeepPromptModel(tiny_bert(), DeepPromptConfig(num_virtual_tokens=4, dropout=0.5, init_std=0.5))
    model.eval()
    a, b = model(**IDS).last_hidden_state, model(**IDS).last_hidden_state
    assert torch.equal(a, b)
    model.train()
    torch.manual_seed(1)
    c = model(**IDS).last_hidden_state
    assert not torch.allclose(a, c)


def test_per_example_prompts_select_per_row() -> None:
    """A [batch, length, width] prompt gives each row its own prefix (the basis of mixed-task batches)."""
    model = DeepPromptModel(tiny_bert(), DeepPromptConfig(num_virtual_tokens=2, init_std=0.5)).eval()
    other = {name: torch.randn_like(t) for name, t in model.prompt().items()}
    ids = torch.cat([IDS["input_ids"], IDS["input_ids"]])
    stacked = {name: torch.stack([model.prompt()[name], other[name]]) for name in other}
    with torch.no_grad():
        mixed = model.backbone(input_ids=ids, ptv2_prompts=model.injector.deliver(stacked)).last_hidden_state
        second = model.backbone(**IDS, ptv2_prompts=model.injector.deliver(other)).last_hidden_state
    torch.testing.assert_close(mixed[0:1], model(**IDS).last_hidden_state, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(mixed[1:2], second, atol=1e-6, rtol=1e-6)


def test_hidden_mode_refuses_decoders(tiny_llama_dir) -> None:
    from transformers import LlamaForCausalLM

    with pytest.raises(ValueError, match="hidden' supports encoder models"):
        DeepPromptModel(LlamaForCausalLM.from_pretrained(tiny_llama_dir), DeepPromptConfig(mode="hidden"))
