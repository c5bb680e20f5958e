"""Every preset in configs/ names the paper row it reproduces, and that row is the paper's:
the claimed numbers are checked against the tables in ../shared/PAPER.md, and the preset's
network and training scale against the row's."""

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT.parent / "shared" / "PAPER.md"
PRESETS = sorted((ROOT / "configs").glob("*.yaml"))
CLAIM = re.compile(r"Table 3 row \((?P<config>[A-E](?:-LRN)?), S=(?P<S>\[\d+;\d+\]|\d+), "
                   r"Q=(?P<Q>\d+)\): (?P<top1>[\d.]+) / (?P<top5>\d+(?:\.\d+)?)")


def header(path: Path) -> str:
    return " ".join(line.lstrip("# ").rstrip() for line in path.read_text().splitlines()
                    if line.startswith("#"))


def table3_rows() -> set[tuple[str, str, str, str, str]]:
    text = PAPER.read_text()
    section = text[text.index("Table 3"):text.index("Table 4")]
    return {tuple(cell.strip() for cell in line.strip("|").split("|"))
            for line in section.splitlines()
            if line.startswith("| ") and re.match(r"\| [A-E]", line)}


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_every_preset_says_which_paper_row_it_reproduces(path):
    assert "Reproduces:" in header(path), f"{path.name}: no 'Reproduces:' line in its header"


@pytest.mark.skipif(not PAPER.exists(), reason="../shared/PAPER.md is not beside the repo")
@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_a_claimed_table_3_row_is_the_papers_and_fits_the_preset(path):
    claim = CLAIM.search(header(path))
    if claim is None:
        assert re.search(r"Reproduces: no Table row", header(path)), path.name
        return
    row = (claim["config"], claim["S"], claim["Q"], claim["top1"], claim["top5"])
    assert row in table3_rows(), f"{path.name} claims {row}, which Table 3 does not have"
    preset = yaml.safe_load(path.read_text())
    assert preset["model_version"].replace("_lrn", "-LRN") == claim["config"]
    smin, smax = preset["train_scale"]
    assert claim["S"] == (str(smin) if smin == smax else f"[{smin};{smax}]")
    assert preset.get("init") != "from_A", "net A (and A-LRN) cannot copy from net A"
