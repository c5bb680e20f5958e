"""The memory benchmark's figures: its extrapolation from batch 1 and 2 equals a direct
measurement, and its fit table reads the measured footprints."""

import pytest
import torch

from benchmarks import train_memory as benchmark
from vgg import build_vgg


@pytest.mark.parametrize("precision", [None, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointing"])
def test_memory_extrapolation_equals_direct_measurement(precision, checkpointing):
    """The CPU memory table measures at batch 1 and 2 and extrapolates; the figure must be the one
    measured at the batch itself. Under bf16 + checkpointing the recomputed stage that sets
    the peak changes with the batch (the last stage's bf16 weight copies at batch 1, the
    first stage's activations at 64): taking one stage's maximum at small batches and
    extrapolating it linearly came out far too low."""
    model = build_vgg("A", num_classes=10, image_size=32, fc_width=64, init=None)
    model.activation_checkpointing = checkpointing
    saved = benchmark.saved_bytes_by_batch(model, precision)
    for batch in (3, 64):
        assert saved.at(batch) == pytest.approx(benchmark.saved_bytes(model, batch, precision),
                                                rel=1e-6)
    if checkpointing and precision is not None:  # the case the test is for
        assert (saved.largest_stage(1), saved.largest_stage(64)) == (5, 1)


def test_largest_batch_that_fits_reads_the_measured_footprints():
    gib = 2**30
    footprints = {32: 5 * gib, 64: 9 * gib, 128: 17 * gib, 256: 33 * gib}  # 512: OOM
    fits = {size: benchmark.largest_batch_that_fits(footprints, size * gib)
            for size in benchmark.GPU_SIZES_GIB}
    assert fits == {16: 64, 24: 128, 40: 256, 48: 256, 80: 256}
    assert benchmark.largest_batch_that_fits(footprints, 4 * gib) is None
