"""Training throughput: torchvision's reference step against ours, side by side, with each
one's model FLOP utilisation.

    python -m benchmarks.train_throughput                  # CPU: config A at 32x32
    python -m benchmarks.train_throughput --device cuda    # GPU: config D at 224, batch 256
    python -m benchmarks.train_throughput --device cuda --profile   # + top kernels

All variants run in this one process on the same synthetic batch, already on the device,
so only the training step differs:
  reference fp32  the plain step of torchvision's references/classification/train.py
                  (NCHW, fp32, SGD with torch's default foreach kernels), with the per-step
                  top-1/top-5 and .item() reads of its MetricLogger, under its backend
                  settings: cudnn.benchmark on, TF32 at PyTorch's defaults (matmuls off)
  reference amp   the same with its --amp: fp16 autocast and a GradScaler
  ours            vgg.engine.train_step with the trainer's defaults: bf16 autocast on
                  GPU (fp32 on CPU), channels_last on GPU, fused SGD on GPU, and train.py's
                  configure_backends (TF32 on GPU); torch.compile off and on
  ours + monitor  ours with the trainer's health monitor (vgg.health) as the training loop
                  runs it: every --monitor_interval steps (the default --log_interval) a
                  step samples dead ReLUs and reads per-stage gradient norms, and the
                  monitor judges the interval
Each variant's backend settings are restored after it, so none leaks into the next.
Warm-up steps (and compilation) are excluded from the timings. A changing load (a shared
machine) would bias a ratio towards whichever variant ran at the quieter time, so the
variants are measured --repeats times, alternated (forward, then backward order: ABBA),
and each figure is the median over the rounds, with the spread (min-max) of the rounds
beside it; a ratio's median and spread are of the per-round ratios.

MFU is images/s x the FLOP bound of one training image (3 x 2 x the forward
multiply-accumulates: 92.8 GFLOP for D at 224) over the device's peak: --peak_tflops, else
the datasheet's dense bf16 rate of a known GPU, else the rate measured here of one large
matrix product (bf16 on GPU, fp32 on CPU). --profile adds torch.profiler's table of the
kernels that take the time in each of our variants.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.steps import (
    add_model_arguments,
    backends,
    check_image_size,
    measure,
    our_backends,
    our_variant,
    reference_backends,
    reference_variant,
    resolve_model_arguments,
    synchronize,
    training_flops_per_image,
)
from config import Config
from vgg.health import HealthMonitor

# Dense (no sparsity) bf16 tensor-core peaks from the vendors' datasheets, TFLOP/s, by a
# substring of torch.cuda.get_device_name. The SXM parts; PCIe parts run lower clocks.
DATASHEET_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0}


def matmul_tflops(device: torch.device, size: int) -> float:
    """Measured TFLOP/s of a ``size``-cubed matrix product on random data (bf16 on GPU,
    fp32 on CPU): the rate this device reaches on the easiest dense work there is."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    for _ in range(2):
        a @ b
    synchronize(device)
    repeats = 10 if device.type == "cuda" else 3
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize(device)
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e12


def peak_tflops(args, device: torch.device) -> tuple[float, str]:
    """(peak TFLOP/s for the MFU column, where that figure comes from)."""
    if args.peak_tflops:
        return args.peak_tflops, "--peak_tflops"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, tflops in DATASHEET_BF16_TFLOPS.items():
            if key in name:
                return tflops, f"{key} datasheet dense bf16"
    return args.measured_tflops, "measured matrix product"


def profile_table(step, image, target, device: torch.device, rows: int) -> str:
    """torch.profiler's table of the ``rows`` operators and kernels with the most device
    (on CPU: self CPU) time over three steps."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda"
                                           else [])
    with profile(activities=activities) as profiler:
        for _ in range(3):
            step(image, target)
        synchronize(device)
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return profiler.key_averages().table(sort_by=sort, row_limit=rows)


def monitored(network, step, num_classes: int, interval: int):
    """``step`` with the health monitor around it as the trainer runs it (vgg.engine's
    train_one_epoch): the step closing each ``interval`` is sampled, then measured and
    judged. An interval is a run of ``interval`` consecutive steps, so a timed window of a
    multiple of ``interval`` steps holds the same share of sampled steps as training."""
    monitor = HealthMonitor(network, num_classes=num_classes, steps_per_epoch=1000,
                            warmup_steps=0, remedies=[], state={})
    count = 0

    def monitored_step(image, target):
        nonlocal count
        count += 1
        with monitor.sampling(count % interval == 0):
            result = step(image, target)
        if count % interval == 0:
            monitor.measure(result)
            monitor.check_interval({"loss": result.loss_sum / result.samples,
                                    "top1_err": 1 - result.top1 / result.samples}, count, 0)
        return result

    return monitored_step


def spread(values: list[float]) -> str:
    return f"{min(values):.4g}-{max(values):.4g}"


def throughput(args, device: torch.device) -> None:
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(args.batch_size, 3, args.image_size, args.image_size,
                        generator=generator).to(device)
    target = torch.randint(0, args.num_classes, (args.batch_size,), generator=generator
                           ).to(device)
    common = (args.model_version, args.image_size, args.num_classes, device, args.seed)

    def ours_monitored():
        network, step = our_variant(*common, compile_model=False)
        return network, monitored(network, step, args.num_classes, args.monitor_interval)

    variants = {  # name: (build it, its backend settings)
        "reference fp32": (lambda: reference_variant(*common, amp=False), reference_backends),
        "reference amp (fp16)": (lambda: reference_variant(*common, amp=True),
                                 reference_backends),
        "ours": (lambda: our_variant(*common, compile_model=False), our_backends(device)),
        "ours + monitor": (ours_monitored, our_backends(device)),
        "ours + compile": (lambda: our_variant(*common, compile_model=True),
                           our_backends(device)),
    }
    if device.type != "cuda":  # fp16 autocast + GradScaler is a GPU recipe
        del variants["reference amp (fp16)"]
    if args.no_compile:
        del variants["ours + compile"]
    hardware = (torch.cuda.get_device_name(device) if device.type == "cuda"
                else f"{torch.get_num_threads()} threads")
    flops = training_flops_per_image(args.model_version, args.image_size, args.num_classes)
    args.measured_tflops = matmul_tflops(device, 8192 if device.type == "cuda" else 512)
    peak, source = peak_tflops(args, device)
    print(f"config {args.model_version}, {args.image_size}x{args.image_size}, batch "
          f"{args.batch_size}, {args.num_classes} classes, {device} ({hardware}), warm-up "
          f"{args.warmup}, timed {args.steps} steps x {args.repeats} rounds alternated, "
          f"monitor every {args.monitor_interval} steps, torch {torch.__version__}")
    print(f"bound: {flops / 1e9:.2f} GFLOP per training image; MFU against {peak:.4g} "
          f"TFLOP/s ({source}); a large matrix product ran at {args.measured_tflops:.4g} "
          f"TFLOP/s here")
    steps = {}
    for name, (make, configure) in variants.items():
        with backends(configure):
            steps[name] = make()[1]
    speeds = {name: [] for name in variants}
    peaks = dict.fromkeys(variants, 0)
    # Each round's speeds are printed as soon as measured, so a variant that never
    # finishes still leaves the rounds before it.
    for round_ in range(args.repeats):
        order = list(variants) if round_ % 2 == 0 else list(variants)[::-1]
        for name in order:
            with backends(variants[name][1]):
                speed, peak_bytes = measure(steps[name], image, target, device,
                                            args.warmup, args.steps)
            speeds[name].append(speed)
            peaks[name] = max(peaks[name], peak_bytes)
        print(f"round {round_ + 1}: " + ", ".join(f"{name} {speeds[name][-1]:.1f}"
                                                    for name in variants) + " images/s",
              flush=True)
    print(f"{'variant':<22}{'images/s':>10}{'(spread)':>17}{'MFU':>8}{'vs ref fp32':>13}"
          f"{'(spread)':>13}{'vs ref amp':>12}{'peak memory':>14}")
    for name, measured in speeds.items():
        ratios = [mine / ref for mine, ref in zip(measured, speeds["reference fp32"],
                                                  strict=True)]
        amp = speeds.get("reference amp (fp16)")
        vs_amp = (f"{statistics.median(m / a for m, a in zip(measured, amp, strict=True)):>11.2f}x"
                  if amp else f"{'-':>12}")
        speed = statistics.median(measured)
        print(f"{name:<22}{speed:>10.1f}{spread(measured):>17}"
              f"{speed * flops / (peak * 1e12):>8.1%}{statistics.median(ratios):>12.2f}x"
              f"{spread(ratios):>13}{vs_amp}{peaks[name] / 2**30:>10.2f} GiB")
    monitor_ratios = [m / o for m, o in zip(speeds["ours + monitor"], speeds["ours"],
                                            strict=True)]
    print(f"health monitor on / off (ours + monitor vs ours, per round): median "
          f"{statistics.median(monitor_ratios):.3f}x, spread {spread(monitor_ratios)}")
    kind = "torch.cuda.max_memory_allocated" if device.type == "cuda" else "peak process RSS"
    print(f"(peak memory: {kind} during the timed steps)")
    if args.profile:
        for name in (n for n in variants if n.startswith("ours")):
            with backends(variants[name][1]):
                table = profile_table(steps[name], image, target, device, args.profile_rows)
            print(f"\nprofile of {name!r}, three steps:\n{table}")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    parser.add_argument("--batch_size", type=int, default=None,
                        help="default: 256 on GPU, 32 on CPU")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps per round (default: --monitor_interval)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="rounds, the variants alternated in each")
    parser.add_argument("--monitor_interval", type=int, default=Config.log_interval,
                        help="steps between the health monitor's samples (the trainer's "
                             "--log_interval)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--no_compile", action="store_true", help="skip the compiled variant")
    parser.add_argument("--peak_tflops", type=float, default=None,
                        help="peak TFLOP/s for MFU (default: datasheet bf16 of a known GPU, "
                             "else a measured matrix product)")
    parser.add_argument("--profile", action="store_true",
                        help="also print torch.profiler's top kernels of our variants")
    parser.add_argument("--profile_rows", type=int, default=15)
    args = parser.parse_args(argv)
    args.steps = args.steps or args.monitor_interval
    resolve_model_arguments(args, batch_size=(256, 32))
    check_image_size(parser, args.image_size)
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    throughput(args, torch.device(args.device))  # each variant sets its own backends


if __name__ == "__main__":
    main()
