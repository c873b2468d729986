"""Layering: metrics know nothing of training, and the config schema knows no method.

Checked on the source (every import statement, also those inside functions), since a lazy import
inside a function is still a dependency: ``tasks -> evaluation -> training -> tasks`` was one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import ptuning_v2

PACKAGE = Path(ptuning_v2.__file__).parent


def imported_modules(source: str, package: str) -> set[str]:
    """Every module (and imported name) the import statements of ``source``, a module of ``package``,
    name, as absolute dotted names."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(part for part in (base, node.module or "") if part)
            names.add(module)
            names |= {f"{module}.{alias.name}" for alias in node.names}
    return names


def imports_of(path: Path) -> set[str]:
    package = ".".join(("ptuning_v2", *path.relative_to(PACKAGE).parent.parts))
    return imported_modules(path.read_text(encoding="utf-8"), package)


def reaching(names: set[str], package: str) -> list[str]:
    return sorted(n for n in names if n == package or n.startswith(package + "."))


@pytest.mark.parametrize("path", sorted((PACKAGE / "evaluation").glob("*.py")), ids=lambda p: p.name)
def test_evaluation_modules_import_no_training_or_experiment_code(path: Path) -> None:
    names = imports_of(path)
    for package in ("ptuning_v2.training", "ptuning_v2.experiments", "ptuning_v2.tuning", "ptuning_v2.cli"):
        assert not reaching(names, package), f"{path.name} imports {reaching(names, package)}"


def test_the_config_schema_imports_no_method() -> None:
    assert not reaching(imports_of(PACKAGE / "config.py"), "ptuning_v2.methods")


def test_the_check_sees_imports_inside_functions_and_relative_ones() -> None:
    source = (
        "def f():\n    from ptuning_v2.training.recipe import train_run\n"
        "from ..training import trainer\nfrom . import runner\nimport ptuning_v2.experiments.runner\n"
    )
    names = imported_modules(source, "ptuning_v2.evaluation")
    assert reaching(names, "ptuning_v2.training") == [
        "ptuning_v2.training",
        "ptuning_v2.training.recipe",
        "ptuning_v2.training.recipe.train_run",
        "ptuning_v2.training.trainer",
    ]
    assert reaching(names, "ptuning_v2.experiments") == ["ptuning_v2.experiments.runner"]
    assert "ptuning_v2.evaluation.runner" in names
