"""The three notebooks run top to bottom, headless, on a tiny budget (real model and data, CPU).

They stay in the default suite (about a minute on 2 cores) so that CI executes them. They run in
order, one kernel each, sharing one runs folder, so 03 reuses 02's checkpoints as it does for a
user. The committed files are read, never written: outputs stay out of git.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NAMES = ["01_setup.ipynb", "02_train.ipynb", "03_inference.ipynb"]
BUDGET = {"PTV2_NOTEBOOK_STEPS": "4", "PTV2_NOTEBOOK_EXAMPLES": "128"}
CELL_TIMEOUT_S = 600


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("notebook_runs")


@pytest.fixture(scope="module")
def jupyter_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``python3`` kernel spec running this interpreter: a user's own ``python3`` kernel (another
    Python, without this project) must not be the one that runs the notebooks."""
    root = tmp_path_factory.mktemp("jupyter")
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3",
        "language": "python",
    }
    (root / "kernels" / "python3").mkdir(parents=True)
    (root / "kernels" / "python3" / "kernel.json").write_text(json.dumps(spec), encoding="utf-8")
    return root


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebook_has_no_outputs(name: str) -> None:
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(notebook)
    stale = [
        index
        for index, cell in enumerate(notebook.cells)
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)
    ]
    assert not stale, f"{name}: cells {stale} carry outputs; clear them before committing"


def execute(name: str, runs: Path, jupyter: Path, monkeypatch: pytest.MonkeyPatch) -> nbformat.NotebookNode:
    """Run every cell (a cell error fails the test) with the notebooks folder as working directory."""
    for key, value in {**BUDGET, "PTV2_NOTEBOOK_RUNS": str(runs), "JUPYTER_PATH": str(jupyter)}.items():
        monkeypatch.setenv(key, value)  # the kernel inherits this process's environment
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    start = time.perf_counter()
    client.execute()
    print(f"{name}: {time.perf_counter() - start:.1f} s")
    return notebook


def text_output(notebook: nbformat.NotebookNode) -> str:
    return "\n".join(
        output.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    )


def image_outputs(notebook: nbformat.NotebookNode) -> int:
    return sum(
        "image/png" in output.get("data", {})
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    )


def test_01_setup_runs(runs_dir: Path, jupyter_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = text_output(execute("01_setup.ipynb", runs_dir, jupyter_path, monkeypatch))
    assert "92,160 parameters" in text  # 6 layers x 20 tokens x 768, as the README says
    assert "attention (7, 7) -> (7, 27)" in text  # 20 prompt keys in front of 7 tokens
    assert "changed: 6 tensors, all prompts: True" in text


def test_02_train_runs(runs_dir: Path, jupyter_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    notebook = execute("02_train.ipynb", runs_dir, jupyter_path, monkeypatch)
    for method in ("ptuning_v2", "linear_probe"):
        metrics = json.loads((runs_dir / "rotten_tomatoes" / method / "metrics.json").read_text())
        assert metrics["method"] == method and metrics["steps"] == int(BUDGET["PTV2_NOTEBOOK_STEPS"])
        assert metrics["train_examples"] == int(BUDGET["PTV2_NOTEBOOK_EXAMPLES"])
        assert 0.0 <= metrics["test"]["accuracy"] <= 1.0
    assert (runs_dir / "rotten_tomatoes" / "training_curves.png").stat().st_size > 10_000
    assert image_outputs(notebook) == 1


def test_03_inference_runs(runs_dir: Path, jupyter_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    notebook = execute("03_inference.ipynb", runs_dir, jupyter_path, monkeypatch)
    text = text_output(notebook)
    assert (runs_dir / "trec6" / "ptuning_v2" / "checkpoint").is_dir()
    assert "questions: labels ['ABBR', 'DESC', 'ENTY', 'HUM', 'LOC', 'NUM']" in text
    assert text.count("largest difference") == 5  # every mixed-batch row matched its task alone
    assert image_outputs(notebook) == 2  # this notebook's comparison and the one in results/compare
