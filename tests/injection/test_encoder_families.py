"""Both injection modes on every encoder family the project supports (tiny random configs): the BERT family
through transformers' attention interface, DeBERTa, DeBERTa-v2 and MPNet through attention adapters."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    AlbertConfig,
    AlbertModel,
    BertConfig,
    BertModel,
    DebertaConfig,
    DebertaModel,
    DebertaV2Config,
    DebertaV2Model,
    DistilBertConfig,
    DistilBertModel,
    ElectraConfig,
    ElectraModel,
    MPNetConfig,
    MPNetModel,
    RobertaConfig,
    RobertaModel,
)

from ptuning_v2.config import DeepPromptConfig
from ptuning_v2.prompts.model import DeepPromptModel

COMMON = {"vocab_size": 60, "max_position_embeddings": 64}
SIZES = {"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 32}
DISENTANGLED = {"relative_attention": True, "pos_att_type": ["p2c", "c2p"]}
FAMILIES = {
    "bert": (
        BertModel,
        BertConfig(
            hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, **COMMON
        ),
    ),
    "roberta": (
        RobertaModel,
        RobertaConfig(
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=32,
            pad_token_id=1,
            **COMMON,
        ),
    ),
    "electra": (
        ElectraModel,
        ElectraConfig(
            embedding_size=8,
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=32,
            **COMMON,
        ),
    ),
    "distilbert": (DistilBertModel, DistilBertConfig(dim=16, n_layers=2, n_heads=2, hidden_dim=32, **COMMON)),
    "deberta": (DebertaModel, DebertaConfig(**SIZES, **DISENTANGLED, **COMMON)),
    "deberta-v2": (
        DebertaV2Model,
        DebertaV2Config(
            **SIZES,
            **DISENTANGLED,
            position_buckets=16,
            share_att_key=True,
            position_biased_input=False,
            **COMMON,
        ),
    ),
    "mpnet": (MPNetModel, MPNetConfig(**SIZES, **COMMON)),
}
IDS = torch.tensor([[5, 7, 9, 11, 13, 0], [5, 8, 10, 0, 0, 0]])
MASK = (IDS != 0).long()


def build(family: str) -> torch.nn.Module:
    cls, config = FAMILIES[family]
    torch.manual_seed(0)
    return cls(config).eval()


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("mode", ["prefix", "hidden"])
def test_family_supports_both_modes(family: str, mode: str) -> None:
    plain = build(family)(input_ids=IDS, attention_mask=MASK).last_hidden_state
    empty = DeepPromptModel(build(family), DeepPromptConfig(num_virtual_tokens=0, mode=mode)).eval()
    assert torch.equal(empty(input_ids=IDS, attention_mask=MASK).last_hidden_state, plain)

    model = DeepPromptModel(
        build(family), DeepPromptConfig(num_virtual_tokens=3, mode=mode, init_std=0.5)
    ).eval()
    assert len(model.prompt.prompts) == 2
    out = model(input_ids=IDS, attention_mask=MASK).last_hidden_state
    assert out.shape == plain.shape
    assert not torch.allclose(out, plain, atol=1e-3)
    alone = model(input_ids=IDS[1:, :3], attention_mask=MASK[1:, :3]).last_hidden_state
    torch.testing.assert_close(out[1:, :3], alone, atol=1e-5, rtol=1e-5)


def test_shared_layers_are_refused_with_a_clear_error() -> None:
    config = AlbertConfig(
        embedding_size=8,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        **COMMON,
    )
    with pytest.raises(ValueError, match="shares"):
        DeepPromptModel(AlbertModel(config), DeepPromptConfig(num_virtual_tokens=2))
