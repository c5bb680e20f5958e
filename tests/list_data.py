"""What a new process sees of one split of a data set, as JSON: its files, labels and
classes, how many folders it listed for image files, and its rank; printed, or written to
<out>/<rank>.json. The listing tests run it as a restart, and under torchrun as the ranks of
a job.

    python -m tests.list_data ImageFolder train <data_root> [<out>]

Under torchrun, LIST_DATA_GROUP_TIMEOUT=S gives the process group a timeout of S seconds and
LIST_DATA_RANK0_DELAY=S makes rank 0's listing S seconds slower: a slow network file system.
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch.distributed as dist

from vgg.data import build_dataset, listing
from vgg.data.listing import folders_listed
from vgg.distributed import cleanup, init_distributed


def slowed(delay: float, listing_of):
    def slow(*args, **kwargs):
        time.sleep(delay)
        return listing_of(*args, **kwargs)
    return slow


def main(argv: list[str]) -> None:
    name, split, root, *out = argv
    if "LIST_DATA_GROUP_TIMEOUT" in os.environ:  # torchrun's env:// with a short timeout
        dist.init_process_group("gloo", timeout=timedelta(
            seconds=float(os.environ["LIST_DATA_GROUP_TIMEOUT"])))
    rank, _, _, _ = init_distributed("cpu")
    if rank == 0 and "LIST_DATA_RANK0_DELAY" in os.environ:
        listing._listing = slowed(float(os.environ["LIST_DATA_RANK0_DELAY"]), listing._listing)
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
