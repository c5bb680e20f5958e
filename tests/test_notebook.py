"""The notebooks: committed with their outputs, and executed top to bottom by a real Jupyter
kernel (nbclient + ipykernel), from notebooks/ as Jupyter starts them."""

import base64
import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import dataset_class

# Development-only dependencies (requirements-dev.txt): a machine without them (the GPU
# machines' stack, `make test-device-stack`) skips this file instead of failing collection.
nbformat = pytest.importorskip("nbformat")
NotebookClient = pytest.importorskip("nbclient").NotebookClient

NOTEBOOKS = Path(__file__).parents[1] / "notebooks"
WALKTHROUGH = NOTEBOOKS / "walkthrough.ipynb"


def code_cells(notebook):
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def printed(notebook) -> str:
    return "".join(output.get("text", "") for cell in code_cells(notebook)
                   for output in cell.outputs if output.output_type == "stream")


def pictures(notebook) -> list[np.ndarray]:
    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(output.data["image/png"]))))
            for cell in code_cells(notebook) for output in cell.outputs
            if "image/png" in output.get("data", {})]


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.name)
def test_notebook_is_committed_executed_in_order_without_errors(path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    cells = code_cells(notebook)
    assert [cell.execution_count for cell in cells] == list(range(1, len(cells) + 1))
    assert not [o for cell in cells for o in cell.outputs if o.output_type == "error"]
    assert not [cell for cell in cells if "sys.path" in cell.source]


@pytest.mark.slow  # a kernel start and a four-epoch training run
def test_walkthrough_runs_in_a_kernel_draws_its_pictures_and_learns():
    notebook = nbformat.read(WALKTHROUGH, as_version=4)
    for cell in code_cells(notebook):
        cell.outputs = []
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()

    text = printed(notebook)
    assert "138,357,544 parameters (Table 2: 138M)" in text  # config D
    assert "class-score map: (1, 10, 2, 3)" in text  # a 64x96 mosaic at 32 px per block
    error, images = re.search(r"final val top-1 error ([\d.]+)% \((\d+) images\)", text).groups()
    spec = dataset_class.dataset_spec("Digits")
    val_set = dataset_class.build_dataset("Digits", "val", "data",
                                          dataset_class.eval_transform(spec, spec.image_size))
    assert int(images) == len(val_set)
    assert float(error) < 75  # chance is 90% for ten digits

    drawn = pictures(notebook)
    # receptive fields, S jitter, samples, colour shift, curves, crop grid, dense map, average
    assert len(drawn) == 8
    for picture in drawn:
        assert min(picture.shape[:2]) >= 100 and picture.std() > 5  # a picture, not blank
