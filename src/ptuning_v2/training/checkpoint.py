"""Prompt-only checkpoints: trained tensors in safetensors, everything else in JSON. Never pickle.

A checkpoint records the backbone it was trained on (name and a fingerprint of its pretrained
weights), so loading it onto another backbone fails with a clear message instead of silently
producing garbage.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ptuning_v2.utils.io import atomic_write, write_json_atomic

FORMAT_VERSION = 1
WEIGHTS_FILE = "adapter.safetensors"
CONFIG_FILE = "ptv2_checkpoint.json"


class CheckpointError(ValueError):
    """A checkpoint is missing, malformed, or does not fit the backbone it is loaded onto."""


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors a checkpoint stores: every parameter that requires grad."""
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


def save_tensors(
    path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> None:
    contiguous = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(contiguous, str(tmp), metadata=metadata))


def save_checkpoint(
    directory: str | Path,
    model: nn.Module,
    *,
    run_config: dict[str, Any],
    task_state: dict[str, Any],
    backbone_fingerprint: str,
    extra: dict[str, Any] | None = None,
) -> int:
    """Write ``adapter.safetensors`` + ``ptv2_checkpoint.json``; return the checkpoint's size in bytes."""
    directory = Path(directory)
    tensors = trainable_state(model)
    save_tensors(directory / WEIGHTS_FILE, tensors, {"format": "pt"})
    meta = {
        "format_version": FORMAT_VERSION,
        "method": run_config["method"],
        "task": run_config["task"],
        "model": run_config["model"],
        "backbone_fingerprint": backbone_fingerprint,
        "task_state": task_state,
        "run_config": run_config,
        "tensors": {k: list(v.shape) for k, v in tensors.items()},
        "num_parameters": int(sum(v.numel() for v in tensors.values())),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **(extra or {}),
    }
    write_json_atomic(directory / CONFIG_FILE, meta)
    return checkpoint_bytes(directory)


def checkpoint_bytes(directory: str | Path) -> int:
    directory = Path(directory)
    return sum(
        (directory / f).stat().st_size for f in (WEIGHTS_FILE, CONFIG_FILE) if (directory / f).exists()
    )


def read_checkpoint_meta(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory}: not a ptuning-v2 checkpoint (no {CONFIG_FILE})")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: invalid JSON: {exc}") from exc
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: format_version {meta.get('format_version')} is not {FORMAT_VERSION}")
    return meta


def check_fingerprint(meta: dict[str, Any], fingerprint: str, where: str | Path) -> None:
    if meta["backbone_fingerprint"] != fingerprint:
        raise CheckpointError(
            f"{where}: this checkpoint was trained on backbone {meta['model']!r} "
            f"(fingerprint {meta['backbone_fingerprint'][:12]}), but the loaded backbone's weights differ "
            f"(fingerprint {fingerprint[:12]}); prompts only work on the exact backbone they were trained on"
        )


def load_trained_tensors(directory: str | Path, model: nn.Module) -> None:
    """Copy the stored tensors into ``model``; names and shapes must match exactly."""
    path = Path(directory) / WEIGHTS_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory}: missing {WEIGHTS_FILE}")
    stored = load_file(str(path))
    expected = trainable_state(model)
    missing, unexpected = sorted(set(expected) - set(stored)), sorted(set(stored) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: tensors do not match the model (missing {missing}, unexpected {unexpected})"
        )
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in stored.items():
            if tuple(tensor.shape) != tuple(params[name].shape):
                raise CheckpointError(
                    f"{path}: tensor {name} has shape {tuple(tensor.shape)}, the model expects "
                    f"{tuple(params[name].shape)}"
                )
            params[name].copy_(tensor)
