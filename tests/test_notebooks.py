"""Notebooks stay valid: JSON loads and every code cell compiles; the time-to-accuracy reader
works on a metrics.csv like the ones training writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_cells_compile(path):
    nb = json.loads(path.read_text())
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code":
            compile("".join(cell["source"]), f"{path.name}[{i}]", "exec")


def test_time_to_accuracy_reader(tmp_path):
    nb = json.loads((Path(__file__).resolve().parents[1] / "notebooks" / "time_to_accuracy.ipynb").read_text())
    src = next("".join(c["source"]) for c in nb["cells"] if "def validations" in "".join(c["source"]))
    namespace: dict = {}
    exec("import csv\n" + src.split("fig, ")[0], namespace)
    csv_path = tmp_path / "metrics.csv"
    csv_path.write_text(
        "epoch,step,time/step,time/train_seconds,train/loss,val/AP,val/AP50\n"
        "0,9,,,3.0,,\n0,11,12.0,36.0,,10.0,20.0\n1,23,24.0,72.0,,15.0,30.0\n"
    )
    assert namespace["validations"](csv_path) == [(0.01, 12, 10.0, 20.0), (0.02, 24, 15.0, 30.0)]
