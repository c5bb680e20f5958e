"""The paper's experimental protocol in one command: a plan of training stages and
evaluations, run in dependency order, each stage an ordinary train.py run and each
evaluation an ordinary evaluate.py run, then vgg.results over the plan's evaluations.

    python -m vgg.reproduce paper_imagenet                   # configs/plans/paper_imagenet.yaml
    python -m vgg.reproduce digits_tiny --dry_run            # the commands, in order
    python -m vgg.reproduce paper_imagenet --status          # what is done, running, to do
    python -m vgg.reproduce paper_imagenet --until C_S384    # C_S384 and what it needs
    python -m vgg.reproduce paper_imagenet --stages D_S256 D_S384
    python -m vgg.reproduce paper_imagenet --launcher "torchrun --nproc_per_node 4"

A plan (YAML, read with ``yaml.safe_load``) names its stages, each a preset of configs/
with train.py options, and where it starts: ``init_from: <stage>.best`` (fine-tuned from
that stage's best.pt, Sec. 3.1's S=384 from S=256) or ``init_from_A: <stage>`` (Sec. 3.1's
deeper nets from net A). Its evaluations, grouped by the paper's Tables, name the stages
whose networks they evaluate and evaluate.py's options (the Table's protocol and Q).

Everything lives in one plan directory (``--plan_dir``, default runs/<plan name>): a run
directory per stage (train.py owns it), ``evaluations/eval_<name>.json``, ``logs/<task>.log``
(each launch's output, appended), ``results.md``/``results.csv``, and ``.reproduce/<task>/``
(the runner's lock and a failed launch's record). Running the command again skips what is
done, continues an interrupted stage (train.py --resume auto) and relaunches a failed one.
Two invocations on one plan directory share the work: a task locked by a live process is
left to it. Exit status: 0 all selected tasks done, 1 one failed, 2 a bad plan, 3 some are
running in another process, 128+N stopped by signal N (the stage in progress saved first).
"""

from __future__ import annotations

import ctypes
import dataclasses
import difflib
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from config import Config, EvalConfig
from vgg import configuration, results
from vgg.atomic import replace_atomically
from vgg.checkpoint import load_checkpoint
from vgg.configuration import ConfigError
from vgg.errors import UserError, run_cli
from vgg.run_dir import RunDirectoryError, RunLock, checkpoint_path, lock_holder

REPO = Path(__file__).resolve().parents[1]
PLANS, PRESETS = REPO / "configs" / "plans", REPO / "configs"
PLAN_KEYS = ("launcher", "train", "evaluate", "stages", "evaluations")
# Options the runner sets itself: where each run lives and that it resumes.
RUNNER_TRAIN_FLAGS = ("out_dir", "run_name", "resume", "config")
RUNNER_EVAL_FLAGS = ("checkpoint", "out", "torchvision_weights", "config")
RESERVED_NAMES = ("evaluations", "logs", "results")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
# What makes two networks the same: a checkpoint a stage starts from must agree on these
# (init_from_A's net A on all but the version, as vgg.model.copy_from_A requires).
NETWORK_KEYS = ("version", "batch_norm", "width", "fc_width", "image_size", "num_classes",
                "in_channels")
EXIT_FAILED, EXIT_ELSEWHERE = 1, 3


class PlanError(UserError):
    """A plan that cannot run: its file, a stage, a dependency or an option."""


# ------------------------------------------------------------------------------ the plan


@dataclasses.dataclass
class Stage:
    """A training stage: train.py with ``preset`` and ``flags``, in the run directory
    ``<plan_dir>/<name>``, starting from another stage's checkpoint or not."""

    name: str
    preset: Path
    flags: dict[str, Any]
    start: tuple[str, str, str] | None = None  # (key, stage, checkpoint file) it starts from

    @property
    def needs(self) -> list[str]:
        return [self.start[1]] if self.start else []

    def argv(self, plan_dir: Path) -> list[str]:
        """train.py's arguments: continue the run directory if it holds a checkpoint."""
        argv = ["--config", str(self.preset), *flag_args(self.flags),
                "--out_dir", str(plan_dir), "--run_name", self.name, "--resume", "auto"]
        if self.start:
            key, stage, file = self.start
            checkpoint = str(plan_dir / stage / file)
            argv += (["--init_from", checkpoint] if key == "init_from"
                     else ["--init", "from_A", "--init_from_A", checkpoint])
        return argv


@dataclasses.dataclass
class Evaluation:
    """evaluate.py on the best checkpoints of ``stages`` (several: an ensemble), with
    ``flags``; ``tables`` are the plan's headings that list it."""

    name: str
    stages: list[str]
    flags: dict[str, Any]
    tables: list[str]

    @property
    def needs(self) -> list[str]:
        return list(self.stages)

    def output(self, plan_dir: Path) -> Path:
        return plan_dir / "evaluations" / f"eval_{self.name}.json"

    def argv(self, plan_dir: Path) -> list[str]:
        return ["--checkpoint", *(str(plan_dir / s / "best.pt") for s in self.stages),
                *flag_args({"progress": False} | self.flags), "--out",
                str(self.output(plan_dir))]


@dataclasses.dataclass
class Plan:
    path: Path
    launcher: list[str]
    stages: dict[str, Stage]  # in dependency order
    evaluations: dict[str, Evaluation]

    @property
    def name(self) -> str:
        return self.path.stem


def flag_args(values: Mapping[str, Any]) -> list[str]:
    """``--key value`` as train.py and evaluate.py read them (lists comma-separated)."""
    def text(value: Any) -> str:
        if isinstance(value, bool):
            return str(value).lower()
        if isinstance(value, (list, tuple)):
            return ",".join(map(text, value))
        return "none" if value is None else str(value)
    return [part for key, value in values.items() for part in (f"--{key}", text(value))]


def plan_path(name: str) -> Path:
    """A plan file, or the name of one in configs/plans/."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    return PLANS / f"{name}.yaml"


def close_match(word: str, known: list[str]) -> str:
    found = difflib.get_close_matches(word, known, n=1)
    return f" (did you mean {found[0]!r}?)" if found else ""


def check_keys(where: str, given: Mapping[str, Any], allowed: list[str],
               runner_owned: tuple[str, ...] = ()) -> None:
    for key in given:
        if key in runner_owned:
            raise PlanError(f"{where}: {key!r} is set by the runner (each stage runs in "
                            "<plan_dir>/<stage> and resumes there); leave it out")
        if key not in allowed:
            raise PlanError(f"{where}: unknown key {key!r}{close_match(str(key), allowed)}; "
                            f"valid keys: {', '.join(allowed)}")


def mapping(value: Any, where: str) -> dict[str, Any]:
    """A section of the plan: a mapping, or nothing."""
    if isinstance(value, dict) or value is None:
        return value or {}
    raise PlanError(f"{where} must be a mapping of key: value, got {type(value).__name__}")


def load_plan(path: Path, launcher: str | None = None) -> Plan:
    """The plan at ``path``, checked whole before anything runs: its keys, every stage's
    preset and options, every dependency (known, acyclic, of the same network)."""
    if not path.is_file():
        known = sorted(p.stem for p in PLANS.glob("*.yaml"))
        raise PlanError(f"no plan file {path}; the plans in {PLANS}: {', '.join(known)}")
    data = configuration.load_yaml(path)
    where = f"plan {path}"
    check_keys(where, data, list(PLAN_KEYS))
    train_defaults = mapping(data.get("train"), f"{where}, train")
    eval_defaults = mapping(data.get("evaluate"), f"{where}, evaluate")
    stages = read_stages(mapping(data.get("stages"), f"{where}, stages"), train_defaults,
                         where)
    if not stages:
        raise PlanError(f"{where} names no stages: add stages: {{NAME: {{preset: ...}}}}")
    evaluations = read_evaluations(mapping(data.get("evaluations"), f"{where}, evaluations"),
                                   eval_defaults, stages, where)
    order = dependency_order(stages, where)
    plan = Plan(path, shlex.split(launcher or str(data.get("launcher") or "")) or
                [sys.executable], {name: stages[name] for name in order}, evaluations)
    check_networks(plan)
    return plan


def read_stages(entries: dict[str, Any], defaults: dict[str, Any], where: str
                ) -> dict[str, Stage]:
    train_keys = [f.name for f in dataclasses.fields(Config)]
    check_keys(f"{where}, train", defaults, train_keys, RUNNER_TRAIN_FLAGS)
    stages = {}
    for name, entry in entries.items():
        here = f"{where}, stage {name}"
        if not isinstance(name, str) or not NAME.fullmatch(name) or name in RESERVED_NAMES:
            raise PlanError(f"{here}: a stage name is its run directory's: letters, digits "
                            f"and _ . + -, not {', '.join(RESERVED_NAMES)}")
        entry = dict(mapping(entry, here))
        check_keys(here, entry, ["preset", "init_from", "init_from_A", *train_keys],
                   RUNNER_TRAIN_FLAGS)
        if "preset" not in entry:
            raise PlanError(f"{here}: no preset (a configs/<preset>.yaml to train with)")
        preset = PRESETS / f"{entry.pop('preset')}.yaml"
        if not preset.is_file():
            known = sorted(p.stem for p in PRESETS.glob("*.yaml"))
            raise PlanError(f"{here}: no preset {preset.stem!r}{close_match(preset.stem, known)}"
                            f" in {PRESETS}; the presets: {', '.join(known)}")
        if entry.get("init_from", "") in (None, "none"):  # start from scratch, whatever
            entry["init_from"] = None                      # the preset starts from: a flag
            starts = []
        else:
            starts = [(key, entry.pop(key)) for key in ("init_from", "init_from_A")
                      if key in entry]
        if len(starts) > 1:
            raise PlanError(f"{here}: give init_from (fine-tune every layer) or init_from_A "
                            "(Sec. 3.1's layers of net A), not both")
        stages[name] = Stage(name, preset, defaults | entry,
                             start_point(here, *starts[0]) if starts else None)
    for stage in stages.values():
        if stage.start and stage.start[1] not in stages:
            raise PlanError(f"{where}, stage {stage.name}: {stage.start[0]}: unknown stage "
                            f"{stage.start[1]!r}{close_match(stage.start[1], list(stages))}; "
                            f"the plan's stages: {', '.join(stages)}")
    return stages


def start_point(where: str, key: str, value: Any) -> tuple[str, str, str]:
    """``init_from: <stage>.best`` (or ``.last``), ``init_from_A: <stage>`` (its best.pt)."""
    if not isinstance(value, str):
        raise PlanError(f"{where}: {key} names a stage of this plan (<stage>.best), got "
                        f"{value!r}")
    stage, _, file = value.rpartition(".") if value.endswith((".best", ".last")) else (
        value, "", "best")
    return key, stage, f"{file}.pt"


def read_evaluations(groups: dict[str, Any], defaults: dict[str, Any],
                     stages: dict[str, Stage], where: str) -> dict[str, Evaluation]:
    """Each heading's (a Table's) evaluations; one listed under several headings (Table
    4's dense row is Table 5's) runs once."""
    eval_keys = [f.name for f in dataclasses.fields(EvalConfig)]
    check_keys(f"{where}, evaluate", defaults, eval_keys, RUNNER_EVAL_FLAGS)
    evaluations: dict[str, Evaluation] = {}
    for table, entries in groups.items():
        if not isinstance(entries, list):
            raise PlanError(f"{where}, evaluations, {table}: a list of evaluations "
                            "({stages: [STAGE, ...], <evaluate.py option>: value, ...})")
        for entry in entries:
            here = f"{where}, evaluations, {table}"
            entry = dict(mapping(entry, here))
            check_keys(here, entry, ["stages", "name", *eval_keys], RUNNER_EVAL_FLAGS)
            named = entry.pop("stages", None)
            if not (isinstance(named, list) and named):
                raise PlanError(f"{here}: each evaluation names its stages: stages: [STAGE] "
                                "(several: an ensemble)")
            for stage in named:
                if stage not in stages:
                    raise PlanError(f"{here}: unknown stage {stage!r}"
                                    f"{close_match(str(stage), list(stages))}; the plan's "
                                    f"stages: {', '.join(stages)}")
            flags = defaults | entry
            resolved = evaluation_config(here, flags)
            name = str(flags.pop("name", None) or default_name(named, resolved))
            if not NAME.fullmatch(name):
                raise PlanError(f"{here}: evaluation name {name!r}: letters, digits, _ . + -")
            same = evaluations.get(name)
            if same and (same.stages, evaluation_config(here, same.flags)) != (named,
                                                                                resolved):
                raise PlanError(f"{here}: two different evaluations are both named {name!r}: "
                                "give one a name: of its own")
            if same:
                same.tables.append(str(table))
            else:
                evaluations[name] = Evaluation(name, named, flags, [str(table)])
    return evaluations


def evaluation_config(where: str, flags: dict[str, Any]) -> dict[str, Any]:
    """evaluate.py's whole configuration for ``flags``, checked as evaluate.py checks it."""
    try:
        cfg, _ = configuration.parse_args(EvalConfig, flag_args(flags))
    except ConfigError as error:
        raise PlanError(f"{where}: {error}") from None
    return configuration.to_dict(cfg)


def default_name(stages: list[str], cfg: dict[str, Any]) -> str:
    """``<stages>_<protocol>_<Q>``: the stage names joined by +, Q's values by -."""
    return (f"{'+'.join(stages)}_{cfg['protocol'].replace('+', '_')}_"
            f"{'-'.join(map(str, cfg['scale'] or ['single']))}")


def dependency_order(stages: dict[str, Stage], where: str) -> list[str]:
    """The stages, each after the one it starts from, otherwise in the plan's order; a
    cycle is named in full."""
    order: list[str] = []
    visiting: list[str] = []

    def visit(name: str) -> None:
        if name in order:
            return
        if name in visiting:
            cycle = visiting[visiting.index(name):] + [name]
            raise PlanError(f"{where}: the stages start from each other in a cycle: "
                            f"{' -> '.join(cycle)} (each starts from the next); one of them "
                            "must start from scratch or from a stage outside the cycle")
        visiting.append(name)
        for need in stages[name].needs:
            visit(need)
        visiting.pop()
        order.append(name)

    for name in stages:
        visit(name)
    return order


# ---------------------------------------------------------------------- stage networks


def stage_config(stage: Stage, plan_dir: Path, base: dict[str, Any] | None = None) -> Config:
    """The config train.py will run the stage with (``base``: its checkpoint's config, as
    train.py's --resume reads it)."""
    try:
        cfg, _ = configuration.parse_args(Config, stage.argv(plan_dir), base=base)
    except ConfigError as error:
        raise PlanError(f"stage {stage.name} ({stage.preset.name} with the plan's options): "
                        f"{error}") from None
    return cfg


def network_of(cfg: Config) -> dict[str, Any]:
    """The network a config trains, as a checkpoint's model_args record it (the data's
    classes and channels where its spec is fixed; None where they come from its files)."""
    from vgg.data import dataset_spec

    try:
        spec = dataset_spec(cfg.dataset)
    except UserError:  # an ImageFolder: measured from its files, not known beforehand
        spec = None
    return {"version": cfg.model_version, "batch_norm": cfg.batch_norm, "width": cfg.width,
            "fc_width": cfg.fc_width,
            "image_size": cfg.image_size or (spec.image_size if spec else None),
            "num_classes": spec.num_classes if spec else None,
            "in_channels": spec.in_channels if spec else None}


def network_differences(wanted: dict[str, Any], there: dict[str, Any]) -> list[str]:
    """What differs between two networks, as "<key> <there> there, <wanted> here"."""
    return [f"{k} {there.get(k)!r} there, {wanted[k]!r} here" for k in NETWORK_KEYS
            if wanted.get(k) is not None and there.get(k) is not None and wanted[k] != there[k]]


def network_mismatch(stage: Stage, wanted: dict[str, Any], source: dict[str, Any],
                     source_name: str) -> str | None:
    """Why ``stage`` (``wanted``) cannot start from the network ``source`` (None: it can)."""
    assert stage.start is not None  # asked only of a stage that starts from another
    key = stage.start[0]
    differing = network_differences(
        dict(wanted) | ({"version": "A"} if key == "init_from_A" else {}), source)
    if not differing:
        return None
    what = ("fine-tunes every layer of" if key == "init_from"
            else "copies Sec. 3.1's layers (the first four convs, the three FCs) of net A,")
    return (f"stage {stage.name} {what} {source_name}, but the networks differ: "
            f"{'; '.join(differing)}. Give both stages the same network options "
            "(model_version, batch_norm, width, fc_width, image_size, dataset), or start "
            f"{stage.name} from a stage of its own network")


def check_networks(plan: Plan) -> None:
    """Every stage starts from a checkpoint of its own network, as the plan's configs
    say; and no preset starts from a run outside the plan."""
    configs = {name: stage_config(stage, Path("runs")) for name, stage in plan.stages.items()}
    for name, stage in plan.stages.items():
        if stage.start is None:
            outside = configs[name].init_from or configs[name].init_from_A
            if outside:
                raise PlanError(
                    f"plan {plan.path}, stage {name}: its preset {stage.preset.name} starts "
                    f"from {outside}, a run outside this plan: name the stage it starts from "
                    "(init_from: <stage>.best, or init_from_A: <stage> for net A), or set "
                    "init_from: null to start from scratch")
            continue
        source = stage.start[1]
        problem = network_mismatch(stage, network_of(configs[name]),
                                   network_of(configs[source]), f"stage {source}")
        if problem:
            raise PlanError(f"plan {plan.path}: {problem}")


# ------------------------------------------------------------------------ task states


@dataclasses.dataclass
class State:
    """A task's state (done, running, to do, failed) and its figure."""

    state: str
    figure: str = ""


class Runner:
    """Runs a plan's tasks in ``plan_dir``; one owner of the runner's files there."""

    def __init__(self, plan: Plan, plan_dir: Path, echo=print):
        self.plan, self.dir, self.echo = plan, plan_dir.resolve(), echo
        self.signum: int | None = None
        self.child: subprocess.Popen | None = None

    # --- where things are
    def task_dir(self, task: str) -> Path:
        return self.dir / ".reproduce" / task

    def log(self, task: str) -> Path:
        return self.dir / "logs" / f"{task}.log"

    def failure(self, task: str) -> Path:
        return self.task_dir(task) / "failed.yaml"

    # --- states
    def stage_checkpoint(self, stage: Stage) -> dict[str, Any] | None:
        path = checkpoint_path(self.dir / stage.name)
        return load_checkpoint(path, mmap=True) if path.is_file() else None

    def stage_state(self, stage: Stage) -> State:
        checkpoint = self.stage_checkpoint(stage)
        differing = checkpoint and network_differences(
            network_of(stage_config(stage, self.dir)), checkpoint.get("model_args", {}))
        if differing:  # train.py would refuse to resume it
            return State("failed", f"{self.dir / stage.name} holds another network than the "
                                   f"plan's ({'; '.join(differing)}): move it away to train "
                                   "the plan's")
        if checkpoint is not None and self.finished(stage, checkpoint):
            return State("done", f"val top-1 err {1 - checkpoint['best_top1']:.2%}, best of "
                                 f"{checkpoint['epoch']} epochs ({checkpoint['step']} steps)")
        where = (f"epoch {checkpoint['epoch'] + 1}, step {checkpoint['step']}"
                 if checkpoint else "")
        return self.unfinished(stage.name, self.dir / stage.name / ".lock",
                               f"resumes at {where}" if where else "")

    def finished(self, stage: Stage, checkpoint: dict[str, Any]) -> bool:
        """As train.py's loop ends: every epoch the plan asks for, or its max_steps."""
        cfg = stage_config(stage, self.dir, base=checkpoint.get("config"))
        return (checkpoint.get("epoch", 0) >= cfg.epochs or cfg.max_steps is not None
                and checkpoint.get("step", 0) >= cfg.max_steps) and \
            (self.dir / stage.name / "best.pt").is_file()

    def evaluation_state(self, evaluation: Evaluation) -> State:
        output = evaluation.output(self.dir)
        if output.is_file() and all(
                output.stat().st_mtime >= (self.dir / s / "best.pt").stat().st_mtime
                for s in evaluation.stages if (self.dir / s / "best.pt").is_file()):
            row = results.load_evaluation(output).row
            top5 = row.get("top5_error")
            return State("done", f"top-1 err {row['top1_error']:.2%}"
                         + (f", top-5 err {top5:.2%}" if top5 is not None else "")
                         + f" (Q={row['test_Q']})")
        return self.unfinished(f"eval_{evaluation.name}", None,
                               "stale: a stage it evaluates trained on" if output.is_file()
                               else "")

    def unfinished(self, task: str, run_lock: Path | None, progress: str) -> State:
        holder = lock_holder(self.task_dir(task) / ".lock") or (
            lock_holder(run_lock) if run_lock else None)
        if holder:
            return State("running", ", ".join(filter(None, [holder, progress])))
        failure = self.failure(task)
        if failure.is_file():
            record = yaml.safe_load(failure.read_text())
            return State("failed", f"exit {record['exit']}: {record['reason']} (log: "
                                   f"{self.log(task)})")
        return State("to do", progress)

    def state(self, task: Stage | Evaluation) -> State:
        return (self.stage_state(task) if isinstance(task, Stage)
                else self.evaluation_state(task))

    # --- what to run
    def tasks(self, selected: set[str] | None) -> Iterator[tuple[str, Stage | Evaluation]]:
        """Every task in order (stages, then evaluations), with its log name; ``selected``
        stage names (None: all) and the evaluations of selected stages only."""
        for name, stage in self.plan.stages.items():
            if selected is None or name in selected:
                yield name, stage
        for name, evaluation in self.plan.evaluations.items():
            if selected is None or set(evaluation.stages) <= selected:
                yield f"eval_{name}", evaluation

    def command(self, task: Stage | Evaluation) -> list[str]:
        script = REPO / ("train.py" if isinstance(task, Stage) else "evaluate.py")
        return [*self.plan.launcher, str(script), *task.argv(self.dir)]

    def check_start(self, stage: Stage) -> None:
        """The checkpoint a stage starts from, as recorded, against the stage's network
        (the plan may have changed since that stage ran)."""
        if stage.start is None:
            return
        _, source, file = stage.start
        recorded = load_checkpoint(self.dir / source / file, mmap=True).get("model_args", {})
        problem = network_mismatch(stage, network_of(stage_config(stage, self.dir)),
                                   recorded, str(self.dir / source / file))
        if problem:
            raise PlanError(problem)

    # --- running
    def run(self, selected: set[str] | None) -> int:
        done: set[str] = set()
        failed: list[str] = []
        elsewhere: list[str] = []
        for task_name, task in self.tasks(selected):
            if self.signum is not None:
                break
            if self.state(task).state == "done":
                done.add(task_name)
                continue
            waiting = [n for n in task.needs if n not in done
                       and self.stage_state(self.plan.stages[n]).state != "done"]
            if waiting:
                self.echo(f"== {task_name}: waits for {', '.join(waiting)}")
                continue
            outcome = self.launch(task_name, task)
            if outcome == "done":
                done.add(task_name)
            elif outcome == "elsewhere":
                elsewhere.append(task_name)
            elif outcome == "failed":
                failed.append(task_name)
        if self.signum is not None:
            return 128 + self.signum
        if failed:
            self.echo(f"failed: {', '.join(failed)} (their logs: {self.dir / 'logs'})")
            return EXIT_FAILED
        if elsewhere:
            self.echo(f"running in another process: {', '.join(elsewhere)}; run this command "
                      "again when they end, for what needs them")
            return EXIT_ELSEWHERE
        return 0 if all(self.state(t).state == "done" for _, t in self.tasks(selected)) \
            else EXIT_FAILED

    def launch(self, task_name: str, task: Stage | Evaluation) -> str:
        """Run one task under its lock: done, failed, elsewhere (another process has it)
        or stopped (a signal came)."""
        lock = RunLock(self.task_dir(task_name))
        try:
            self.task_dir(task_name).mkdir(parents=True, exist_ok=True)
            lock.acquire()
        except RunDirectoryError as error:
            if lock.path.exists():
                return "elsewhere"
            raise PlanError(f"cannot lock {task_name} in {self.dir}: {error}") from None
        try:
            state = self.state(task)  # again under the lock: another process may have ended it
            if state.state in ("done", "running"):
                return "done" if state.state == "done" else "elsewhere"
            if isinstance(task, Stage):
                self.check_start(task)
            self.failure(task_name).unlink(missing_ok=True)
            exit_code = self.execute(task_name, self.command(task))
            if exit_code == 0 and self.state(task).state == "done":
                return "done"
            if self.signum is not None or exit_code in (128 + signal.SIGINT,
                                                         128 + signal.SIGTERM):
                self.signum = self.signum or exit_code - 128  # stopped: so is the plan
                return "stopped"
            self.record_failure(task_name, exit_code)
            return "failed"
        finally:
            lock.release()

    def execute(self, task_name: str, command: list[str]) -> int:
        """Run ``command``, its output appended to the task's log and echoed from there
        (a file, not a pipe: the child never dies of a closed pipe)."""
        log = self.log(task_name)
        log.parent.mkdir(parents=True, exist_ok=True)
        header = f"== {task_name} ({time.strftime('%Y-%m-%d %H:%M:%S')}): {shlex.join(command)}"
        self.echo(header, flush=True)
        with open(log, "ab") as out:
            out.write(f"{header}\n".encode())
            out.flush()
            start = out.tell()
            env = os.environ | {"PYTHONUNBUFFERED": "1"}
            # Its own session: a Ctrl-C reaches the runner alone, which passes it on once
            # (twice would abort train.py's checkpoint); if the runner dies, so does it.
            self.child = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                          env=env, start_new_session=True,
                                          preexec_fn=die_with_parent(os.getpid()))
        with open(log, "rb") as follow:
            follow.seek(start)
            while True:
                try:
                    exit_code = self.child.wait(timeout=0.5)
                except subprocess.TimeoutExpired:
                    exit_code = None
                sys.stdout.buffer.write(follow.read())
                sys.stdout.flush()
                if exit_code is not None:
                    break
        self.child = None
        return exit_code

    def record_failure(self, task_name: str, exit_code: int) -> None:
        lines = [line for line in self.log(task_name).read_text(errors="replace").splitlines()
                 if line.strip()]
        errors = [line for line in lines if ": error:" in line or "Error" in line]
        reason = (errors or lines or ["no output"])[-1].strip()
        if exit_code < 0:
            reason = f"killed by {signal.Signals(-exit_code).name}; last output: {reason}"
        with replace_atomically(self.failure(task_name)) as f:
            f.write(yaml.safe_dump({"exit": exit_code, "reason": reason,
                                    "time": time.strftime("%Y-%m-%d %H:%M:%S")}))

    def on_signal(self, signum: int, frame) -> None:
        """SIGINT/SIGTERM: passed on to the task in progress (train.py saves and exits);
        no further task starts."""
        self.signum = signum
        if self.child is not None and self.child.poll() is None:
            os.kill(self.child.pid, signum)

    # --- reporting
    def status_table(self, selected: set[str] | None) -> str:
        rows = [("task", "state", "figure", "needs")]
        for task_name, task in self.tasks(selected):
            state = self.state(task)
            label = task_name if isinstance(task, Stage) else \
                f"{task_name} [{', '.join(task.tables)}]"
            rows.append((label, state.state, state.figure, ", ".join(task.needs)))
        widths = [max(len(row[i]) for row in rows) for i in range(3)]
        lines = ["  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths,
                                                                    strict=True))
                 + "  " + row[3] for row in rows]
        return "\n".join(line.rstrip() for line in lines)

    def write_results(self) -> str | None:
        """vgg.results over the plan's finished evaluations: results.md and results.csv."""
        files = [e.output(self.dir) for e in self.plan.evaluations.values()
                 if self.evaluation_state(e).state == "done"]
        if not files:
            return None
        rows = results.compared_rows([results.load_evaluation(path) for path in files])
        report = (f"## Plan {self.plan.name} ({self.plan.path}), in {self.dir}\n\n"
                  + results.markdown_report(rows) + "\n")
        with replace_atomically(self.dir / "results.md") as f:
            f.write(report)
        results.write_csv(rows, self.dir / "results.csv")
        return report


def die_with_parent(parent: int):
    """A child's pre-exec step: SIGTERM to it when the runner dies (Linux), so that a
    killed runner's stage saves and ends instead of running on unlocked."""
    libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None

    def set_death_signal() -> None:
        if libc is not None:
            libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
            if os.getppid() != parent:  # the runner died before the call
                os.kill(os.getpid(), signal.SIGTERM)
    return set_death_signal


# ------------------------------------------------------------------------ command line


def selection(plan: Plan, stages: list[str] | None, until: str | None) -> set[str] | None:
    """--stages' names, and --until's stage with every stage it needs (both: the common
    part); None: the whole plan."""
    for name in [*(stages or []), *([until] if until else [])]:
        if name not in plan.stages:
            raise PlanError(f"unknown stage {name!r}{close_match(name, list(plan.stages))}; "
                            f"the stages of {plan.path}: {', '.join(plan.stages)}")
    chosen = set(stages) if stages else None
    if until:
        needed, todo = set(), [until]
        while todo:
            name = todo.pop()
            needed.add(name)
            todo += plan.stages[name].needs
        chosen = needed if chosen is None else chosen & needed
    return chosen


@dataclasses.dataclass
class ReproduceConfig:
    """The options of ``python -m vgg.reproduce`` (vgg/configuration.py: flags and YAML)."""
    # --- the plan ---
    plan: str | None = configuration.positional(
        "PLAN", help="a plan file, or a name in configs/plans/")
    plan_dir: str | None = None  # where the plan's runs live; none: runs/<plan name>
    # --- what to run ---
    stages: list[str] | None = dataclasses.field(default=None, metadata={
        "metavar": "STAGE [STAGE ...]",
        "help": "run these stages only (and the evaluations of these alone)"})
    until: str | None = dataclasses.field(default=None, metadata={
        "metavar": "STAGE", "help": "run this stage and the stages it needs, then stop"})
    launcher: str | None = dataclasses.field(default=None, metadata={
        "metavar": "COMMAND", "help": "the command each stage runs under, replacing the "
                                      "plan's: e.g. 'torchrun --nproc_per_node 4'"})
    dry_run: bool = False  # print the commands in order, run nothing
    status: bool = False  # print the status table, run nothing


def main(argv: list[str] | None = None) -> int:
    def reproduce() -> int:
        args = configuration.command_config(ReproduceConfig, argv, __doc__,
                                            "python -m vgg.reproduce")
        if args is None:  # --print_config
            return 0
        path = plan_path(args.plan)
        plan = load_plan(path, args.launcher)
        runner = Runner(plan, Path(args.plan_dir or Path("runs") / plan.name))
        selected = selection(plan, args.stages, args.until)
        if args.dry_run:
            for task_name, task in runner.tasks(selected):
                print(f"# {task_name}: {runner.state(task).state}\n"
                      f"{shlex.join(runner.command(task))}")
            return 0
        if not args.status:
            for signum in (signal.SIGINT, signal.SIGTERM):
                signal.signal(signum, runner.on_signal)
            exit_code = runner.run(selected)
            report = runner.write_results()
            if report:
                print(f"\n{report}")
        print(f"\nplan {plan.path} in {runner.dir}:\n{runner.status_table(selected)}")
        return 0 if args.status else exit_code

    return run_cli(reproduce, "vgg.reproduce")


if __name__ == "__main__":
    sys.exit(main())
