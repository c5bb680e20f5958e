"""Evaluation results to files and text: the paper-style table, the results JSON and the
confusion-matrix CSV, named so that different evaluations never overwrite each other, and
checked writable before any image is evaluated."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from vgg.atomic import replace_atomically
from vgg.evaluation import EvaluationError
from vgg.networks import Network


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


def write_confusion_csv(confusion: torch.Tensor, path: str | os.PathLike,
                        class_names: Sequence[str] | None = None) -> None:
    names = list(class_names) if class_names else [str(i) for i in range(len(confusion))]
    names = [str(n).replace(",", " ") for n in names]
    with replace_atomically(path) as f:
        f.write("true\\predicted," + ",".join(names) + "\n")
        for name, row in zip(names, confusion.tolist(), strict=True):
            f.write(name + "," + ",".join(map(str, row)) + "\n")


def write_results(results: dict[str, Any], path: str | os.PathLike) -> None:
    with replace_atomically(path) as f:
        f.write(json.dumps(results, indent=2) + "\n")


def confusion_path(results_path: Path) -> Path:
    return results_path.with_name(results_path.stem + "_confusion.csv")


def default_output(sources: Sequence[str], split: str, protocol: str, scales: Sequence[int],
                   sample: tuple[int, int] | None = None) -> Path:
    """Beside the first weight file: ``runs/x/best.pt`` ->
    ``runs/x/eval_best_test_dense_256-384-512.json``. An ensemble is named by all its
    members (``eval_ensemble2-<hash>_...``) and a ``--limit`` sample by its size and seed
    (``..._sample40-seed0``), so neither overwrites a single network's full result."""
    first = Path(sources[0])
    name = first.stem
    if len(sources) > 1:
        members = "\n".join(str(Path(s).resolve()) for s in sources)
        name = f"ensemble{len(sources)}-{hashlib.sha1(members.encode()).hexdigest()[:8]}"
    tag = protocol.replace("+", "_")
    suffix = f"_sample{sample[0]}-seed{sample[1]}" if sample else ""
    return first.with_name(f"eval_{name}_{split}_{tag}_{'-'.join(map(str, scales))}"
                           f"{suffix}.json")


def check_writable(path: Path) -> None:
    """Fail before evaluating, not after, when the results cannot be written to ``path``."""
    folder = path.parent
    hint = "pass --out <a writable file>.json"
    if folder.exists() and not folder.is_dir():
        raise EvaluationError(f"cannot write the results to {path}: {folder} is a file, not "
                              f"a folder; {hint}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".{path.name}.{os.getpid()}.probe"
        probe.touch()
        probe.unlink()
    except OSError as error:
        raise EvaluationError(f"cannot write the results to {path} ({error.strerror}); "
                              f"{hint}") from None
