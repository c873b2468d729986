"""Backbone loading: tiny random configs for the fast tests, the real offline aliases for the slow ones."""

from __future__ import annotations

import time
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    BertConfig,
    BertModel,
    Gemma2Config,
    Gemma2ForCausalLM,
    PreTrainedTokenizerFast,
)

from ptuning_v2.models import (
    MODEL_ALIASES,
    ModelLoadError,
    backbone_fingerprint,
    convert_gguf,
    load_backbone,
    load_tokenizer,
    resolve_model,
)


def _tiny_bert_dir(tmp_path: Path, add_pooling_layer: bool = True) -> Path:
    torch.manual_seed(0)
    config = BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, vocab_size=99
    )
    path = tmp_path / "tiny-bert"
    BertModel(config, add_pooling_layer=add_pooling_layer).save_pretrained(path)
    return path


def test_tiny_bert_round_trip_keeps_weights_and_uses_sdpa(tmp_path: Path) -> None:
    path = _tiny_bert_dir(tmp_path)
    model = load_backbone(str(path), "encoder")
    assert isinstance(model, BertModel)
    assert model.pooler is not None
    assert model.config._attn_implementation == "sdpa"
    assert not model.training
    reference = BertModel.from_pretrained(path)
    torch.testing.assert_close(model.state_dict(), reference.state_dict())


def test_fingerprint_stable_across_reloads_and_sensitive_to_one_weight(tmp_path: Path) -> None:
    path = _tiny_bert_dir(tmp_path)
    first = backbone_fingerprint(load_backbone(str(path), "encoder"))
    model = load_backbone(str(path), "encoder")
    assert backbone_fingerprint(model) == first
    assert len(first) == 64
    with torch.no_grad():
        model.encoder.layer[1].attention.self.query.weight[3, 5] += 1e-3
    assert backbone_fingerprint(model) != first


def test_fingerprint_depends_on_dtype(tmp_path: Path) -> None:
    path = _tiny_bert_dir(tmp_path)
    fp32 = backbone_fingerprint(load_backbone(str(path), "encoder"))
    bf16 = load_backbone(str(path), "encoder", dtype=torch.bfloat16)
    assert bf16.dtype == torch.bfloat16
    assert backbone_fingerprint(bf16) != fp32


def test_pooler_missing_from_checkpoint_is_dropped_not_randomised(tmp_path: Path) -> None:
    path = _tiny_bert_dir(tmp_path, add_pooling_layer=False)
    first = load_backbone(str(path), "encoder")
    second = load_backbone(str(path), "encoder")
    assert first.pooler is None
    assert backbone_fingerprint(first) == backbone_fingerprint(second)
    out = first(input_ids=torch.tensor([[1, 2, 3]]))
    assert out.last_hidden_state.shape == (1, 3, 32)


def test_eager_fallback_when_sdpa_unsupported(tmp_path: Path) -> None:
    config = Gemma2Config(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        vocab_size=99,
    )
    Gemma2ForCausalLM(config).save_pretrained(tmp_path / "gemma2")
    model = load_backbone(str(tmp_path / "gemma2"), "causal_lm")
    assert model.config._attn_implementation == "eager"


def test_wrong_kind_is_a_model_load_error(tmp_path: Path) -> None:
    path = _tiny_bert_dir(tmp_path)
    with pytest.raises(ModelLoadError, match="seq2seq backbone"):
        load_backbone(str(path), "seq2seq")


@pytest.mark.parametrize("path", ["./no-such-model", "/no/such/model", "some/nested/missing/dir"])
def test_missing_local_path_is_a_clear_error(path: str) -> None:
    with pytest.raises(ModelLoadError, match="does not exist") as info:
        resolve_model(path)
    assert path in str(info.value)


def test_hub_names_and_local_dirs_resolve_to_themselves(tmp_path: Path) -> None:
    assert resolve_model("bert-base-uncased") == "bert-base-uncased"
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert resolve_model(str(tmp_path)) == str(tmp_path)


def test_unreachable_hub_names_the_model_and_suggests_aliases(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError) as info:
        load_backbone("bert-base-uncased", "encoder")
    message = str(info.value)
    assert "'bert-base-uncased'" in message and "offline?" in message
    assert all(alias in message for alias in MODEL_ALIASES)


def test_load_tokenizer_pads_decoder_only_tokenizer_with_eos(tmp_path: Path) -> None:
    backend = Tokenizer(models.WordLevel({"<unk>": 0, "<eos>": 1, "hello": 2}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", unk_token="<unk>").save_pretrained(
        tmp_path
    )
    tokenizer = load_tokenizer(str(tmp_path))
    assert tokenizer.pad_token == "<eos>"
    batch = tokenizer(["hello", "hello hello"], padding=True)
    assert batch["input_ids"][0] == [2, 1]


def assert_real_sentence_embeddings(
    model: torch.nn.Module, tokenizer
) -> tuple[list[str], dict, torch.Tensor]:
    """Mean-pooled embeddings put a paraphrase close and an unrelated sentence far: real pretrained weights.
    Returns the sentences, their batch and the model's hidden states on it."""
    sentences = ["a cat sits on the mat", "a kitten is on the rug", "stock prices fell sharply"]
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    emb = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    similar, unrelated = float(emb[0] @ emb[1]), float(emb[0] @ emb[2])
    assert similar > 0.5 and unrelated < 0.2 and similar - unrelated > 0.4
    return sentences, batch, hidden


@pytest.mark.slow
def test_minilm_gives_real_sentence_embeddings() -> None:
    model = load_backbone("minilm", "encoder")
    tokenizer = load_tokenizer("minilm")
    assert model.pooler is not None
    assert sum(p.numel() for p in model.parameters()) == 22_713_216
    assert_real_sentence_embeddings(model, tokenizer)

    start = time.perf_counter()
    fingerprint = backbone_fingerprint(model)
    assert time.perf_counter() - start < 1.0
    assert fingerprint == backbone_fingerprint(load_backbone("minilm", "encoder"))


@pytest.mark.slow
def test_smollm2_converts_reloads_fast_and_completes_sensibly(tmp_path: Path) -> None:
    alias = MODEL_ALIASES["smollm2"]
    converted = Path(resolve_model("smollm2"))
    assert converted == alias.converted_dir and (converted / "model.safetensors").is_file()

    start = time.perf_counter()
    model = load_backbone("smollm2", "causal_lm")
    assert time.perf_counter() - start < 5.0
    tokenizer = load_tokenizer("smollm2")
    config = model.config
    assert (config.num_hidden_layers, config.hidden_size) == (30, 576)
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (9, 3, 64)
    assert model.dtype == torch.float32 and tokenizer.pad_token is not None

    batch = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=6, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, batch["input_ids"].shape[1] :])

    # A fresh conversion (into tmp, leaving the shared cache alone) yields the very same weights.
    fresh = convert_gguf(alias.fetch_files(), alias.gguf_file, tmp_path / "smollm2")
    assert [p.name for p in tmp_path.iterdir()] == ["smollm2"]
    assert backbone_fingerprint(load_backbone(str(fresh), "causal_lm")) == backbone_fingerprint(model)


@pytest.mark.slow
def test_mpnet_gives_real_sentence_embeddings_and_takes_deep_prompts() -> None:
    from ptuning_v2.config import DeepPromptConfig
    from ptuning_v2.prompts.model import DeepPromptModel

    model = load_backbone("mpnet", "encoder")
    tokenizer = load_tokenizer("mpnet")
    assert type(model).__name__ == "MPNetModel"
    assert sum(p.numel() for p in model.parameters()) == 109_486_464
    sentences, batch, hidden = assert_real_sentence_embeddings(model, tokenizer)

    prompted = DeepPromptModel(model, DeepPromptConfig(num_virtual_tokens=8, init_std=1.0))
    assert [(s.name, s.num_kv_heads, s.head_dim) for s in prompted.injector.slots][::11] == [
        ("self_0", 12, 64),
        ("self_11", 12, 64),
    ]
    out = prompted.train()(**batch).last_hidden_state
    (out.float() ** 2).mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in prompted.prompt.parameters())
    with torch.no_grad():
        prompted.eval()
        together = prompted(**batch).last_hidden_state
        length = int(batch["attention_mask"][2].sum())
        alone = prompted(**tokenizer(sentences[2:], return_tensors="pt")).last_hidden_state
        torch.testing.assert_close(together[2, :length], alone[0], atol=1e-4, rtol=1e-4)
        assert (together - hidden).abs().max() > 1e-2
        prompted.remove()
        assert torch.equal(model(**batch).last_hidden_state, hidden)
