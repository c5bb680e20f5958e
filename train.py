"""Train a VGG the way Simonyan & Zisserman (2015, Sec. 3.1) did.

    python train.py --model_version D                          # the paper's recipe, ImageNet
    python train.py --config configs/quickstart_digits.yaml    # offline, 2-core CPU, minutes
    python train.py --resume runs/<run>                        # continue exactly
    torchrun --nproc_per_node 4 train.py --config configs/D_S256.yaml   # DDP

Every option is in config.py (defaults) and can be set from a YAML file (--config) and then
by --key value flags; --print_config shows the result. A run directory holds config.yaml,
metrics.jsonl and the checkpoints last.pt and best.pt (by validation top-1).
"""

from __future__ import annotations

import itertools
import math
import os
import signal
import sys
import time
from pathlib import Path

import torch
import yaml
from torch.utils.data import Subset
from tqdm import tqdm

import dataset_class
from config import Config
from vgg import configuration
from vgg.checkpoint import CheckpointError, load_checkpoint, load_model_state, save_checkpoint
from vgg.configuration import ConfigError
from vgg.distributed import (
    ResumableSampler,
    ShardSampler,
    all_gather_object,
    cleanup,
    init_distributed,
)
from vgg.errors import UserError
from vgg.model import build_vgg
from vgg.training import (
    LRSchedule,
    MetricsLog,
    SeededSamples,
    build_optimizer,
    configure_backends,
    evaluate,
    init_wandb,
    precision_setup,
    prepare_model,
    rng_state,
    seed_everything,
    set_rng_state,
    train_step,
    unwrap,
)
from vgg.transforms import single_test_scale


class DataError(UserError, RuntimeError):
    """The dataset is missing or unusable; the message says what to do."""


class NonFiniteLoss(RuntimeError):
    pass


def checkpoint_path(resume: str) -> Path:
    """``--resume`` takes a run directory (its last.pt) or a checkpoint file. A run killed
    at its first epoch's end, between writing best.pt and linking it as last.pt, has only
    best.pt: the newest checkpoint then."""
    path = Path(resume)
    if not path.is_dir():
        return path
    if not (path / "last.pt").exists() and (path / "best.pt").exists():
        return path / "best.pt"
    return path / "last.pt"


def claim_run_dir(out_dir: Path, name: str) -> Path:
    """A new directory ``out_dir/name``, or ``name-2``, ``name-3``, ... when taken: runs
    started in the same second (a sweep) never share a default-named directory, because
    ``mkdir`` claims it atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for n in itertools.count(1):
        run_dir = out_dir / (name if n == 1 else f"{name}-{n}")
        try:
            run_dir.mkdir()
        except FileExistsError:
            continue
        return run_dir


def remove_stale_temporaries(run_dir: Path) -> None:
    """Delete the temporary files (``.NAME.PID.tmp``) of writers killed mid-write. Those of
    a live process (a preempted run still saving after its SIGTERM while its requeued
    successor starts) are left alone: deleting one would fail that process's save."""
    for tmp in run_dir.glob(".*.tmp"):
        writer = tmp.name.rsplit(".", 2)[-2]
        if writer.isdigit() and not process_exists(int(writer)):
            tmp.unlink(missing_ok=True)


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True


def link_atomically(source: Path, target: Path) -> None:
    """``target`` becomes the same file as ``source`` in one rename (best.pt, epoch_N.pt):
    no second serialisation, and save_checkpoint never rewrites a file in place, so the
    link keeps its contents when ``source`` is replaced later."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        import shutil
        shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def new_interval() -> dict[str, float]:
    """Sums over one logging interval; the gradient norm over the applied steps only."""
    return {"loss": 0.0, "top1": 0, "samples": 0, "grad_norm": 0.0, "applied": 0,
            "start": time.time()}


def interval_row(interval: dict[str, float], **fields) -> dict:
    """The metrics row of one logging interval; ``fields`` are the step's context."""
    samples, now = interval["samples"], time.time()
    grad_norm = interval["grad_norm"] / interval["applied"] if interval["applied"] else None
    return {"kind": "train", **fields, "loss": interval["loss"] / samples,
            "top1_err": 1 - interval["top1"] / samples, "grad_norm": grad_norm,
            "images_per_s": samples / (now - interval["start"]), "time": now}


def main(argv: list[str] | None = None) -> int:
    try:
        return train(argv)
    except UserError as error:
        print(f"train.py: error: {error}", file=sys.stderr)
        return 2
    except NonFiniteLoss as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


def train(argv: list[str] | None) -> int:
    # ------------------------------------------------------------------ configuration
    resumed: dict = {}

    def base(flagged: Config) -> dict | None:
        """When resuming, the saved run's config is the base that the flags amend."""
        if flagged.resume is None:
            return None
        resumed["path"] = checkpoint_path(flagged.resume)
        resumed["checkpoint"] = load_checkpoint(resumed["path"])
        saved = resumed["checkpoint"].get("config")
        if not isinstance(saved, dict) or "model_args" not in resumed["checkpoint"]:
            raise CheckpointError(f"{resumed['path']} is not a training checkpoint of this "
                                  "toolkit (no config/model_args); use --init_from for weights")
        return saved

    cfg, args = configuration.parse_args(Config, argv, base=base)
    if getattr(args, "print_config", False):
        print(yaml.safe_dump(configuration.to_dict(cfg), sort_keys=False), end="")
        return 0
    rank, world, _, device = init_distributed(cfg.device)
    main_process = rank == 0
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    try:
        return run(cfg, resumed, rank, world, device, main_process)
    finally:
        torch.use_deterministic_algorithms(deterministic_before)
        cleanup()


def run(cfg: Config, resumed: dict, rank: int, world: int, device: torch.device,
        main_process: bool) -> int:
    log = print if main_process else (lambda *a, **k: None)
    seed_everything(cfg.seed + rank)
    configure_backends(device, cfg.deterministic, cfg.cudnn_benchmark)

    # ------------------------------------------------------------------ data
    try:
        spec = dataset_class.dataset_spec(cfg.dataset, cfg.data_root)
        image_size = cfg.image_size or spec.image_size
        scale = cfg.train_scale or spec.train_scale_at(image_size)
        val_scale = single_test_scale(scale)
        # The held-out split depends on val_fraction alone (build_dataset's fixed seed), not
        # on --seed: evaluate.py rebuilds it from the checkpoint's config.
        common = {"val_fraction": cfg.val_fraction, "download": cfg.download}
        train_set = dataset_class.build_dataset(
            cfg.dataset, "train", cfg.data_root,
            dataset_class.train_transform(spec, image_size, scale, cfg.color_shift), **common)
        val_set = dataset_class.build_dataset(
            cfg.dataset, "val", cfg.data_root,
            dataset_class.eval_transform(spec, image_size, val_scale), **common)
    except FileNotFoundError as error:
        raise DataError(f"{error}\n(dataset={cfg.dataset}, data_root={cfg.data_root}; set "
                        "--data_root, or try the offline quickstart: --config "
                        "configs/quickstart_digits.yaml)") from None
    generator = torch.Generator().manual_seed(cfg.seed)
    if cfg.train_subset and cfg.train_subset < len(train_set):
        train_set = Subset(train_set, torch.randperm(len(train_set), generator=generator)
                           [: cfg.train_subset].tolist())
    if cfg.val_subset and cfg.val_subset < len(val_set):
        val_set = Subset(val_set, torch.randperm(len(val_set), generator=generator)
                         [: cfg.val_subset].tolist())

    micro = cfg.micro_batch_size or cfg.batch_size // world
    if micro == 0 or cfg.batch_size % (micro * world):
        raise ConfigError(f"batch_size {cfg.batch_size} is not micro_batch_size ({micro}) x "
                          f"processes ({world}) x accumulation steps; choose values that "
                          "divide it")
    accumulation = cfg.batch_size // (micro * world)
    sampler = ResumableSampler(len(train_set), cfg.seed, rank, world, with_seeds=True)
    if sampler.per_rank() == 0:
        raise DataError(f"the training set has {len(train_set)} samples, fewer than the "
                        f"{world} processes")
    train_loader = dataset_class.build_loader(SeededSamples(train_set), micro, train=True,
                                              workers=cfg.workers, drop_last=False,
                                              sampler=sampler)
    val_loader = dataset_class.build_loader(val_set, micro, train=False, workers=cfg.workers,
                                            sampler=ShardSampler(val_set, rank, world))
    steps_per_epoch = math.ceil(math.ceil(sampler.per_rank() / micro) / accumulation)
    total_steps = steps_per_epoch * cfg.epochs

    # ------------------------------------------------------------------ model
    model_args = {"version": cfg.model_version, "num_classes": spec.num_classes,
                  "in_channels": spec.in_channels, "image_size": image_size,
                  "batch_norm": cfg.batch_norm, "fc_width": cfg.fc_width,
                  "dropout": cfg.dropout}
    checkpoint = resumed.get("checkpoint")
    if checkpoint is not None:
        if checkpoint["model_args"] != model_args:
            differing = {k: (checkpoint["model_args"].get(k), v) for k, v in model_args.items()
                         if checkpoint["model_args"].get(k) != v}
            raise CheckpointError(f"{resumed['path']} holds another network than this "
                                  f"config asks for ((checkpoint, config): {differing})")
        model = build_vgg(**model_args, init=None)
        load_model_state(model, checkpoint["model"], str(resumed["path"]))
        model.copied_from_A = tuple(checkpoint.get("copied_from_A", ()))
    elif cfg.init == "from_A":
        a_state = load_checkpoint(cfg.init_from_A).get("model")
        if a_state is None:
            raise CheckpointError(f"{cfg.init_from_A} has no 'model' state dict")
        try:
            model = build_vgg(**model_args, init="from_A", init_std=cfg.init_std,
                              a_state_dict=a_state)
        except ValueError as error:
            raise CheckpointError(f"{cfg.init_from_A}: {error}") from None
    else:
        model = build_vgg(**model_args, init=cfg.init, init_std=cfg.init_std)
        if cfg.init_from:
            load_model_state(model, load_checkpoint(cfg.init_from).get("model", {}),
                             cfg.init_from)

    model.activation_checkpointing = cfg.activation_checkpointing
    precision, autocast_dtype, scaler = precision_setup(cfg.precision, device)
    channels_last = device.type == "cuda" if cfg.channels_last is None else cfg.channels_last
    optimizer = build_optimizer(
        model.to(device), cfg.optimizer, lr=cfg.lr, momentum=cfg.momentum,
        nesterov=cfg.nesterov, betas=cfg.betas, weight_decay=cfg.weight_decay,
        decay_norm_and_bias=cfg.decay_norm_and_bias, copied_from_A=model.copied_from_A)
    schedule = LRSchedule(
        optimizer, cfg.schedule, total_steps=total_steps,
        warmup_steps=round(cfg.warmup_epochs * steps_per_epoch), factor=cfg.lr_factor,
        max_drops=cfg.max_lr_drops, patience=cfg.plateau_patience,
        threshold=cfg.plateau_threshold, step_epochs=cfg.step_epochs, min_lr=cfg.min_lr)
    train_model = prepare_model(model, device, channels_last=channels_last,
                                compile=cfg.compile)
    eval_model = getattr(train_model, "module", train_model)  # no DDP hooks in evaluation

    # ------------------------------------------------------------------ state to resume
    epoch, step, position, best_top1 = 0, 0, 0, -1.0
    nonfinite_steps = overflow_steps = 0  # diverged; skipped by the fp16 GradScaler
    epoch_totals = [0.0, 0.0, 0.0, 0.0]  # loss sum, top-1, top-5 correct, samples
    wandb_id = None
    if checkpoint is not None:
        try:
            optimizer.load_state_dict(checkpoint["optimizer"])
            schedule.load_state_dict(checkpoint["scheduler"])
            if scaler is not None and checkpoint.get("scaler"):
                scaler.load_state_dict(checkpoint["scaler"])
        except (KeyError, ValueError) as error:
            raise CheckpointError(f"{resumed['path']}: its optimizer/schedule state does "
                                  f"not fit this config ({error})") from None
        # The saved state carries the old hyper-parameters; flags given with --resume (a
        # lower --lr after a divergence, say) must win, so write the config back.
        for group in optimizer.param_groups:
            group["initial_lr"] = cfg.lr
            group["weight_decay"] = cfg.weight_decay if group["weight_decay"] else 0.0
            if "momentum" in group:
                group["momentum"] = cfg.momentum
        schedule.update(checkpoint["step"])
        epoch, step, position = checkpoint["epoch"], checkpoint["step"], checkpoint["position"]
        best_top1, nonfinite_steps = checkpoint["best_top1"], checkpoint["nonfinite_steps"]
        overflow_steps = checkpoint.get("overflow_steps", 0)  # absent before 2026-11-22
        epoch_totals, wandb_id = list(checkpoint["epoch_totals"]), checkpoint["wandb_run_id"]
        rngs = checkpoint["rng"]
        if len(rngs) != world and position:
            # position counts samples per process: another process count would repeat
            # or skip part of the epoch's data.
            raise CheckpointError(
                f"{resumed['path']} stopped mid-epoch with {len(rngs)} process(es); resume "
                f"it with {len(rngs)} (another count works from an epoch boundary)")
        if len(rngs) == world:
            set_rng_state(rngs[rank])
        run_dir = resumed["path"].parent
    else:
        if cfg.run_name:
            run_dir = Path(cfg.out_dir) / cfg.run_name
            if (run_dir / "last.pt").exists() or (run_dir / "best.pt").exists():
                raise ConfigError(f"run directory {run_dir} already holds a run; continue it "
                                  f"with --resume {run_dir}, or pick another --run_name")
        else:
            name = f"{cfg.dataset}-{cfg.model_version}-{time.strftime('%Y%m%d-%H%M%S')}"
            claimed = claim_run_dir(Path(cfg.out_dir), name) if main_process else None
            run_dir = Path(all_gather_object(str(claimed))[0])  # rank 0's, on every rank
    saved_config = configuration.to_dict(cfg) | {"resume": None}
    metrics = None
    if main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(run_dir)
        configuration.save_yaml(saved_config, run_dir / "config.yaml")
        metrics = MetricsLog(run_dir / f"metrics.{cfg.metrics_format}", cfg.metrics_format,
                             resume_from=(epoch, step) if checkpoint is not None else None)
    wandb_run = None
    if main_process:
        wandb_run = init_wandb(cfg.wandb, project=cfg.wandb_project, entity=cfg.wandb_entity,
                               run_dir=run_dir, name=run_dir.name, run_id=wandb_id,
                               config=saved_config)
        wandb_id = wandb_run.id if wandb_run is not None else None

    def save(path: Path, next_epoch: int, next_position: int) -> None:
        rngs = all_gather_object(rng_state())  # every process's, for an exact resume
        if not main_process:
            return
        save_checkpoint({
            "model": unwrap(train_model).state_dict(), "model_args": model_args,
            "config": saved_config, "optimizer": optimizer.state_dict(),
            "scheduler": schedule.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "epoch": next_epoch, "step": step, "position": next_position,
            "best_top1": best_top1, "nonfinite_steps": nonfinite_steps,
            "overflow_steps": overflow_steps,
            "epoch_totals": epoch_totals, "rng": rngs, "wandb_run_id": wandb_id,
            "copied_from_A": list(model.copied_from_A)}, path)

    stop_signal: list[int] = []

    def request_stop(signum, frame):
        if stop_signal:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        stop_signal.append(signum)
        log(f"\n{signal.Signals(signum).name}: saving a checkpoint at the next step boundary",
            flush=True)

    previous_handlers = {s: signal.signal(s, request_stop) for s in (signal.SIGINT,
                                                                    signal.SIGTERM)}
    log(f"run {run_dir}: VGG-{cfg.model_version} on {cfg.dataset} ({len(train_set)} train / "
        f"{len(val_set)} val images, {image_size}px, S={list(scale)}), {world} process(es) "
        f"on {device}, {precision}, batch {cfg.batch_size} = {micro} x {accumulation} "
        f"accumulation x {world}, {steps_per_epoch} steps/epoch"
        + (f", resuming at epoch {epoch + 1} step {step}" if checkpoint is not None else ""))

    # ------------------------------------------------------------------ training loop
    try:
        train_model.train()
        while epoch < cfg.epochs:
            if cfg.max_steps is not None and step >= cfg.max_steps:
                log(f"max_steps={cfg.max_steps} reached (pass --max_steps none to go on)")
                break
            sampler.set_epoch(epoch, position)
            batches = iter(train_loader)
            epoch_start, steps_done_before = time.time(), position // (micro * accumulation)
            interval = new_interval()
            progress = tqdm(total=steps_per_epoch, initial=steps_done_before,
                            desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
                            disable=not (main_process and cfg.progress), dynamic_ncols=True)
            stopping = False
            while window := list(itertools.islice(batches, accumulation)):
                schedule.update(step)
                result = train_step(train_model, optimizer, window, device=device,
                                    autocast_dtype=autocast_dtype, scaler=scaler,
                                    label_smoothing=cfg.label_smoothing,
                                    grad_clip=cfg.grad_clip, channels_last=channels_last,
                                    stop_requested=bool(stop_signal))
                step += 1
                position += sum(len(y) for _, y in window)
                if not result.finite:
                    nonfinite_steps += 1
                    if cfg.on_nonfinite == "stop":
                        last = run_dir / "last.pt"
                        raise NonFiniteLoss(
                            f"non-finite loss or gradient at step {step} (epoch {epoch + 1}); "
                            "the update was not applied and the run stopped. Last good "
                            f"checkpoint: {last if last.exists() else 'none written yet'}. "
                            "Resume from it with a lower --lr, --grad_clip, or "
                            "--on_nonfinite skip")
                else:
                    n = result.samples
                    overflow_steps += not result.applied
                    epoch_totals = [a + b for a, b in zip(
                        epoch_totals, (result.loss_sum, result.top1, result.top5, n),
                        strict=True)]
                    interval["loss"] += result.loss_sum
                    interval["top1"] += result.top1
                    interval["samples"] += n
                    if result.applied:  # an fp16 overflow's gradient norm is infinite
                        interval["grad_norm"] += result.grad_norm
                        interval["applied"] += 1
                    progress.set_postfix(loss=f"{result.loss_sum / n:.3f}",
                                         top1=f"{result.top1 / n:.3f}",
                                         lr=f"{schedule.lr:.2e}", refresh=False)
                progress.update()
                if step % cfg.log_interval == 0:
                    if interval["samples"] and main_process:
                        row = interval_row(interval, epoch=epoch + 1, step=step,
                                           lr=schedule.lr, nonfinite_steps=nonfinite_steps,
                                           overflow_steps=overflow_steps)
                        metrics.write(row)
                        progress.set_postfix(loss=f"{row['loss']:.3f}", lr=f"{row['lr']:.2e}",
                                             img_s=f"{row['images_per_s']:.0f}")
                        if wandb_run is not None:
                            wandb_run.log({f"train/{k}": v for k, v in row.items()
                                           if k not in ("kind", "step", "time")
                                           and v is not None}, step=step)
                    interval = new_interval()
                stopping = result.stop or (cfg.max_steps is not None and step >= cfg.max_steps)
                if stopping or (cfg.checkpoint_interval and step % cfg.checkpoint_interval == 0):
                    save(run_dir / "last.pt", epoch, position)
                if stopping:
                    break
            progress.close()
            if stopping:
                how = (signal.Signals(stop_signal[0]).name if stop_signal
                       else f"max_steps={cfg.max_steps}")
                log(f"stopped by {how} at step {step} (epoch {epoch + 1}); checkpoint "
                    f"{run_dir / 'last.pt'}; continue with: python train.py --resume {run_dir}")
                return 128 + stop_signal[0] if stop_signal else 0

            # ---------------------------------------------------------- end of epoch
            val = evaluate(eval_model, val_loader, device, autocast_dtype=autocast_dtype,
                           channels_last=channels_last)
            epoch += 1
            dropped = schedule.end_epoch(epoch, 1 - val["top1_err"])
            loss_sum, top1, top5, n = epoch_totals
            row = {"kind": "epoch", "epoch": epoch, "step": step,
                   "loss": loss_sum / max(n, 1), "top1_err": 1 - top1 / max(n, 1),
                   "top5_err": 1 - top5 / max(n, 1), "lr": schedule.lr,
                   "val_loss": val["loss"], "val_top1_err": val["top1_err"],
                   "val_top5_err": val["top5_err"], "val_n": val["n"],
                   "nonfinite_steps": nonfinite_steps, "overflow_steps": overflow_steps,
                   "time": time.time()}
            is_best = 1 - val["top1_err"] > best_top1
            best_top1 = max(best_top1, 1 - val["top1_err"])
            position, epoch_totals = 0, [0.0, 0.0, 0.0, 0.0]
            if main_process:  # before last.pt: a resume from the previous one rewrites it
                metrics.write(row)
            # A new best is written as best.pt first and only then becomes last.pt: a kill
            # in between resumes from the previous last.pt, never from a last.pt whose
            # best_top1 claims a best.pt that was not written.
            save(run_dir / ("best.pt" if is_best else "last.pt"), epoch, 0)
            if main_process:
                if is_best:
                    link_atomically(run_dir / "best.pt", run_dir / "last.pt")
                if cfg.keep_last_k:
                    link_atomically(run_dir / "last.pt", run_dir / f"epoch_{epoch:03d}.pt")
                    for old in sorted(run_dir.glob("epoch_*.pt"))[: -cfg.keep_last_k]:
                        old.unlink()
                if wandb_run is not None:
                    wandb_run.log({"epoch": epoch, "train/epoch_loss": row["loss"],
                                   "train/epoch_top1_err": row["top1_err"],
                                   "train/epoch_top5_err": row["top5_err"],
                                   "val/loss": val["loss"], "val/top1_err": val["top1_err"],
                                   "val/top5_err": val["top5_err"], "lr": schedule.lr},
                                  step=step)
            log(f"epoch {epoch}/{cfg.epochs}  train loss {row['loss']:.4f} top-1 err "
                f"{row['top1_err']:.2%} top-5 err {row['top5_err']:.2%} | val loss "
                f"{val['loss']:.4f} top-1 err {val['top1_err']:.2%} top-5 err "
                f"{val['top5_err']:.2%} ({val['n']} images) | lr {schedule.lr:.1e}"
                f"{' (divided)' if dropped else ''} | {time.time() - epoch_start:.0f}s"
                f"{' | best' if is_best else ''}", flush=True)
        log(f"done: best val top-1 error {1 - best_top1:.2%}; checkpoints in {run_dir}")
        return 0
    finally:
        for sig, handler in previous_handlers.items():
            signal.signal(sig, handler)
        if wandb_run is not None:
            wandb_run.finish()


if __name__ == "__main__":
    sys.exit(main())
