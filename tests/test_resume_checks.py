"""train.py --resume against changed flags and damaged run directories (issue 24): each case
is refused before anything is written, with a message naming the saved value or the file,
and leaves the checkpoint, the metrics, config.yaml and no .lock behind as they were."""

import dataclasses
import hashlib
import shutil
from pathlib import Path

import pytest
import torch

import train
from config import Config
from tests.test_train_cli import tiny
from vgg import configuration
from vgg.checkpoint import load_checkpoint, save_checkpoint
from vgg.configuration import ConfigError
from vgg.run_dir import NonFiniteWeights, RunDirectory
from vgg.train_state import TrainState


@pytest.fixture(scope="module")
def stopped(tmp_path_factory) -> Path:
    """A run stopped after its first step of 6 (16 of 96 samples): last.pt is mid-epoch."""
    run = tmp_path_factory.mktemp("runs") / "cut"
    assert train.main(tiny(run, "--width", "0.25", "--max_steps", "1")) == 0
    return run


@pytest.fixture
def run(stopped, tmp_path) -> Path:
    """A copy of ``stopped`` this test may damage."""
    return Path(shutil.copytree(stopped, tmp_path / "cut"))


def digest(run: Path) -> dict[str, str]:
    """The run directory's files, by content: what a refused resume must not change."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run.iterdir()) if p.is_file()}


def refused(argv: list[str], capsys, run: Path) -> str:
    """Run train.py; assert it exits 2 with one clean message and changed nothing."""
    before = digest(run)
    assert train.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("train.py: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    assert digest(run) == before and not (run / ".lock").exists()
    return err


CHANGED = [
    (["--dataset", "MNIST"], "has dataset Digits"),
    (["--val_fraction", "0.5"], "has val_fraction None"),
    (["--seed", "1"], "at epoch 1, 16 samples in has seed 0"),
    (["--train_subset", "48"], "at epoch 1, 16 samples in has train_subset 96"),
    (["--shuffle", "shard"], "at epoch 1, 16 samples in has shuffle global"),
    (["--optimizer", "adamw"], "has optimizer sgd"),
    (["--input_convention", "paper"], "has input_convention dataset"),
    (["--init_from", "{run}/last.pt"], "has init_from None"),
    (["--run_name", "another"], "another, but --resume {run}/last.pt continues the run in "
                                "its own directory {run}: drop them"),
    (["--out_dir", "{parent}/elsewhere"], "{parent}/elsewhere/cut, but --resume {run}/last.pt"),
]


@pytest.mark.parametrize("flags, needle", CHANGED, ids=[" ".join(c[0]) for c in CHANGED])
def test_resume_refuses_what_the_run_fixed_naming_the_saved_value(run, capsys, flags,
                                                                  needle):
    """Issue 24, silently wrong 4 and 5 (and --optimizer, once a KeyError's text): these
    were taken and recorded in config.yaml, while the data, split, order, optimizer state
    or directory stayed the checkpoint's, or changed under it mid-run."""
    fill = {"run": run, "parent": run.parent}
    err = refused(["--resume", str(run), *[f.format(**fill) for f in flags]], capsys, run)
    assert needle.format(**fill) in err and str(run / "last.pt") in err
    assert "KeyError" not in err


def resume_of(config: Config, position: int) -> train.Resume:
    state = TrainState(epoch=1, step=6, position=position)
    checkpoint = {"config": configuration.to_dict(config), "model_args": {},
                  **state.state_dict()}
    return train.Resume(Path("runs/r/last.pt"), checkpoint)


def test_seed_subset_and_shuffle_may_change_at_an_epoch_end_only():
    saved = Config(dataset="Digits", run_name="r")
    for name, value in (("seed", 1), ("train_subset", 48), ("shuffle", "shard")):
        flagged = dataclasses.replace(saved, **{name: value})
        resumed = train.resumed_config(flagged, resume_of(saved, position=0), saved)
        assert getattr(resumed, name) == value
        with pytest.raises(ConfigError, match=f"--{name} {value}: .* samples in has {name}"):
            train.resumed_config(flagged, resume_of(saved, position=32), saved)


def test_a_moved_run_directory_records_where_it_really_continues(stopped, tmp_path):
    """Issue 24, item 5: resumed, a run continues in the checkpoint's directory; its
    config.yaml and checkpoints say so, not the directory it was started in."""
    moved = Path(shutil.copytree(stopped, tmp_path / "moved" / "renamed"))
    assert train.main(["--resume", str(moved), "--max_steps", "2"]) == 0
    for record in (configuration.load_yaml(moved / "config.yaml"),
                   load_checkpoint(moved / "last.pt")["config"]):
        assert (record["out_dir"], record["run_name"]) == (str(moved.parent), "renamed")
    assert load_checkpoint(moved / "last.pt")["step"] == 2


def shared_list() -> list:
    """A 9^9-item list of shared references: pickled small, endless to print."""
    value: list = ["lol"] * 9
    for _ in range(8):
        value = [value] * 9
    return value


CRAFTED = [
    ({"step": "x"}, "field 'step' should be a whole number"),
    ({"step": -1}, "field 'step' should be a whole number"),
    ({"epoch": 2**70}, "field 'epoch' should be a whole number"),
    ({"position": None}, "field 'position' should be"),
    ({"best_top1": float("nan")}, "field 'best_top1' should be an accuracy"),
    ({"epoch_totals": [1.0, 2.0]}, "field 'epoch_totals' should be 4 finite numbers"),
    ({"rng": "junk"}, "field 'rng' should be a list of RNG states"),
    ({"rng": [{"python": 1}]}, "random number generator state (rng[0])"),
    ({"model": "junk"}, "'model' entry is a str"),
    ({"optimizer": {"state": {}}}, "optimizer or schedule state cannot be loaded"),
    ({"config": {"lr": "fast"}}, "holds a config that is not valid (--lr: expected float"),
    ({"config": {"train_scale": [0, 0]}}, "its training scale [0, 0] is not S or Smin <= Smax "
                                          "of at least the network's image size"),
    ({"config": {"lr": shared_list()}}, "holds a config that is not valid (--lr: expected"),
]


@pytest.mark.parametrize("fields, needle", CRAFTED,
                         ids=[repr(c[0])[:40] for c in CRAFTED])
def test_crafted_checkpoint_fields_are_clear_errors_naming_the_checkpoint(run, capsys,
                                                                          fields, needle):
    """Issue 24 tracebacks (crafted step/rng/epoch/model fields, a config value reported
    as if it were a flag): each names the checkpoint and the field."""
    checkpoint = load_checkpoint(run / "last.pt")
    for key, value in fields.items():
        checkpoint[key] = (checkpoint[key] | value if key == "config" else value)
    save_checkpoint(checkpoint, run / "last.pt")
    err = refused(["--resume", str(run)], capsys, run)
    assert needle in err and str(run / "last.pt") in err and len(err) < 2500


DAMAGED = [
    ("line", "line 1 of {run}/metrics.jsonl is not a metrics row ('garbage'): "),
    ("row", "line 1 of {run}/metrics.jsonl is not a metrics row ('{{\"kind\": \"train\"}}')"),
    ("metrics.jsonl", "{run}/metrics.jsonl is not a regular file"),
    ("config.yaml", "{run}/config.yaml is not a regular file"),
]


@pytest.mark.parametrize("damage, needle", DAMAGED, ids=[d[0] for d in DAMAGED])
def test_a_damaged_run_directory_is_a_clear_error_and_keeps_its_lock_free(run, capsys,
                                                                          damage, needle):
    """Issue 24: a hand-edited metrics line, or a run file turned into a directory."""
    metrics = run / "metrics.jsonl"
    if damage == "line":
        metrics.write_text("garbage\n" + metrics.read_text())
    elif damage == "row":
        metrics.write_text('{"kind": "train"}\n' + metrics.read_text())
    else:
        (run / damage).unlink()
        (run / damage).mkdir()
    err = refused(["--resume", str(run)], capsys, run)
    assert needle.format(run=run) in err


def test_a_new_run_keeps_an_earlier_runs_files_whose_checkpoints_were_moved(run, capsys):
    """Issue 24, data loss 1 of train.py: last.pt moved away to save space; a new run in
    the directory used to truncate metrics.jsonl to 0 bytes."""
    (run / "last.pt").rename(run.parent / "moved.pt")
    err = refused(tiny(run, "--width", "0.25", "--max_steps", "1"), capsys, run)
    assert "holds files of an earlier run (config.yaml, metrics.jsonl)" in err
    assert (run / "metrics.jsonl").stat().st_size > 0


def test_ctrl_c_before_the_first_step_is_one_line_and_leaves_the_directory_reusable(
        tmp_path, capsys, monkeypatch):
    """Issue 24: a Ctrl-C while the data loads (a 50-line traceback before)."""
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "build_data", interrupted)
    assert train.main(tiny(tmp_path / "r")) == 130
    err = capsys.readouterr().err
    assert err.startswith("train.py: interrupted.") and err.count("\n") == 1
    assert "Traceback" not in err
    # The run directory it created holding nothing yet, it is removed (no lock, no config
    # left behind): the name is free to rerun.
    assert not (tmp_path / "r").exists()
    with RunDirectory.create(str(tmp_path), "r", "default", writer=True):
        pass


def test_a_network_that_became_non_finite_is_never_saved(tmp_path):
    """Issue 24: "resume from the last good checkpoint" named a checkpoint of NaN
    weights; they are not written, and the message names the one before."""
    with RunDirectory.create(str(tmp_path), "r", "default", writer=True) as run_dir:
        good = {"step": 3, "model": {"w": torch.ones(2), "steps": torch.tensor(3)}}
        run_dir.save_last(good)
        for bad in (torch.tensor([1.0, float("nan")]), torch.tensor([float("inf"), 1.0])):
            with pytest.raises(NonFiniteWeights, match=f"Last good checkpoint: {run_dir.last}"):
                run_dir.save_epoch({"step": 6, "model": {"w": bad}}, 1, is_best=True)
            with pytest.raises(NonFiniteWeights, match="by step 4"):
                run_dir.save_last({"step": 4, "model": {"w": bad}})
        assert load_checkpoint(run_dir.last)["step"] == 3
        assert not (run_dir.path / "best.pt").exists()
