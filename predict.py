"""Classify your own images with a trained VGG: class names and probabilities per image.

    python predict.py photos/                            # the newest runs/<run>/best.pt
    python predict.py cat.jpg dog.png --checkpoint runs/my-run --top_k 3 --out results.csv
    python predict.py photos/ --checkpoint vgg16-397923af.pth --protocol dense --out out.json
    python predict.py photo.jpg --checkpoint VGG16_Weights.IMAGENET1K_V1   # torchvision's

Images are prepared as the network's training images were, from what the checkpoint
records (class names, mean/std, image size, training scale S, resampling): rescaled to the
single test scale Q of Sec. 3.2 (S, or the middle of a jittered range), then the centre
crop (``--protocol center``) or the whole image through the fully-convolutional net
(``dense``). Torchvision's weights are prepared as torchvision's reference pipeline does
(ImageNet mean/std, PIL's antialiased resize to 256, 224 crop). Folders are searched
recursively for image files. Unreadable files are listed at the end, never fatal.

Every option is a field of ``config.PredictConfig``, set from a YAML file (``--config``) and
then by flags spelled as train.py's (``--top_k 3``, ``--flip``, ``--no-flip``); the images
may stand anywhere among them. ``--print_config`` shows the result. Bad input exits with
status 2 and a one-paragraph message.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import torch
from torch.utils.data import DataLoader, Dataset

import dataset_class  # noqa: F401  (a user's own registered datasets)
from config import PredictConfig
from vgg import configuration
from vgg.atomic import check_free_space, check_output, replace_atomically
from vgg.checkpoint import newest_run
from vgg.data import IMAGE_EXTENSIONS, dataset_spec, decode_image
from vgg.errors import UserError, run_cli
from vgg.evaluation import Evaluator
from vgg.pretrained import model_from_weights, preprocessing_of, read_weights
from vgg.progress import Progress, plain_progress
from vgg.transforms import EvalTransform, single_test_scale

OUTPUT_FORMATS = (".csv", ".json")


class PredictError(UserError, ValueError):
    """Input that cannot be predicted on; printed as a one-paragraph error, exit 2."""


def find_images(inputs: Sequence[str]) -> tuple[list[Path], bool]:
    """The files named and the image files under the folders named (sorted), and whether
    any folder was given."""
    files: list[Path] = []
    folder_given = False
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            folder_given = True
            files += sorted(p for p in path.rglob("*") if p.is_file()
                            and p.suffix.lower() in IMAGE_EXTENSIONS)
        elif path.is_file():
            files.append(path)
        else:
            raise PredictError(f"{text} is neither an image file nor a folder")
    if not files:
        raise PredictError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in "
                           f"{', '.join(inputs)}")
    return files, folder_given


class ImageFiles(Dataset):
    """(the image at the test scale as a 1-tuple, or None when it cannot be decoded; index)."""

    def __init__(self, files: Sequence[Path], transform: EvalTransform, in_channels: int):
        self.files, self.transform, self.grey = list(files), transform, in_channels == 1

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[tuple[torch.Tensor] | None, int]:
        image = decode_image(str(self.files[index]))  # as training decoded: no EXIF rotation
        if image is None:
            return None, index
        if self.grey:
            image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        return (self.transform(image),), index


def as_list(batch: list) -> list:
    return batch


def flips_by_default(preprocessing: dict[str, Any]) -> bool:
    """Whether the training data was flipped (digits are not): its registered spec says."""
    name = preprocessing.get("dataset")
    try:
        return dataset_spec(name).hflip if name else True
    except ValueError:  # unknown here, or defined by its files (ImageFolder: flipped)
        return True


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:  # torch's text lists its dozen device types
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise PredictError(f"--device {name}: choose auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PredictError(f"--device {name} was asked for but no CUDA GPU is available; "
                           "use --device cpu")
    return device


def predict(evaluator: Evaluator, loader: DataLoader, classes: Sequence[str], top_k: int,
            progress: Progress) -> tuple[list[dict[str, Any]], list[int]]:
    """Per readable image its index and top-k classes; the indices of unreadable ones."""
    predictions, unreadable = [], []
    with progress:
        for batch in loader:
            unreadable += [index for images, index in batch if images is None]
            readable = [(images, index) for images, index in batch if images is not None]
            if readable:
                posteriors = evaluator.posteriors([images for images, _ in readable])
                probabilities, labels = posteriors.topk(min(top_k, len(classes)), dim=1)
                for (_, index), p, k in zip(readable, probabilities.tolist(), labels.tolist(),
                                            strict=True):
                    predictions.append({"index": index, "top_k": [
                        {"class": classes[c], "probability": q} for c, q in zip(k, p,
                                                                                strict=True)]})
            progress.update(len(batch))
    return predictions, unreadable


def is_previous_output(data: bytes) -> bool:
    """Whether ``data`` is a file that predict.py wrote (see :func:`write_results`)."""
    if data.startswith(b"file,"):
        header = data.split(b"\n", 1)[0].rstrip(b"\r")
        return header.endswith(b",error")
    try:
        written = json.loads(data)
    except ValueError:
        return False
    return isinstance(written, dict) and {"predictions", "unreadable"} <= written.keys()


def check_out(path: Path, images: int, top_k: int) -> None:
    """Before any image is read: ``--out`` names a .csv or .json file that can be written,
    replacing nothing but an earlier output of predict.py, with room for a row per image."""
    check_output(path, is_previous_output, "--out", "output of predict.py")
    if path.suffix.lower() not in OUTPUT_FORMATS:
        raise PredictError(f"--out {path}: name a .csv or .json file")
    # A row per image: its path, and a class name and a probability per listed class.
    check_free_space(path.parent, 2**20 + images * (256 + 64 * top_k), "the predictions")


def write_results(path: Path, rows: list[dict[str, Any]], unreadable: list[str],
                  about: dict[str, Any]) -> None:
    """CSV: one row per image (file, class_1, probability_1, ...; unreadable files with
    ``error``); JSON: ``about`` (checkpoint, protocol, Q), the predictions and the
    unreadable files. Written atomically."""
    if path.suffix.lower() == ".json":
        with replace_atomically(path) as f:
            f.write(json.dumps({**about, "predictions": rows, "unreadable": unreadable},
                               indent=2) + "\n")
        return
    k = max((len(row["top_k"]) for row in rows), default=0)
    header = ["file"] + [f"{what}_{i}" for i in range(1, k + 1)
                         for what in ("class", "probability")] + ["error"]
    with replace_atomically(path, newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for row in rows:
            cells = [value for top in row["top_k"] for value in (top["class"],
                                                                 f"{top['probability']:.6f}")]
            writer.writerow([row["file"], *cells, *[""] * (2 * k - len(cells)), ""])
        for file in unreadable:
            writer.writerow([file, *[""] * (2 * k), "unreadable"])


def run(argv: list[str] | None) -> int:
    cfg = configuration.command_config(PredictConfig, argv, __doc__, "predict.py")
    if cfg is None:  # --print_config
        return 0
    device = resolve_device(cfg.device)
    files, folder_given = find_images(cfg.inputs)
    out = None if cfg.out is None else Path(cfg.out)
    if out is not None:
        check_out(out, len(files), cfg.top_k)
    source = cfg.checkpoint or newest_run()
    weights = read_weights(source)
    preprocessing = preprocessing_of(weights)
    model = model_from_weights(weights)
    classes = preprocessing["classes"]
    if "classes" not in (weights.preprocessing or {}):
        print(f"note: {weights.source} records no class names: classes are numbered 0 to "
              f"{len(classes) - 1}", file=sys.stderr)
    scale = cfg.scale or single_test_scale(tuple(preprocessing["train_scale"]))
    if scale < model.image_size:
        raise PredictError(f"--scale {scale} is below the network's image size "
                           f"{model.image_size}: the rescaled smallest side must hold a crop")
    transform = EvalTransform(scale, None, preprocessing["mean"], preprocessing["std"],
                              antialias=preprocessing["resize"] == "antialias")
    flip = flips_by_default(preprocessing) if cfg.flip is None else cfg.flip
    evaluator = Evaluator([model], cfg.protocol, device=device,
                          precision=cfg.precision, batch_size=cfg.batch_size, flip=flip)
    images_per_pass = max(1, int(cfg.batch_size // evaluator.inputs_per_image([scale])))
    loader = DataLoader(ImageFiles(files, transform, model.features[0].in_channels),
                        batch_size=images_per_pass, num_workers=cfg.workers,
                        collate_fn=as_list)
    print(f"{len(files)} image(s), network {weights.source}, {cfg.protocol} at Q={scale}",
          file=sys.stderr)
    # Progress on stderr: stdout holds the predictions, a line per image.
    progress = Progress(len(files), "predicting", show=folder_given,
                        bar=not plain_progress(cfg.progress), file=sys.stderr)
    predictions, unreadable_indices = predict(evaluator, loader, classes, cfg.top_k, progress)
    rows = [{"file": str(files[p["index"]]), "top_k": p["top_k"]} for p in predictions]
    unreadable = [str(files[i]) for i in unreadable_indices]
    for row in rows:
        print(f"{row['file']}: " + ", ".join(f"{top['class']} {top['probability']:.1%}"
                                             for top in row["top_k"]))
    if unreadable:
        print(f"could not read {len(unreadable)} file(s): " + ", ".join(unreadable),
              file=sys.stderr)
    if out is not None:
        write_results(out, rows, unreadable, {
            "checkpoint": weights.source, "protocol": cfg.protocol, "scale": scale,
            "flip": flip, "preprocessing": {k: v for k, v in preprocessing.items()
                                            if k != "classes"}})
        print(f"predictions: {out}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: run(argv), "predict.py")


if __name__ == "__main__":
    sys.exit(main())
