"""Images per second of each test protocol (Sec. 3.2) at each test scale, for config D.

    python -m benchmarks.evaluate_throughput                 # GPU: 224 net, Q = 256/384/512
    python -m benchmarks.evaluate_throughput --device cpu    # CPU: a 32 net, Q scaled alike

Shows what multi-crop (50 crops per scale) and multi-scale evaluation cost against one
centre crop or dense evaluation. Inputs are random images already rescaled to Q (4:3
landscape, as most ImageNet photos), so the figures are the network's, not the loader's.
On CPU the network is shrunk to ``--image_size`` (default 32) and each Q scaled by
image_size / 224 (256/384/512 -> 37/55/73), keeping the paper's Q / crop ratios.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from vgg.evaluation import PROTOCOLS, Evaluator
from vgg.model import build_vgg

PAPER_SCALES = (256, 384, 512)


def measure(evaluator: Evaluator, images: list[tuple[torch.Tensor, ...]], repeats: int,
            images_per_step: int) -> float:
    """Images per second over ``repeats`` passes, after one warm-up pass."""
    def one_pass():
        for start in range(0, len(images), images_per_step):
            evaluator.posteriors(images[start:start + images_per_step])
        if evaluator.device.type == "cuda":
            torch.cuda.synchronize(evaluator.device)

    one_pass()
    start = time.perf_counter()
    for _ in range(repeats):
        one_pass()
    return repeats * len(images) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model_version", default="D")
    parser.add_argument("--image_size", type=int, help="224 on GPU, 32 on CPU")
    parser.add_argument("--scales", type=int, nargs="+",
                        help="paper's 256 384 512, scaled by image_size / 224")
    parser.add_argument("--protocols", nargs="+", default=list(PROTOCOLS), choices=PROTOCOLS)
    parser.add_argument("--images", type=int,
                        help="images per measurement (default: 64, and at least 4 and one "
                             "full --batch_size of network inputs per step on a CPU)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=64, help="crops per forward pass")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    gpu = device.type == "cuda"
    image_size = args.image_size or (224 if gpu else 32)
    scales = args.scales or [round(q * image_size / 224) for q in PAPER_SCALES]
    torch.manual_seed(0)
    model = build_vgg(args.model_version, image_size=image_size, init="kaiming")

    def image(q: int) -> torch.Tensor:  # 4:3 landscape, smallest side q
        return torch.randn(3, q, round(q * 4 / 3))

    name = torch.cuda.get_device_name(device) if gpu else f"CPU, {torch.get_num_threads()} threads"
    print(f"config {args.model_version}, {image_size}x{image_size} crops, 1000 classes, "
          f"{args.images or 'enough'} images of 4:3 per measurement, {name}, precision "
          f"{args.precision}")
    rows = []
    header = "| protocol | network inputs / image | " + " | ".join(
        f"Q={q}" for q in scales) + f" | Q={{{','.join(map(str, scales))}}} |"
    print(header + "\n" + "|---" * (len(scales) + 3) + "|")
    for protocol in args.protocols:
        evaluator = Evaluator([model], protocol, device=device, precision=args.precision,
                              batch_size=args.batch_size)
        figures = []
        for qs in [[q] for q in scales] + [scales]:
            per_step = max(1, int(args.batch_size // evaluator.inputs_per_image(qs)))
            # Fewer images than a full batch of crops would time a part-empty forward pass
            # (4 images understated the centre crop's speed 1.9x).
            n_images = args.images or (64 if gpu else max(4, per_step))
            images = [tuple(image(q) for q in qs) for _ in range(n_images)]
            figures.append(measure(evaluator, images, args.repeats, per_step))
        inputs = {"center": "1", "dense": "2 whole images", "multicrop": "50",
                  "dense+multicrop": "50 + 2 whole"}[protocol]
        print(f"| {protocol} | {inputs} per Q | "
              + " | ".join(f"{f:.2f} img/s" for f in figures) + " |", flush=True)
        rows.append({"protocol": protocol, "scales": scales, "images_per_second": figures})
    if args.json:
        args.json.write_text(json.dumps({"device": name, "image_size": image_size,
                                         "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
