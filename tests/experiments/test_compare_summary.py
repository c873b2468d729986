"""``ptv2 compare-summary``: many comparisons read back into one table of metrics and differences."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from ptuning_v2.cli.main import main
from ptuning_v2.config import ConfigError
from ptuning_v2.experiments.summary import summarise

REPO = Path(__file__).resolve().parents[2]


def write_comparison(directory: Path, data: str, metric: str, rows: list[dict]) -> None:
    """A ``comparison.json`` with the fields ``ptv2 compare`` writes that the summary reads."""
    directory.mkdir(parents=True)
    payload = {"command": f"ptv2 compare {data}.yaml", "data": data, "metric": metric, "methods": rows}
    (directory / "comparison.json").write_text(json.dumps(payload))


def row(method: str, metric: str, mean: float, std: float | None, seeds: int, status: str = "ok") -> dict:
    return {
        "method": method,
        "status": status,
        "finished_seeds": seeds,
        "test": {metric: mean},
        "test_std": {} if std is None else {metric: std},
    }


def test_differences_and_their_standard_errors(tmp_path: Path) -> None:
    write_comparison(
        tmp_path / "a",
        "set_a",
        "accuracy",
        [
            row("ptuning_v2", "accuracy", 0.80, 0.02, 3),
            row("full", "accuracy", 0.75, 0.01, 3),
            row("lora", "accuracy", 0.90, None, 1),
            row("prompt_tuning", "accuracy", 0.99, 0.0, 3, status="failed"),
        ],
    )
    write_comparison(tmp_path / "b", "set_b", "f1", [row("full", "f1", 0.60, 0.03, 2)])

    assert main(["compare-summary", str(tmp_path), "--output-dir", str(tmp_path / "out")]) == 0

    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [s["data"] for s in summary["sets"]] == ["set_a", "set_b"]
    assert set(summary["sets"][0]["cells"]) == {"ptuning_v2", "full", "lora"}  # the failed row is left out
    text = (tmp_path / "out" / "summary.md").read_text()
    assert "| ptuning_v2 | 0.8000 ± 0.0200 | - |" in text
    assert "| full | 0.7500 ± 0.0100 | 0.6000 ± 0.0300 |" in text
    error = 100 * math.sqrt(0.02**2 / 3 + 0.01**2 / 3)  # 1.29 points
    assert f"| full | +5.0 ± {error:.1f} | - |" in text
    assert "| lora | -10.0 | - |" in text  # one seed: no spread, no error
    assert "`ptv2 compare set_b.yaml`" in text


def test_reads_a_committed_comparison() -> None:
    """The summary reads what ``ptv2 compare`` really writes, not only the fields of the test above."""
    sets = summarise(REPO / "results" / "compare" / "defaults")
    trec = next(s for s in sets if s.data == "trec6")
    stored = json.loads((REPO / "results/compare/defaults/trec6/comparison.json").read_text())
    ptv2 = next(r for r in stored["methods"] if r["method"] == "ptuning_v2")
    assert trec.cells["ptuning_v2"].mean == pytest.approx(ptv2["test"]["accuracy"])
    assert trec.cells["ptuning_v2"].seeds == 3


def test_bad_input_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no comparison found"):
        summarise(tmp_path)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "comparison.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"broken/comparison.json: not a ptv2 compare result"):
        summarise(tmp_path)
    shutil.rmtree(tmp_path / "broken")
    write_comparison(tmp_path / "c", "c", "accuracy", [{"method": "full"}])
    assert summarise(tmp_path)[0].cells == {}  # no test metric: nothing to report, no traceback
