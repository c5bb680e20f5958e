"""The throughput benchmark compares like with like: from the same seed, our trainer's fp32
step and torchvision's reference step compute the same training run."""

import copy
import importlib.util
from pathlib import Path

import pytest
import torch

from vgg import build_vgg
from vgg.training import build_optimizer, train_step

spec = importlib.util.spec_from_file_location(
    "train_throughput", Path(__file__).parents[1] / "benchmarks" / "train_throughput.py")
benchmark = importlib.util.module_from_spec(spec)
spec.loader.exec_module(benchmark)


def test_our_fp32_step_matches_the_reference_step():
    torch.manual_seed(0)
    reference = build_vgg("A", num_classes=10, image_size=32, fc_width=32)
    ours = copy.deepcopy(reference)
    initial = copy.deepcopy(list(reference.parameters()))
    reference_optimizer = torch.optim.SGD(reference.parameters(), lr=benchmark.LR,
                                          momentum=benchmark.MOMENTUM,
                                          weight_decay=benchmark.WEIGHT_DECAY)
    our_optimizer = build_optimizer(ours, lr=benchmark.LR, momentum=benchmark.MOMENTUM,
                                    weight_decay=benchmark.WEIGHT_DECAY)
    data = torch.Generator().manual_seed(1)
    for step in range(3):
        image = torch.randn(8, 3, 32, 32, generator=data)
        target = torch.randint(0, 10, (8,), generator=data)
        torch.manual_seed(100 + step)  # the same dropout masks in both
        reference_loss = benchmark.reference_step(reference.train(), reference_optimizer,
                                                  image, target, scaler=None)
        torch.manual_seed(100 + step)
        result = train_step(ours.train(), our_optimizer, [(image, target)],
                            device=torch.device("cpu"))
        assert result.loss_sum / 8 == pytest.approx(reference_loss.item(), rel=1e-5)
    assert all(not torch.equal(p, p0) for p, p0 in zip(reference.parameters(), initial,
                                                       strict=True))  # every layer trained
    for mine, theirs in zip(ours.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)
