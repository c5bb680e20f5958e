"""Evaluation results laid out as the paper's Tables 3-6, the published errors beside ours.

    python -m vgg.results [RUNS_OR_EVAL_JSONS ...] [--csv results.csv]

Reads the JSON files evaluate.py writes (a directory is searched, recursively, for
``eval_*.json``; default ``runs``). Each result is matched to the paper's rows on network
config, training scale S, test scale(s) Q and method: it is printed in every paper table
that has its setting, with the published top-1/top-5 error and the difference (ours minus
the paper's, in percentage points). Results of no paper setting (MNIST, CIFAR, folders, a
centre crop, torchvision's weights) go in a table of their own.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vgg import configuration
from vgg.atomic import replace_atomically
from vgg.errors import UserError, run_cli

PAPER_TABLES = {3: "single test scale", 4: "multiple test scales",
                5: "dense vs multi-crop evaluation", 6: "ensembles"}
JITTERED = "[256;512]"
JITTERED_Q = "256,384,512"


@dataclass(frozen=True)
class PaperResult:
    """One published row: ``table`` and ``row`` (1-based, as printed) locate it in the
    paper; errors in %."""

    table: int
    row: int
    config: str
    train_S: str
    test_Q: str
    method: str
    top1: float
    top5: float


def _table(number: int, method: str | None, rows: Iterable[tuple]) -> list[PaperResult]:
    """Rows ``(config, train S, test Q, top-1, top-5)``, or ``(config, method, top-1,
    top-5)`` at S = [256;512], Q = {256, 384, 512} when ``method`` is None."""
    out = []
    for i, values in enumerate(rows, start=1):
        if method is None:
            config, row_method, top1, top5 = values
            out.append(PaperResult(number, i, config, JITTERED, JITTERED_Q, row_method, top1,
                                   top5))
        else:
            config, train_s, test_q, top1, top5 = values
            out.append(PaperResult(number, i, config, train_s, test_q, method, top1, top5))
    return out


# Transcribed from PAPER.md section 4 (the paper's Tables 3-6, ILSVRC-2012 validation).
# Tables 3 and 4 are dense evaluation (Sec. 4.1-4.2; Table 5's dense rows repeat Table 4's).
# Table 6's two-net ensemble is of the D and E rows of Table 5.
PAPER_RESULTS: tuple[PaperResult, ...] = (
    *_table(3, "dense", [
        ("A", "256", "256", 29.6, 10.4),
        ("A-LRN", "256", "256", 29.7, 10.5),
        ("B", "256", "256", 28.7, 9.9),
        ("C", "256", "256", 28.1, 9.4),
        ("C", "384", "384", 28.1, 9.3),
        ("C", JITTERED, "384", 27.3, 8.8),
        ("D", "256", "256", 27.0, 8.8),
        ("D", "384", "384", 26.8, 8.7),
        ("D", JITTERED, "384", 25.6, 8.1),
        ("E", "256", "256", 27.3, 9.0),
        ("E", "384", "384", 26.9, 8.7),
        ("E", JITTERED, "384", 25.5, 8.0)]),
    *_table(4, "dense", [
        ("B", "256", "224,256,288", 28.2, 9.6),
        ("C", "256", "224,256,288", 27.7, 9.2),
        ("C", "384", "352,384,416", 27.8, 9.2),
        ("C", JITTERED, JITTERED_Q, 26.3, 8.2),
        ("D", "256", "224,256,288", 26.6, 8.6),
        ("D", "384", "352,384,416", 26.5, 8.6),
        ("D", JITTERED, JITTERED_Q, 24.8, 7.5),
        ("E", "256", "224,256,288", 26.9, 8.7),
        ("E", "384", "352,384,416", 26.7, 8.6),
        ("E", JITTERED, JITTERED_Q, 24.8, 7.5)]),
    *_table(5, None, [
        ("D", "dense", 24.8, 7.5),
        ("D", "multi-crop", 24.6, 7.5),
        ("D", "multi-crop & dense", 24.4, 7.2),
        ("E", "dense", 24.8, 7.5),
        ("E", "multi-crop", 24.6, 7.4),
        ("E", "multi-crop & dense", 24.4, 7.1)]),
    *_table(6, None, [("D & E", "multi-crop & dense", 23.7, 6.8)]),
)


class ResultsError(UserError):
    """No evaluation to tabulate, or a file that is not one."""


@dataclass
class Evaluation:
    """One evaluate.py result: its paper-layout row (errors as fractions) and its file."""

    source: Path
    dataset: str
    split: str
    row: dict[str, Any]

    @property
    def setting(self) -> tuple[str, str, str, str] | None:
        """(config, train S, test Q, method) in the paper's notation, or None off ImageNet
        (the paper's numbers are ILSVRC-2012's)."""
        if self.dataset.lower() != "imagenet":
            return None
        return _setting(self.row["config"], self.row["train_S"], self.row["test_Q"],
                        self.row["method"])


def _setting(config: str, train_s: str, test_q: Any, method: str) -> tuple[str, str, str, str]:
    """One spelling per setting: ensemble members and test scales in sorted order."""
    members = " & ".join(sorted(part.strip() for part in str(config).split("&")))
    scales = ",".join(str(q) for q in sorted(int(q) for q in str(test_q).split(",")))
    return members, str(train_s), scales, method


def paper_matches(evaluation: Evaluation) -> list[PaperResult]:
    setting = evaluation.setting
    return [paper for paper in PAPER_RESULTS
            if setting == _setting(paper.config, paper.train_S, paper.test_Q, paper.method)]


def evaluation_files(paths: Sequence[str | Path]) -> list[Path]:
    """The JSON files named, and every ``eval_*.json`` under the directories named."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files += sorted(path.rglob("eval_*.json"))
        elif path.is_file():
            files.append(path)
        else:
            raise ResultsError(f"{path} does not exist: pass run directories or evaluation "
                               "JSON files written by evaluate.py")
    if not files:
        raise ResultsError(f"no eval_*.json under {', '.join(map(str, paths))}: evaluate a "
                           "checkpoint first (python evaluate.py --checkpoint RUN/best.pt)")
    return files


def load_evaluation(path: Path) -> Evaluation:
    try:
        result = json.loads(path.read_text())
        return Evaluation(path, str(result["dataset"]), str(result.get("split", "")),
                          result["table_row"])
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as error:
        raise ResultsError(f"{path} is not an evaluation written by evaluate.py (no "
                           f"dataset/table_row: {error!r})") from None


def _percent(error: float) -> str:
    return f"{100 * error:.2f}"  # hundredths: small-data errors are small


def _difference(ours: float, paper: float) -> str:
    return f"{100 * ours - paper:+.2f}"


def compared_rows(evaluations: Sequence[Evaluation]) -> list[dict[str, Any]]:
    """One row per (evaluation, matching paper row), and one per evaluation matching none
    (``table`` None); errors in %, differences in percentage points."""
    rows = []
    for evaluation in evaluations:
        row = evaluation.row
        base = {"dataset": evaluation.dataset, "split": evaluation.split,
                "config": row["config"], "train_S": row["train_S"], "test_Q": row["test_Q"],
                "method": row["method"], "top1_error": _percent(row["top1_error"]),
                "top5_error": _percent(row["top5_error"]), "source": str(evaluation.source)}
        matches = paper_matches(evaluation)
        for paper in matches:
            rows.append({"table": paper.table, "paper_row": paper.row, **base,
                         "paper_top1_error": f"{paper.top1:.1f}",
                         "paper_top5_error": f"{paper.top5:.1f}",
                         "top1_difference": _difference(row["top1_error"], paper.top1),
                         "top5_difference": _difference(row["top5_error"], paper.top5)})
        if not matches:
            rows.append({"table": None, "paper_row": None, **base})
    return rows


PAPER_COLUMNS = (("row", "paper_row"), ("config", "config"), ("train S", "train_S"),
                 ("test Q", "test_Q"), ("method", "method"), ("top-1", "top1_error"),
                 ("paper top-1", "paper_top1_error"), ("diff", "top1_difference"),
                 ("top-5", "top5_error"), ("paper top-5", "paper_top5_error"),
                 ("diff", "top5_difference"), ("evaluation", "source"))
OTHER_COLUMNS = (("dataset", "dataset"), ("split", "split"), ("config", "config"),
                 ("train S", "train_S"), ("test Q", "test_Q"), ("method", "method"),
                 ("top-1", "top1_error"), ("top-5", "top5_error"), ("evaluation", "source"))


def _markdown(columns: Sequence[tuple[str, str]], rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(title for title, _ in columns) + " |",
             "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row[key]) for _, key in columns) + " |" for row in rows]
    return "\n".join(lines)


def markdown_report(rows: Sequence[dict[str, Any]]) -> str:
    """A markdown section per paper table that has results, then the unmatched ones."""
    sections = []
    for number, title in PAPER_TABLES.items():
        matched = sorted((r for r in rows if r["table"] == number),
                         key=lambda r: (r["paper_row"], r["source"]))
        if matched:
            sections.append(f"### Table {number}: {title} (ILSVRC-2012 val, top-1 / top-5 "
                            f"error %, diff = ours - paper)\n\n" + _markdown(PAPER_COLUMNS,
                                                                            matched))
    others = [r for r in rows if r["table"] is None]
    if others:
        sections.append("### Results of no paper setting (error %)\n\n"
                        + _markdown(OTHER_COLUMNS, others))
    return "\n\n".join(sections)


CSV_FIELDS = ("table", "paper_row", "dataset", "split", "config", "train_S", "test_Q",
              "method", "top1_error", "paper_top1_error", "top1_difference", "top5_error",
              "paper_top5_error", "top5_difference", "source")


def write_csv(rows: Sequence[dict[str, Any]], path: Path) -> None:
    with replace_atomically(path, newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, restval="")
        writer.writeheader()
        writer.writerows(rows)


@dataclass
class ResultsConfig:
    """The options of ``python -m vgg.results`` (vgg/configuration.py: flags and YAML)."""
    # --- what to report ---
    paths: list[str] = configuration.positional(
        "RUN_OR_EVAL_JSON", ["runs"],
        help="run directories (searched for eval_*.json) or evaluation JSON files")
    # --- output ---
    csv: str | None = field(default=None, metadata={
        "metavar": "FILE.csv", "help": "also write every row to this CSV file"})


def report(argv: list[str] | None) -> int:
    cfg = configuration.command_config(ResultsConfig, argv, __doc__, "python -m vgg.results")
    if cfg is None:  # --print_config
        return 0
    rows = compared_rows([load_evaluation(path) for path in evaluation_files(cfg.paths)])
    print(markdown_report(rows))
    if cfg.csv:
        write_csv(rows, Path(cfg.csv))
        print(f"\nCSV: {cfg.csv}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: report(argv), "vgg.results")


if __name__ == "__main__":
    sys.exit(main())
