"""Every notebook in notebooks/ runs top to bottom in a real Jupyter kernel (nbclient) at tiny
settings, and is stored without outputs.

The tiny settings replace the notebook's cell tagged ``parameters``: a cell with the overrides is
inserted after it (as papermill does). The kernel must be this interpreter (its environment has
the package installed): an inserted check fails otherwise.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
NB_DIR = REPO / "notebooks"
NOTEBOOKS = sorted(NB_DIR.glob("*.ipynb"))
RESULTS = REPO / "results"


def tiny_parameters(name: str, tmp_path: Path) -> dict:
    """The overrides of each notebook's parameter cell: small images, few steps, finished sweeps."""
    if name == "01_targets.ipynb":
        return {"NUM_IMAGES": 1, "IMAGE_SIZE": 256, "BETAS": [0.3, 0.54], "INTERACTIVE": False}
    if name == "02_experiments.ipynb":
        sweeps = [str(RESULTS / t) for t in ("table1-cpu", "table4-cpu") if (RESULTS / t / "table.csv").is_file()]
        runs = sorted(str(p.parent) for p in (RESULTS / "table1-cpu").glob("*seed=0/metrics.csv"))[:2]
        return {"SWEEPS": sweeps, "RUNS": runs, "BUILD_MISSING": False}
    if name == "03_inference.ipynb":
        return {"CKPT": None, "TRAIN_STEPS": 4, "TRAIN_SIZE": 64, "WORK_DIR": str(tmp_path / "work"), "NUM_IMAGES": 2}
    raise AssertionError(f"{name}: add its tiny parameters to tests/tools/test_notebooks.py")


def with_parameters(nb, overrides: dict):
    """A copy of ``nb`` with a cell setting ``overrides`` after its ``parameters`` cell, and a check
    that the kernel runs this interpreter's environment."""
    import copy

    import nbformat

    nb = copy.deepcopy(nb)
    at = next((i for i, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", [])), None)
    assert at is not None, "the notebook has no cell tagged 'parameters'"
    src = [f"{k} = {v!r}" for k, v in overrides.items()]
    src += [
        "import sys as _sys",
        f"assert _sys.prefix == {sys.prefix!r}, f'kernel runs {{_sys.executable}}, not the test environment'",
    ]
    cell = nbformat.v4.new_code_cell("\n".join(src))
    cell.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(at + 1, cell)
    return nb


def execute(path: Path, overrides: dict, *, timeout: int = 300):
    """Run the notebook (working directory: notebooks/) and return it with outputs; any cell error
    raises nbclient's CellExecutionError naming the cell and the traceback."""
    import nbformat
    from nbclient import NotebookClient

    nb = with_parameters(nbformat.read(path, as_version=4), overrides)
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(NB_DIR)}}).execute()
    return nb


def test_strip_removes_outputs(tmp_path):
    import nbformat

    from ttfnet_lightning.paper.workbench import strip_notebook

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1 + 1")])
    nb.cells[0].outputs = [nbformat.v4.new_output("execute_result", {"text/plain": "2"}, execution_count=1)]
    nb.cells[0].execution_count = 1
    path = tmp_path / "x.ipynb"
    nbformat.write(nb, path)
    assert strip_notebook(path) and not strip_notebook(path)
    cell = nbformat.read(path, as_version=4).cells[0]
    assert cell.outputs == [] and cell.execution_count is None and cell.source == "1 + 1"


def test_there_are_the_three_notebooks():
    assert [p.name for p in NOTEBOOKS] == ["01_targets.ipynb", "02_experiments.ipynb", "03_inference.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stored_without_outputs(path):
    import nbformat

    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, (
                f"{path.name} cell {i} has outputs: python -m ttfnet_lightning.viz strip notebooks/*.ipynb before "
                "committing"
            )
    assert "widgets" not in nb.metadata, f"{path.name} stores widget state"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_top_to_bottom(path, tmp_path, monkeypatch):
    pytest.importorskip("nbclient")
    pytest.importorskip("matplotlib")
    monkeypatch.setenv("WANDB_MODE", "offline")
    start = time.perf_counter()
    nb = execute(path, tiny_parameters(path.name, tmp_path))
    seconds = time.perf_counter() - start
    print(f"{path.name}: executed in {seconds:.1f} s")
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert images, f"{path.name} drew no figure"
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.get("output_type") == "error"]
    assert not errors
