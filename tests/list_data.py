"""What a new process sees of one split of a data set, as JSON: its files, labels and
classes, how many folders it listed for image files, and its rank; printed, or written to
<out>/<rank>.json. The listing tests run it as a restart, and under torchrun as the ranks of
a job.

    python -m tests.list_data ImageFolder train <data_root> [<out>]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from vgg.data import build_dataset
from vgg.data.listing import folders_listed
from vgg.distributed import cleanup, init_distributed


def main(argv: list[str]) -> None:
    name, split, root, *out = argv
    rank, _, _, _ = init_distributed("cpu")
    dataset = build_dataset(name, split, root, np.asarray)
    seen = json.dumps({"rank": rank, "listed": folders_listed(), "files": list(dataset.files),
                       "labels": dataset.labels.tolist(), "classes": list(dataset.classes)})
    if out:
        Path(out[0], f"{rank}.json").write_text(seen)
    else:
        print(seen)
    cleanup()


if __name__ == "__main__":
    main(sys.argv[1:])
