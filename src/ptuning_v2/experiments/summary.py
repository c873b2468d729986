"""Many comparisons side by side: ``ptv2 compare-summary DIR`` reads every ``DIR/<data set>/comparison.json``
(one ``ptv2 compare`` per data set) and writes one table of each method's test metric on every set.

The method's claim is a difference (P-Tuning v2 against prompt tuning, P-Tuning v1 and full fine-tuning), so
the second table gives, per set, the reference method's test metric minus every other method's, in points,
with the standard error of that difference over the seeds: a gap smaller than its error is a tie.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ptuning_v2.config import ConfigError
from ptuning_v2.experiments.report import mean_spread
from ptuning_v2.utils.io import write_json_atomic, write_text_atomic


@dataclass
class Cell:
    """One method's test metric on one data set, over its finished seeds."""

    mean: float
    std: float | None
    seeds: int


@dataclass
class SetResult:
    data: str
    metric: str
    command: str
    cells: dict[str, Cell]
    """Method name -> its test metric (methods whose runs all failed are left out)."""


def finished_methods(result: dict[str, Any]) -> Iterator[tuple[dict[str, Any], Cell]]:
    """Each method row of a ``comparison.json`` whose runs finished with a test metric, and that metric."""
    metric = result["metric"]
    for row in result["methods"]:
        mean = (row.get("test") or {}).get(metric)
        if row.get("status") != "ok" or mean is None:
            continue
        std = (row.get("test_std") or {}).get(metric)
        yield row, Cell(float(mean), None if std is None else float(std), row.get("finished_seeds", 1))


def read_comparison(path: Path) -> SetResult:
    """The test metrics of one ``comparison.json``."""
    try:
        result = json.loads(path.read_text())
        metric = result["metric"]
        cells = {row["method"]: cell for row, cell in finished_methods(result)}
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: not a ptv2 compare result ({type(exc).__name__}: {exc})") from None
    return SetResult(result.get("data") or path.parent.name, metric, result.get("command", ""), cells)


def summarise(root: Path) -> list[SetResult]:
    """Every comparison under ``root`` (``root/<data set>/comparison.json``), by folder name."""
    paths = sorted(root.glob("*/comparison.json"))
    if not paths:
        raise ConfigError(f"{root}: no comparison found (expected {root}/<data set>/comparison.json)")
    return [read_comparison(p) for p in paths]


def difference(a: Cell, b: Cell) -> tuple[float, float | None]:
    """``a - b`` in points and its standard error (None unless both have a spread over several seeds)."""
    diff = 100 * (a.mean - b.mean)
    if a.std is None or b.std is None or a.seeds < 2 or b.seeds < 2:
        return diff, None
    return diff, 100 * math.sqrt(a.std**2 / a.seeds + b.std**2 / b.seeds)


def _methods(sets: list[SetResult]) -> list[str]:
    names: list[str] = []
    for s in sets:
        names += [m for m in s.cells if m not in names]
    return names


def _cell(cell: Cell | None) -> str:
    return "-" if cell is None else mean_spread(cell.mean, cell.std)


def markdown(sets: list[SetResult], reference: str, command: str) -> str:
    methods = _methods(sets)
    header = " | ".join(f"{s.data} ({s.metric})" for s in sets)
    lines = [
        "# Comparisons side by side: test metric per data set",
        "",
        f"Command: `{command}`",
        "",
        "Each column is one `ptv2 compare` (its command below); mean ± sample standard deviation over its "
        "seeds, at the best dev checkpoint.",
        "",
        f"| method | {header} |",
        "|---|" + "---|" * len(sets),
    ]
    for m in methods:
        lines.append(f"| {m} | " + " | ".join(_cell(s.cells.get(m)) for s in sets) + " |")
    if any(reference in s.cells for s in sets):
        lines += [
            "",
            f"{reference} minus each method, test points (± the standard error of the difference over seeds; "
            "a gap inside about two standard errors is a tie):",
            "",
            f"| {reference} minus | {' | '.join(s.data for s in sets)} |",
            "|---|" + "---|" * len(sets),
        ]
        for m in methods:
            if m == reference:
                continue
            cells = []
            for s in sets:
                if reference not in s.cells or m not in s.cells:
                    cells.append("-")
                    continue
                diff, error = difference(s.cells[reference], s.cells[m])
                cells.append(f"{diff:+.1f}" + ("" if error is None else f" ± {error:.1f}"))
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += ["", "Commands:", ""] + [f"- {s.data}: `{s.command}`" for s in sets]
    return "\n".join(lines) + "\n"


def write_summary(root: Path, output_dir: Path, reference: str, command: str) -> list[SetResult]:
    sets = summarise(root)
    payload: dict[str, Any] = {
        "command": command,
        "reference": reference,
        "sets": [asdict(s) for s in sets],
    }
    write_json_atomic(output_dir / "summary.json", payload)
    write_text_atomic(output_dir / "summary.md", markdown(sets, reference, command))
    return sets
