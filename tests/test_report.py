"""vgg/report.py: the paper-style table, result file names that never collide, and the
writability check made before an evaluation."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from vgg.atomic import WriteError
from vgg.evaluation import Tally
from vgg.report import (
    check_outputs,
    confusion_title,
    default_output,
    paper_table,
    write_confusion_csv,
)


def test_paper_table_layout():
    table = paper_table([{"config": "D", "train_S": "[256;512]", "test_Q": "256,384,512",
                          "method": "dense", "top1_error": 0.248, "top5_error": 0.075}])
    assert table.splitlines()[2] == "| D | [256;512] | 256,384,512 | dense | 24.8 | 7.5 |"
    two_classes = paper_table([{"config": "A", "train_S": "37", "test_Q": "37",
                                "method": "dense", "top1_error": 0.25, "top5_error": None}])
    assert two_classes.splitlines()[0] == "| config | train S | test Q | method | top-1 err |"
    assert two_classes.splitlines()[2] == "| A | 37 | 37 | dense | 25.0 |"


def test_confusion_title_names_weights_split_protocol_scales_and_top1():
    assert confusion_title(["runs/D-S256/best.pt"], "test", "dense", [224, 256, 288],
                           0.2483) == ("D-S256/best.pt | test split | dense | Q=224,256,288 | "
                                       "top-1 error 24.83%")
    # torchvision's weights in the working directory; an ensemble's members joined
    assert confusion_title(["vgg16.pth", "/x/E/last.pt"], "val", "dense+multicrop", [256],
                           0.0) == ("vgg16.pth + E/last.pt | val split | dense+multicrop | "
                                    "Q=256 | top-1 error 0.00%")


def test_results_json_round_trip(tmp_path):
    tally = Tally(2)
    tally.update(torch.tensor([[0.9, 0.1]]), torch.tensor([0]))
    json.dumps(tally.summary())  # plain types only


@pytest.mark.parametrize("names", [
    ["a,x", "b"], ['say "hi"', "b"], ["two\nlines", "b"], ["a x", "a,x"],
], ids=["comma", "quote", "newline", "comma-vs-space"])
def test_confusion_csv_round_trips_any_class_name(tmp_path, names):
    path = tmp_path / "c.csv"
    write_confusion_csv(torch.tensor([[2, 1], [0, 3]]), path, names)
    with open(path, newline="") as f:  # read back by an independent CSV reader
        rows = list(csv.reader(f))
    assert rows == [["true\\predicted", *names], [names[0], "2", "1"], [names[1], "0", "3"]]


def test_result_names_never_collide():
    single = default_output(["runs/x/best.pt"], "test", "dense", [32, 40])
    assert single == Path("runs/x/eval_best_test_dense_32-40.json")
    ensemble = default_output(["runs/x/best.pt", "runs/y/best.pt"], "test", "dense", [32, 40])
    other = default_output(["runs/x/best.pt", "runs/z/best.pt"], "test", "dense", [32, 40])
    sample = default_output(["runs/x/best.pt"], "test", "dense", [32, 40], (40, 0))
    reseeded = default_output(["runs/x/best.pt"], "test", "dense", [32, 40], (40, 1))
    names = {single, ensemble, other, sample, reseeded}
    assert len(names) == 5 and all(n.parent == Path("runs/x") for n in names)
    assert ensemble.name.startswith("eval_ensemble2-") and "sample40-seed0" in sample.name
    assert default_output(["a/dense+multicrop.pt"], "val", "dense+multicrop", [256]).name == \
        "eval_dense+multicrop_val_dense_multicrop_256.json"


def test_unwritable_destination_is_found_before_evaluating(tmp_path):
    check_outputs(tmp_path / "new" / "r.json", 10)  # created folders are fine
    assert (tmp_path / "new").is_dir() and not list((tmp_path / "new").iterdir())
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(WriteError, match="is a file"):
        check_outputs(blocker / "r.json", 10)
