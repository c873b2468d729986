"""The inference cache of materialised prompts: reused while valid, never stale, outputs unchanged."""

from __future__ import annotations

from pathlib import Path

import torch

from ptuning_v2.config import DeepPromptConfig
from ptuning_v2.models import load_backbone
from ptuning_v2.prompts.model import DeepPromptModel


def prompted(model_dir: Path, **options) -> DeepPromptModel:
    torch.manual_seed(0)
    config = DeepPromptConfig(num_virtual_tokens=3, init_std=0.5, **options)
    return DeepPromptModel(load_backbone(str(model_dir), "encoder"), config).eval()


def inputs() -> dict[str, torch.Tensor]:
    ids = torch.tensor([[2, 10, 11, 12, 3], [2, 13, 14, 3, 0]])
    return {"input_ids": ids, "attention_mask": (ids != 0).long()}


def uncached(model: DeepPromptModel) -> torch.Tensor:
    """The reference: with autograd on, the prompts are recomputed on every call."""
    with torch.enable_grad():
        return model(**inputs()).last_hidden_state.detach()


def test_inference_reuses_the_prompts_and_gives_the_same_outputs(tiny_bert_dir: Path) -> None:
    model = prompted(tiny_bert_dir, reparameterize=True, reparam_hidden_size=8)
    with torch.inference_mode():
        first = model.prompt()
        again = model.prompt()
        out = model(**inputs()).last_hidden_state
    assert all(first[name] is again[name] for name in first)  # the MLP ran once
    assert torch.equal(out, uncached(model))
    with torch.no_grad():
        model.train()
        assert model.prompt()["self_0"] is not first["self_0"]  # training mode never uses the cache


def test_cache_is_invalidated_by_an_optimizer_step(tiny_bert_dir: Path) -> None:
    model = prompted(tiny_bert_dir, reparameterize=True, reparam_hidden_size=8)
    with torch.no_grad():
        before = model(**inputs()).last_hidden_state
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    model(**inputs()).last_hidden_state.pow(2).mean().backward()
    optimizer.step()
    model.eval()
    with torch.no_grad():
        after = model(**inputs()).last_hidden_state
    assert not torch.allclose(before, after)
    assert torch.equal(after, uncached(model))


def test_cache_is_invalidated_by_loading_folding_and_casting(tiny_bert_dir: Path) -> None:
    model = prompted(tiny_bert_dir, reparameterize=True, reparam_hidden_size=8)
    other = prompted(tiny_bert_dir, reparameterize=True, reparam_hidden_size=8)
    with torch.no_grad():
        for p in other.prompt.parameters():
            p.mul_(-1.0)
        model(**inputs())  # fills the cache
        model.load_state_dict(other.state_dict())
        loaded = model(**inputs()).last_hidden_state
    assert torch.equal(loaded, uncached(other))

    model.prompt.fold()  # new parameters holding the same prompts
    with torch.no_grad():
        assert torch.allclose(model(**inputs()).last_hidden_state, loaded, atol=1e-6)
        model.prompt.prompts["self_0"].zero_()
        assert torch.equal(model(**inputs()).last_hidden_state, uncached(model))

    model.double()
    with torch.no_grad():
        assert model.prompt()["self_0"].dtype == torch.float64
