"""The walk-through notebook runs top to bottom and its training run learns."""

import json
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).parents[1] / "notebooks" / "walkthrough.ipynb"


@pytest.mark.slow  # three short epochs of training
def test_walkthrough_notebook_runs_and_learns(capsys):
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    namespace: dict = {}
    for cell in cells:
        if cell["cell_type"] == "code":
            exec(compile("".join(cell["source"]), f"{NOTEBOOK.name}", "exec"), namespace)
    printed = capsys.readouterr().out
    assert "138,357,544" in printed and "class-score map: (1, 10, 2, 3)" in printed
    assert namespace["result"]["n"] == len(namespace["val_set"])
    assert namespace["result"]["top1_err"] < 0.75  # chance is 0.9 for ten digits
