"""vgg/engine.py: the step against a hand-computed big-batch update, clipping, validation."""

import os
import signal

import pytest
import torch
import torch.nn.functional as F

from vgg.engine import train_step, validate
from vgg.model import build_vgg
from vgg.optim import build_optimizer
from vgg.stop import StopRequest


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


def test_grad_clip_gives_the_hand_computed_clipped_update():
    # Plain SGD on a linear layer: the update is -lr * g * clip / |g| when |g| > clip.
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    initial = [p.detach().clone() for p in model.parameters()]
    x, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    reference = torch.nn.Linear(4, 3)
    reference.load_state_dict(model.state_dict())
    F.cross_entropy(reference(x), y).backward()
    grads = [p.grad for p in reference.parameters()]
    norm = torch.sqrt(sum((g ** 2).sum() for g in grads))
    clip = 1e-3
    assert norm > 100 * clip  # the clip binds
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    result = train_step(model, optimizer, [(x, y)], device=torch.device("cpu"),
                        grad_clip=clip)
    assert result.grad_norm == pytest.approx(norm.item(), rel=1e-5)  # before clipping
    for p, p0, g in zip(model.parameters(), initial, grads, strict=True):
        torch.testing.assert_close(p.detach(), p0 - 0.5 * g * clip / norm, rtol=1e-5,
                                   atol=1e-8)


def test_validation_returns_nothing_once_a_stop_is_requested():
    # SIGTERM during validation: the trainer skips the rest of it and saves at once.
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    loader = [(torch.randn(2, 4), torch.tensor([0, 1]))] * 3
    with StopRequest(announce=lambda *a, **k: None) as stop:
        result = validate(model, loader, torch.device("cpu"), stop=stop)
        assert result is not None and result["n"] == 6
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested
        assert validate(model, loader, torch.device("cpu"), stop=stop) is None
