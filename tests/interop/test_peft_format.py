"""PEFT prefix-tuning interop on small random decoder-only models: PEFT loading our export gives our
logits, and a prefix trained with PEFT gives PEFT's logits once imported into ours."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel, PrefixTuningConfig, get_peft_model
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from ptuning_v2.checkpoint import CheckpointError
from ptuning_v2.cli.main import main
from ptuning_v2.config import DeepPromptConfig, RunConfig
from ptuning_v2.interop.peft_format import export_peft, load_peft_into, read_peft
from ptuning_v2.prompts.model import DeepPromptModel
from ptuning_v2.trained.model import load_trained
from ptuning_v2.training.recipe import train_run

VOCAB = 64


def tiny_llama() -> LlamaForCausalLM:
    """Grouped-query attention: 4 query heads, 2 key/value heads of dim 8."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, max_position_embeddings=128, pad_token_id=0,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval()


def tiny_gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=3, n_head=4, n_positions=128, pad_token_id=0)
    return GPT2LMHeadModel(config).eval()


MAKERS = {"llama": tiny_llama, "gpt2": tiny_gpt2}


def inputs() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    ids = torch.randint(1, VOCAB, (2, 7))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def ours(name: str, **options) -> DeepPromptModel:
    config = DeepPromptConfig(
        **{"num_virtual_tokens": 5, "init_std": 1.0, "position_offset": "prefix", **options}
    )
    return DeepPromptModel(MAKERS[name](), config).eval()


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_peft_loading_our_export_gives_our_logits(name: str, tmp_path: Path) -> None:
    model = ours(name)
    export_peft(model, tmp_path, "tiny")
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    kv_heads = 2 if name == "llama" else 4
    assert (config["num_layers"], config["num_attention_heads"], config["token_dim"]) == (
        3,
        kv_heads,
        kv_heads * 8,
    )
    # the same config PEFT itself writes for this backbone
    native = get_peft_model(MAKERS[name](), PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5))
    native.save_pretrained(tmp_path / "native")
    expected = json.loads((tmp_path / "native" / "adapter_config.json").read_text())
    assert {**config, "base_model_name_or_path": None} == expected
    peft = PeftModel.from_pretrained(MAKERS[name](), tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(peft(**inputs()).logits, model(**inputs()).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_a_peft_trained_prefix_imported_into_ours_gives_peft_logits(name: str, tmp_path: Path) -> None:
    peft = get_peft_model(MAKERS[name](), PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5))
    optimizer = torch.optim.Adam([p for p in peft.parameters() if p.requires_grad], lr=0.1)
    batch = inputs()
    for _ in range(3):  # a few real PEFT training steps, so the prefix is PEFT's own
        loss = peft(**batch, labels=batch["input_ids"]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    peft.save_pretrained(tmp_path)
    model = ours(name)
    load_peft_into(model, tmp_path)
    peft.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, peft(**batch).logits, atol=1e-5, rtol=1e-5)
        # and our default positions (real tokens at 0..n-1) are a different model, as documented
        unshifted = ours(name, position_offset="none")
        load_peft_into(unshifted, tmp_path)
        assert (unshifted(**batch).logits - peft(**batch).logits).abs().max() > 1e-4


def test_export_refuses_what_peft_cannot_hold(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="position_offset"):
        export_peft(ours("llama", position_offset="none"), tmp_path, "tiny")
    export_peft(ours("llama", position_offset="none"), tmp_path, "tiny", allow_position_mismatch=True)
    with pytest.raises(CheckpointError, match="one prompt length"):
        export_peft(ours("llama", layer_lengths=[2, 3, 4]), tmp_path, "tiny")
    with pytest.raises(CheckpointError, match="every layer"):
        export_peft(ours("llama", layers=[0, 1]), tmp_path, "tiny")


def test_import_checks_the_adapter_against_the_backbone(tmp_path: Path) -> None:
    export_peft(ours("llama"), tmp_path, "tiny")
    with pytest.raises(CheckpointError, match="num_attention_heads is 2.*needs 4"):
        load_peft_into(ours("gpt2"), tmp_path)
    with pytest.raises(CheckpointError, match="num_virtual_tokens is 5.*needs 3"):
        load_peft_into(ours("llama", num_virtual_tokens=3), tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    (tmp_path / "adapter_config.json").write_text(json.dumps({**config, "peft_type": "LORA"}))
    with pytest.raises(CheckpointError, match="peft_type"):
        read_peft(tmp_path)
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    weights = tmp_path / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:40])  # cut short: our error, not safetensors' traceback
    with pytest.raises(CheckpointError, match="adapter_model.safetensors: damaged"):
        read_peft(tmp_path)


def test_cli_export_and_import_round_trip(tiny_llama_dir: Path, tmp_path: Path) -> None:
    rows = [json.dumps({"source": "the movie was good", "target": "great movie"})] * 8
    (tmp_path / "train.jsonl").write_text("\n".join(rows) + "\n")
    run = RunConfig.from_dict(
        {
            "model": str(tiny_llama_dir),
            "task": "causal_lm",
            "data": {"train": str(tmp_path / "train.jsonl")},
            "prompt": {"num_virtual_tokens": 3, "position_offset": "prefix"},
            "train": {"max_steps": 2, "batch_size": 4},
            "task_options": {"max_new_tokens": 2},
        }
    )
    train_run(run, tmp_path / "run", show_progress=False)
    checkpoint = tmp_path / "run" / "checkpoint"
    assert main(["export-peft", str(checkpoint), str(tmp_path / "peft")]) == 0
    assert (
        main(["import-peft", str(tmp_path / "peft"), str(tmp_path / "back"), "--model", str(tiny_llama_dir)])
        == 0
    )
    _, original = load_trained(checkpoint, device="cpu")
    _, imported = load_trained(tmp_path / "back", device="cpu")
    batch = {"input_ids": torch.tensor([[5, 6, 7, 8]]), "attention_mask": torch.ones(1, 4, dtype=torch.long)}
    with torch.no_grad():
        torch.testing.assert_close(imported.encoder(**batch).logits, original.encoder(**batch).logits)
    # a prompt trained with positions 0..n-1 is refused unless the mismatch is accepted
    run.prompt.position_offset = "none"
    train_run(run, tmp_path / "none", show_progress=False)
    assert main(["export-peft", str(tmp_path / "none" / "checkpoint"), str(tmp_path / "x")]) == 2


@pytest.mark.xfail(
    strict=True,
    reason="peft 0.21.2 + transformers 5.24: PEFT hands the prefix to generate() as past_key_values, "
    "which the model drops in favour of generate()'s own (empty) cache",
)
def test_peft_generate_applies_the_prefix(tmp_path: Path) -> None:
    """Documents why PEFT comparisons go through forward: PEFT's own generate() ignores the prefix."""
    export_peft(ours("llama"), tmp_path, "tiny")
    peft = PeftModel.from_pretrained(tiny_llama(), tmp_path).eval()
    out = peft.generate(**inputs(), max_new_tokens=1, return_dict_in_generate=True, output_logits=True)
    with torch.no_grad():
        plain = tiny_llama()(**inputs()).logits[:, -1]
    assert (out.logits[0] - plain).abs().max() > 1e-3
