"""Every default of the root commands, as plain typed values: ``Config`` for train.py,
``EvalConfig`` for evaluate.py, ``PredictConfig`` for predict.py (the vgg package's commands
declare theirs beside their code: vgg.export, vgg.plot, vgg.results). Edit them here,
override them with ``--config <file>.yaml`` and then with ``--key value`` flags (see
vgg/configuration.py).
Training defaults follow the paper (Sec. 3.1): ImageNet, SGD momentum 0.9, weight decay 5e-4,
batch 256, lr 1e-2 divided by 10 on a validation plateau at most 3 times, 74 epochs.
Evaluation defaults follow Sec. 3.2: dense evaluation at the single test scale, in fp32."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from vgg.checkpoint import WEIGHTS
from vgg.configuration import ConfigError, positional
from vgg.evaluation import PROTOCOLS
from vgg.model import INITS, VERSIONS
from vgg.precision import PRECISIONS
from vgg.pretrained import (
    FREEZE_CHOICES,
    unknown_weights_name,
    vgg_weights_architectures,
    wrong_architecture,
)


def _datasets() -> tuple[str, ...]:
    import dataset_class
    return tuple(dataset_class.DATASETS)


def check_device(device: str) -> None:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (both tools take the same spellings)."""
    if not (device in ("auto", "cpu", "cuda") or device.startswith("cuda:")):
        raise ConfigError(f"--device {device}: expected auto, cpu, cuda or cuda:N")


def choice(default, choices):
    """A field whose value must be one of ``choices`` (a tuple or a callable giving one)."""
    return field(default=default, metadata={"choices": choices})


def shown_as(default, metavar):
    """A field whose value ``--help`` shows as ``metavar`` (``SMIN,SMAX``)."""
    return field(default=default, metadata={"metavar": metavar})


def device_option():
    """``--device`` of every command that runs a network: one spelling, one default."""
    return field(default="auto", metadata={"help": "auto (cuda if available), cpu, cuda, "
                                                   "cuda:N"})


def precision_option(default: str):
    """``--precision`` of every command that runs a network: vgg.precision's choices."""
    return field(default=default, metadata={
        "choices": PRECISIONS, "help": "auto = bf16 autocast on a GPU that has it, fp16 on an "
                                       "older GPU, fp32 on a CPU"})


@dataclass
class Config:
    # --- data ---
    dataset: str = choice("ImageNet", _datasets)  # dataset name (dataset_class.DATASETS)
    data_root: str = "data"  # where the dataset lives (ImageNet: <root>/ImageNet/{train,val})
    download: bool = False  # let torchvision download small datasets into data_root
    # None: the dataset's own validation set (ImageNet's official one, as the paper; an
    # ImageFolder's val/), else 10% of train held out; a number holds that share out
    val_fraction: float | None = None  # share of the training set held out for validation
    image_size: int | None = None  # training crop side; None = the dataset's (224 / 32)
    train_scale: tuple[int, int] | None = shown_as(None, "SMIN,SMAX")  # S range; None = dataset's
    color_shift: bool = True  # PCA colour (lighting) noise of Krizhevsky et al. 2012
    # paper: Caffe's input, 0-255 pixels minus the training mean RGB (for init: paper, whose
    # fixed std assumes it); dataset: (pixel/255 - mean) / std, unit-scale inputs
    input_convention: str = choice("dataset", ("dataset", "paper"))  # input normalisation
    train_subset: int | None = None  # train on this many random training samples (smoke runs)
    val_subset: int | None = None  # validate on this many random validation samples
    workers: int = 4  # data-loading processes per training process (0 = in-process)
    # device: whole batches augmented on the training device (JPEGs decoded by nvJPEG on a GPU,
    # small datasets held there); on a CPU it spares the loader processes' share of the cores
    data_pipeline: str = choice("workers", ("workers", "device"))  # loader processes or device
    # shard (a shard set's --data_root only): the shards in a random order, each one's images
    # shuffled and read together, for network file systems (README "Sharded data")
    shuffle: str = choice("global", ("global", "shard"))  # training order: all images or by shard
    # --- model ---
    model_version: str = choice("D", VERSIONS)  # Table 1 configuration
    batch_norm: bool = False  # BatchNorm after every conv (not in the paper)
    fc_width: int = 4096  # width of the two hidden FC layers
    width: float = 1.0  # conv channels x this (1 = Table 1; 0.25 trains MNIST on a CPU fast)
    dropout: float = 0.5  # dropout after the first two FC layers
    init: str = choice("xavier", INITS)  # random init; "from_A" copies Sec. 3.1's layers
    init_std: float = 1e-2  # std of the normal init ("paper", and from_A's random layers)
    init_from_A: str | None = None  # trained config-A checkpoint, for init=from_A
    from_A_fixed_lr: bool = False  # copied layers keep the initial lr through every drop
    init_from: str | None = None  # weights to start from: a run dir, checkpoint, .pth or Hub folder
    weights: str | None = None  # torchvision weights by name, e.g. VGG16_Weights.IMAGENET1K_V1
    freeze: str = choice("none", FREEZE_CHOICES)  # fine-tuning: pretrained layers held still
    pretrained_lr_multiplier: float = 1.0  # fine-tuning: pretrained layers train at lr x this
    resume: str | None = None  # run dir or checkpoint to continue; auto: --run_name's, else start
    # --- optimisation ---
    batch_size: int = 256  # effective batch: all processes x all accumulation micro-steps
    micro_batch_size: int | None = None  # per process per forward; None = batch / processes
    epochs: int = 74  # training epochs (paper: 370K iterations = 74 epochs)
    max_steps: int | None = None  # stop (with a checkpoint) after this many optimizer steps
    optimizer: str = choice("sgd", ("sgd", "adamw"))  # optimizer
    lr: float = 1e-2  # initial learning rate (paper: 1e-2; 1e-3 for S=384 from S=256)
    momentum: float = 0.9  # SGD momentum
    nesterov: bool = False  # Nesterov momentum (SGD)
    betas: tuple[float, float] = shown_as((0.9, 0.999), "BETA1,BETA2")  # AdamW betas
    weight_decay: float = 5e-4  # L2 multiplier (SGD) / decoupled decay (AdamW)
    # The paper says only "weight decay 5e-4"; read as on every parameter, biases included
    decay_norm_and_bias: bool = True  # decay biases and norm weights too
    label_smoothing: float = 0.0  # cross-entropy label smoothing (paper: 0)
    grad_clip: float | None = None  # clip the gradient's global L2 norm to this; None = off
    # not in the paper: an exponential moving average of the weights and BatchNorm statistics,
    # updated every optimizer step, validated and saved beside them (README "EMA")
    ema: float | None = shown_as(None, "DECAY")  # EMA of the weights, e.g. 0.999; None = off
    # --- schedule ---
    schedule: str = choice("plateau", ("plateau", "step", "cosine"))  # lr schedule
    lr_factor: float = 0.1  # plateau/step: multiply the lr by this at each drop
    max_lr_drops: int = 3  # plateau/step: at most this many drops (paper: 3)
    plateau_patience: int = 2  # plateau: epochs without val top-1 improvement before a drop
    plateau_threshold: float = 1e-3  # plateau: top-1 accuracy gain that counts as improving
    step_epochs: int = 20  # step: drop the lr every this many epochs
    warmup_epochs: float = 0.0  # linear lr warmup from 0, in epochs (counted in steps)
    min_lr: float = 0.0  # cosine: final learning rate
    # --- precision and speed ---
    device: str = "auto"  # auto (cuda if available), cpu, cuda, cuda:N
    precision: str = precision_option("auto")  # auto = bf16 on GPU
    channels_last: bool | None = None  # NHWC memory format; None = on for GPU, off for CPU
    compile: bool = False  # torch.compile the model
    activation_checkpointing: bool = False  # recompute conv stages in backward: less memory
    cudnn_benchmark: bool = True  # cudnn autotuning (off in deterministic mode)
    deterministic: bool = False  # deterministic algorithms (bit-exact reruns and resumes)
    seed: int = 0  # seed for init, data order, augmentation and dropout
    # --- run ---
    out_dir: str = "runs"  # parent of the run directories
    run_name: str | None = None  # run directory name; None = <dataset>-<version>-<time>
    checkpoint_interval: int = 0  # also write last.pt every this many steps (0 = per epoch)
    keep_last_k: int = 0  # also keep the last k epoch checkpoints (epoch_001.pt, ...)
    on_nonfinite: str = choice("stop", ("stop", "skip"))  # non-finite loss: stop or skip step
    # the run is not learning (loss at ln(classes) after a warm-up budget, a divergence):
    # warn once (console, metrics, W&B) naming evidence and fixes, stop with a checkpoint, or
    # ignore (no monitor)
    on_stall: str = choice("warn", ("warn", "stop", "ignore"))  # not learning: warn/stop/ignore
    lr_find: bool = False  # run the lr range test (vgg.lr_find) with this config instead
    lr_find_steps: int = 200  # lr range test: steps of exponential lr growth
    lr_find_range: tuple[float, float] = shown_as((1e-6, 10.0), "FIRST,LAST")  # lr range test
    # --- logging ---
    log_interval: int = 50  # optimizer steps between metric rows
    metrics_format: str = choice("jsonl", ("jsonl", "csv"))  # metrics file format
    progress: bool = True  # tqdm bar on a terminal; else (or false) a plain line per log_interval
    wandb: str = choice("auto", ("auto", "online", "offline", "disabled"))  # W&B mode
    wandb_project: str = "vgg"  # W&B project
    wandb_entity: str | None = None  # W&B entity (team/user); None = your default
    tensorboard: bool = False  # also log every metrics row to TensorBoard in <run>/tensorboard

    def validate(self) -> None:
        """Checks between fields (types and choices are checked generically)."""
        positive = ("batch_size", "epochs", "log_interval", "fc_width")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("micro_batch_size", "max_steps", "train_subset", "val_subset",
                     "image_size"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"{name} must be positive or null, got {value}")
        if self.micro_batch_size is not None and self.batch_size % self.micro_batch_size:
            raise ConfigError(f"micro_batch_size ({self.micro_batch_size}) must divide "
                              f"batch_size ({self.batch_size}): micro-batch x accumulation "
                              "steps x processes = effective batch")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.val_fraction is not None and not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.train_scale is not None and not 0 < self.train_scale[0] <= self.train_scale[1]:
            raise ConfigError(f"train_scale is [Smin, Smax] with 0 < Smin <= Smax, got "
                              f"{list(self.train_scale)}")
        if (self.init == "from_A") != (self.init_from_A is not None):
            raise ConfigError("init=from_A needs init_from_A=<trained config-A checkpoint>, "
                              "and init_from_A is only used with init=from_A")
        self._validate_pretrained()
        check_device(self.device)
        if self.run_name is not None and (Path(self.run_name).name != self.run_name
                                          or self.run_name in ("", ".", "..")):
            raise ConfigError(f"--run_name {self.run_name!r} must be a plain directory name "
                              "inside --out_dir (no '/', '..' or absolute path); set "
                              "--out_dir for another place")
        self._validate_numbers()

    @property
    def pretrained_from(self) -> str | None:
        """Where the pretrained weights come from: --weights' name or --init_from's file."""
        return self.weights or self.init_from

    def _validate_pretrained(self) -> None:
        """--weights and --init_from, and the options that act on the layers they load."""
        if self.weights is not None and self.init_from is not None:
            raise ConfigError("give --weights NAME (torchvision's weights by name, such as "
                              "VGG16_Weights.IMAGENET1K_V1) or --init_from PATH (a run "
                              "directory, a checkpoint or a .pth state dict file), not both")
        if self.pretrained_from is None and (self.freeze != "none"
                                             or self.pretrained_lr_multiplier != 1.0):
            raise ConfigError("--freeze and --pretrained_lr_multiplier act on pretrained "
                              "layers: give --weights or --init_from too")
        if not self.pretrained_lr_multiplier > 0:
            raise ConfigError("--pretrained_lr_multiplier must be positive (hold layers still "
                              "with --freeze instead)")
        if self.pretrained_from is not None and self.init == "from_A":
            raise ConfigError("--weights and --init_from load all weights; neither can be "
                              "combined with --init from_A")
        if self.weights is None:
            return
        architectures = vgg_weights_architectures()
        if self.weights not in architectures:
            raise ConfigError(f"--weights {unknown_weights_name(self.weights)}")
        # Checked before anything is downloaded: the architecture never follows the weights.
        theirs = architectures[self.weights]  # torchvision's, at Table 1's widths
        if (theirs["version"], theirs["batch_norm"], 1.0) != (self.model_version,
                                                              self.batch_norm, self.width):
            raise ConfigError(
                wrong_architecture(f"--weights {self.weights}", theirs, width_here=self.width)
                + f" (this config: --model_version {self.model_version} --batch_norm "
                f"{str(self.batch_norm).lower()}"
                + (f" --width {self.width:g})" if self.width != 1.0 else ")"))

    def _validate_numbers(self) -> None:
        """Every numeric option a run would otherwise fail on later (or silently misuse)."""
        def require(ok: bool, flag: str, rule: str, value) -> None:
            if not ok:
                raise ConfigError(f"--{flag} must be {rule}, got {value}")

        for name in ("lr", "weight_decay", "momentum", "init_std", "min_lr", "lr_factor",
                     "warmup_epochs", "plateau_threshold", "label_smoothing"):
            require(math.isfinite(getattr(self, name)), name, "a finite number",
                    getattr(self, name))
        require(self.lr > 0 and 0 < self.lr_factor < 1, "lr",
                "positive (and --lr_factor in (0, 1))", (self.lr, self.lr_factor))
        require(self.weight_decay >= 0, "weight_decay", "0 or more", self.weight_decay)
        require(0 <= self.momentum < 1, "momentum", "in [0, 1)", self.momentum)
        require(all(0 <= b < 1 for b in self.betas), "betas", "two values in [0, 1)",
                list(self.betas))
        require(self.grad_clip is None or self.grad_clip > 0, "grad_clip",
                "positive (or none: no clipping)", self.grad_clip)
        require(self.ema is None or 0 < self.ema < 1, "ema",
                "a decay in (0, 1) such as 0.999 (or none: no average)", self.ema)
        require(0 <= self.min_lr <= self.lr, "min_lr", f"in [0, --lr = {self.lr}]",
                self.min_lr)
        require(self.init_std >= 0, "init_std", "0 or more", self.init_std)
        require(math.isfinite(self.width) and self.width > 0, "width",
                "a positive channel multiplier (1 = the paper's widths)", self.width)
        require(self.step_epochs >= 1, "step_epochs", "1 or more", self.step_epochs)
        require(self.image_size is None or self.image_size % 32 == 0, "image_size",
                "a positive multiple of 32 (five 2x2 poolings)", self.image_size)
        require(self.train_scale is None or self.image_size is None
                or self.train_scale[0] >= self.image_size, "train_scale",
                f"at least the crop --image_size {self.image_size}",
                list(self.train_scale or ()))
        require(self.workers <= 256, "workers", "at most 256 loader processes", self.workers)
        require(0 <= self.seed < 2**32, "seed", "in [0, 2**32) (it seeds NumPy too)",
                self.seed)
        if self.label_smoothing < 0 or self.label_smoothing >= 1:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        require(self.lr_find_steps >= 10, "lr_find_steps", "at least 10", self.lr_find_steps)
        require(0 < self.lr_find_range[0] < self.lr_find_range[1]
                and math.isfinite(self.lr_find_range[1]), "lr_find_range",
                "two finite lrs, 0 < first < last", list(self.lr_find_range))
        if min(self.warmup_epochs, self.keep_last_k, self.checkpoint_interval,
               self.max_lr_drops, self.plateau_patience, self.workers) < 0:
            raise ConfigError("warmup_epochs, keep_last_k, checkpoint_interval, max_lr_drops, "
                              "plateau_patience and workers must not be negative")


@dataclass
class EvalConfig:
    # --- what to evaluate ---
    # runs or checkpoint files; several are an ensemble; None = the newest run's best.pt
    checkpoint: list[str] | None = shown_as(None, "RUN [RUN ...]")  # several: ensemble; None=newest
    # which weights of a checkpoint: raw (trained), ema (their average, train.py --ema), or
    # auto: the average where the checkpoint has one (best.pt was chosen by its figure)
    weights: str = choice("auto", WEIGHTS)  # a checkpoint's weights: auto, ema or raw
    torchvision_weights: str | None = None  # a torchvision VGG state dict file (.pth)
    model_version: str | None = choice(None, VERSIONS)  # of --torchvision_weights; None = inferred
    batch_norm: bool | None = None  # --torchvision_weights has BN; None = inferred
    train_scale: list[int] | None = shown_as(None, "S|SMIN,SMAX")  # where weights lack it
    # --- data ---
    dataset: str | None = choice(None, _datasets)  # None = the checkpoint's (torchvision: ImageNet)
    data_root: str | None = None  # dataset root; None = the checkpoint's, or data
    split: str = choice("test", ("test", "val", "train"))  # the split to evaluate
    limit: int | None = None  # evaluate a seeded random sample of this many images
    seed: int = 0  # seed of the --limit sample
    on_corrupt: str = choice("error", ("error", "skip"))  # undecodable image: stop, or use the next
    # --- protocol ---
    protocol: str = choice("dense", PROTOCOLS)  # Sec. 3.2's test protocol
    scale: list[int | str] | None = shown_as(None, "Q [Q ...]")  # Q, single or multi; None = single
    flip: bool | None = None  # also evaluate mirror images; None = as the dataset trains
    # --- execution ---
    batch_size: int = 64  # network inputs (image_size crops) per forward pass
    workers: int = min(4, os.cpu_count() or 1)  # data-loading processes (0 = in-process)
    device: str = device_option()
    precision: str = precision_option("fp32")  # fp32, as the paper's numbers were
    out: str | None = None  # results JSON; None = eval_<...>.json beside the checkpoint
    progress: bool = True  # tqdm bar on a terminal; else (or false) a line per 10% done

    def validate(self) -> None:
        """Checks of single values and between fields (types and choices are checked
        generically)."""
        if self.checkpoint is not None and self.torchvision_weights is not None:
            raise ConfigError("give --checkpoint PATH [PATH ...] (written by train.py) or "
                              "--torchvision_weights PATH, not both")
        if self.torchvision_weights is not None and self.weights == "ema":
            raise ConfigError("--weights ema picks a train.py checkpoint's average of the "
                              "weights (--ema); --torchvision_weights has only its own weights")
        if self.checkpoint is not None and not self.checkpoint:
            raise ConfigError("--checkpoint needs at least one path")
        if self.checkpoint and (self.model_version is not None or self.batch_norm is not None):
            raise ConfigError("--model_version and --batch_norm describe --torchvision_weights; "
                              "a checkpoint records its own")
        if self.train_scale is not None and (
                len(self.train_scale) not in (1, 2) or self.train_scale[0] > self.train_scale[-1]
                or self.train_scale[0] <= 0):
            raise ConfigError(f"--train_scale {','.join(map(str, self.train_scale))}: expected "
                              "S or Smin,Smax (positive, Smin <= Smax)")
        if self.limit is not None and self.limit <= 0:
            raise ConfigError(f"--limit {self.limit}: expected a positive number of images "
                              "(leave it out to evaluate the whole split)")
        if self.batch_size <= 0:
            raise ConfigError(f"--batch_size {self.batch_size}: expected a positive number")
        if not 0 <= self.workers <= 256:
            raise ConfigError(f"--workers {self.workers}: expected 0 (load in this process) "
                              "to 256 data-loading processes")
        check_device(self.device)
        if self.out is not None and Path(self.out).is_dir():
            raise ConfigError(f"--out {self.out} is a directory; give a file name for the "
                              f"results JSON, e.g. --out {Path(self.out) / 'results.json'}")


@dataclass
class PredictConfig:
    # --- what to predict ---
    inputs: list[str] = positional("IMAGE_OR_FOLDER", [])  # images; folders searched recursively
    checkpoint: str | None = field(default=None, metadata={"metavar": "RUN_OR_FILE", "help": (
        "a run directory (its best.pt), a checkpoint, a torchvision VGG state dict file or "
        "weights name, an exported Hub-style folder or .safetensors file; none = the newest "
        "runs/<run>/best.pt")})
    top_k: int = 5  # classes listed per image
    # --- protocol ---
    protocol: str = choice("center", PROTOCOLS)  # centre crop, or the whole image densely
    scale: int | None = shown_as(None, "Q")  # test scale Q; None = Sec. 3.2's single Q for S
    flip: bool | None = None  # dense/multicrop: add the mirror; None = if training flipped
    # --- execution ---
    out: str | None = shown_as(None, "FILE.csv|FILE.json")  # also write the predictions there
    batch_size: int = 32  # network inputs (crops of the network's image size) per pass
    workers: int = 0  # image-decoding processes (0 = in-process)
    device: str = device_option()
    precision: str = precision_option("auto")
    progress: bool = True  # a bar on a terminal for a folder; else (or false) a line per 10%

    def validate(self) -> None:
        """Checks of single values (types and choices are checked generically)."""
        for flag, least in (("top_k", 1), ("batch_size", 1), ("workers", 0)):
            if getattr(self, flag) < least:
                raise ConfigError(f"--{flag} must be at least {least}, got "
                                  f"{getattr(self, flag)}")
