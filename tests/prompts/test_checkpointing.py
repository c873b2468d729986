"""Prompt delivery bound to the call: gradient checkpointing, shared backbones, threads, removal."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, LlamaForCausalLM, T5ForConditionalGeneration

from ptuning_v2.config import DeepPromptConfig
from ptuning_v2.prompts.model import DeepPromptModel

IDS = torch.tensor([[2, 8, 9, 10, 11, 3], [2, 12, 13, 3, 0, 0]])
MASK = (IDS != 0).long()
ENCODERS = ("bert", "deberta_v2", "mpnet")
"""BERT's attention goes through transformers' attention interface; DeBERTa-v2's and MPNet's are their own
code (attention adapters)."""


def no_dropout_backbone(name: str, dirs: dict[str, Path]) -> torch.nn.Module:
    """The tiny test models with every dropout at 0, so two training-mode passes compute the same thing."""
    if name in ENCODERS:
        return AutoModel.from_pretrained(
            dirs[name], hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
        )
    if name == "llama":
        return LlamaForCausalLM.from_pretrained(dirs[name], attention_dropout=0.0)
    # float64: the tiny T5's weights are 5x the usual scale, and float32 rounding of the (legitimately)
    # reordered backward sums grows to 3e-5 relative through it; in float64 the two agree to 1e-14.
    return T5ForConditionalGeneration.from_pretrained(dirs[name], dropout_rate=0.0).double()


def loss_of(model: DeepPromptModel, name: str) -> torch.Tensor:
    inputs = {"input_ids": IDS, "attention_mask": MASK}
    if name == "t5":
        inputs["decoder_input_ids"] = torch.tensor([[0, 5, 6], [0, 7, 8]])
    out = model(**inputs)
    states = out.last_hidden_state if name in ENCODERS else out.logits
    return (states.float() ** 2).mean()


def prompt_grads(model: DeepPromptModel, name: str) -> dict[str, torch.Tensor]:
    model.train()
    model.zero_grad()
    loss_of(model, name).backward()
    return {n: p.grad.clone() for n, p in model.prompt.named_parameters()}


@pytest.fixture()
def dirs(
    tiny_bert_dir: Path,
    tiny_deberta_v2_dir: Path,
    tiny_mpnet_dir: Path,
    tiny_llama_dir: Path,
    tiny_t5_dir: Path,
) -> dict[str, Path]:
    return {
        "bert": tiny_bert_dir,
        "deberta_v2": tiny_deberta_v2_dir,
        "mpnet": tiny_mpnet_dir,
        "llama": tiny_llama_dir,
        "t5": tiny_t5_dir,
    }


CHECKPOINTED = [
    (name, mode, enable)
    for name, mode in [(encoder, mode) for encoder in ENCODERS for mode in ("prefix", "hidden")]
    + [("llama", "prefix"), ("t5", "prefix")]
    for enable in ("before", "after")
    if (name, enable) != ("mpnet", "before")  # transformers cannot checkpoint MPNet; prompted, it can
]


@pytest.mark.parametrize(("name", "mode", "enable"), CHECKPOINTED)
def test_checkpointed_prompt_gradients_equal_plain_ones(name: str, mode: str, enable: str, dirs) -> None:
    config = DeepPromptConfig(num_virtual_tokens=3, mode=mode, init_std=0.5)
    torch.manual_seed(0)
    plain = DeepPromptModel(no_dropout_backbone(name, dirs), config)
    plain.prompt.to(plain.backbone.dtype)
    expected = prompt_grads(plain, name)

    backbone = no_dropout_backbone(name, dirs)
    if enable == "before":
        backbone.activation_checkpointing_enable()
    torch.manual_seed(0)
    checkpointed = DeepPromptModel(backbone, config)
    checkpointed.prompt.to(backbone.dtype)
    if enable == "after":
        checkpointed.gradient_checkpointing_enable()
    assert backbone.is_activation_checkpointing
    calls = []  # attention really runs twice: in the forward pass and in the backward recompute
    attentions = [m for m in backbone.modules() if hasattr(m, "_ptv2_slot")]
    for module in attentions:
        module.register_forward_pre_hook(lambda *_: calls.append(1))
    got = prompt_grads(checkpointed, name)
    assert attentions and len(calls) == 2 * len(attentions)
    assert set(got) == set(expected)
    for key in expected:
        assert expected[key].abs().sum() > 0
        torch.testing.assert_close(got[key], expected[key], atol=1e-5, rtol=1e-5)


def test_reentrant_checkpointing_is_refused(tiny_bert_dir: Path) -> None:
    model = DeepPromptModel(AutoModel.from_pretrained(tiny_bert_dir), DeepPromptConfig(num_virtual_tokens=2))
    with pytest.raises(ValueError, match="use_reentrant=False"):
        model.gradient_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": True})


@pytest.mark.parametrize("name", ENCODERS)
def test_two_prompted_models_on_one_backbone_from_two_threads(name: str, dirs) -> None:
    backbone = AutoModel.from_pretrained(dirs[name]).eval()
    torch.manual_seed(0)
    first = DeepPromptModel(backbone, DeepPromptConfig(num_virtual_tokens=4, init_std=0.5)).eval()
    second = DeepPromptModel(backbone, DeepPromptConfig(num_virtual_tokens=9, init_std=0.5)).eval()
    with torch.no_grad():
        expected = [m(input_ids=IDS, attention_mask=MASK).last_hidden_state for m in (first, second)]
    assert not torch.allclose(expected[0], expected[1])
    wrong: list[int] = []
    start = threading.Barrier(2)

    def run(index: int, model: DeepPromptModel) -> None:
        start.wait()
        for _ in range(30):
            with torch.no_grad():
                out = model(input_ids=IDS, attention_mask=MASK).last_hidden_state
            if not torch.equal(out, expected[index]):
                wrong.append(index)

    threads = [threading.Thread(target=run, args=(i, m)) for i, m in enumerate((first, second))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wrong == []


@pytest.mark.parametrize("name", ENCODERS)
@pytest.mark.parametrize("mode", ["prefix", "hidden"])
def test_remove_leaves_the_backbone_as_it_was(name: str, mode: str, dirs) -> None:
    backbone = AutoModel.from_pretrained(dirs[name]).eval()
    backbone.encoder.layer[1].output.dense.weight.requires_grad_(False)
    flags = {n: p.requires_grad for n, p in backbone.named_parameters()}
    attention = backbone.config._attn_implementation
    hooks = [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in backbone.modules()]
    attributes = [sorted(vars(m)) for m in backbone.modules()]
    with torch.no_grad():
        before = backbone(input_ids=IDS, attention_mask=MASK).last_hidden_state
    model = DeepPromptModel(backbone, DeepPromptConfig(num_virtual_tokens=3, mode=mode, init_std=0.5))
    with torch.no_grad():
        assert not torch.allclose(model(input_ids=IDS, attention_mask=MASK).last_hidden_state, before)
    assert model.remove() is backbone
    assert backbone.config._attn_implementation == attention
    assert [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in backbone.modules()] == hooks
    assert [sorted(vars(m)) for m in backbone.modules()] == attributes
    assert not any(hasattr(m, "_ptv2_slot") for m in backbone.modules())
    assert {n: p.requires_grad for n, p in backbone.named_parameters()} == flags
    with torch.no_grad():
        assert torch.equal(backbone(input_ids=IDS, attention_mask=MASK).last_hidden_state, before)


def test_a_second_hidden_mode_model_does_not_shift_the_first(tiny_bert_dir: Path) -> None:
    backbone = AutoModel.from_pretrained(tiny_bert_dir).eval()
    torch.manual_seed(0)
    first = DeepPromptModel(backbone, DeepPromptConfig(num_virtual_tokens=3, mode="hidden", init_std=0.5))
    with torch.no_grad():
        alone = first(input_ids=IDS, attention_mask=MASK).last_hidden_state
        second = DeepPromptModel(
            backbone, DeepPromptConfig(num_virtual_tokens=5, mode="hidden", init_std=0.5)
        )
        assert torch.equal(first(input_ids=IDS, attention_mask=MASK).last_hidden_state, alone)
        other = second(input_ids=IDS, attention_mask=MASK).last_hidden_state
        assert not torch.allclose(other, alone)
        second.remove()
        del second
        assert torch.equal(first(input_ids=IDS, attention_mask=MASK).last_hidden_state, alone)


def test_mpnet_checkpointed_while_prompted_is_given_back_as_it_was(tiny_mpnet_dir: Path) -> None:
    """transformers cannot checkpoint MPNet: prompted it can, and after removal it is as before again."""
    backbone = AutoModel.from_pretrained(tiny_mpnet_dir)
    with pytest.raises(ValueError, match="does not support activation checkpointing"):
        backbone.activation_checkpointing_enable()
    attributes = [sorted(vars(m)) for m in backbone.modules()]
    hooks = [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in backbone.modules()]
    model = DeepPromptModel(backbone, DeepPromptConfig(num_virtual_tokens=2))
    model.gradient_checkpointing_enable()
    assert backbone.is_activation_checkpointing
    model.remove()
    assert not backbone.is_activation_checkpointing
    assert [sorted(vars(m)) for m in backbone.modules()] == attributes
    assert [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in backbone.modules()] == hooks
    with pytest.raises(ValueError, match="does not support activation checkpointing"):
        backbone.activation_checkpointing_enable()


@pytest.mark.parametrize("name", ENCODERS)
def test_the_run_option_turns_checkpointing_on_for_training(name: str, dirs) -> None:
    from ptuning_v2.config import RunConfig
    from ptuning_v2.tasks.classification import ClassificationTask
    from ptuning_v2.trained.model import build_model

    run = RunConfig.from_dict({"model": str(dirs[name]), "train": {"gradient_checkpointing": True}})
    task = ClassificationTask(run, None)
    task.load_state({"labels": ["neg", "pos"]})
    model = build_model(run, task, AutoModel.from_pretrained(dirs[name]), None).train()
    assert model.encoder.backbone.is_activation_checkpointing
    out = model({"input_ids": IDS, "attention_mask": MASK, "labels": torch.tensor([0, 1])})
    out["loss"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.prompt.parameters())


def test_backbone_dropout_off_trains_through_a_deterministic_backbone(tiny_bert_dir: Path) -> None:
    from ptuning_v2.tasks.classification import ClassificationModel

    def model_with(backbone_dropout: bool) -> torch.nn.Module:
        torch.manual_seed(0)
        backbone = AutoModel.from_pretrained(
            tiny_bert_dir, hidden_dropout_prob=0.3, attention_probs_dropout_prob=0.3
        )
        prompted = DeepPromptModel(
            backbone, DeepPromptConfig(num_virtual_tokens=3), backbone_dropout=backbone_dropout
        )
        return ClassificationModel(prompted, 32, 2, "mean", dropout=0.0)

    batch = {"input_ids": IDS, "attention_mask": MASK}
    on, off = model_with(True).train(), model_with(False).train()
    assert not torch.equal(on(batch)["logits"], on(batch)["logits"])  # the backbone's dropout is on
    first = off(batch)["logits"]
    assert torch.equal(first, off(batch)["logits"])  # off: training computes as evaluation does
    with torch.no_grad():
        torch.testing.assert_close(first, off.eval()(batch)["logits"])
    off.train()
    assert off.encoder.prompt.training and not off.encoder.backbone.training
    # checkpointed layers keep their training flag, so the recompute still happens
    off.encoder.gradient_checkpointing_enable()
    off.train()
    calls = []
    for module in off.encoder.backbone.modules():
        if hasattr(module, "_ptv2_slot"):
            module.register_forward_pre_hook(lambda *_: calls.append(1))
    off(batch)["logits"].sum().backward()
    assert len(calls) == 2 * 2 and all(p.grad is not None for p in off.encoder.prompt.parameters())
