"""Prompt-only checkpoints: trained tensors in safetensors, everything else in JSON. Never pickle.

A checkpoint records the backbone it was trained on (name and a fingerprint of its pretrained
weights), so loading it onto another backbone fails with a clear message instead of silently
producing garbage.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
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


def check_fingerprint(meta: dict[str, Any], fingerprint: str, where: str | Path) -> None:
    if meta["backbone_fingerprint"] != fingerprint:
        raise CheckpointError(
            f"{where}: this checkpoint was trained on backbone {meta['model']!r} "
            f"(fingerprint {meta['backbone_fingerprint'][:12]}), but the loaded backbone's weights differ "
            f"(fingerprint {fingerprint[:12]}); prompts only work on the exact backbone they were trained on"
        )


def read_trained_tensors(directory: str | Path) -> dict[str, torch.Tensor]:
    """The trained tensors of a checkpoint folder, by parameter name."""
    path = Path(directory) / WEIGHTS_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory}: missing {WEIGHTS_FILE}")
    try:
        tensors = load_file(str(path))
    except (OSError, SafetensorError) as exc:
        raise CheckpointError(
            f"{path}: damaged (empty or cut short?), not a readable safetensors file: {exc}"
        ) from None
    if (Path(directory) / CONFIG_FILE).is_file() and "compression" in read_checkpoint_meta(directory):
        # a `ptv2 compress` checkpoint: its prompts come back dense, so every loader reads it as is
        from ptuning_v2.prompts.compression import expand_tensors  # that module imports this one

        tensors = expand_tensors(tensors, path)
    return tensors


def load_trained_tensors(directory: str | Path, model: nn.Module) -> None:
    """Copy the stored tensors into ``model``; names and shapes must match exactly."""
    path = Path(directory) / WEIGHTS_FILE
    stored = read_trained_tensors(directory)
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


# ---- resumable training states ---------------------------------------------------------------------
# One state is one folder, OUTPUT_DIR/states/step-NNNNNNNNN/ (state.safetensors + state.json), written
# under a temporary name and renamed into place: a process killed mid-write leaves only a temporary
# folder, which is never read and is removed on the next start.

STATES_DIR = "states"
STATE_TENSORS = "state.safetensors"
STATE_META = "state.json"
_STATE_NAME = re.compile(r"step-(\d{9})")
_TEMP_PREFIX = ".tmp-"


def crash_point(name: str, step: int, before: Callable[[], Any] | None = None) -> None:
    """Test hook: ``PTV2_CRASH_AT=name:step`` SIGKILLs this process here (after ``before()``, e.g. half
    a log line), so tests kill a real run at exact moments, such as between the files of a state."""
    if os.environ.get("PTV2_CRASH_AT") == f"{name}:{step}":
        if before is not None:
            before()
        os.kill(os.getpid(), signal.SIGKILL)


def _fsync(path: Path) -> None:
    """Flush a file or folder entry to disk, so a renamed state survives a power cut, not only a kill."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def complete_states(root: str | Path) -> list[tuple[int, Path]]:
    """The complete states under ``root`` (only renamed-in folders count), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for entry in root.iterdir():
        match = _STATE_NAME.fullmatch(entry.name)
        if match and entry.is_dir():
            found.append((int(match.group(1)), entry))
    return sorted(found)


def clean_partial_states(root: str | Path) -> list[Path]:
    """Remove what a killed writer left behind (temporary folders); return what was removed."""
    root = Path(root)
    removed = [entry for entry in root.glob(f"{_TEMP_PREFIX}*")] if root.is_dir() else []
    for entry in removed:
        shutil.rmtree(entry, ignore_errors=True)
    return removed


def write_state(
    root: str | Path, step: int, tensors: dict[str, torch.Tensor], meta: dict[str, Any], keep: int
) -> Path:
    """Write the state of ``step`` as one folder renamed into place; keep the ``keep`` newest states."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:09d}"
    tmp = root / f"{_TEMP_PREFIX}{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)  # left by a killed process that had the same id
    tmp.mkdir()
    contiguous = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    save_file(contiguous, str(tmp / STATE_TENSORS))
    _fsync(tmp / STATE_TENSORS)
    crash_point("state_write", step)
    (tmp / STATE_META).write_text(json.dumps({"step": step, **meta}, indent=1) + "\n", encoding="utf-8")
    _fsync(tmp / STATE_META)
    _fsync(tmp)
    if final.exists():  # the same step saved again: move the old one aside first (rename is atomic)
        final.rename(root / f"{_TEMP_PREFIX}old-{final.name}-{os.getpid()}")
    tmp.rename(final)
    _fsync(root)
    crash_point("state_renamed", step)
    for _, old in complete_states(root)[: -max(keep, 1)]:
        aside = root / f"{_TEMP_PREFIX}old-{old.name}-{os.getpid()}"
        old.rename(aside)  # out of the complete set in one step, then deleted at leisure
        shutil.rmtree(aside, ignore_errors=True)
    clean_partial_states(root)
    return final


def read_state_meta(directory: str | Path) -> dict[str, Any]:
    """The JSON half of one state folder (step, run config, counters)."""
    try:
        return json.loads((Path(directory) / STATE_META).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{directory}: unreadable resumable state: {exc}") from exc


def read_state(directory: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and JSON of one state folder."""
    meta = read_state_meta(directory)
    try:
        tensors = load_file(str(Path(directory) / STATE_TENSORS))
    except (OSError, ValueError, SafetensorError) as exc:
        raise CheckpointError(f"{directory}: unreadable resumable state: {exc}") from exc
    return tensors, meta
