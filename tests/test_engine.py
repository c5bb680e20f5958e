"""vgg/engine.py: the step against a hand-computed big-batch update, clipping, validation."""

import pytest
import torch
import torch.nn.functional as F

from vgg.engine import train_step
from vgg.model import build_vgg
from vgg.optim import build_optimizer


def test_accumulation_equals_one_big_batch():
    torch.manual_seed(0)
    model = build_vgg("A", num_classes=10, in_channels=1, image_size=32, fc_width=64,
                      dropout=0.0)
    reference = build_vgg("A", num_classes=10, in_channels=1, image_size=32, fc_width=64,
                          dropout=0.0)
    reference.load_state_dict(model.state_dict())
    x, y = torch.randn(13, 1, 32, 32), torch.randint(0, 10, (13,))
    # Micro-batches of 5, 5 and a short 3: still one big batch's mean-loss gradient.
    window = [(x[:5], y[:5]), (x[5:10], y[5:10]), (x[10:], y[10:])]
    optimizer = build_optimizer(model, lr=0.1, momentum=0.0, weight_decay=0.0)
    result = train_step(model, optimizer, window, device=torch.device("cpu"))
    F.cross_entropy(reference(x), y).backward()
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)
        torch.testing.assert_close(p.detach(), q.detach() - 0.1 * q.grad, rtol=1e-4, atol=1e-6)
    assert result.samples == 13 and result.finite
    assert result.loss_sum / 13 == pytest.approx(F.cross_entropy(reference(x), y).item(),
                                                 rel=1e-5)
