"""The average of the weights (vgg/ema.py, train.py --ema) against values worked out by hand:
the warmed-up decay, BatchNorm's statistics averaged and its counter copied, the checkpoint
entries it is restored from."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch
from torch import nn

from tests.evalnets import save_tiny_checkpoint, tiny
from vgg.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from vgg.ema import WeightAverage
from vgg.networks import network_from_checkpoint
from vgg.pretrained import read_weights


def test_the_average_after_three_sgd_steps_is_the_hand_computed_one():
    # w = 1, then SGD at lr 1 on the loss -2w: w = 3, 5, 7. Decay 0.2, warmed up as
    # min(0.2, (1 + n) / (10 + n)) after n updates; the first update copies.
    #   e1 = 1
    #   e2 = 2/11 * 1 + 9/11 * 3           = 29/11   (warm-up: 2/11 < 0.2)
    #   e3 = 1/5 * 29/11 + 4/5 * 5         = 249/55  (3/12 > 0.2: the decay itself)
    #   e4 = 1/5 * 249/55 + 4/5 * 7        = 1789/275
    net = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(1.0)
    optimizer = torch.optim.SGD(net.parameters(), lr=1.0)
    average = WeightAverage(net, 0.2)
    average.update(net)
    seen = [average.module.weight.item()]
    for _ in range(3):
        optimizer.zero_grad()
        (-2 * net.weight.sum()).backward()
        optimizer.step()
        average.update(net)
        seen.append(average.module.weight.item())
    assert net.weight.item() == 7.0
    expected = [Fraction(1), Fraction(29, 11), Fraction(249, 55), Fraction(1789, 275)]
    assert seen == pytest.approx([float(e) for e in expected], rel=1e-6)
    assert average.updates == 4


def test_batchnorm_statistics_are_averaged_and_its_counter_copied():
    # BatchNorm1d, momentum 0.1, from mean 0 and variance 1, on the batch [9, 11] twice
    # (mean 10, unbiased variance 2): running mean 1 then 1.9, variance 1.1 then 1.19.
    # The average after two updates (decay 0.2, warmed up to 2/11): mean
    # 2/11 * 1 + 9/11 * 1.9 = 19.1/11, variance 2/11 * 1.1 + 9/11 * 1.19 = 12.91/11; the
    # batch counter is the network's, 2 (averaged, it would stay at 1).
    bn = nn.BatchNorm1d(1)
    average = WeightAverage(bn, 0.2)
    for _ in range(2):
        bn(torch.tensor([[9.0], [11.0]]))
        average.update(bn)
    assert bn.running_mean.item() == pytest.approx(1.9)
    assert average.module.running_mean.item() == pytest.approx(19.1 / 11, rel=1e-6)
    assert average.module.running_var.item() == pytest.approx(12.91 / 11, rel=1e-6)
    assert average.module.num_batches_tracked.item() == 2
    assert average.module.num_batches_tracked.dtype == torch.long


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.5, float("nan")])
def test_a_decay_outside_zero_to_one_is_refused(decay):
    with pytest.raises(ValueError, match=r"in \(0, 1\)"):
        WeightAverage(nn.Linear(1, 1), decay)


def ema_checkpoint(path, **entries):
    """A checkpoint whose average (seed 1's network) differs from its weights (seed 0's)."""
    save_tiny_checkpoint(path, seed=0)
    checkpoint = load_checkpoint(path)
    averaged = tiny(seed=1, in_channels=1, num_classes=10)
    checkpoint.update({"model_ema": averaged.state_dict(), "ema_updates": 7,
                       "config": checkpoint["config"] | {"ema": 0.999}}, **entries)
    save_checkpoint(checkpoint, path)
    return checkpoint


def test_a_checkpoint_stands_for_its_average_unless_the_raw_weights_are_asked_for(tmp_path):
    checkpoint = ema_checkpoint(tmp_path / "best.pt")
    for weights, entry, label in (("auto", "model_ema", "ema"), ("ema", "model_ema", "ema"),
                                  ("raw", "model", "raw")):
        network = network_from_checkpoint(tmp_path / "best.pt", weights)
        assert network.weights == label
        for key, value in network.model.state_dict().items():
            assert torch.equal(value, checkpoint[entry][key]), (weights, key)
    # predict.py, vgg.export and --init_from read weights through read_weights: the average
    state = read_weights(str(tmp_path / "best.pt")).state
    assert all(torch.equal(v, checkpoint["model_ema"][k]) for k, v in state.items())
    # without an average, auto is the weights and ema an error naming the way out
    save_tiny_checkpoint(tmp_path / "plain.pt", seed=0)
    assert network_from_checkpoint(tmp_path / "plain.pt").weights == "raw"
    with pytest.raises(CheckpointError, match="without --ema.*--weights raw"):
        network_from_checkpoint(tmp_path / "plain.pt", "ema")


@pytest.mark.parametrize("entries, needle", [
    ({"ema_updates": -1}, "'ema_updates' -1 is not a count"),
    ({"ema_updates": 2.5}, "'ema_updates' 2.5 is not a count"),
    ({"model_ema": [1, 2]}, "'model_ema' entry is a list"),
    ({"config_ema": 1.5}, "config ema 1.5 is not a decay in"),
])
def test_a_damaged_average_is_refused_when_the_checkpoint_is_read(tmp_path, entries, needle):
    if "config_ema" in entries:
        save_tiny_checkpoint(tmp_path / "x.pt", seed=0)
        entries = {"config": load_checkpoint(tmp_path / "x.pt")["config"]
                   | {"ema": entries["config_ema"]}}
    ema_checkpoint(tmp_path / "best.pt", **entries)
    with pytest.raises(CheckpointError, match=needle):
        load_checkpoint(tmp_path / "best.pt")


def test_an_average_with_non_finite_weights_is_refused(tmp_path):
    checkpoint = ema_checkpoint(tmp_path / "best.pt")
    checkpoint["model_ema"]["classifier.6.bias"][0] = float("nan")
    save_checkpoint(checkpoint, tmp_path / "best.pt")
    with pytest.raises(CheckpointError, match="non-finite"):
        network_from_checkpoint(tmp_path / "best.pt")
    assert network_from_checkpoint(tmp_path / "best.pt", "raw").weights == "raw"
