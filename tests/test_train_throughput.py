"""The throughput benchmark compares like with like: from the same seed, our trainer's fp32
step and torchvision's reference step compute the same training run."""

import copy

import pytest
import torch

from benchmarks import steps
from benchmarks import train_throughput as benchmark
from vgg import build_vgg
from vgg.engine import train_step
from vgg.optim import build_optimizer


def test_our_fp32_step_matches_the_reference_step():
    torch.manual_seed(0)
    reference = build_vgg("A", num_classes=10, image_size=32, fc_width=32)
    ours = copy.deepcopy(reference)
    initial = copy.deepcopy(list(reference.parameters()))
    reference_optimizer = torch.optim.SGD(reference.parameters(), lr=steps.LR,
                                          momentum=steps.MOMENTUM,
                                          weight_decay=steps.WEIGHT_DECAY)
    our_optimizer = build_optimizer(ours, lr=steps.LR, momentum=steps.MOMENTUM,
                                    weight_decay=steps.WEIGHT_DECAY)
    data = torch.Generator().manual_seed(1)
    for step in range(3):
        image = torch.randn(8, 3, 32, 32, generator=data)
        target = torch.randint(0, 10, (8,), generator=data)
        torch.manual_seed(100 + step)  # the same dropout masks in both
        loss, acc1, acc5 = steps.reference_step(reference.train(), reference_optimizer,
                                                image, target, scaler=None)
        torch.manual_seed(100 + step)
        result = train_step(ours.train(), our_optimizer, [(image, target)],
                            device=torch.device("cpu"))
        assert result.loss_sum / 8 == pytest.approx(loss, rel=1e-5)
        # the reference's per-step metrics, torchvision's percentages of the same output
        assert (acc1, acc5) == pytest.approx((100 * result.top1 / 8, 100 * result.top5 / 8))
    assert all(not torch.equal(p, p0) for p, p0 in zip(reference.parameters(), initial,
                                                       strict=True))  # every layer trained
    for mine, theirs in zip(ours.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)


def backend_flags():
    return (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
            torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)


@pytest.fixture
def restored_backends():
    before, matmul = backend_flags(), torch.get_float32_matmul_precision()
    yield before
    torch.set_float32_matmul_precision(matmul)
    (_, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark,
     torch.backends.cudnn.deterministic) = before


def test_tf32_is_ours_only_and_never_leaks_into_the_reference(monkeypatch, restored_backends):
    """torchvision's train.py leaves TF32 at PyTorch's defaults (matmuls off), ours turns it
    on (train.py's configure_backends): each variant runs under its own settings, the
    reference also when measured after ours, and main leaves the process as it was."""
    seen = []

    def fake_measure(step, image, target, device, warmup, steps):
        seen.append((step, backend_flags()))
        return 1.0, 0

    def variant(name):
        return lambda *args, **kwargs: (None, name)

    real_our_backends = benchmark.our_backends
    monkeypatch.setattr(benchmark, "measure", fake_measure)
    monkeypatch.setattr(benchmark, "reference_variant", variant("reference"))
    monkeypatch.setattr(benchmark, "our_variant", variant("ours"))
    # our settings as on a GPU (on CPU configure_backends leaves TF32 alone)
    monkeypatch.setattr(benchmark, "our_backends",
                        lambda device: real_our_backends(torch.device("cuda")))
    torch.backends.cuda.matmul.allow_tf32 = False
    before = backend_flags()
    monkeypatch.setattr(benchmark, "monitored", lambda network, step, *args: step)
    for _ in range(2):  # the second run's reference comes after the first run's ours
        benchmark.main(["--device", "cpu", "--image_size", "32", "--batch_size", "2",
                        "--repeats", "2"])
        assert backend_flags() == before
    reference = (False, True, True, False)  # TF32 matmuls off, convolutions on (defaults)
    ours = (True, True, True, False)
    # Alternated: reference, ours, ours + monitor, ours + compile, then the other way round.
    one_round = [("reference", reference), ("ours", ours), ("ours", ours), ("ours", ours)]
    assert seen == (one_round + one_round[::-1]) * 2
