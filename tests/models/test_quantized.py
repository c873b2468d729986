"""Quantised backbones (bitsandbytes 8-bit / 4-bit) with full-precision prompts.

bitsandbytes >= 0.49 has a CPU backend, so the real path runs here; tests marked ``gpu`` repeat it on
CUDA (benchmarks/gpu_check.sh runs them). The CPU 4-bit kernels need every linear layer at least 64 wide.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from ptuning_v2.checkpoint import CheckpointError
from ptuning_v2.config import ConfigError, DeepPromptConfig, RunConfig
from ptuning_v2.models import ModelLoadError, backbone_fingerprint, load_backbone
from ptuning_v2.prompts.model import DeepPromptModel
from ptuning_v2.trained.model import load_trained
from ptuning_v2.training.recipe import train_run

EIGHT_BIT = {"load_in_8bit": True}
FOUR_BIT = {"load_in_4bit": True, "bnb_4bit_compute_dtype": "bf16", "bnb_4bit_quant_type": "nf4"}
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def llama128_dir(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer Llama 128 wide (64-wide key/value projections: bitsandbytes' CPU 4-bit minimum)."""
    directory = tmp_path_factory.mktemp("llama128")
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    config = LlamaConfig.from_pretrained(
        tiny_llama_dir,
        hidden_size=128,
        intermediate_size=256,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"load_in_3bit": True}, "model_options.load_in_3bit: unknown option"),
        ({"load_in_4bit": "yes"}, "model_options.load_in_4bit: expected bool"),
        ({"load_in_4bit": True, "bnb_4bit_compute_dtype": "int3"}, "model_options.bnb_4bit_compute_dtype"),
        ({"load_in_4bit": True, "bnb_4bit_quant_type": "nf5"}, "model_options.bnb_4bit_quant_type"),
        ({"load_in_8bit": True, "load_in_4bit": True}, "exactly one of load_in_8bit"),
        ({"bnb_4bit_quant_type": "nf4"}, "exactly one of load_in_8bit"),
        ({"load_in_8bit": True, "bnb_4bit_quant_type": "nf4"}, "apply to load_in_4bit"),
    ],
)
def test_bad_model_options_name_the_field(tiny_bert_dir: Path, options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_backbone(str(tiny_bert_dir), "encoder", options=options)


def test_quantisation_without_bitsandbytes_says_what_to_install(
    tiny_bert_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # what an environment without it imports
    with pytest.raises(ModelLoadError, match=r"needs bitsandbytes: pip install 'ptuning-v2\[quantization\]'"):
        load_backbone(str(tiny_bert_dir), "encoder", options=EIGHT_BIT)


def prompt_gradients(backbone: torch.nn.Module, device: str) -> dict[str, torch.Tensor]:
    """Gradients of a deterministic loss with respect to freshly initialised (seeded) prompts."""
    torch.manual_seed(1)
    model = DeepPromptModel(backbone, DeepPromptConfig(num_virtual_tokens=4)).to(device)
    ids = torch.tensor([[5, 17, 30, 42, 8, 9], [6, 21, 33, 11, 0, 0]], device=device)
    mask = (ids != 0).long()
    hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
    (hidden.float() * mask[..., None]).pow(2).mean().backward()
    grads = {name: p.grad for name, p in model.prompt.named_parameters()}
    for name, p in model.prompt.named_parameters():
        assert p.dtype == torch.float32, f"{name} is {p.dtype}: prompts must stay in full precision"
    return grads


def cosine(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    x = torch.cat([a[k].flatten().float().cpu() for k in sorted(a)])
    y = torch.cat([b[k].flatten().float().cpu() for k in sorted(b)])
    return float(torch.nn.functional.cosine_similarity(x, y, dim=0))


def check_quantised_prompt_gradients(model_dir: Path, options: dict, device: str) -> None:
    import bitsandbytes as bnb

    quantised = load_backbone(str(model_dir), "encoder", options=options)
    linear = bnb.nn.Linear8bitLt if options.get("load_in_8bit") else bnb.nn.Linear4bit
    assert isinstance(quantised.layers[0].self_attn.q_proj, linear)
    grads = prompt_gradients(quantised, device)
    reference = prompt_gradients(load_backbone(str(model_dir), "encoder"), device)
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads.values())
    # The quantised backbone's gradients point where the full-precision one's do (measured: > 0.99).
    assert cosine(grads, reference) > 0.95


@pytest.mark.parametrize("options", [EIGHT_BIT, FOUR_BIT], ids=["8bit", "4bit"])
def test_prompts_train_through_a_quantised_backbone_on_cpu(llama128_dir: Path, options: dict) -> None:
    pytest.importorskip("bitsandbytes")
    check_quantised_prompt_gradients(llama128_dir, options, "cpu")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("options", [EIGHT_BIT, FOUR_BIT], ids=["8bit", "4bit"])
def test_prompts_train_through_a_quantised_backbone_on_cuda(llama128_dir: Path, options: dict) -> None:
    pytest.importorskip("bitsandbytes")
    check_quantised_prompt_gradients(llama128_dir, options, "cuda")


def test_quantised_run_records_its_quantisation_and_checks_the_backbone(
    llama128_dir: Path, sentiment_csvs: dict[str, Path], tmp_path: Path
) -> None:
    pytest.importorskip("bitsandbytes")
    config = {
        "model": str(llama128_dir),
        "model_options": FOUR_BIT,
        "data": {
            **{k: str(v) for k, v in sentiment_csvs.items()},
            "columns": {"text": "review", "label": "sentiment"},
        },
        "prompt": {"num_virtual_tokens": 4},
        "train": {"max_steps": 2, "batch_size": 8, "eval_every": 2},
    }
    train_run(RunConfig.from_dict(config), tmp_path / "run", show_progress=False)
    checkpoint = tmp_path / "run" / "checkpoint"
    meta = json.loads((checkpoint / "ptv2_checkpoint.json").read_text())
    assert meta["run_config"]["model_options"] == FOUR_BIT

    # Reloaded with the recorded quantisation: the same weights bit for bit, so the fingerprint matches.
    again = load_backbone(str(llama128_dir), "encoder", options=FOUR_BIT)
    assert backbone_fingerprint(again) == meta["backbone_fingerprint"]
    _, model = load_trained(checkpoint, device="cpu")
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)

    # The same checkpoint on the full-precision backbone is another model: refused.
    plain = RunConfig.from_dict({**config, "model_options": {}})
    with pytest.raises(CheckpointError, match="weights differ"):
        load_trained(checkpoint, device="cpu", run=plain)
