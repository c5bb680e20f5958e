"""Evaluate trained VGG networks the way the paper did (Sec. 3.2, Tables 3-6).

    python evaluate.py --checkpoint runs/D/best.pt                       # Q = S (or mid-jitter)
    python evaluate.py --checkpoint runs/D/best.pt --scale 256           # one test scale
    python evaluate.py --checkpoint runs/D/best.pt --scale multi --protocol dense+multicrop
    python evaluate.py --checkpoint runs/D/best.pt runs/E/best.pt --scale multi   # ensemble
    python evaluate.py --torchvision_weights vgg16-397923af.pth --dataset ImageNet \\
        --data_root data/imagenet --protocol center --scale 256          # torchvision protocol
    torchrun --nproc_per_node 4 evaluate.py --checkpoint runs/D/best.pt  # distributed

Protocols: ``center`` (centre crop), ``dense`` (fully-convolutional on the whole image +
its flip), ``multicrop`` (5x5 grid x flip = 50 crops per scale), ``dense+multicrop``.
``--scale`` takes integers Q and the shorthands ``single`` (Q = S for a fixed training
scale, (Smin + Smax) / 2 for a jittered one) and ``multi`` ({S-32, S, S+32} or
{Smin, (Smin+Smax)/2, Smax}), read from the checkpoint's config. Softmax posteriors are
averaged over flips, crops, scales and networks.

Writes results as JSON (``--out``; by default ``eval_<checkpoint>_<split>_<protocol>_<Q>.json``
beside the first checkpoint) and the confusion matrix as CSV beside it, and prints a table
laid out like the paper's. Bad input exits with status 2 and a one-paragraph message.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import torch

import dataset_class
from vgg import distributed
from vgg.errors import UserError
from vgg.evaluation import (
    PAPER_METHOD,
    PROTOCOLS,
    EvaluationError,
    Evaluator,
    MultiScale,
    check_ensemble,
    collate_samples,
    default_output,
    describe_networks,
    evaluate,
    network_from_checkpoint,
    network_from_torchvision,
    paper_table,
    parse_train_scale,
    resolve_scales,
    write_confusion_csv,
)
from vgg.model import VERSIONS
from vgg.transforms import IMAGENET_MEAN, IMAGENET_STD


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog="See the module docstring for examples.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    what = parser.add_argument_group("what to evaluate (one of)")
    what.add_argument("--checkpoint", nargs="+", metavar="PATH",
                      help="checkpoint(s) written by train.py; several form an ensemble")
    what.add_argument("--torchvision_weights", metavar="PATH",
                      help="a torchvision VGG state dict (.pth, local file), e.g. "
                           "vgg16-397923af.pth; normalised with ImageNet's mean/std")
    what.add_argument("--model_version", choices=VERSIONS,
                      help="config of --torchvision_weights (inferred from its keys if omitted)")
    what.add_argument("--batch_norm", action=argparse.BooleanOptionalAction, default=None,
                      help="--torchvision_weights has BN (inferred if omitted)")
    what.add_argument("--train_scale", type=int, nargs="+", metavar="S",
                      help="training scale S or Smin Smax, for --scale single/multi when the "
                           "weights do not record it (torchvision's)")
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", help="dataset name (default: the checkpoint's; ImageNet for "
                                        "torchvision weights)")
    data.add_argument("--data_root", help="dataset root (default: the checkpoint's, or data)")
    data.add_argument("--split", default="test", choices=("test", "val", "train"))
    data.add_argument("--limit", type=int, help="evaluate only the first N samples")
    data.add_argument("--on_corrupt", default="error", choices=("error", "skip"),
                      help="an undecodable image file stops the evaluation, or is replaced by "
                           "the next readable one (then one image counts twice)")
    proto = parser.add_argument_group("protocol")
    proto.add_argument("--protocol", default="dense", choices=PROTOCOLS)
    proto.add_argument("--scale", "--scales", dest="scale", nargs="+", metavar="Q",
                       help="test scale(s) Q, or 'single' / 'multi' for the paper's sets "
                            "(default: single for our checkpoints, 256 for torchvision weights)")
    proto.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                       help="also evaluate horizontal flips (dense, multicrop); default: "
                            "yes, unless the dataset is not flipped in training (digits)")
    run = parser.add_argument_group("execution")
    run.add_argument("--batch_size", type=int, default=64,
                     help="network inputs (crops of the network's image size) per forward pass; "
                          "dense evaluation uses the same pixel budget")
    run.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    run.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    run.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                     help="auto: bf16 autocast on CUDA, fp32 on CPU")
    run.add_argument("--out", type=Path, help="results JSON (the confusion matrix goes beside "
                                              "it as <name>_confusion.csv)")
    run.add_argument("--no_progress", action="store_true", help="no tqdm progress bar")
    return parser


def newest_run_checkpoint(runs: Path = Path("runs")) -> Path:
    """The best.pt of the most recently written run: what `python evaluate.py --scale 256`
    means right after training."""
    found = sorted(runs.glob("*/best.pt"), key=lambda path: path.stat().st_mtime)
    if not found:
        raise EvaluationError(f"no checkpoint given and no {runs}/<run>/best.pt found; train "
                              "one (python train.py ...) or pass --checkpoint PATH or "
                              "--torchvision_weights PATH")
    print(f"evaluating {found[-1]} (the newest run; --checkpoint chooses another)")
    return found[-1]


def load_networks(args: argparse.Namespace, parser: argparse.ArgumentParser):
    if args.checkpoint and args.torchvision_weights:
        parser.error("give --checkpoint PATH [PATH ...] (written by train.py) or "
                     "--torchvision_weights PATH, not both")
    if not args.checkpoint and not args.torchvision_weights:
        args.checkpoint = [newest_run_checkpoint()]
    if args.checkpoint:
        if args.model_version or args.batch_norm is not None:
            parser.error("--model_version/--batch_norm describe --torchvision_weights; a "
                         "checkpoint records its own")
        networks = [network_from_checkpoint(path) for path in args.checkpoint]
    else:
        networks = [network_from_torchvision(args.torchvision_weights, args.model_version,
                                             args.batch_norm)]
    if args.train_scale:
        train_scale = parse_train_scale(args.train_scale)
        for network in networks:
            network.train_scale = train_scale
    check_ensemble(networks)
    return networks


def check_device(name: str) -> None:
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise EvaluationError(f"--device {name} was asked for but no CUDA GPU is available; "
                              "use --device cpu")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return run(args, parser)
    except (UserError, FileNotFoundError, NotADirectoryError) as error:
        print(f"evaluate.py: error: {error}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    networks = load_networks(args, parser)
    first = networks[0]
    config = first.config
    dataset_name = args.dataset or config.get("dataset") or (
        "ImageNet" if args.torchvision_weights else None)
    if dataset_name is None:
        raise EvaluationError(f"{first.source} records no dataset: pass --dataset")
    known = {name.lower(): name for name in dataset_class.DATASETS}
    if dataset_name.lower() not in known:
        raise EvaluationError(f"unknown dataset {dataset_name!r}; choose one of "
                              f"{', '.join(dataset_class.DATASETS)}")
    data_root = args.data_root or config.get("data_root") or "data"
    spec = dataset_class.dataset_spec(dataset_name, data_root)
    if args.torchvision_weights:
        spec = dataclasses.replace(spec, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    for what, wanted, have in (("classes", spec.num_classes, first.num_classes),
                               ("input channels", spec.in_channels, first.in_channels)):
        if wanted is not None and wanted != have:
            raise EvaluationError(
                f"{first.source} has {have} {what} but {dataset_name} has {wanted}: it was "
                "trained on other data (pass --dataset to evaluate it on the data it knows)")

    if args.checkpoint:  # train_scale None in the config: the dataset's, resized with the net
        for network in networks:
            if network.train_scale is None:
                network.train_scale = spec.train_scale_at(network.image_size)
    image_size = min(n.image_size for n in networks)
    default_scale = ["single"] if first.train_scale is not None else [256]
    scales = resolve_scales(args.scale or default_scale, first.train_scale, image_size)
    check_device(args.device)
    _, world_size, _, device = distributed.init_distributed(args.device)
    main_process = distributed.is_main()

    transform = MultiScale([dataset_class.eval_transform(spec, image_size, scale=q, crop=False,
                                                         antialias=first.antialias)
                            for q in scales])
    dataset = dataset_class.build_dataset(
        dataset_name, args.split, data_root, transform, on_corrupt=args.on_corrupt,
        val_fraction=config.get("val_fraction", 0.1))  # the held-out split train.py used
    class_names = getattr(dataset, "classes", None)
    if args.limit is not None:
        dataset = torch.utils.data.Subset(dataset, range(min(args.limit, len(dataset))))

    flip = spec.hflip if args.flip is None else args.flip
    evaluator = Evaluator([n.model for n in networks], args.protocol, device=device,
                          precision=args.precision, batch_size=args.batch_size, flip=flip)
    images_per_step = max(1, int(args.batch_size // evaluator.inputs_per_image(scales)))
    sampler = distributed.ShardSampler(dataset) if world_size > 1 else None
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=images_per_step, shuffle=False, sampler=sampler,
        num_workers=args.workers, collate_fn=collate_samples, pin_memory=device.type == "cuda",
        persistent_workers=False)

    start = time.perf_counter()
    tally = evaluate(evaluator, loader, first.num_classes,
                     progress=main_process and not args.no_progress,
                     total=len(sampler) if sampler is not None else len(dataset))
    tally.all_reduce(distributed.all_reduce_sum)
    seconds = time.perf_counter() - start
    distributed.cleanup()
    if not main_process:
        return 0

    summary = tally.summary()
    row = {**describe_networks(networks), "test_Q": ",".join(map(str, scales)),
           "method": PAPER_METHOD[args.protocol], "top1_error": summary["top1_error"],
           "top5_error": summary["top5_error"]}
    out = args.out or default_output(first.source, args.split, args.protocol, scales)
    confusion_path = out.with_name(out.stem + "_confusion.csv")
    results = {
        "dataset": dataset_name, "split": args.split, "protocol": args.protocol,
        "scales": scales, "flip": flip,
        "resize": "PIL antialiased bilinear" if first.antialias else "bilinear",
        "table_row": row, **summary,
        "networks": [{"source": n.source, "version": n.version, "batch_norm": n.batch_norm,
                      "image_size": n.image_size, "num_classes": n.num_classes,
                      "train_scale": list(n.train_scale) if n.train_scale else None}
                     for n in networks],
        "class_names": list(class_names) if class_names else None,
        "confusion_matrix": str(confusion_path), "world_size": world_size,
        "device": str(device), "precision": args.precision, "seconds": seconds,
        "images_per_second": summary["samples"] / seconds if seconds > 0 else None,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    write_confusion_csv(tally.confusion, confusion_path, class_names)
    out.write_text(json.dumps(results, indent=2) + "\n")

    print(paper_table([row]))
    n = summary["samples"]
    for k in (1, 5):
        print(f"top-{k}: error {100 * summary[f'top{k}_error']:.2f}%, accuracy "
              f"{100 * summary[f'top{k}_accuracy']:.2f}% ({summary[f'top{k}_correct']}/{n})")
    if summary["nonfinite_posteriors"]:
        print(f"warning: {summary['nonfinite_posteriors']} samples had non-finite posteriors "
              "(counted wrong): the network may have diverged", file=sys.stderr)
    print(f"results: {out}\nconfusion matrix: {confusion_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
