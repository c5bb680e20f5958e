"""A change measured against the code before it: one probe timed in two checkouts of this
project, alternated A/B/A/B in one run, so that a load that changes over the run (a
shared machine) weighs on both sides alike.

    git worktree add --detach /tmp/before main      # the code before the change
    python -m benchmarks.before_after --before /tmp/before seeding
    python -m benchmarks.before_after --before /tmp/before listing --files 100000
    python -m benchmarks.before_after --before /tmp/before fingerprint --files 1281167
    python -m benchmarks.before_after --before /tmp/before device_augment

Each probe is a function of this checkout's benchmarks (``PROBES``) that uses only names
both checkouts define; each round runs it in a fresh process whose ``vgg`` (and the rest of
the project) comes from one checkout, on inputs prepared once, here. Printed: every
round's figure, then per side the median and range, and the after / before ratio as the
median (and range) of the rounds' ratios.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent  # this checkout: the "after" side

# name: (module, function returning the figure, its unit, higher is better)
PROBES = {
    "seeding": ("benchmarks.data_pipeline", "seeded_rate", "images/s", True),
    "listing": ("benchmarks.data_setup", "setup_seconds", "s", False),
    "fingerprint": ("benchmarks.data_setup", "fingerprint_seconds", "s", False),
    "device_augment": ("benchmarks.gpu_data", "augment_rate", "images/s", True),
}

# Runs in each round's process: the probe module loaded from this checkout's file, with
# the measured checkout first on sys.path.
CHILD = """
import importlib.util, json, sys
checkout, path, name, folder, options = sys.argv[1:]
sys.path.insert(0, checkout)
spec = importlib.util.spec_from_file_location("probe", path)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
print(json.dumps(getattr(module, name)(folder, **json.loads(options))))
"""


def run_probe(checkout: Path, module: str, function: str, folder: str, options: dict) -> float:
    """The figure ``function`` of ``module`` (this checkout's file) returns when it runs
    against ``checkout``'s code, in a process of its own."""
    path = HERE / (module.replace(".", "/") + ".py")
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(checkout), str(path), function, folder,
         json.dumps(options)], cwd=checkout, env=env, capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"the probe failed in {checkout}:\n{result.stderr[-3000:]}")
    return float(json.loads(result.stdout.strip().splitlines()[-1]))


def spread(values: list[float]) -> str:
    return f"median {statistics.median(values):.3f}, range {min(values):.3f}-{max(values):.3f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True,
                        help="a checkout of the code before the change")
    parser.add_argument("--after", type=Path, default=HERE, help="default: this checkout")
    parser.add_argument("--rounds", type=int, default=5, help="A/B pairs")
    parser.add_argument("probe", choices=PROBES)
    parser.add_argument("--files", type=int, default=100_000,
                        help="listing, fingerprint: tree size")
    parser.add_argument("--classes", type=int, default=1000,
                        help="listing, fingerprint: class folders")
    parser.add_argument("--images", type=int, help="seeding, device_augment: images a round")
    parser.add_argument("--size", type=int, help="seeding: crop size (32: CIFAR, 224: ImageNet)")
    args = parser.parse_args(argv)
    module, function, unit, higher_is_better = PROBES[args.probe]
    options = {k: v for k, v in {"images": args.images, "size": args.size}.items()
               if v is not None}
    if args.probe in ("listing", "fingerprint"):
        options = {"files": args.files, "classes": args.classes}
    prepare = importlib.import_module(module).prepare
    sides = {"before": args.before.resolve(), "after": args.after.resolve()}
    figures: dict[str, list[float]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as folder:
        prepare(folder, **options)
        for round_ in range(args.rounds):
            for side, checkout in sides.items():
                figures[side].append(run_probe(checkout, module, function, folder, options))
            print(f"round {round_ + 1}: before {figures['before'][-1]:.3f} {unit}, "
                  f"after {figures['after'][-1]:.3f} {unit}", flush=True)
    ratios = [(a / b if higher_is_better else b / a)
              for a, b in zip(figures["after"], figures["before"], strict=True)]
    print(f"{args.probe} {options}: before ({sides['before']}) {spread(figures['before'])} "
          f"{unit}; after ({sides['after']}) {spread(figures['after'])} {unit}")
    print(f"speed-up after / before, per round: {spread(ratios)}x")


if __name__ == "__main__":
    main()
