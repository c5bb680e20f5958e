"""python -m vgg.reproduce end to end: the tiny Digits plan run whole, killed at random
points and restarted, and run twice at once; the paper plan's commands checked against
PAPER.md and the presets' own starting points; bad plans refused with one paragraph."""

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from vgg.checkpoint import load_checkpoint
from vgg.run_log import MetricsLog

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT.parent / "shared" / "PAPER.md"
TINY = ROOT / "configs" / "plans" / "digits_tiny.yaml"
# Where the uninterrupted fixture notes how long the whole plan took on this machine now.
SECONDS = "uninterrupted_seconds.txt"
TIMEOUT = 1800  # a hang guard: the whole tiny plan takes a few minutes on a loaded CPU


def reproduce(*argv: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vgg.reproduce", *argv], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, env=environment())


def environment() -> dict[str, str]:
    # One thread per process: the CPU is shared, and a tiny net gains nothing from more.
    return {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}


def start(plan_dir: Path, log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "vgg.reproduce", str(TINY), "--plan_dir",
                                 str(plan_dir)], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                env=environment())


def tiny_plan() -> dict:
    return yaml.safe_load(TINY.read_text())


def figures(plan_dir: Path) -> dict:
    """Every number the plan produced: each stage's validation errors per epoch and best,
    each evaluation's errors."""
    out = {}
    for stage in tiny_plan()["stages"]:
        rows = [r for r in MetricsLog.read(plan_dir / stage / "metrics.jsonl")
                if r["kind"] == "epoch"]
        checkpoint = load_checkpoint(plan_dir / stage / "last.pt")
        out[stage] = ([(r["epoch"], r["val_top1_err"], r["val_top5_err"], r["loss"])
                       for r in rows], checkpoint["best_top1"], checkpoint["epoch"])
    for path in sorted((plan_dir / "evaluations").glob("eval_*.json")):
        result = json.loads(path.read_text())
        out[path.name] = (result["top1_error"], result.get("top5_error"), result["scales"])
    return out


def launches(plan_dir: Path) -> dict[str, list[str]]:
    """Each task's launches, as the runner logged them (its header line, then the output)."""
    out = {}
    for log in sorted((plan_dir / "logs").glob("*.log")):
        parts = re.split(rf"^== {re.escape(log.stem)} \(.*$", log.read_text(), flags=re.M)
        out[log.stem] = parts[1:]
    return out


def assert_each_task_finished_once(plan_dir: Path) -> None:
    """A task that finished was never launched again, and finished exactly once."""
    for task, runs in launches(plan_dir).items():
        finished = [i for i, text in enumerate(runs)
                    if "done: best val" in text or "\nresults: " in text]
        assert finished == [len(runs) - 1], (task, len(runs), finished)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    plan_dir = tmp_path_factory.mktemp("plan") / "digits_tiny"
    started = time.monotonic()
    result = reproduce(str(TINY), "--plan_dir", str(plan_dir))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    (plan_dir / "stdout.txt").write_text(result.stdout)
    (plan_dir.parent / SECONDS).write_text(f"{time.monotonic() - started}")
    return plan_dir


def test_tiny_plan_runs_every_stage_and_evaluation_then_the_results(uninterrupted):
    plan = tiny_plan()
    for stage in plan["stages"]:
        checkpoint = load_checkpoint(uninterrupted / stage / "last.pt")
        assert checkpoint["epoch"] == plan["train"]["epochs"]
    # Each stage starts as the plan says: B's copied layers are A's, A_S40's every layer.
    a = load_checkpoint(uninterrupted / "A" / "best.pt")
    b_start = load_checkpoint(uninterrupted / "B" / "last.pt")
    assert b_start["copied_from_A"] and "features.0.weight" in b_start["copied_from_A"]
    s40 = load_checkpoint(uninterrupted / "A_S40" / "last.pt")
    assert s40["pretrained_modules"] and s40["config"]["init_from"] == str(
        uninterrupted / "A" / "best.pt")
    assert a["model_args"] == s40["model_args"]
    evaluations = sorted(p.name for p in (uninterrupted / "evaluations").glob("eval_*.json"))
    assert len(evaluations) == 4  # Table 4's dense row is also Table 5's: one evaluation
    report = (uninterrupted / "results.md").read_text()
    for name in evaluations:
        assert name in report
    # The status table shows each stage's own figure, read back from its checkpoint.
    status = reproduce(str(TINY), "--plan_dir", str(uninterrupted), "--status")
    assert status.returncode == 0, status.stderr
    for stage in plan["stages"]:
        best = load_checkpoint(uninterrupted / stage / "best.pt")["best_top1"]
        line = next(l for l in status.stdout.splitlines() if l.startswith(f"{stage} "))
        assert " done " in line and f"val top-1 err {1 - best:.2%}" in line, line
    for name in evaluations:
        result = json.loads((uninterrupted / "evaluations" / name).read_text())
        line = next(l for l in status.stdout.splitlines() if l.startswith(name[:-5]))
        assert f"top-1 err {result['top1_error']:.2%}" in line, line


def test_a_finished_plan_launches_nothing(uninterrupted):
    before = {p: p.stat().st_mtime_ns for p in uninterrupted.rglob("*") if p.is_file()
              and p.parent.name != "uninterrupted"}
    logs = launches(uninterrupted)
    result = reproduce(str(TINY), "--plan_dir", str(uninterrupted))
    assert result.returncode == 0, result.stderr
    assert launches(uninterrupted) == logs
    assert not [p for p, t in before.items() if p.name.endswith(".pt")
                and p.stat().st_mtime_ns != t]
    assert_each_task_finished_once(uninterrupted)


def descendants(pid: int) -> list[int]:
    found = []
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        for child in map(int, children.read_text().split()):
            found += [child, *descendants(child)]
    return found


def kill_runner_and_children(runner: subprocess.Popen) -> None:
    """SIGKILL the runner and its child at once: stopped first, so that it never sees its
    child die."""
    runner.send_signal(signal.SIGSTOP)
    for pid in descendants(runner.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    runner.kill()
    runner.wait()


def progress(plan_dir: Path) -> int:
    """How far a plan directory has come: its stages' metrics rows and its evaluations."""
    rows = sum(len(MetricsLog.read(path)) for path in plan_dir.glob("*/metrics.jsonl"))
    return rows + len(list(plan_dir.glob("evaluations/eval_*.json")))


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux's /proc")
def test_killed_at_random_points_and_restarted_ends_as_uninterrupted(uninterrupted,
                                                                     tmp_path):
    """Killed four times: once while the runner starts, then at three random points of its
    progress (a metrics row or an evaluation just written, a stage's checkpoint perhaps
    being saved), each time restarted. Progress, not time, places the kills: however fast
    or loaded the machine, each lands before the plan is done."""
    plan_dir, log = tmp_path / "digits_tiny", tmp_path / "runner.log"
    whole = float((uninterrupted.parent / SECONDS).read_text())
    total = progress(uninterrupted)
    rng = random.Random(23)
    kills = 0
    runner = start(plan_dir, log)
    with pytest.raises(subprocess.TimeoutExpired):  # start-up: 3% of the plan's time
        runner.wait(timeout=0.03 * whole)
    kill_runner_and_children(runner)
    kills += 1
    for point in sorted(rng.sample(range(1, total), 3)):
        runner = start(plan_dir, log)
        while runner.poll() is None and progress(plan_dir) < point:
            time.sleep(0.02)
        assert runner.poll() is None, f"the plan ended before progress {point} of {total}"
        kill_runner_and_children(runner)
        kills += 1
    runner = start(plan_dir, log)
    assert runner.wait(timeout=TIMEOUT) == 0, log.read_text()[-3000:]
    assert kills == 4
    assert figures(plan_dir) == figures(uninterrupted)
    assert_each_task_finished_once(plan_dir)
    assert sum(len(runs) for runs in launches(plan_dir).values()) > len(launches(plan_dir))


@pytest.mark.slow
def test_two_invocations_at_once_never_run_a_task_twice(tmp_path):
    plan_dir, log = tmp_path / "digits_tiny", tmp_path / "runner.log"
    first = start(plan_dir, log)
    while not (plan_dir / ".reproduce" / "A" / ".lock").exists():
        assert first.poll() is None, log.read_text()
        time.sleep(0.1)
    second = start(plan_dir, log)
    codes = {first.wait(timeout=TIMEOUT), second.wait(timeout=TIMEOUT)}
    assert codes <= {0, 3}, log.read_text()[-3000:]  # 3: left tasks running in the other
    assert reproduce(str(TINY), "--plan_dir", str(plan_dir)).returncode == 0
    assert {task: len(runs) for task, runs in launches(plan_dir).items()} == dict.fromkeys(
        launches(plan_dir), 1)


# ----------------------------------------------------------------- the paper's plan


def paper_rows(table: int) -> list[tuple[str, str, str]]:
    """(config, train S, test Q) of every row of PAPER.md's Table 3 or 4."""
    text = PAPER.read_text()
    section = text.split(f"Table {table},")[1].split("\n\n")[1]
    rows = []
    for line in section.splitlines()[2:]:
        config, train_s, test_q = [c.strip() for c in line.strip("|").split("|")][:3]
        rows.append((config, train_s, test_q))
    return rows


def preset_setting(preset: Path, flags: list[str]) -> tuple[str, str]:
    """(config, train S) in the paper's notation, as the preset and the command set them."""
    values = yaml.safe_load(preset.read_text())
    version = values["model_version"].replace("_lrn", "-LRN")
    smin, smax = values["train_scale"]
    assert "--model_version" not in flags and "--train_scale" not in flags
    return version, str(smin) if smin == smax else f"[{smin};{smax}]"


def dry_run_commands() -> list[list[str]]:
    result = reproduce("paper_imagenet", "--plan_dir", "/nonexistent/plan", "--dry_run")
    assert result.returncode == 0, result.stderr
    return [line.split() for line in result.stdout.splitlines() if not line.startswith("#")]


def flag(command: list[str], name: str) -> list[str]:
    """The values after --name, up to the next flag."""
    if f"--{name}" not in command:
        return []
    rest = command[command.index(f"--{name}") + 1:]
    return rest[:next((i for i, v in enumerate(rest) if v.startswith("--")), len(rest))]


def test_paper_plan_dry_run_trains_every_table_row_in_the_papers_order():
    commands = dry_run_commands()
    trains = [c for c in commands if c[1].endswith("train.py")]
    evaluations = [c for c in commands if c[1].endswith("evaluate.py")]
    assert commands == trains + evaluations  # training first, then every evaluation
    position = {flag(c, "run_name")[0]: i for i, c in enumerate(trains)}
    setting = {flag(c, "run_name")[0]: preset_setting(Path(flag(c, "config")[0]), c)
               for c in trains}
    stage_of = {s: name for name, s in setting.items()}
    # Every Table 3 row (config, S) is trained, by exactly one stage.
    assert sorted(setting.values()) == sorted({(c, s) for c, s, _ in paper_rows(3)})
    # Sec. 3.1's chain, as PAPER.md states it, each stage after the one it starts from.
    paper = " ".join(PAPER.read_text().split())  # its sentences, whatever their line breaks
    assert "The S = 384 net was initialised from the S = 256 net" in paper
    assert "fine-tuned from a single-scale net of the same config trained with S = 384" in paper
    assert re.search(r"Deeper nets were initialised with the first four conv layers.*of a "
                     r"trained net A", paper)
    for name, command in zip(position, trains, strict=True):
        config, train_s = setting[name]
        started = flag(command, "init_from") or flag(command, "init_from_A")
        source = Path(started[0]).parent.name if started else None
        if train_s == "384":
            expected = (config, "256")
        elif train_s == "[256;512]":
            expected = (config, "384")
        elif config in ("A", "A-LRN"):
            expected = None  # random initialisation (A-LRN as A, the presets' header says)
        else:
            expected = ("A", "256")
            assert flag(command, "init") == ["from_A"]
        assert (setting[source] if source else None) == expected, name
        if source:
            assert position[source] < position[name]
        # The presets' own starting points agree: runs/<preset>/best.pt.
        own = yaml.safe_load(Path(flag(command, "config")[0]).read_text()).get("init_from")
        if own:
            assert setting[Path(own).parent.name] == expected
    # Tables 3 and 4: every row evaluated with its Q; Table 5's methods; Table 6's ensemble.
    evaluated = {}
    for command in evaluations:
        members = [Path(p).parent.name for p in flag(command, "checkpoint")]
        protocol = (flag(command, "protocol") or ["dense"])[0]
        key = (" & ".join(setting[m][0] for m in members), setting[members[0]][1],
               ",".join(flag(command, "scale")[0].split(",")), protocol)
        evaluated[key] = evaluated.get(key, 0) + 1
        assert flag(command, "split") == ["val"]
        assert all(position[m] < len(trains) for m in members)
    wanted = {(c, s, q, "dense") for table in (3, 4) for c, s, q in paper_rows(table)}
    wanted |= {(c, "[256;512]", "256,384,512", p) for c in ("D", "E")
               for p in ("dense", "multicrop", "dense+multicrop")}
    wanted.add(("D & E", "[256;512]", "256,384,512", "dense+multicrop"))
    assert set(evaluated) == wanted
    assert set(evaluated.values()) == {1}  # Table 4's dense rows are Table 5's: run once
    assert {stage_of[(c, s)] for c, s, _, _ in wanted if "&" not in c} <= set(position)


def test_until_and_stages_select_a_stage_and_what_it_needs():
    def dry_run(*argv):
        result = reproduce(str(TINY), "--plan_dir", "/nonexistent/plan", "--dry_run", *argv)
        assert result.returncode == 0, result.stderr
        return [line[2:].split(":")[0] for line in result.stdout.splitlines()
                if line.startswith("# ")]
    assert dry_run("--until", "A_S40") == ["A", "A_S40", "eval_A_dense_single"]
    assert dry_run("--until", "A_S32-48") == ["A", "A_S40", "A_S32-48", "eval_A_dense_single",
                                              "eval_A_S32-48_dense_multi",
                                              "eval_A_S32-48_multicrop_multi"]
    assert dry_run("--stages", "A", "B") == ["A", "B", "eval_A_dense_single",
                                            "eval_A+B_dense_single"]


# ----------------------------------------------------------------------- bad plans


def write_plan(tmp_path: Path, stages: dict, evaluations: dict | None = None) -> Path:
    plan = tmp_path / "bad.yaml"
    plan.write_text(yaml.safe_dump({"train": {"width": 0.125}, "stages": stages,
                                    "evaluations": evaluations or {}}))
    return plan


DIGITS = {"preset": "quickstart_digits"}
BAD_PLANS = {
    "cycle": ({"A": DIGITS, "B": {**DIGITS, "init_from": "C.best"},
               "C": {**DIGITS, "init_from": "B.best"}}, None,
              ["cycle", "B -> C -> B"]),
    "unknown stage": ({"A": DIGITS, "B": {**DIGITS, "init_from": "Z.best"}}, None,
                      ["unknown stage 'Z'", "A, B"]),
    "unknown evaluated stage": ({"A": DIGITS}, {"Table 3": [{"stages": ["AA"]}]},
                                ["unknown stage 'AA'", "did you mean 'A'"]),
    "missing preset": ({"A": {"preset": "quickstart_digit"}}, None,
                       ["no preset 'quickstart_digit'", "did you mean 'quickstart_digits'"]),
    "another network": ({"A": DIGITS, "B": {**DIGITS, "fc_width": 64, "init_from": "A.best"}},
                        None, ["stage B fine-tunes every layer of stage A", "fc_width 512 "
                               "there, 64 here"]),
    "net A is not A": ({"B": {**DIGITS, "model_version": "B"},
                        "D": {**DIGITS, "model_version": "D", "init_from_A": "B"}}, None,
                       ["stage D copies", "version 'B' there, 'A' here"]),
    "preset outside the plan": ({"C": {"preset": "C_S384"}}, None,
                                ["starts from runs/C_S256/best.pt, a run outside this plan"]),
    "bad option": ({"A": {**DIGITS, "lr": -1}}, None, ["stage A", "--lr must be positive"]),
    "runner's option": ({"A": {**DIGITS, "run_name": "x"}}, None,
                        ["'run_name' is set by the runner"]),
}


@pytest.mark.parametrize("case", BAD_PLANS)
def test_bad_plans_are_refused_with_one_paragraph_before_anything_runs(tmp_path, case):
    stages, evaluations, phrases = BAD_PLANS[case]
    plan_dir = tmp_path / "runs"
    result = reproduce(str(write_plan(tmp_path, stages, evaluations)), "--plan_dir",
                       str(plan_dir))
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("vgg.reproduce: error: ")
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1
    for phrase in phrases:
        assert phrase in result.stderr
    assert not plan_dir.exists()


def test_a_run_directory_of_another_network_is_reported_and_nothing_starts_from_it(
        uninterrupted, tmp_path):
    """The plan changed after a stage ran: the stage's checkpoint, not the plan, is what
    its dependents would start from; train.py would refuse to resume it."""
    plan_dir = tmp_path / "runs"
    plan_dir.mkdir()
    (plan_dir / "A").symlink_to(uninterrupted / "A")  # A ran at the tiny plan's FC width 32
    plan = write_plan(tmp_path, {"A": DIGITS, "B": {**DIGITS, "init_from": "A.best"}})
    result = reproduce(str(plan), "--plan_dir", str(plan_dir), "--stages", "B")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "B: waits for A" in result.stdout
    status = reproduce(str(plan), "--plan_dir", str(plan_dir), "--status").stdout
    line = next(l for l in status.splitlines() if l.startswith("A "))
    assert " failed " in line and "holds another network" in line
    assert "fc_width 32 there, 512 here" in line
    assert not (plan_dir / "B").exists()
