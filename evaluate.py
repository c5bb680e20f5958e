"""Evaluate trained VGG networks the way the paper did (Sec. 3.2, Tables 3-6).

    python evaluate.py --checkpoint runs/D/best.pt                       # Q = S (or mid-jitter)
    python evaluate.py --checkpoint runs/D/best.pt --scale 256           # one test scale
    python evaluate.py --checkpoint runs/D/best.pt --scale multi --protocol dense+multicrop
    python evaluate.py --checkpoint runs/D/best.pt runs/E/best.pt --scale multi   # ensemble
    python evaluate.py --torchvision_weights vgg16-397923af.pth --dataset ImageNet \\
        --data_root data/imagenet --protocol center --scale 256          # torchvision protocol
    torchrun --nproc_per_node 4 evaluate.py --checkpoint runs/D/best.pt  # distributed

Every option is a field of ``config.EvalConfig``, set from a YAML file (``--config``) and then
by ``--key value`` flags, spelled as train.py's: ``--flip false``, ``--progress false``,
``--train_scale 256,512``, lists space- or comma-separated (``--scale 256 384``);
``--print_config`` shows the result, and the results JSON records it.

Protocols: ``center`` (centre crop), ``dense`` (fully-convolutional on the whole image +
its flip), ``multicrop`` (5x5 grid x flip = 50 crops per scale), ``dense+multicrop``.
``--scale`` takes integers Q and the shorthands ``single`` (Q = S for a fixed training
scale, (Smin + Smax) / 2 for a jittered one) and ``multi`` ({S-32, S, S+32}, the step in
proportion for networks smaller than 224, or {Smin, (Smin+Smax)/2, Smax}), read from the
checkpoint. Posteriors are averaged over flips, crops, scales and networks, in fp32 unless
``--precision bf16`` asks otherwise.

Writes results as JSON (``--out``; by default ``eval_<checkpoint>_<split>_<protocol>_<Q>.json``
beside the first checkpoint, ensembles and ``--limit`` samples under their own names) and the
confusion matrix as CSV beside it, and prints a table laid out like the paper's. Bad input
exits with status 2 and a one-paragraph message.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import torch

import dataset_class
from config import EvalConfig
from vgg import configuration, distributed
from vgg.checkpoint import newest_run
from vgg.data.sampling import ShardSampler
from vgg.errors import run_cli
from vgg.evaluation import (
    PAPER_METHOD,
    EvaluationError,
    Evaluator,
    MultiScale,
    Tally,
    collate_samples,
    network_scales,
    parse_train_scale,
    run_protocol,
    sample_indices,
    scale_step,
    scale_warning,
)
from vgg.metrics import reported_topk
from vgg.networks import Network, check_ensemble, network_from_checkpoint, network_from_torchvision
from vgg.plot import most_confused_pairs, plot_confusion
from vgg.progress import Progress, plain_progress
from vgg.provenance import dataset_fingerprint, describe, provenance
from vgg.report import (
    accuracy_lines,
    check_outputs,
    confusion_path,
    confusion_title,
    default_output,
    describe_networks,
    paper_table,
    write_confusion_csv,
    write_results,
)
from vgg.transforms import EvalTransform


def newest_run_checkpoint() -> Path:
    """The best.pt of the most recently written run: what `python evaluate.py --scale 256`
    means right after training."""
    found = newest_run(alternatives="--checkpoint RUN_DIR_OR_FILE or --torchvision_weights PATH")
    print(f"evaluating {found} (the newest run; --checkpoint chooses another)")
    return found


def load_networks(cfg: EvalConfig) -> list[Network]:
    if cfg.torchvision_weights:
        networks = [network_from_torchvision(cfg.torchvision_weights, cfg.model_version,
                                             cfg.batch_norm)]
    else:
        networks = [network_from_checkpoint(path, cfg.weights)
                    for path in cfg.checkpoint or [newest_run_checkpoint()]]
        for network in networks:
            if network.weights == "ema":
                print(f"{network.source}: its average of the weights (trained with --ema; "
                      "--weights raw evaluates the trained weights)")
    if cfg.train_scale:
        for network in networks:
            network.train_scale = parse_train_scale(cfg.train_scale)
    return networks


def dataset_name(cfg: EvalConfig, first: Network) -> str:
    """The dataset to evaluate on, spelled as registered (names are case-insensitive)."""
    name = cfg.dataset or first.dataset or ("ImageNet" if cfg.torchvision_weights else None)
    if name is None:
        raise EvaluationError(f"{first.source} records no dataset: pass --dataset")
    known = {key.lower(): key for key in dataset_class.DATASETS}
    if name.lower() not in known:
        raise EvaluationError(f"unknown dataset {name!r}; choose one of "
                              f"{', '.join(dataset_class.DATASETS)}")
    return known[name.lower()]


def prepare_networks(networks: list[Network], name: str, root: str) -> bool:
    """Completes what older checkpoints do not record from the dataset spec (statistics,
    training scale), checks the networks against the data and each other, and returns
    whether the dataset is mirrored in training (the default of ``--flip``). A checkpoint
    that records its preprocessing never has statistics re-measured, so its training data
    may have moved."""
    described = all(n.mean is not None for n in networks)
    try:
        spec = dataset_class.dataset_spec(name)  # a spec of fixed numbers: no file access
    except ValueError:  # a dataset measured from its files (ImageFolder), only if needed
        spec = None if described else dataset_class.dataset_spec(name, root)
    for network in networks:
        if network.mean is None:
            network.mean, network.std = spec.mean, spec.std
        if network.train_scale is None and spec is not None and network.config:
            network.train_scale = spec.train_scale_at(network.image_size)
    check_ensemble(networks)
    first = networks[0]
    if spec is not None:
        # A network that records its class names (a subset such as ImageNet-100) is checked
        # against the split's folders by name when the split is read, not by count here.
        classes = None if first.classes else spec.num_classes
        for what, wanted, have in (("classes", classes, first.num_classes),
                                   ("input channels", spec.in_channels, first.in_channels)):
            if wanted is not None and wanted != have:
                raise EvaluationError(
                    f"{first.source} has {have} {what} but {name} has {wanted}: it was "
                    "trained on other data (pass --dataset to evaluate it on the data it knows)")
    return spec.hflip if spec is not None else True


def choose_scales(cfg: EvalConfig, networks: list[Network]) -> tuple[list[int], list[list[int]]]:
    """The test scales Q, per network (the shorthands from each network's own S: an ensemble
    of nets trained at different S is tested at each one's Q), printed with how they were
    derived; a warning first when they make no sense for a network. Returns the union of
    the Q and each network's positions in it (:func:`vgg.evaluation.network_scales`)."""
    known = all(n.train_scale is not None for n in networks)
    tokens = cfg.scale or (["single"] if known else [256])
    scales, indices = network_scales(tokens, [(n.train_scale, n.image_size) for n in networks])
    for network, chosen in zip(networks, indices, strict=True):
        own = [scales[i] for i in chosen]
        note, train_scale = "", network.train_scale
        if "multi" in tokens and train_scale and train_scale[0] == train_scale[1]:
            step = scale_step(network.image_size)
            note = (f" (--scale multi: S-{step}, S, S+{step} for S={train_scale[0]}"
                    + ("" if step == 32 else f"; the paper's +-32 at 224, in proportion to "
                                             f"{network.image_size}") + ")")
        which = "" if len(networks) == 1 else f" of {network.source}"
        print(f"test scales Q{which}: {','.join(map(str, own))}{note}")
        warning = scale_warning(own, train_scale, network.image_size)
        if warning:
            print(warning, file=sys.stderr)
    return scales, indices


def build_data(cfg: EvalConfig, first: Network, name: str, root: str, scales: list[int]):
    """The split's images at every test scale, normalised as ``first`` was trained; with
    ``--limit`` a seeded random sample. Returns (dataset, class names, sample record)."""
    transform = MultiScale([EvalTransform(q, None, first.mean, first.std,
                                          antialias=first.antialias) for q in scales])
    # The run's own held-out split: its val_fraction passed through as recorded (None: the
    # dataset's own choice, ImageNet's official validation set).
    try:
        dataset = dataset_class.build_dataset(
            name, cfg.split, root, transform, on_corrupt=cfg.on_corrupt,
            val_fraction=first.config.get("val_fraction", 0.1), classes=first.classes)
    except FileNotFoundError as error:
        if cfg.split != "test":
            raise
        raise EvaluationError(
            f"{name} at {root} has no test split ({error}). Without test images, --split val "
            "evaluates the validation images, but they chose the best checkpoint, so their "
            "error is optimistic; for an honest number put unseen images in test/<class>/"
        ) from None
    if cfg.split == "val" and first.config:
        print(f"note: the {cfg.split} images chose {Path(first.source).name} (best by validation "
              "error): their error is optimistic, the test split's is the honest one")
    if len(dataset) == 0:
        raise EvaluationError(f"the {cfg.split} split of {name} at {root} holds no images")
    classes = getattr(dataset, "classes", None)  # the network's own, when it records them
    indices = sample_indices(len(dataset), cfg.limit, cfg.seed)
    if len(indices) == len(dataset):
        return dataset, classes, None
    print(f"evaluating a random sample of {len(indices)} of the {len(dataset)} {cfg.split} "
          f"images (--limit {cfg.limit}, --seed {cfg.seed}): the error of a sample, not of "
          "the whole split")
    sample = {"images": len(indices), "of": len(dataset), "seed": cfg.seed}
    return torch.utils.data.Subset(dataset, indices), classes, sample


def score(cfg: EvalConfig, networks: list[Network], dataset, scales: list[int], flip: bool,
          device: torch.device, world_size: int, scale_indices: list[list[int]]
          ) -> tuple[Tally, Evaluator, float]:
    evaluator = Evaluator([n.model for n in networks], cfg.protocol, device=device,
                          precision=cfg.precision, batch_size=cfg.batch_size, flip=flip,
                          scale_indices=scale_indices)
    images_per_step = max(1, int(cfg.batch_size // evaluator.inputs_per_image(scales)))
    sampler = ShardSampler(dataset) if world_size > 1 else None
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=images_per_step, shuffle=False, sampler=sampler,
        num_workers=cfg.workers, collate_fn=collate_samples,
        pin_memory=device.type == "cuda", persistent_workers=False)
    start = time.perf_counter()
    tally = Tally(networks[0].num_classes, reported_topk(networks[0].num_classes))
    with Progress(len(sampler) if sampler is not None else len(dataset), "evaluating",
                  show=distributed.is_main(), bar=not plain_progress(cfg.progress)) as progress:
        run_protocol(evaluator, loader, tally, progress=progress)
    tally.all_reduce(distributed.all_reduce_sum)
    return tally, evaluator, time.perf_counter() - start


def report(cfg: EvalConfig, networks: list[Network], out: Path, facts: dict[str, Any],
           tally: Tally, seconds: float) -> None:
    """Writes the results JSON and confusion CSV and prints the paper-style table."""
    summary = tally.summary()
    row = {**describe_networks(networks), "test_Q": ",".join(map(str, facts["scales"])),
           "method": PAPER_METHOD[cfg.protocol], "top1_error": summary["top1_error"],
           "top5_error": summary.get("top5_error")}
    confusion = confusion_path(out)
    results = {
        **facts, "protocol": cfg.protocol, "table_row": row, **summary,
        "networks": [{"source": n.source, "version": n.version, "batch_norm": n.batch_norm,
                      "image_size": n.image_size, "num_classes": n.num_classes,
                      "train_scale": list(n.train_scale) if n.train_scale else None,
                      "mean": list(n.mean), "std": list(n.std), "weights": n.weights,
                      "provenance": n.provenance}
                     for n in networks],
        "confusion_matrix": str(confusion), "seconds": seconds,
        "images_per_second": summary["samples"] / seconds if seconds > 0 else None,
        "config": configuration.to_dict(cfg),
    }
    write_confusion_csv(tally.confusion, confusion, facts["class_names"])
    plot_confusion(tally.confusion, facts["class_names"], confusion.with_suffix(".png"),
                   title=confusion_title([n.source for n in networks], facts["split"],
                                         cfg.protocol, facts["scales"], summary["top1_error"]))
    write_results(results, out)
    print(paper_table([row]))
    print("\n".join(accuracy_lines(summary, tally.ks)))
    if summary["nonfinite_posteriors"]:
        print(f"warning: {summary['nonfinite_posteriors']} samples had non-finite posteriors "
              "(counted wrong): the network may have diverged", file=sys.stderr)
    pairs = most_confused_pairs(tally.confusion, facts["class_names"], k=5)
    print("most confused (true -> predicted: images): "
          + ("; ".join(f"{t} -> {p}: {n}" for t, p, n in pairs) or "none"))
    print(f"results: {out}\nconfusion matrix: {confusion} (picture: "
          f"{confusion.with_suffix('.png')})")
    print(f"provenance: {describe(facts['provenance'])}")
    for network in networks:
        if network.provenance is not None:
            print(f"  {network.source} trained by: {describe(network.provenance)}")


def check_device(name: str) -> None:
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise EvaluationError(f"--device {name} was asked for but no CUDA GPU is available; "
                              "use --device cpu")


def evaluate_networks(argv: list[str] | None) -> int:
    cfg = configuration.command_config(EvalConfig, argv, __doc__, "evaluate.py")
    if cfg is None:  # --print_config
        return 0
    networks = load_networks(cfg)
    first = networks[0]
    name = dataset_name(cfg, first)
    root = cfg.data_root or first.config.get("data_root") or "data"
    hflip = prepare_networks(networks, name, root)
    scales, scale_indices = choose_scales(cfg, networks)
    check_device(cfg.device)
    dataset, class_names, sample = build_data(cfg, first, name, root, scales)
    sample_tag = (cfg.limit, cfg.seed) if sample else None
    out = Path(cfg.out) if cfg.out else default_output(
        [n.source for n in networks], cfg.split, cfg.protocol, scales, sample_tag,
        averaged=any(n.weights == "ema" for n in networks))
    check_outputs(out, first.num_classes)  # before the evaluation, not after it
    rank, world_size, _, device = distributed.init_distributed(cfg.device)
    try:
        flip = hflip if cfg.flip is None else cfg.flip
        tally, evaluator, seconds = score(cfg, networks, dataset, scales, flip, device,
                                          world_size, scale_indices)
    finally:
        distributed.cleanup()
    if rank == 0:
        facts = {"dataset": name, "split": cfg.split, "sample": sample, "scales": scales,
                 "network_scales": [[scales[i] for i in chosen] for chosen in scale_indices],
                 "flip": flip, "resize": ("PIL antialiased bilinear" if first.antialias
                                          else "bilinear"),
                 "class_names": list(class_names) if class_names else None,
                 "world_size": world_size, "device": str(device),
                 "precision": evaluator.precision,
                 "provenance": provenance(device, dataset_fingerprint(
                     name, {cfg.split: dataset}, root))}
        report(cfg, networks, out, facts, tally, seconds)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: evaluate_networks(argv), "evaluate.py")


if __name__ == "__main__":
    sys.exit(main())
