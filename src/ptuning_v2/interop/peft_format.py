"""Decoder-only P-Tuning v2 prompts <-> PEFT prefix-tuning adapters (``PREFIX_TUNING``).

PEFT stores a prefix as one matrix ``prompt_embeddings`` of shape ``[k, num_layers * 2 * token_dim]``:
for layer ``l`` the columns ``[2l * token_dim, (2l + 1) * token_dim)`` are the keys and the next
``token_dim`` the values, each laid out head by head (``[heads, head_dim]``). With grouped-query
attention PEFT sets ``num_attention_heads`` to the key/value heads and ``token_dim`` to
``kv_heads * head_dim``. Our per-layer prompt is ``[k, 2 * kv_heads * head_dim]`` (keys, then values,
head by head), so PEFT's matrix is our layers' matrices side by side.

Positions differ: PEFT hands the prefix to the model as a KV cache, so the real tokens sit at
positions ``k .. k + n - 1``; our default keeps them at ``0 .. n - 1``. Prompts trained with
``prompt.position_offset: prefix`` use PEFT's positions and give the same logits under PEFT;
export refuses other prompts unless told to ignore the difference.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ptuning_v2.checkpoint import CheckpointError, read_tensors, save_checkpoint, save_tensors
from ptuning_v2.config import DeepPromptConfig, RunConfig
from ptuning_v2.prompts.model import DeepPromptModel
from ptuning_v2.utils.io import write_json_atomic

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
WEIGHT_NAME = "prompt_embeddings"


def prefix_layout(model: DeepPromptModel) -> dict[str, int]:
    """``num_layers``, ``num_virtual_tokens``, ``kv_heads`` and ``head_dim`` of a PEFT-shaped prompt."""
    if model.prompt_config.mode != "prefix" or not model.decoder_only:
        raise CheckpointError(
            "PEFT's prefix-tuning format holds prefix prompts of decoder-only language models"
        )
    slots = model.injector.slots
    lengths = {name: n for name, (n, _) in model.prompt.shapes.items()}
    if not slots or any(slot.name not in lengths for slot in slots):
        raise CheckpointError("PEFT's format needs a prompt in every layer (prompt.layers must be unset)")
    if len(set(lengths.values())) != 1:
        raise CheckpointError(
            f"PEFT's format needs one prompt length for all layers, got {sorted(set(lengths.values()))}"
        )
    if len({(s.num_kv_heads, s.head_dim) for s in slots}) != 1:
        raise CheckpointError("PEFT's format needs the same key/value shape in every layer")
    return {
        "num_layers": len(slots),
        "num_virtual_tokens": next(iter(lengths.values())),
        "kv_heads": slots[0].num_kv_heads,
        "head_dim": slots[0].head_dim,
    }


def export_peft(
    model: DeepPromptModel, out_dir: str | Path, base_model: str, allow_position_mismatch: bool = False
) -> Path:
    """Write ``adapter_config.json`` + ``adapter_model.safetensors`` that PEFT loads as prefix tuning."""
    from peft import PrefixTuningConfig

    layout = prefix_layout(model)
    if model.prompt_config.position_offset != "prefix" and not allow_position_mismatch:
        raise CheckpointError(
            "this prompt was trained with prompt.position_offset 'none' (real tokens at positions 0..n-1), but "
            "PEFT places them after the prefix; under PEFT its logits would differ. Train with "
            "prompt.position_offset=prefix for an exact export, or allow the mismatch"
        )
    token_dim = layout["kv_heads"] * layout["head_dim"]
    config = PrefixTuningConfig(
        task_type="CAUSAL_LM",
        num_virtual_tokens=layout["num_virtual_tokens"],
        token_dim=token_dim,
        num_layers=layout["num_layers"],
        num_attention_heads=layout["kv_heads"],
        num_transformer_submodules=1,
        encoder_hidden_size=token_dim,
        prefix_projection=False,
        inference_mode=True,
        base_model_name_or_path=base_model,
    )
    prompts = model.prompt.raw()
    weight = torch.cat([prompts[slot.name].detach() for slot in model.injector.slots], dim=1)
    out_dir = Path(out_dir)
    save_tensors(out_dir / ADAPTER_WEIGHTS, {WEIGHT_NAME: weight}, {"format": "pt"})
    write_json_atomic(out_dir / ADAPTER_CONFIG, config.to_dict())
    return out_dir


def read_peft(adapter_dir: str | Path) -> tuple[dict[str, Any], torch.Tensor]:
    """A PEFT prefix-tuning adapter's config and its ``[k, num_layers * 2 * token_dim]`` prefix."""
    adapter_dir = Path(adapter_dir)
    config_path, weights_path = adapter_dir / ADAPTER_CONFIG, adapter_dir / ADAPTER_WEIGHTS
    for path in (config_path, weights_path):
        if not path.is_file():
            raise CheckpointError(f"{adapter_dir}: not a PEFT adapter folder (no {path.name})")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{config_path}: invalid JSON: {exc}") from exc
    expected = {"peft_type": "PREFIX_TUNING", "num_transformer_submodules": 1}
    for key, value in expected.items():
        if config.get(key) != value:
            raise CheckpointError(f"{config_path}: {key} is {config.get(key)!r}; expected {value!r}")
    tensors = read_tensors(weights_path)
    if WEIGHT_NAME not in tensors:
        raise CheckpointError(f"{weights_path}: no tensor {WEIGHT_NAME!r} (has {sorted(tensors)})")
    weight = tensors[WEIGHT_NAME]
    shape = (config["num_virtual_tokens"], config["num_layers"] * 2 * config["token_dim"])
    if tuple(weight.shape) != shape:
        raise CheckpointError(
            f"{weights_path}: {WEIGHT_NAME} has shape {tuple(weight.shape)}; its config implies {shape}"
        )
    return config, weight


def load_peft_into(model: DeepPromptModel, adapter_dir: str | Path) -> None:
    """Copy a PEFT prefix into ``model``'s prompts; the adapter must fit the backbone exactly."""
    config, weight = read_peft(adapter_dir)
    layout = prefix_layout(model)
    fits = {
        "num_layers": layout["num_layers"],
        "num_virtual_tokens": layout["num_virtual_tokens"],
        "num_attention_heads": layout["kv_heads"],
        "token_dim": layout["kv_heads"] * layout["head_dim"],
    }
    for key, value in fits.items():
        if config[key] != value:
            raise CheckpointError(
                f"{Path(adapter_dir) / ADAPTER_CONFIG}: {key} is {config[key]}, but the backbone with this prompt "
                f"needs {value}"
            )
    width = 2 * fits["token_dim"]
    with torch.no_grad():
        for index, slot in enumerate(model.injector.slots):
            model.prompt.prompts[slot.name].copy_(weight[:, index * width : (index + 1) * width])


def export_checkpoint(
    checkpoint_dir: str | Path, out_dir: str | Path, allow_position_mismatch: bool = False
) -> Path:
    """A trained ptuning-v2 checkpoint (decoder-only, P-Tuning v2) as a PEFT adapter folder."""
    from ptuning_v2.trained.model import load_trained

    task, model = load_trained(checkpoint_dir, device="cpu")
    encoder = getattr(model, "encoder", None)
    if not isinstance(encoder, DeepPromptModel):
        raise CheckpointError(f"{checkpoint_dir}: method {task.config.method!r} has no deep prompt to export")
    return export_peft(encoder, out_dir, task.config.model, allow_position_mismatch)


def import_checkpoint(adapter_dir: str | Path, out_dir: str | Path, run: RunConfig) -> Path:
    """A PEFT prefix-tuning adapter as a ptuning-v2 checkpoint of ``run``'s causal_lm task (PEFT positions)."""
    from ptuning_v2.models import backbone_fingerprint, load_backbone, load_tokenizer
    from ptuning_v2.tasks import get_task
    from ptuning_v2.trained.model import build_model

    config, _ = read_peft(adapter_dir)
    task_cls = get_task(run.task)
    if task_cls.backbone_kind != "causal_lm" or run.method != "ptuning_v2":
        raise CheckpointError(
            f"PEFT prefixes import into method ptuning_v2 with a causal_lm task, not {run.task!r}"
        )
    run.prompt = DeepPromptConfig(
        num_virtual_tokens=config["num_virtual_tokens"], position_offset="prefix", init="zero"
    )
    tokenizer = load_tokenizer(run.model)
    backbone = load_backbone(run.model, task_cls.backbone_kind, options=run.model_options)
    fingerprint = backbone_fingerprint(backbone)
    task = task_cls(run, tokenizer)
    model = build_model(run, task, backbone, tokenizer)
    load_peft_into(model.encoder, adapter_dir)
    save_checkpoint(
        out_dir,
        model,
        run_config=run.to_dict(),
        task_state=task.state(),
        backbone_fingerprint=fingerprint,
        extra={"imported_from": str(adapter_dir)},
    )
    return Path(out_dir)
