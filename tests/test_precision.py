"""The GPU recipe's switches, exercised on a CPU as far as they go (no GPU here): precision
selection; a bf16 step that moves the weights like fp32; fp16 steps that go through the
GradScaler; channels_last and torch.compile steps equal to the fp32 eager step."""

import copy
import math

import pytest
import torch

from vgg import build_vgg
from vgg.engine import precision_setup, prepare_model, train_step, unwrap
from vgg.precision import resolve_precision

CPU = torch.device("cpu")


def test_precision_selection():
    assert resolve_precision("auto", CPU) == "fp32"  # CPU autocast would only slow it down
    assert precision_setup("fp32", CPU)[1:] == (None, None)
    name, dtype, scaler = precision_setup("bf16", CPU)
    assert (name, dtype, scaler) == ("bf16", torch.bfloat16, None)  # bf16 needs no scaler
    name, dtype, scaler = precision_setup("fp16", CPU)
    assert (name, dtype) == ("fp16", torch.float16)
    assert isinstance(scaler, torch.amp.GradScaler)


def run_steps(model, precision="fp32", channels_last=False, compile=False, steps=1):
    """(network, parameters, scaler) after ``steps`` SGD steps of a copy of ``model`` on
    one fixed batch, without dropout."""
    model = copy.deepcopy(model)
    model.classifier[2].p = model.classifier[5].p = 0.0
    prepared = prepare_model(model, CPU, channels_last=channels_last, compile=compile,
                             distributed=False)
    optimizer = torch.optim.SGD(prepared.parameters(), lr=0.1, momentum=0.9)
    _, dtype, scaler = precision_setup(precision, CPU)
    generator = torch.Generator().manual_seed(1)
    batch = (torch.randn(8, 3, 32, 32, generator=generator),
             torch.randint(0, 10, (8,), generator=generator))
    for _ in range(steps):
        assert train_step(prepared, optimizer, [batch], device=CPU, autocast_dtype=dtype,
                          scaler=scaler, channels_last=channels_last).finite
    return unwrap(prepared), [p.detach().clone() for p in prepared.parameters()], scaler


def flat(tensors):
    return torch.cat([t.flatten() for t in tensors])


@pytest.fixture(scope="module")
def reference():
    torch.manual_seed(0)
    model = build_vgg("A", num_classes=10, image_size=32, fc_width=32, batch_norm=True)
    return model, run_steps(model)[1]


def test_bf16_step_moves_the_weights_like_fp32(reference):
    model, expected = reference
    initial = flat(model.parameters()).detach()
    fp32_update = flat(expected) - initial
    bf16_update = flat(run_steps(model, "bf16")[1]) - initial
    # bf16 keeps 8 bits of mantissa: the update's direction and size agree, not its bits
    # (measured: cosine 0.90, norm ratio 1.03 for this batch-norm net at batch 8).
    assert torch.nn.functional.cosine_similarity(fp32_update, bf16_update, 0) > 0.8
    assert 0.8 < bf16_update.norm() / fp32_update.norm() < 1.25


def test_fp16_steps_go_through_the_grad_scaler(reference):
    model, _ = reference
    _, trained, scaler = run_steps(model, "fp16", steps=6)
    # GradScaler's first scale (65536) overflows fp16 gradients: those steps are skipped
    # and the scale lowered; then the updates go through and stay finite.
    assert scaler.get_scale() < 65536.0
    changed = [not torch.equal(t, p) for t, p in zip(trained, model.parameters(), strict=True)]
    assert all(changed) and all(torch.isfinite(t).all() for t in trained)


def test_channels_last_step_matches_and_keeps_nhwc_weights(reference):
    model, expected = reference
    trained, got, _ = run_steps(model, channels_last=True)
    assert trained.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)


@pytest.mark.slow  # compiling takes tens of seconds on 2 cores
def test_compiled_step_matches_eager(reference):
    model, expected = reference
    trained, got, _ = run_steps(model, compile=True)
    assert isinstance(trained, type(model))  # unwrap() returns the plain network
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)


def test_fp16_overflow_is_a_skipped_step_not_a_divergence(reference):
    model, _ = reference
    model = copy.deepcopy(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    batch = (torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,)))
    # A scale of 2^60 overflows fp16 (largest finite 65504) in every gradient.
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**60)
    result = train_step(model, optimizer, [batch], device=CPU, autocast_dtype=torch.float16,
                        scaler=scaler)
    assert result.finite and not result.applied and not math.isfinite(result.grad_norm)
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))
    assert scaler.get_scale() == 2.0**59  # backed off, ready for the next try
    scaler = torch.amp.GradScaler("cpu", init_scale=1.0)
    result = train_step(model, optimizer, [batch], device=CPU, autocast_dtype=torch.float16,
                        scaler=scaler)
    assert result.finite and result.applied and 0 < result.grad_norm < math.inf
    assert not any(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))


def test_a_non_finite_fp16_gradient_at_scale_one_is_a_divergence(reference):
    # Overflows need a scale above 1. Below it the scaler would halve its way to 0 and skip
    # every step forever, so the step reports the gradient as non-finite instead.
    model, _ = reference
    model = copy.deepcopy(model)
    model.features[0].weight.register_hook(lambda grad: grad * math.nan)
    batch = (torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,)))
    for init_scale, overflow in ((2.0**16, True), (1.0, False)):
        scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
        result = train_step(model, torch.optim.SGD(model.parameters(), lr=0.1), [batch],
                            device=CPU, autocast_dtype=torch.float16, scaler=scaler)
        assert not result.applied and math.isfinite(result.loss_sum)
        assert result.finite == overflow
