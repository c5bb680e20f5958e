"""Evaluation results to files and text: the paper-style table, the results JSON and the
confusion-matrix CSV, named so that different evaluations never overwrite each other, and
checked before any image is evaluated: writable, and replacing nothing but an earlier
result."""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from vgg.atomic import check_free_space, check_output, replace_atomically
from vgg.networks import Network
from vgg.run_dir import remove_stale_temporaries

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def format_train_scale(train_scale: tuple[int, int] | None) -> str:
    if train_scale is None:
        return "-"
    smin, smax = train_scale
    return str(smin) if smin == smax else f"[{smin};{smax}]"


def paper_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown table laid out like PAPER.md Tables 3-5 (errors in %). Without any top-5
    error (5 classes or fewer, where it is always 0%) the column is left out."""
    top5 = any(row.get("top5_error") is not None for row in rows)
    columns = ["config", "train S", "test Q", "method", "top-1 err"] + ["top-5 err"] * top5
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [row["config"], row["train_S"], row["test_Q"], row["method"],
                 f"{100 * row['top1_error']:.1f}"]
        if top5:
            error = row.get("top5_error")
            cells.append("-" if error is None else f"{100 * error:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def describe_networks(networks: Sequence[Network]) -> dict[str, str]:
    configs = [n.version.replace("_lrn", "-LRN") + ("-BN" if n.batch_norm else "")
               for n in networks]
    scales = sorted({format_train_scale(n.train_scale) for n in networks})
    return {"config": " & ".join(configs), "train_S": ", ".join(scales)}


def accuracy_lines(summary: dict[str, Any], ks: Sequence[int]) -> list[str]:
    n = summary["samples"]
    return [f"top-{k}: error {100 * summary[f'top{k}_error']:.2f}%, accuracy "
            f"{100 * summary[f'top{k}_accuracy']:.2f}% ({summary[f'top{k}_correct']}/{n})"
            for k in ks]


CONFUSION_HEADER = "true\\predicted"


def write_confusion_csv(confusion: torch.Tensor, path: str | os.PathLike,
                        class_names: Sequence[str] | None = None) -> None:
    """Rows of true classes, columns of predicted ones, each headed by its class name,
    quoted by csv.writer where it holds a comma, a quote or a line break."""
    names = list(class_names) if class_names else [str(i) for i in range(len(confusion))]
    with replace_atomically(path, newline="") as f:
        writer = csv.writer(f)
        writer.writerow([CONFUSION_HEADER, *names])
        for name, row in zip(names, confusion.tolist(), strict=True):
            writer.writerow([name, *row])


def checkpoint_name(source: str) -> str:
    """A weight file as a title names it: with its run directory (``D-S256/best.pt``), as
    every run's checkpoint is called best.pt or last.pt."""
    path = Path(source)
    return f"{path.parent.name}/{path.name}" if path.parent.name else path.name


def confusion_title(sources: Sequence[str], split: str, protocol: str,
                    scales: Sequence[int], top1_error: float) -> str:
    """The confusion matrix picture's title: which weights (an ensemble's joined by +), on
    which split, by which protocol at which test scales Q, and the top-1 error they got."""
    return (f"{' + '.join(checkpoint_name(s) for s in sources)} | {split} split | "
            f"{protocol} | Q={','.join(map(str, scales))} | top-1 error {100 * top1_error:.2f}%")


def write_results(results: dict[str, Any], path: str | os.PathLike) -> None:
    with replace_atomically(path) as f:
        f.write(json.dumps(results, indent=2) + "\n")


def confusion_path(results_path: Path) -> Path:
    return results_path.with_name(results_path.stem + "_confusion.csv")


def default_output(sources: Sequence[str], split: str, protocol: str, scales: Sequence[int],
                   sample: tuple[int, int] | None = None, averaged: bool = False) -> Path:
    """Beside the first weight file: ``runs/x/best.pt`` ->
    ``runs/x/eval_best_test_dense_256-384-512.json``. An ensemble is named by all its
    members (``eval_ensemble2-<hash>_...``), a ``--limit`` sample by its size and seed
    (``..._sample40-seed0``) and the ``averaged`` weights of --ema by ``best-ema``, so none
    overwrites a single network's full result of its trained weights."""
    first = Path(sources[0])
    name = first.stem + ("-ema" if averaged else "")
    if len(sources) > 1:
        members = "\n".join(str(Path(s).resolve()) for s in sources)
        name = f"ensemble{len(sources)}-{hashlib.sha1(members.encode()).hexdigest()[:8]}"
    tag = protocol.replace("+", "_")
    suffix = f"_sample{sample[0]}-seed{sample[1]}" if sample else ""
    return first.with_name(f"eval_{name}_{split}_{tag}_{'-'.join(map(str, scales))}"
                           f"{suffix}.json")


def is_results_json(data: bytes) -> bool:
    """Whether ``data`` is a results JSON that evaluate.py wrote."""
    try:
        results = json.loads(data)
    except ValueError:
        return False
    return isinstance(results, dict) and {"table_row", "protocol", "confusion_matrix"} <= \
        results.keys()


def check_outputs(path: Path, num_classes: int) -> None:
    """Fail before evaluating, not after, when the results JSON at ``path``, its confusion
    CSV or its picture cannot be written, or would replace a file that is not an earlier
    result of evaluate.py (a checkpoint, a run's config.yaml, any other file); clean the
    temporaries that killed evaluations left in its folder."""
    check_output(path, is_results_json, "--out", "results JSON of evaluate.py")
    confusion = confusion_path(path)
    check_output(confusion, lambda data: data.startswith(CONFUSION_HEADER.encode()),
                 "--out", "confusion matrix CSV of evaluate.py")
    check_output(confusion.with_suffix(".png"), lambda data: data.startswith(PNG_SIGNATURE),
                 "--out", "confusion matrix picture of evaluate.py")
    # The JSON and CSV (a count per pair of classes) and the picture, with room to spare.
    check_free_space(path.parent, 2**20 + 64 * num_classes ** 2, "the results")
    remove_stale_temporaries(path.parent)
