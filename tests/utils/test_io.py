"""Atomic writes: all or nothing, no stray temporary files, the same permissions as a plain write."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from ptuning_v2.utils.io import atomic_write, write_json_atomic


def test_json_is_written_with_the_mode_a_plain_open_gives(tmp_path: Path) -> None:
    path = write_json_atomic(tmp_path / "sub" / "metrics.json", {"f1": 0.5, "path": Path("x")})
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    umask = os.umask(0)
    os.umask(umask)
    assert json.loads(path.read_text()) == {"f1": 0.5, "path": "x"}
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode) == 0o666 & ~umask


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = write_json_atomic(tmp_path / "state.json", {"step": 1})

    def crash(tmp: Path) -> None:
        tmp.write_text('{"step": 2, "trunc')
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, crash)
    assert json.loads(path.read_text()) == {"step": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]
