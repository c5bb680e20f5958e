"""Train a VGG the way Simonyan & Zisserman (2015, Sec. 3.1) did.

    python train.py --model_version D                          # the paper's recipe, ImageNet
    python train.py --config configs/quickstart_digits.yaml    # offline, 2-core CPU, minutes
    python train.py --resume runs/<run>                        # continue exactly
    python train.py --config c.yaml --run_name X --resume auto  # continue X, else start it
    python train.py --config c.yaml --lr_find                  # lr range test, no run
    torchrun --nproc_per_node 4 train.py --config configs/D_S256.yaml   # DDP

Every option is in config.py (defaults) and can be set from a YAML file (--config) and then
by --key value flags; --print_config shows the result. A run directory holds config.yaml,
metrics.jsonl and the checkpoints last.pt and best.pt (by validation top-1).

Top to bottom: the config; the data; the model, optimizer and schedule; the state restored
from --resume; then the loop over vgg.engine.train_one_epoch and the end of each epoch.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import dataset_class  # noqa: F401  (a user's own registered datasets, by --dataset name)
from config import Config
from vgg import configuration
from vgg.checkpoint import CheckpointError, load_checkpoint, model_state, preprocessing_record
from vgg.configuration import ConfigError
from vgg.distributed import cleanup, init_distributed
from vgg.ema import WeightAverage
from vgg.engine import (
    NonFiniteLoss,
    StepSettings,
    configure_backends,
    precision_setup,
    prepare_model,
    report_stall,
    stalled,
    train_one_epoch,
    validate,
)
from vgg.errors import run_cli, short_repr
from vgg.health import HealthMonitor, Stalled, early_advice, remedies
from vgg.model import build_vgg
from vgg.optim import LRSchedule, build_optimizer
from vgg.pretrained import PretrainedWeights, TransferReport, freeze, load_pretrained, read_weights
from vgg.progress import Progress
from vgg.provenance import dataset_change, dataset_fingerprint, provenance
from vgg.rng import seed_everything
from vgg.run_dir import NonFiniteWeights, RunDirectory, checkpoint_path
from vgg.run_log import RunLog, summary_writer_class
from vgg.stop import StopRequest
from vgg.train_data import Data, build_data
from vgg.train_state import Resumable, TrainState
from vgg.transforms import check_input_convention


@dataclass
class Resume:
    """The checkpoint named by --resume, loaded once."""

    path: Path
    checkpoint: dict[str, Any]


def main(argv: list[str] | None = None) -> int:
    try:
        return run_cli(functools.partial(train, argv), "train.py")
    except (NonFiniteLoss, NonFiniteWeights, Stalled) as error:  # a failed run: exit 1
        print(f"train.py: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # a Ctrl-C before training began, or a second one
        print("train.py: interrupted. Once training has begun, a first Ctrl-C saves a "
              "checkpoint to --resume from; this one came before (or was a second), so the "
              "run ended at once and kept only the checkpoints it had written",
              file=sys.stderr)
        return 128 + signal.SIGINT


def resume_target(argv: list[str] | None) -> str | None:
    """--resume from a flag or else from the --config file, read ahead of the full parse:
    that one's checks need the resumed run's saved config as their base."""
    args, _ = configuration.build_parser(Config, __doc__, "train.py").parse_known_args(argv)
    if hasattr(args, "resume"):
        return configuration.coerce("resume", args.resume, str | None, from_text=True)
    if getattr(args, "config", None):
        return configuration.coerce("resume", configuration.load_yaml(args.config)
                                    .get("resume"), str | None)
    return None


def newest_run_checkpoint(argv: list[str] | None) -> str | None:
    """``--resume auto``: the run directory --out_dir/--run_name when it holds a checkpoint
    (a requeued cluster job continues its run), else None: the run starts there."""
    cfg, _ = configuration.parse_args(Config, argv, description=__doc__, prog="train.py")
    if cfg.run_name is None:
        raise ConfigError("--resume auto continues the run directory --out_dir/--run_name if "
                          "it holds a checkpoint, else starts it: give --run_name (and "
                          "--out_dir, default runs)")
    run_dir = Path(cfg.out_dir) / cfg.run_name
    return str(run_dir) if checkpoint_path(run_dir).exists() else None


def parse_config(argv: list[str] | None) -> tuple[Config, Resume | None, bool]:
    """The config, the run it resumes (None: a new run) and whether to only print it. A
    resumed run's saved config is the base that the YAML file and the flags amend."""
    target = resume_target(argv)
    if target == "auto":
        target = newest_run_checkpoint(argv)
    resume = None
    if target is not None:
        path = checkpoint_path(target)
        resume = Resume(path, load_checkpoint(path))
        if not isinstance(resume.checkpoint.get("config"), dict) or \
                not isinstance(resume.checkpoint.get("model_args"), dict):
            raise CheckpointError(f"{path} is not a training checkpoint of this toolkit (no "
                                  "config/model_args); use --init_from for its weights")
        saved = saved_run_config(resume)  # checked alone first: its errors name the file
    cfg, args = configuration.parse_args(Config, argv,
                                         base=resume.checkpoint["config"] if resume else None,
                                         description=__doc__, prog="train.py")
    if resume is not None:
        cfg = resumed_config(cfg, resume, saved)
    return cfg, resume, getattr(args, "print_config", False)


# What a run fixes when it starts, and why a resumed run cannot change it.
FIXED_AT_START = {
    "dataset": "the checkpoint's weights and input statistics are the dataset's",
    "val_fraction": "it decides which training images are held out for validation",
    "input_convention": "the input normalisation is the checkpoint's",
    "optimizer": "the saved optimizer state is this optimizer's",
    **dict.fromkeys(("init", "init_std", "init_from", "init_from_A", "weights"),
                    "it only initialises a new run's weights"),
}
# What decides the rest of an epoch's order: changeable only at an epoch's end.
FIXED_MID_EPOCH = {
    "seed": "the rest of the epoch's order and augmentation come from it",
    "train_subset": "it decides which samples the rest of the epoch draws from",
    "shuffle": "it decides the rest of the epoch's order",
}


def resumed_config(cfg: Config, resume: Resume, saved: Config) -> Config:
    """``cfg`` of a resumed run, checked against ``saved``, the one it was saved with: an
    option the run fixed at its start (or mid-epoch, its order) must keep its saved value,
    and the run directory is the checkpoint's, whatever --out_dir and --run_name say."""
    state = TrainState.from_checkpoint(resume.checkpoint, str(resume.path))
    fixed = FIXED_AT_START | (FIXED_MID_EPOCH if state.position else {})
    for name, why in fixed.items():
        if getattr(cfg, name) != getattr(saved, name):
            where = (f" at epoch {state.epoch + 1}, {state.position} samples in"
                     if name in FIXED_MID_EPOCH else "")
            raise ConfigError(
                f"--{name} {getattr(cfg, name)}: the run saved in {resume.path}{where} has "
                f"{name} {getattr(saved, name)}, and resuming keeps it ({why}). Drop --{name} "
                f"to continue the run" + (", or change it when resuming from an epoch's end"
                                          if name in FIXED_MID_EPOCH else
                                          f", or start a new run from its weights with "
                                          f"--init_from {resume.path}"))
    run_dir = resume.path.parent
    named = Path(cfg.out_dir) / (cfg.run_name or run_dir.name)
    if (cfg.out_dir, cfg.run_name) != (saved.out_dir, saved.run_name) and \
            named.resolve() != run_dir.resolve():
        raise ConfigError(f"--out_dir/--run_name name {named}, but --resume {resume.path} "
                          f"continues the run in its own directory {run_dir}: drop them (to "
                          "continue elsewhere, copy the run directory there and resume the copy)")
    return dataclasses.replace(cfg, out_dir=str(run_dir.parent), run_name=run_dir.name)


def saved_run_config(resume: Resume) -> Config:
    """The config a resumed checkpoint was saved with, checked like flags, with errors that
    name the checkpoint: it is not the user's command line that needs fixing."""
    try:
        saved = configuration.apply(Config(), resume.checkpoint["config"],
                                    f"the config saved in {resume.path}")
        saved = configuration.check_choices(saved)
        saved.validate()
    except ConfigError as error:
        raise CheckpointError(f"{resume.path} holds a config that is not valid ({error}); "
                              "it was edited or written by another version. Start a new run "
                              f"from its weights with --init_from {resume.path}") from None
    return saved


def train(argv: list[str] | None) -> int:
    cfg, resume, print_only = parse_config(argv)
    if print_only:
        print(configuration.to_yaml(cfg), end="")
        return 0
    rank, world, _, device = init_distributed(cfg.device)
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    try:
        if cfg.lr_find:
            from vgg.lr_find import lr_find
            return lr_find(cfg, resume, rank, world, device)
        return run(cfg, resume, rank, world, device)
    finally:
        torch.use_deterministic_algorithms(deterministic_before)
        cleanup()


def recorded_config(cfg: Config) -> dict[str, Any]:
    """The config as a run records it (config.yaml, its checkpoints): what is in force."""
    return configuration.to_dict(cfg) | {"resume": None}


def open_run_dir(cfg: Config, resume: Resume | None, main: bool, stop: StopRequest
                 ) -> RunDirectory:
    if resume is not None:
        run_dir = RunDirectory.reopen(resume.path, resume.checkpoint["step"], writer=main,
                                      keep_last_k=cfg.keep_last_k)
    else:
        default = f"{cfg.dataset}-{cfg.model_version}-{time.strftime('%Y%m%d-%H%M%S')}"
        # --resume auto that found no checkpoint: a requeued job whose first attempt died
        # before saving one starts it over.
        run_dir = RunDirectory.create(
            cfg.out_dir, cfg.run_name, default, writer=main, keep_last_k=cfg.keep_last_k,
            restartable=recorded_config(cfg) if cfg.resume == "auto" else None)
    run_dir.write_guard = stop.writing
    return run_dir


def training_bytes(model_args: dict[str, Any], micro: int, optimizer: str) -> float:
    """A lower bound of the memory training the network of ``model_args`` takes, ``micro``
    images per forward: fp32 weights, gradients and optimizer state, and each conv's output
    kept for the backward pass, at 2 bytes (bf16). Counted on the meta device, where nothing
    is allocated: an absurd --width or --image_size is refused before it is built; inf when
    even the count overflows torch's sizes."""
    try:
        with torch.device("meta"):
            model = build_vgg(**model_args, init=None)
    except RuntimeError:  # "Storage size calculation overflowed"
        return math.inf
    side, feature_maps = model_args["image_size"], 0
    for layer in model.features:
        if isinstance(layer, torch.nn.MaxPool2d):
            side //= 2
        elif isinstance(layer, torch.nn.Conv2d):
            feature_maps += layer.out_channels * side * side
    copies = 2 + (2 if optimizer == "adamw" else 1)  # weights, gradients, moments
    return 4 * copies * sum(p.numel() for p in model.parameters()) + 2 * micro * feature_maps


def check_memory(model_args: dict[str, Any], micro: int, optimizer: str,
                 device: torch.device) -> None:
    """Refuse a network whose training cannot fit the device's whole memory."""
    needed = training_bytes(model_args, micro, optimizer)
    if device.type == "cuda":
        available = torch.cuda.get_device_properties(device).total_memory
    else:
        available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if needed > available:
        raise ConfigError(
            f"training this network (--width {model_args['width']:g}, --fc_width "
            f"{model_args['fc_width']}, --image_size {model_args['image_size']}, "
            f"{micro} images per forward) needs "
            + ("more memory than torch can address" if math.isinf(needed)
               else f"at least {needed / 2**30:.3g} GiB")
            + f", more than the {available / 2**30:.3g} GiB of {device}: lower them (the "
            "paper's network is --width 1 --fc_width 4096 at 224 pixels)")


def network_args(cfg: Config, data: Data) -> dict[str, Any]:
    """build_vgg's arguments for this config and data (a checkpoint's ``model_args``)."""
    return {"version": cfg.model_version, "num_classes": data.spec.num_classes,
            "in_channels": data.spec.in_channels, "image_size": data.image_size,
            "batch_norm": cfg.batch_norm, "fc_width": cfg.fc_width, "width": cfg.width,
            "dropout": cfg.dropout}


def build_model(cfg: Config, model_args: dict[str, Any], resume: Resume | None,
                pretrained: PretrainedWeights | None, log) -> torch.nn.Module:
    """The network to train: to be resumed (weights follow in Resumable.restore), copied
    in part from a trained net A, fine-tuned from --weights' or --init_from's, or random."""
    model = new_model(cfg, model_args, resume, pretrained, log)
    if model.pretrained_modules:  # fine-tuning: --freeze, again on every resume
        freeze(model, TransferReport(cfg.pretrained_from, loaded=list(model.pretrained_modules)),
               cfg.freeze)
    return model


def new_model(cfg: Config, model_args: dict[str, Any], resume: Resume | None,
              pretrained: PretrainedWeights | None, log) -> torch.nn.Module:
    if resume is not None:
        saved = resume.checkpoint["model_args"]
        if saved != model_args:
            differing = {k: (saved.get(k), v) for k, v in model_args.items()
                         if saved.get(k) != v}
            raise CheckpointError(f"{resume.path} holds another network than this config "
                                  f"asks for ((checkpoint, config): {short_repr(differing)})")
        model = build_vgg(**model_args, init=None)
        model.copied_from_A = tuple(resume.checkpoint.get("copied_from_A", ()))
        model.pretrained_modules = tuple(resume.checkpoint.get("pretrained_modules", ()))
        return model
    if cfg.init == "from_A":
        a_checkpoint = load_checkpoint(cfg.init_from_A)
        check_input_convention(a_checkpoint.get("preprocessing"), cfg.input_convention,
                               cfg.init_from_A)
        a_state = model_state(a_checkpoint, cfg.init_from_A)
        try:
            return build_vgg(**model_args, init="from_A", init_std=cfg.init_std,
                             a_state_dict=a_state)
        except ValueError as error:
            raise CheckpointError(f"{cfg.init_from_A}: {error}") from None
    model = build_vgg(**model_args, init=cfg.init, init_std=cfg.init_std)
    if pretrained is not None:
        transfer = load_pretrained(model, pretrained)
        model.pretrained_modules = tuple(transfer.pretrained_modules)
        log(str(transfer))
    return model


def build_training(cfg: Config, model: torch.nn.Module, model_args: dict[str, Any],
                   data: Data, device: torch.device) -> tuple[Resumable, StepSettings, str]:
    """The optimizer, schedule, precision and (--ema) weight average around ``model``
    (moved to ``device``)."""
    precision, autocast_dtype, scaler = precision_setup(cfg.precision, device)
    optimizer = build_optimizer(
        model.to(device), cfg.optimizer, lr=cfg.lr, momentum=cfg.momentum,
        nesterov=cfg.nesterov, betas=cfg.betas, weight_decay=cfg.weight_decay,
        decay_norm_and_bias=cfg.decay_norm_and_bias,
        pretrained=[p for name, p in model.named_parameters()
                    if name.rsplit(".", 1)[0] in model.pretrained_modules],
        pretrained_lr_multiplier=cfg.pretrained_lr_multiplier,
        # Sec. 3.1's "we did not decrease the learning rate for the pre-initialised layers"
        # read as "no lower rate than the rest": they follow the schedule, unless asked.
        copied_from_A=model.copied_from_A if cfg.from_A_fixed_lr else ())
    schedule = LRSchedule(
        optimizer, cfg.schedule, total_steps=data.steps_per_epoch * cfg.epochs,
        warmup_steps=round(cfg.warmup_epochs * data.steps_per_epoch), factor=cfg.lr_factor,
        max_drops=cfg.max_lr_drops, patience=cfg.plateau_patience,
        threshold=cfg.plateau_threshold, step_epochs=cfg.step_epochs, min_lr=cfg.min_lr)
    preprocessing = preprocessing_record(cfg.dataset, data.classes, data.image_size,
                                         data.spec.mean, data.spec.std, data.scale)
    trained_on = dataset_fingerprint(cfg.dataset, {"train": data.train_set, "val": data.val_set},
                                     cfg.data_root)
    channels_last = device.type == "cuda" if cfg.channels_last is None else cfg.channels_last
    ema = None
    if cfg.ema is not None:  # of the plain network on its device, before any DDP wrapper
        ema = WeightAverage(model, cfg.ema)
        if channels_last:
            ema.module.to(memory_format=torch.channels_last)
    resumable = Resumable(model, model_args, optimizer, schedule, scaler,
                          recorded_config(cfg), preprocessing, provenance(device, trained_on),
                          ema)
    settings = StepSettings(device, autocast_dtype, scaler, cfg.label_smoothing, cfg.grad_clip,
                            channels_last)
    return resumable, settings, precision


def end_of_epoch(model: torch.nn.Module, resumable: Resumable, state: TrainState, data: Data,
                 settings: StepSettings, run_dir: RunDirectory, run_log: RunLog,
                 stop: StopRequest, started: float, monitor: HealthMonitor | None = None
                 ) -> bool:
    """Validate (the raw weights, and with --ema their average), log the epoch's row, step
    the schedule, save; False when a signal came during validation (the epoch's training is
    then saved, its validation skipped)."""
    networks = {"val": model} | ({"val_ema": resumable.ema.module} if resumable.ema else {})
    figures = {}
    for prefix, network in networks.items():
        what = "validation" + (" of the EMA weights" if prefix == "val_ema" else "")
        with Progress(len(data.val_loader.sampler), f"{what}, epoch {state.epoch + 1}",
                      show=run_log.main, bar=run_log.bar, leave=False) as progress:
            figures[prefix] = validate(network, data.val_loader, settings.device, stop=stop,
                                       progress=progress,
                                       autocast_dtype=settings.autocast_dtype,
                                       channels_last=settings.channels_last)
        if figures[prefix] is None:
            run_dir.save_last(resumable.checkpoint(state))
            return False
    val = figures["val"]
    row = {"kind": "epoch", "epoch": state.epoch + 1, "step": state.step,
           **state.epoch_totals.errors(),
           **{f"{prefix}_{name}": value for prefix, measured in figures.items()
              for name, value in measured.items() if (prefix, name) != ("val_ema", "n")},
           "nonfinite_steps": state.nonfinite_steps, "overflow_steps": state.overflow_steps}
    # best.pt holds the weights that evaluate.py, predict.py and vgg.export use by default:
    # the average's when there is one, so it is chosen by the average's figure (as timm's).
    # The schedule follows the raw weights, which it steers: a run with --ema trains the
    # same weights as one without.
    best_by = "val_ema" if resumable.ema else "val"
    if resumable.ema:
        row["best_by"] = "ema"
    is_best = state.end_epoch(1 - figures[best_by]["top1_err"])
    dropped = resumable.schedule.end_epoch(state.epoch, 1 - val["top1_err"])
    run_log.log(row | {"lr": resumable.schedule.lr, "lr_divided": dropped, "best": is_best,
                       "epoch_time": time.time() - started, "time": time.time()})
    # Judged before the checkpoint, which then holds the verdict.
    stalling = monitor is not None and report_stall(monitor, monitor.check_epoch(
        row | {"lr": resumable.schedule.lr}, state.step, dropped), state, run_log)
    # Logged before the checkpoint: a resume from the previous one drops the row again.
    run_dir.save_epoch(resumable.checkpoint(state), state.epoch, is_best)
    if stalling:
        raise stalled(state.step, run_dir.last)
    return True


def run(cfg: Config, resume: Resume | None, rank: int, world: int, device: torch.device
        ) -> int:
    main_process = rank == 0
    if cfg.tensorboard:  # a missing package refused before the run directory exists
        summary_writer_class()
    seed_everything(cfg.seed + rank)
    configure_backends(device, cfg.deterministic, cfg.cudnn_benchmark)
    stop = StopRequest(announce=print if main_process else lambda *a, **k: None)
    with open_run_dir(cfg, resume, main_process, stop) as run_dir:
        pretrained = (read_weights(cfg.pretrained_from) if cfg.pretrained_from and not resume
                      else None)
        data = build_data(cfg, rank, world, device=device, normalization=(
            resume.checkpoint.get("preprocessing") if resume
            else pretrained.preprocessing if pretrained else None))
        model_args = network_args(cfg, data)
        check_memory(model_args, data.micro, cfg.optimizer, device)
        model = build_model(cfg, model_args, resume, pretrained, stop.announce)
        model.activation_checkpointing = cfg.activation_checkpointing
        resumable, settings, precision = build_training(cfg, model, model_args, data, device)
        state = TrainState()
        if resume is not None:
            flagged = {"lr": cfg.lr, "weight_decay": cfg.weight_decay,
                       "momentum": cfg.momentum}
            state = resumable.restore(resume.checkpoint, str(resume.path), rank=rank,
                                      world=world, hyperparameters=flagged)
        train_model = prepare_model(model, device, channels_last=settings.channels_last,
                                    compile=cfg.compile)
        total_steps = min(data.steps_per_epoch * cfg.epochs, cfg.max_steps or math.inf)
        run_log = RunLog(run_dir.path, main=main_process, fmt=cfg.metrics_format,
                         epochs=cfg.epochs, progress=cfg.progress,
                         steps=(data.steps_per_epoch, total_steps),
                         resume_from=(state.epoch, state.step) if resume
                         else None, run_id=state.wandb_run_id, config=resumable.config,
                         num_classes=data.spec.num_classes,
                         wandb_settings={"mode": cfg.wandb, "project": cfg.wandb_project,
                                         "entity": cfg.wandb_entity},
                         tensorboard=cfg.tensorboard)
        state.wandb_run_id = run_log.wandb_run_id
        run_log.print(
            f"run {run_dir.path}: VGG-{cfg.model_version}"
            + (f" at {cfg.width:g}x width" if cfg.width != 1 else "")
            + f" on {cfg.dataset} ({len(data.train_set)} train / {len(data.val_set)} val "
            f"images, {data.image_size}px, S={list(data.scale)}, {cfg.data_pipeline} data "
            f"pipeline), {world} process(es) on {device}, "
            f"{precision}, batch {cfg.batch_size} = {data.micro} x {data.accumulation} "
            f"accumulation x {world}, {data.steps_per_epoch} steps/epoch x {cfg.epochs} "
            f"epochs = {data.steps_per_epoch * cfg.epochs} iterations"
            + (f", EMA of the weights at decay {cfg.ema:g}" if cfg.ema is not None else "")
            + (f", resuming at epoch {state.epoch + 1} step {state.step}" if resume else ""))
        if resume is not None and (change := dataset_change(resume.checkpoint.get("provenance"),
                                                             resumable.provenance)):
            # Not refused: a fixed label or a replaced image is a choice a user may make. But
            # the order of the epoch it resumes in, and a held-out split, are drawn anew.
            run_log.print(f"warning: --resume: the data is not what this run trained on so "
                          f"far ({change}); it goes on with the data as it is now, so it is "
                          "no longer an exact continuation: the resumed epoch's order and a "
                          "held-out validation split are drawn over the new data. Restore "
                          "the data to continue exactly")
        if resume is not None and (cfg.ema is not None) != ("model_ema" in resume.checkpoint):
            run_log.print("--ema: the checkpoint holds no average of the weights; it starts "
                          "from the resumed weights" if cfg.ema is not None else
                          "--ema none: the checkpoint's average of the weights is dropped")
        monitor = None if cfg.on_stall == "ignore" else HealthMonitor(
            model, num_classes=data.spec.num_classes, steps_per_epoch=data.steps_per_epoch,
            warmup_steps=resumable.schedule.warmup_steps, state=state.health,
            remedies=remedies(cfg, len(data.train_set)), stops=cfg.on_stall == "stop",
            grad_clip=cfg.grad_clip,
            sample_dead=not cfg.compile)  # hooks would recompile a compiled network
        if (advice := early_advice(cfg, len(data.train_set))) and not resume:
            run_log.print(advice)
        with stop:
            # Written once a Ctrl-C saves a checkpoint: one before this ends the run with
            # nothing written, and a rerun of the command may use the directory again.
            if main_process:
                configuration.save_yaml(resumable.config, run_dir.path / "config.yaml")
            try:
                return train_loop(cfg, train_model, resumable, state, data, settings, run_dir,
                                  run_log, stop, monitor)
            finally:
                run_log.close()


def train_loop(cfg: Config, model: torch.nn.Module, resumable: Resumable, state: TrainState,
               data: Data, settings: StepSettings, run_dir: RunDirectory, run_log: RunLog,
               stop: StopRequest, monitor: HealthMonitor | None = None) -> int:
    model.train()
    while state.epoch < cfg.epochs:
        if cfg.max_steps is not None and state.step >= cfg.max_steps:
            run_log.print(f"max_steps={cfg.max_steps} reached (pass --max_steps none to go on)")
            break
        started = time.time()
        data.sampler.set_epoch(state.epoch, state.position)
        finished = train_one_epoch(
            model, resumable, data.train_loader, state, settings,
            micro=data.micro, accumulation=data.accumulation,
            steps_per_epoch=data.steps_per_epoch, cfg=cfg,
            run_dir=run_dir, run_log=run_log, stop=stop, monitor=monitor)
        if not (finished and end_of_epoch(model, resumable, state, data, settings, run_dir,
                                          run_log, stop, started, monitor)):
            how = stop.name if stop.requested else f"max_steps={cfg.max_steps}"
            run_log.print(f"stopped by {how} at step {state.step} (epoch {state.epoch + 1}); "
                          f"checkpoint {run_dir.last}; continue with: python train.py "
                          f"--resume {run_dir.path}")
            return 128 + stop.signum if stop.requested else 0
    run_log.print(f"done: best val top-1 error {1 - state.best_top1:.2%}; checkpoints in "
                  f"{run_dir.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
