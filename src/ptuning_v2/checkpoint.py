"""A trained checkpoint: the folder users keep, share, compress and serve. Never pickle.

``adapter.safetensors`` holds the trained tensors, ``ptv2_checkpoint.json`` everything else: the run
config, what the task learnt from train (its labels), and the backbone it was trained on (name and a
fingerprint of its pretrained weights), so loading it onto another backbone fails with a clear message
instead of silently producing garbage.

``TrainedCheckpoint.read`` reads the two files once; whatever loads a checkpoint (``load_trained``,
serving, prompt transfer, compression, PEFT export) takes that object rather than the folder. A
``ptv2 compress`` checkpoint stores each prompt layer ``P`` as PCA factors, ``P ~ A @ C + m``
(``NAME.pca_coefficients``, ``NAME.pca_components``, ``NAME.pca_mean``); reading expands them, so every
loader sees dense prompts.

This module knows tensors, JSON and the config schema only; the resumable training states are
training's (``training/states.py``).
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ptuning_v2.config import RunConfig
from ptuning_v2.utils.io import atomic_write, write_json_atomic

FORMAT_VERSION = 1
WEIGHTS_FILE = "adapter.safetensors"
CONFIG_FILE = "ptv2_checkpoint.json"
MEAN, COMPONENTS, COEFFICIENTS = "pca_mean", "pca_components", "pca_coefficients"


class CheckpointError(ValueError):
    """A checkpoint is missing, malformed, or does not fit the backbone it is loaded onto."""


@dataclass(frozen=True)
class TrainedCheckpoint:
    """A checkpoint folder as read, once: its JSON and its trained tensors (dense even when compressed)."""

    directory: Path
    meta: dict[str, Any]
    """``ptv2_checkpoint.json``: method, task, model, backbone_fingerprint, task_state, run_config, ..."""
    tensors: dict[str, torch.Tensor]
    """The trained tensors by parameter name; a compressed checkpoint's factors already expanded."""

    @classmethod
    def read(cls, directory: str | Path) -> TrainedCheckpoint:
        directory = Path(directory)
        meta = read_meta(directory)
        path = directory / WEIGHTS_FILE
        if not path.is_file():
            raise CheckpointError(f"{directory}: missing {WEIGHTS_FILE}")
        tensors = read_tensors(path)
        if "compression" in meta:
            tensors = expand_tensors(tensors, path)
        return cls(directory, meta, tensors)

    @property
    def run_config(self) -> dict[str, Any]:
        """The stored run config as a dict (``run()`` parses it)."""
        return self.meta["run_config"]

    def run(self) -> RunConfig:
        """The run config the checkpoint was trained with (a fresh copy: callers may change it)."""
        return RunConfig.from_dict(copy.deepcopy(self.run_config), source=str(self.directory))

    def check_fingerprint(self, fingerprint: str) -> None:
        """Refuse a backbone whose weights differ from the one the prompts were trained on."""
        if self.meta["backbone_fingerprint"] != fingerprint:
            raise CheckpointError(
                f"{self.directory}: this checkpoint was trained on backbone {self.meta['model']!r} "
                f"(fingerprint {self.meta['backbone_fingerprint'][:12]}), but the loaded backbone's weights "
                f"differ (fingerprint {fingerprint[:12]}); prompts only work on the exact backbone they "
                "were trained on"
            )

    def load_into(self, model: nn.Module) -> None:
        """Copy the stored tensors into ``model``; names and shapes must match exactly."""
        path = self.directory / WEIGHTS_FILE
        params = trainable_state(model)  # one walk: a served task's model holds the whole backbone
        missing = sorted(set(params) - set(self.tensors))
        unexpected = sorted(set(self.tensors) - set(params))
        if missing or unexpected:
            raise CheckpointError(
                f"{path}: tensors do not match the model (missing {missing}, unexpected {unexpected})"
            )
        with torch.no_grad():
            for name, tensor in self.tensors.items():
                if tuple(tensor.shape) != tuple(params[name].shape):
                    raise CheckpointError(
                        f"{path}: tensor {name} has shape {tuple(tensor.shape)}, the model expects "
                        f"{tuple(params[name].shape)}"
                    )
                params[name].copy_(tensor)


def as_checkpoint(checkpoint: str | Path | TrainedCheckpoint) -> TrainedCheckpoint:
    """``checkpoint`` itself, or the folder it names read."""
    return checkpoint if isinstance(checkpoint, TrainedCheckpoint) else TrainedCheckpoint.read(checkpoint)


def read_meta(directory: Path) -> dict[str, Any]:
    """``ptv2_checkpoint.json`` of a folder, checked: a JSON object of this format with the keys loaders use."""
    path = directory / CONFIG_FILE
    if not path.is_file():
        inner = directory / "checkpoint"
        hint = f"; a run folder: its checkpoint is {inner}" if (inner / CONFIG_FILE).is_file() else ""
        raise CheckpointError(f"{directory}: not a ptuning-v2 checkpoint (no {CONFIG_FILE}){hint}")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: invalid JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found {type(meta).__name__}")
    missing = [key for key in ("run_config", "task_state", "backbone_fingerprint") if key not in meta]
    if missing:
        raise CheckpointError(f"{path}: damaged, it has no {missing}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: format_version {meta.get('format_version')} is not {FORMAT_VERSION}")
    return meta


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors a checkpoint stores: every parameter that requires grad."""
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors, read now rather than mapped. Mapped tensors read the file later, when
    used: a file written in place after the read (the store's check that a read saw one version) would
    change them or, cut short, crash the process (SIGBUS); and each mapped tensor keeps some memory for
    good (safetensors 0.8), which adds up in a server that loads tasks all day."""
    try:
        return load_file(str(path), backend="pread")
    except (OSError, SafetensorError) as exc:
        raise CheckpointError(
            f"{path}: damaged (empty or cut short?), not a readable safetensors file: {exc}"
        ) from None


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
    """Write ``model``'s trained tensors and the JSON of a new checkpoint; return its size in bytes."""
    meta = {
        "format_version": FORMAT_VERSION,
        "method": run_config["method"],
        "task": run_config["task"],
        "model": run_config["model"],
        "backbone_fingerprint": backbone_fingerprint,
        "task_state": task_state,
        "run_config": run_config,
    }
    return write_checkpoint(directory, trainable_state(model), meta, **(extra or {}))


def write_checkpoint(
    directory: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any], **extra: Any
) -> int:
    """Write ``tensors`` and ``meta`` (with the tensors' shapes and count, the time, then ``extra``)
    as a checkpoint folder; tensors first, so a folder whose JSON is complete has its tensors.
    Returns the checkpoint's size in bytes."""
    directory = Path(directory)
    save_tensors(directory / WEIGHTS_FILE, tensors, {"format": "pt"})
    write_json_atomic(
        directory / CONFIG_FILE,
        {
            **meta,
            "tensors": {k: list(v.shape) for k, v in tensors.items()},
            "num_parameters": int(sum(v.numel() for v in tensors.values())),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **extra,
        },
    )
    return checkpoint_bytes(directory)


def checkpoint_bytes(directory: str | Path) -> int:
    directory = Path(directory)
    return sum(
        (directory / f).stat().st_size for f in (WEIGHTS_FILE, CONFIG_FILE) if (directory / f).exists()
    )


def reconstruct(coefficients: torch.Tensor, components: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """The dense ``[length, width]`` prompt of a layer's factors (in float64, then the factors' dtype)."""
    dense = coefficients.double() @ components.double() + mean.double()
    return dense.to(coefficients.dtype)


def expand_tensors(tensors: dict[str, torch.Tensor], where: str | Path) -> dict[str, torch.Tensor]:
    """Replace each layer's three PCA factors (``NAME.pca_*``) by the dense tensor ``NAME``."""
    out, factors = {}, {}
    for key, tensor in tensors.items():
        base, _, part = key.rpartition(".")
        if part in (MEAN, COMPONENTS, COEFFICIENTS):
            factors.setdefault(base, {})[part] = tensor
        else:
            out[key] = tensor
    for base, parts in factors.items():
        missing = sorted({MEAN, COMPONENTS, COEFFICIENTS} - set(parts))
        if missing:
            raise CheckpointError(f"{where}: compressed tensor {base} lacks {', '.join(missing)}")
        coefficients, components, mean = parts[COEFFICIENTS], parts[COMPONENTS], parts[MEAN]
        if not (
            coefficients.dim() == components.dim() == 2
            and mean.dim() == 1
            and coefficients.shape[1] == components.shape[0]
            and components.shape[1] == mean.shape[0]
        ):
            raise CheckpointError(
                f"{where}: compressed tensor {base} has inconsistent factor shapes (coefficients "
                f"{tuple(coefficients.shape)}, components {tuple(components.shape)}, mean {tuple(mean.shape)})"
            )
        out[base] = reconstruct(coefficients, components, mean)
    return out
