"""Resumable training states: everything exact resume needs, crash-safe on disk.

One state is one folder, OUTPUT_DIR/states/step-NNNNNNNNN/ (state.safetensors + state.json), written
under a temporary name and renamed into place: a process killed mid-write leaves only a temporary
folder, which is never read and is removed on the next start. The trained checkpoint users keep is
another thing (``ptuning_v2.checkpoint``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ptuning_v2.checkpoint import CheckpointError, read_tensors
from ptuning_v2.utils.io import DEFAULT_FILE_MODE

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
    os.chmod(tmp / STATE_TENSORS, DEFAULT_FILE_MODE)  # safetensors leaves 0600, unlike every other file
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


def damaged_state(directory: str | Path, exc: Exception) -> CheckpointError:
    """The error for a state folder that cannot be read, saying which older state a resume could use (a
    damaged state is not skipped silently: resuming from an older one repeats steps)."""
    directory = Path(directory)
    older = [path for _, path in complete_states(directory.parent) if path.name < directory.name]
    hint = (
        f"; to resume from the state before it, remove this folder (then {older[-1].name} is used)"
        if older
        else ""
    )
    return CheckpointError(f"{directory}: unreadable resumable state: {exc}{hint}")


def read_state_meta(directory: str | Path) -> dict[str, Any]:
    """The JSON half of one state folder (step, run config, counters)."""
    try:
        return json.loads((Path(directory) / STATE_META).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise damaged_state(directory, exc) from exc


def read_state(directory: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and JSON of one state folder."""
    meta = read_state_meta(directory)
    try:
        tensors = read_tensors(Path(directory) / STATE_TENSORS)
    except CheckpointError as exc:  # read_tensors' own for a missing or damaged file
        raise damaged_state(directory, exc) from exc
    return tensors, meta
