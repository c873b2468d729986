"""README.md and docs/README.md stay true: every command they show names a sub-command, config, script or
module that exists, and every link leads to a file in the repository."""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path

import pytest

from ptuning_v2.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "docs" / "README.md"]
REPO_PATH = re.compile(r"^(?:configs|src|benchmarks|notebooks|tests|docs)/[\w./-]+$")


def fenced_commands(page: Path) -> list[list[str]]:
    """Every shell command in the page's ```bash blocks, split into words (comments dropped)."""
    blocks = re.findall(r"```bash\n(.*?)```", page.read_text(encoding="utf-8"), flags=re.S)
    text = "\n".join(blocks).replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        for part in re.split(r"&&|\|", line):
            words = shlex.split(part, comments=True)
            if words:
                commands.append(words)
    return commands


def sub_commands() -> set[str]:
    parser = build_parser()
    return set(next(a for a in parser._actions if a.dest == "command").choices)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_fenced_commands_name_what_exists(page: Path) -> None:
    known = sub_commands()
    for words in fenced_commands(page):
        if Path(words[0]).name == "ptv2":
            assert words[1] in known, f"{page.name}: `{' '.join(words)}`: no sub-command {words[1]!r}"
        for i, word in enumerate(words):
            if REPO_PATH.match(word):
                assert (ROOT / word).exists(), (
                    f"{page.name}: `{' '.join(words)}` names {word}, which is missing"
                )
            if word == "-m" and i + 1 < len(words) and words[i + 1] != "pytest":
                assert importlib.util.find_spec(words[i + 1]), f"{page.name}: no module {words[i + 1]}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_links_lead_to_files(page: Path) -> None:
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
        if "://" not in target:
            assert (page.parent / target).exists(), f"{page.name}: link to {target}, which is missing"


def test_readme_stays_a_landing_page() -> None:
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 200
