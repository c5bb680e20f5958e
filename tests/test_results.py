"""Paper-layout results: evaluation JSONs as evaluate.py writes them, matched to the paper."""

import csv
import json

import pytest

from vgg.results import PAPER_RESULTS, main

# PAPER.md section 4, copied verbatim: the independent truth the module's table must equal.
PAPER_MD_TABLES = {
    3: """
| A | 256 | 256 | 29.6 | 10.4 |
| A-LRN | 256 | 256 | 29.7 | 10.5 |
| B | 256 | 256 | 28.7 | 9.9 |
| C | 256 | 256 | 28.1 | 9.4 |
| C | 384 | 384 | 28.1 | 9.3 |
| C | [256;512] | 384 | 27.3 | 8.8 |
| D | 256 | 256 | 27.0 | 8.8 |
| D | 384 | 384 | 26.8 | 8.7 |
| D | [256;512] | 384 | 25.6 | 8.1 |
| E | 256 | 256 | 27.3 | 9.0 |
| E | 384 | 384 | 26.9 | 8.7 |
| E | [256;512] | 384 | 25.5 | 8.0 |""",
    4: """
| B | 256 | 224,256,288 | 28.2 | 9.6 |
| C | 256 | 224,256,288 | 27.7 | 9.2 |
| C | 384 | 352,384,416 | 27.8 | 9.2 |
| C | [256;512] | 256,384,512 | 26.3 | 8.2 |
| D | 256 | 224,256,288 | 26.6 | 8.6 |
| D | 384 | 352,384,416 | 26.5 | 8.6 |
| D | [256;512] | 256,384,512 | 24.8 | 7.5 |
| E | 256 | 224,256,288 | 26.9 | 8.7 |
| E | 384 | 352,384,416 | 26.7 | 8.6 |
| E | [256;512] | 256,384,512 | 24.8 | 7.5 |""",
    5: """
| D | dense | 24.8 | 7.5 |
| D | multi-crop | 24.6 | 7.5 |
| D | multi-crop & dense | 24.4 | 7.2 |
| E | dense | 24.8 | 7.5 |
| E | multi-crop | 24.6 | 7.4 |
| E | multi-crop & dense | 24.4 | 7.1 |""",
}


def test_published_numbers_are_paper_md_s():
    for table, text in PAPER_MD_TABLES.items():
        published = [[cell.strip() for cell in line.strip("|").split("|")]
                     for line in text.strip().splitlines()]
        ours = [p for p in PAPER_RESULTS if p.table == table]
        assert [p.row for p in ours] == list(range(1, len(published) + 1))
        for paper, cells in zip(ours, published, strict=True):
            if table == 5:  # train S in [256;512], test Q = {256, 384, 512}
                assert [paper.config, paper.method] == cells[:2]
                assert (paper.train_S, paper.test_Q) == ("[256;512]", "256,384,512")
            else:
                assert [paper.config, paper.train_S, paper.test_Q] == cells[:3]
                assert paper.method == "dense"
            assert (paper.top1, paper.top5) == (float(cells[-2]), float(cells[-1]))
    ensemble = [p for p in PAPER_RESULTS if p.table == 6]
    assert [(p.config, p.method, p.top1, p.top5) for p in ensemble] == [
        ("D & E", "multi-crop & dense", 23.7, 6.8)]


def write_evaluation(path, *, dataset="ImageNet", config="D", train_s="256", scales=(256,),
                     protocol="dense", method="dense", top1=0.285, top5=0.091,
                     train_scale=(256, 256)):
    """An evaluation JSON with the keys and layout evaluate.py writes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    row = {"config": config, "train_S": train_s, "test_Q": ",".join(map(str, scales)),
           "method": method, "top1_error": top1, "top5_error": top5}
    networks = [{"source": str(path.parent / "best.pt"), "version": version,
                 "batch_norm": False, "image_size": 224, "num_classes": 1000,
                 "train_scale": list(train_scale) if train_scale else None}
                for version in config.split(" & ")]
    result = {"dataset": dataset, "split": "val", "protocol": protocol,
              "scales": list(scales), "flip": True, "resize": "bilinear", "table_row": row,
              "samples": 50000, "nonfinite_posteriors": 0,
              "top1_correct": round(50000 * (1 - top1)), "top1_accuracy": 1 - top1,
              "top1_error": top1, "top5_correct": round(50000 * (1 - top5)),
              "top5_accuracy": 1 - top5, "top5_error": top5,
              "per_class": {"count": [50] * 1000, "top1_correct": [35] * 1000,
                            "top1_accuracy": [0.7] * 1000},
              "networks": networks, "class_names": None,
              "confusion_matrix": str(path.with_name(path.stem + "_confusion.csv")),
              "world_size": 1, "device": "cpu", "precision": "fp32", "seconds": 10.0,
              "images_per_second": 5000.0}
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def table_sections(text):
    """{section heading: [row cells]} of the markdown report."""
    sections, heading = {}, None
    for line in text.splitlines():
        if line.startswith("### "):
            heading = line[4:].split(":")[0].split(" (")[0]
            sections[heading] = []
        elif line.startswith("| ") and heading:
            sections[heading].append([c.strip() for c in line.strip("|").split("|")])
    return {name: rows[1:] for name, rows in sections.items()}  # without the header row


def test_a_paper_setting_is_printed_beside_the_published_errors(tmp_path, capsys):
    run = tmp_path / "runs" / "D"
    write_evaluation(run / "eval_best_val_dense_256.json", top1=0.285, top5=0.091)
    (run / "config.json").write_text("{}")  # not an evaluation: not searched
    assert main([str(tmp_path / "runs")]) == 0
    sections = table_sections(capsys.readouterr().out)
    assert list(sections) == ["Table 3"]
    [row] = sections["Table 3"]
    # Table 3, row 7 of PAPER.md: D, S = 256, Q = 256: 27.0 / 8.8
    assert row[:11] == ["7", "D", "256", "256", "dense", "28.50", "27.0", "+1.50", "9.10", "8.8",
                        "+0.30"]
    assert row[11].endswith("eval_best_val_dense_256.json")


def test_no_paper_setting_gets_its_own_table(tmp_path, capsys):
    mnist = write_evaluation(tmp_path / "mnist" / "eval_best_test_dense_28.json",
                             dataset="MNIST", config="A", train_s="28", scales=(28,),
                             top1=0.0045, top5=0.0001, train_scale=(28, 28))
    torchvision = write_evaluation(  # ImageNet, but a centre crop of weights with no S
        tmp_path / "tv" / "eval_vgg16_val_center_256.json", config="D", train_s="-",
        protocol="center", method="centre crop", top1=0.2841, top5=0.0962, train_scale=None)
    assert main([str(mnist), str(torchvision)]) == 0
    sections = table_sections(capsys.readouterr().out)
    assert list(sections) == ["Results of no paper setting"]
    assert [r[:8] for r in sections["Results of no paper setting"]] == [
        ["MNIST", "val", "A", "28", "28", "dense", "0.45", "0.01"],
        ["ImageNet", "val", "D", "-", "256", "centre crop", "28.41", "9.62"]]


def test_one_result_in_every_table_with_its_setting_and_csv(tmp_path, capsys):
    jittered = {"train_s": "[256;512]", "train_scale": (256, 512)}
    write_evaluation(tmp_path / "D" / "eval_best_val_dense_256-384-512.json",
                     scales=(256, 384, 512), top1=0.251, top5=0.076, **jittered)
    write_evaluation(  # the ensemble named in the other order, scales unsorted
        tmp_path / "DE" / "eval_best_val_dense_multicrop_256-384-512.json", config="E & D",
        scales=(512, 256, 384), protocol="dense+multicrop", method="multi-crop & dense",
        top1=0.24, top5=0.07, **jittered)
    out = tmp_path / "results.csv"
    assert main([str(tmp_path), "--csv", str(out)]) == 0
    sections = table_sections(capsys.readouterr().out)
    assert list(sections) == ["Table 4", "Table 5", "Table 6"]
    assert [r[:8] for r in sections["Table 4"]] == [
        ["7", "D", "[256;512]", "256,384,512", "dense", "25.10", "24.8", "+0.30"]]
    assert [r[:8] for r in sections["Table 5"]] == [
        ["1", "D", "[256;512]", "256,384,512", "dense", "25.10", "24.8", "+0.30"]]
    assert [r[5:11] for r in sections["Table 6"]] == [
        ["24.00", "23.7", "+0.30", "7.00", "6.8", "+0.20"]]
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["table"], r["paper_row"], r["top5_difference"]) for r in rows] == [
        ("4", "7", "+0.10"), ("5", "1", "+0.10"), ("6", "1", "+0.20")]


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "missing.json", "does not exist"),
    (lambda d: d, "no eval_*.json under"),
    (lambda d: (d / "eval_x.json", (d / "eval_x.json").write_text('{"top1": 1}'))[0],
     "is not an evaluation written by evaluate.py"),
])
def test_bad_input_is_a_user_error(tmp_path, capsys, make, message):
    assert main([str(make(tmp_path))]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vgg.results: error: ") and message in err
