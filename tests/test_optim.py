"""vgg/optim.py: the schedule and the parameter groups against hand-computed values."""

import pytest
import torch

from vgg.checkpoint import load_checkpoint, save_checkpoint
from vgg.model import build_vgg
from vgg.optim import LRSchedule, build_optimizer, param_groups, set_hyperparameters


def test_plateau_divides_by_ten_at_most_three_times():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1e-2)
    schedule = LRSchedule(optimizer, "plateau", total_steps=100, patience=2)
    lrs = []
    for epoch, accuracy in enumerate([0.1, 0.2, 0.3] + [0.3] * 30, start=1):
        schedule.end_epoch(epoch, accuracy)
        schedule.update(epoch)
        lrs.append(optimizer.param_groups[0]["lr"])
    assert lrs[:5] == [1e-2] * 5  # improving, then patience 2 (drop after 3 bad epochs)
    assert lrs[5] == pytest.approx(1e-3)
    assert sorted(set(lrs), reverse=True) == pytest.approx([1e-2, 1e-3, 1e-4, 1e-5])
    assert schedule.drops == 3 and lrs[-1] == pytest.approx(1e-5)



def test_warmup_and_cosine_count_optimizer_steps():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    schedule = LRSchedule(optimizer, "cosine", total_steps=110, warmup_steps=10, min_lr=0.0)
    lr = []
    for step in range(110):
        schedule.update(step)
        lr.append(optimizer.param_groups[0]["lr"])
    assert lr[0] == pytest.approx(0.1) and lr[9] == pytest.approx(1.0)
    assert lr[60] == pytest.approx(0.5) and lr[109] < 1e-3



def test_from_A_layers_keep_their_learning_rate(tmp_path):
    a = build_vgg("A", num_classes=10, in_channels=1, image_size=32, fc_width=64)
    save_checkpoint({"model": a.state_dict()}, tmp_path / "a.pt")
    d = build_vgg("D", num_classes=10, in_channels=1, image_size=32, fc_width=64,
                  init="from_A", a_state_dict=load_checkpoint(tmp_path / "a.pt")["model"])
    optimizer = build_optimizer(d, lr=1e-2, copied_from_A=d.copied_from_A)
    schedule = LRSchedule(optimizer, "plateau", total_steps=100, patience=0)
    for epoch in range(1, 6):
        schedule.end_epoch(epoch, 0.5)
    schedule.update(5)
    assert schedule.drops == 3
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    for name, p in d.named_parameters():
        expected = 1e-2 if name in d.copied_from_A else 1e-5
        assert lr_of[id(p)] == pytest.approx(expected), name
    assert len(d.copied_from_A) == 14  # 4 convs + 3 FCs, weight and bias each



def test_bias_and_norm_exemption():
    model = build_vgg("A", num_classes=10, in_channels=1, image_size=32, fc_width=64,
                      batch_norm=True)
    groups = param_groups(model, 5e-4, decay_norm_and_bias=False)
    decayed = {id(p) for g in groups if g["weight_decay"] for p in g["params"]}
    for name, p in model.named_parameters():
        assert (id(p) in decayed) == (p.ndim > 1), name
    assert all(g["weight_decay"] == 5e-4 for g in param_groups(model, 5e-4))


def test_a_schedule_restored_from_a_checkpoint_continues_as_the_original(tmp_path):
    """The plateau state (drops, best, bad epochs) survives a weights-only checkpoint: a
    schedule restored after one bad epoch, and again after a drop, takes the same decisions
    and sets the same rates as the one that never stopped."""
    def schedule():
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-2)
        return LRSchedule(optimizer, "plateau", total_steps=100, patience=1)

    original, restored = schedule(), schedule()
    accuracies = [0.5, 0.5, 0.5, 0.7, 0.7, 0.7, 0.7]
    for epoch, accuracy in enumerate(accuracies, start=1):
        dropped = original.end_epoch(epoch, accuracy)
        original.update(epoch)
        if epoch in (2, 4):  # one bad epoch so far (a drop due next); then after a drop
            save_checkpoint({"scheduler": original.state_dict()}, tmp_path / "s.pt")
            restored = schedule()
            restored.load_state_dict(load_checkpoint(tmp_path / "s.pt")["scheduler"])
            restored.update(epoch)
        else:
            assert restored.end_epoch(epoch, accuracy) == dropped, epoch
            restored.update(epoch)
        assert restored.state_dict() == original.state_dict(), epoch
        assert restored.lr == pytest.approx(original.lr), epoch
    assert original.drops == 2 and original.lr == pytest.approx(1e-4)
    with pytest.raises(ValueError, match="'plateau' schedule"):
        LRSchedule(restored.optimizer, "cosine", total_steps=10).load_state_dict(
            original.state_dict())


def test_flags_given_on_resume_overwrite_the_saved_hyperparameters():
    """set_hyperparameters: the config's lr (times a fine-tuned group's lr_scale), weight
    decay (kept 0 where a group has none) and momentum replace the restored ones."""
    model = build_vgg("A", num_classes=10, in_channels=1, image_size=32, fc_width=64)
    optimizer = build_optimizer(model, lr=1e-2, weight_decay=5e-4, decay_norm_and_bias=False,
                                pretrained=list(model.features.parameters()),
                                pretrained_lr_multiplier=0.1)
    set_hyperparameters(optimizer, lr=1e-3, weight_decay=1e-4, momentum=0.8)
    for group in optimizer.param_groups:
        pretrained = group["name"].endswith("_pretrained")
        assert group["initial_lr"] == pytest.approx(1e-4 if pretrained else 1e-3)
        assert group["weight_decay"] == (1e-4 if group["name"].startswith("decay") else 0.0)
        assert group["momentum"] == 0.8
    assert {g["name"] for g in optimizer.param_groups} == {
        "decay", "no_decay", "decay_pretrained", "no_decay_pretrained"}
