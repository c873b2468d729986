"""Packaged run configs (YAML), so ``ptv2 demo`` works from an installed package."""

from pathlib import Path

RECIPES_DIR = Path(__file__).parent


def recipe_path(name: str) -> Path:
    path = RECIPES_DIR / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"no packaged recipe {name!r}; known: {known}")
    return path
