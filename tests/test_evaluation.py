"""vgg/evaluation.py: the paper's test protocols (Sec. 3.2) checked against hand
computations: crop geometry, test scales, posteriors and the tally."""

from __future__ import annotations

import math

import pytest
import torch

from tests.evalnets import hidden_of, softmax_of, spread_scores, tiny
from vgg.evaluation import (
    EvaluationError,
    Evaluator,
    Tally,
    center_crop,
    grid_positions,
    log_mean_exp,
    multicrop_inputs,
    network_scales,
    paper_scales,
    resolve_scales,
    sample_indices,
    scale_step,
    scale_warning,
)
from vgg.metrics import reported_topk

# --------------------------------------------------------------------------- geometry

def test_grid_positions_span_the_image():
    assert grid_positions(48, 32) == [0, 4, 8, 12, 16]
    assert grid_positions(256, 224) == [0, 8, 16, 24, 32]
    assert grid_positions(341, 224) == [0, 29, 59, 88, 117]  # 29.25, 58.5 -> 59, 87.75
    assert grid_positions(32, 32) == [0] * 5
    with pytest.raises(EvaluationError):
        grid_positions(31, 32)


def test_multicrop_is_the_5x5_grid_and_its_flips():
    height, width, size = 40, 57, 32
    image = torch.arange(2 * height * width, dtype=torch.float32).view(2, height, width)
    crops, counts = multicrop_inputs(image, size)
    assert crops.shape == (50, 2, size, size) and counts.tolist() == [1] * 50
    tops = [round(i * (height - size) / 4) for i in range(5)]   # 0, 2, 4, 6, 8
    lefts = [0, 6, 13, 19, 25]  # 0, 6.25, 12.5, 18.75, 25: rounded half-up
    assert tops == [0, 2, 4, 6, 8] and grid_positions(width, size) == lefts
    expected = [image[:, t:t + size, l:l + size] for t in tops for l in lefts]
    for i, crop in enumerate(expected):
        assert torch.equal(crops[i], crop)
        assert torch.equal(crops[25 + i], crop.flip(-1))
    # corners included: top-left and bottom-right pixels of the image are in some crop
    assert crops[0, 0, 0, 0] == image[0, 0, 0]
    assert crops[24, 0, -1, -1] == image[0, -1, -1]


def test_center_crop_matches_torchvision():
    import torchvision.transforms.v2.functional as F

    image = torch.rand(3, 45, 70)
    assert torch.equal(center_crop(image, 32), F.center_crop(image, [32, 32]))
    image = torch.rand(3, 33, 32)
    assert torch.equal(center_crop(image, 32), F.center_crop(image, [32, 32]))


# --------------------------------------------------------------------------- scales

def test_paper_scales():
    assert paper_scales(256, "single") == [256]
    assert paper_scales([256, 256], "multi") == [224, 256, 288]
    assert paper_scales([384, 384], "multi") == [352, 384, 416]
    assert paper_scales([256, 512], "single") == [384]
    assert paper_scales([256, 512], "multi") == [256, 384, 512]
    assert resolve_scales(["multi", "256", 320], (256, 512), 224) == [256, 320, 384, 512]
    assert resolve_scales([320, "single"], (256, 256), 224) == [256, 320]  # both kept
    assert resolve_scales([32], None, 32) == [32]


def test_bad_scales_are_clear_errors():
    with pytest.raises(EvaluationError, match="below the network's image size 224"):
        resolve_scales([200], None, 224)
    with pytest.raises(EvaluationError, match="below"):  # {S-32, S, S+32} at S = 32
        resolve_scales(["multi"], (32, 32), 32)
    with pytest.raises(EvaluationError, match="--train_scale"):
        resolve_scales(["single"], None, 224)
    with pytest.raises(EvaluationError, match="integers or one of"):
        resolve_scales(["big"], (256, 256), 224)
    with pytest.raises(EvaluationError, match="below the network's image size 32"):
        resolve_scales(["-32"], None, 32)  # an integer, negative: not an unknown word
    with pytest.raises(EvaluationError, match="unknown protocol"):
        Evaluator([tiny()], "ten-crop")


# --------------------------------------------------------------------------- protocols

def test_center_is_the_network_on_the_centre_crop():
    model = tiny()
    images = [torch.randn(3, 40, 52), torch.randn(3, 32, 47)]
    got = Evaluator([model], "center").posteriors([(image,) for image in images])
    expected = torch.cat([softmax_of(model, image[None, :, t:t + 32, l:l + 32])
                          for image, (t, l) in zip(images, [(4, 10), (0, 8)], strict=True)])
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("batch_norm", [False, True])
def test_dense_at_q_equal_image_size_is_center(batch_norm):
    model = tiny(batch_norm=batch_norm)
    image = torch.randn(3, 32, 32)
    center = Evaluator([model], "center").posteriors([(image,)])
    dense_no_flip = Evaluator([model], "dense", flip=False).posteriors([(image,)])
    torch.testing.assert_close(dense_no_flip, center)
    # with the paper's flip: the mean of the image's and its mirror's posteriors
    dense = Evaluator([model], "dense").posteriors([(image,)])
    expected = 0.5 * (softmax_of(model, image[None]) + softmax_of(model, image.flip(-1)[None]))
    torch.testing.assert_close(dense, expected)
    # a left-right symmetric image: dense with flip equals center exactly as the paper's
    symmetric = torch.cat([image[:, :, :16], image[:, :, :16].flip(-1)], -1)
    torch.testing.assert_close(Evaluator([model], "dense").posteriors([(symmetric,)]),
                               Evaluator([model], "center").posteriors([(symmetric,)]))


def far_apart(a, b, margin=0.05):
    """The largest posterior difference of two averaging orders is well beyond tolerance:
    the test can tell them apart (issue 21: with a plain tiny network it could not)."""
    return (a - b).abs().max() > margin


def windows(model, image):
    """The ``image_size`` windows of the conv feature map, flattened: FC1's input at every
    position of the class-score map (what FC-as-conv computes), as (positions, features)."""
    side = model.image_size // 32
    with torch.no_grad():
        fmap = model.features(image[None])[0]
    return torch.stack([fmap[:, i:i + side, j:j + side].reshape(-1)
                        for i in range(fmap.shape[1] - side + 1)
                        for j in range(fmap.shape[2] - side + 1)])


def test_dense_averages_the_score_map_then_softmaxes():
    """Independent truth: the score map by hand (the FC classifier at every position of the
    feature map), averaged over positions, then softmax; the image's and its mirror's
    posteriors averaged. Scores differ by position and between the flips (hand-set class
    layer), so softmax-then-average, or averaging the flip pair's scores, is far off."""
    model = tiny(image_size=64)  # FC1 sees a 2x2x512 window: a real 2x2 kernel
    image = torch.randn(3, 96, 128)  # feature map 3x4 -> score map 2x3
    inputs = [windows(model, image), windows(model, image.flip(-1))]
    with torch.no_grad():
        hidden = [model.classifier[:-1](x) for x in inputs]
        spread_scores(model, torch.cat(hidden), 20.0, centre=hidden[0])  # the mirror: not 0
        maps = [model.classifier(x) for x in inputs]
    assert all(len(m) == 6 for m in maps)
    expected = 0.5 * (maps[0].mean(0).softmax(0) + maps[1].mean(0).softmax(0))
    got = Evaluator([model], "dense").posteriors([(image,)])[0]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    softmax_first = 0.5 * (maps[0].softmax(1).mean(0) + maps[1].softmax(1).mean(0))
    flip_scores_averaged = (0.5 * (maps[0].mean(0) + maps[1].mean(0))).softmax(0)
    assert far_apart(softmax_first, expected) and far_apart(flip_scores_averaged, expected)
    no_flip = Evaluator([model], "dense", flip=False).posteriors([(image,)])[0]
    torch.testing.assert_close(no_flip, maps[0].mean(0).softmax(0), rtol=1e-4, atol=1e-5)


def test_multicrop_averages_50_crop_posteriors():
    """The 50 crops' posteriors averaged, by hand; with scores that differ by tens between
    crops, averaging their scores instead is far off."""
    model = tiny()
    image = torch.randn(3, 36, 44)
    tops, lefts = [0, 1, 2, 3, 4], [0, 3, 6, 9, 12]
    crops = torch.stack([image[:, t:t + 32, l:l + 32] for t in tops for l in lefts])
    crops = torch.cat([crops, crops.flip(-1)])
    spread_scores(model, hidden_of(model, crops))
    expected = softmax_of(model, crops).mean(0)
    got = Evaluator([model], "multicrop", batch_size=7).posteriors([(image,)])
    torch.testing.assert_close(got[0], expected, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        assert far_apart(model(crops).mean(0).softmax(0), expected)


def test_scales_networks_and_dense_plus_multicrop_average_posteriors():
    a, b = tiny(0), tiny(1)
    small, large = torch.randn(3, 32, 40), torch.randn(3, 48, 60)  # one image at two scales

    def single(model, protocol, image):
        return Evaluator([model], protocol).posteriors([(image,)])

    both = Evaluator([a, b], "dense+multicrop").posteriors([(small, large)])
    expected = sum(0.5 * (single(m, "dense", x) + single(m, "multicrop", x))
                   for m in (a, b) for x in (small, large)) / 4
    torch.testing.assert_close(both, expected)
    assert torch.allclose(both.sum(1), torch.ones(1))


# --------------------------------------------------------------------------- counting

def test_tally_hand_computed():
    # 3 classes (fewer than 5: top-5 always right), ties count against the model.
    scores = torch.tensor([
        [0.7, 0.2, 0.1],  # target 0: right, predicted 0
        [0.4, 0.4, 0.2],  # target 1: tied with class 0 -> wrong, entered as predicted 0
        [0.1, 0.3, 0.6],  # target 0: wrong, predicted 2
        [0.2, 0.5, 0.3],  # target 1: right
        [0.3, 0.3, 0.4],  # target 2: right
    ])
    tally = Tally(3)
    tally.update(scores[:2], torch.tensor([0, 1]))
    tally.update(scores[2:], torch.tensor([0, 1, 2]))
    summary = tally.summary()
    assert summary["samples"] == 5
    assert summary["top1_correct"] == 3 and summary["top5_correct"] == 5
    assert summary["top1_error"] == pytest.approx(0.4) and summary["top5_error"] == 0
    assert tally.confusion.tolist() == [[1, 0, 1], [1, 1, 0], [0, 0, 1]]
    assert summary["per_class"]["count"] == [2, 2, 1]
    assert summary["per_class"]["top1_accuracy"] == [0.5, 0.5, 1.0]


def test_tally_counts_non_finite_posteriors_wrong():
    tally = Tally(10)
    scores = torch.full((2, 10), math.nan)
    scores[1] = torch.arange(10.0)
    tally.update(scores, torch.tensor([3, 9]))
    summary = tally.summary()
    assert summary["top1_correct"] == 1 and summary["top5_correct"] == 1
    assert summary["nonfinite_posteriors"] == 1
    with pytest.raises(EvaluationError, match="outside"):
        tally.update(torch.zeros(1, 10), torch.tensor([10]))




# --------------------------------------------------------------------------- log space

def test_log_mean_exp_is_the_log_of_the_mean():
    p = torch.tensor([[0.2, 0.8], [0.6, 0.4], [0.1, 0.9]])
    torch.testing.assert_close(log_mean_exp(p.log()).exp(), p.mean(0))
    weights = torch.tensor([1, 3, 2])
    weighted = (p * weights[:, None]).sum(0) / 6
    torch.testing.assert_close(log_mean_exp(p.log(), 0, weights).exp(), weighted)


@pytest.mark.parametrize("protocol", ["center", "dense", "multicrop", "dense+multicrop"])
def test_posterior_averaging_keeps_ranks_where_softmax_underflows(protocol):
    """Issue 11.7, by hand: class 0 scores 200, the true class 1 scores 50, the other five
    0. Its posterior exp(-150) is 0 in float32, tied with the last five; in log space it
    stays second, a top-5 hit (and a top-1 miss)."""
    model = tiny()
    with torch.no_grad():
        model.classifier[-1].weight.zero_()
        model.classifier[-1].bias.copy_(torch.tensor([200.0, 50.0, 0, 0, 0, 0, 0]))
    assert torch.tensor([200.0, 50.0, 0.0]).softmax(0)[1] == 0  # the underflow itself
    image = torch.randn(3, 36, 40)
    evaluator = Evaluator([model, model], protocol)
    tally = Tally(7)
    tally.update(evaluator.log_posteriors([(image, image)]), torch.tensor([1]))
    assert tally.summary()["top1_correct"] == 0
    assert tally.summary()["top5_correct"] == 1
    log_p = evaluator.log_posteriors([(image,)])[0]
    torch.testing.assert_close(log_p[1] - log_p[0], torch.tensor(-150.0))


# --------------------------------------------------------------------------- distinct crops

def count_inputs(model):
    """Images through ``model``'s forward, counted by a forward pre-hook."""
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[0]))
    return seen


def test_multicrop_at_q_equal_to_the_crop_computes_it_once():
    # Issue 11.9: Q = image_size, all 25 grid crops are the image: 2 inputs, not 50.
    model = tiny()
    seen = count_inputs(model)
    image = torch.randn(3, 32, 32)
    got = Evaluator([model], "multicrop").posteriors([(image,)])
    assert sum(seen) == 2
    expected = 0.5 * (softmax_of(model, image[None]) + softmax_of(model, image.flip(-1)[None]))
    torch.testing.assert_close(got, expected)


def test_multicrop_weights_repeated_crops_as_the_grid_holds_them():
    model = tiny()
    image = torch.randn(3, 34, 32)  # rows at 0, 1, 1, 2, 2 (0.5 steps rounded half-up)
    assert grid_positions(34, 32) == [0, 1, 1, 2, 2]
    crops = torch.stack([image[:, t:t + 32, :] for t in grid_positions(34, 32)
                         for _ in range(5)])  # the paper's 25, by hand
    expected = 0.5 * (softmax_of(model, crops).mean(0) + softmax_of(model, crops.flip(-1)).mean(0))
    seen = count_inputs(model)
    got = Evaluator([model], "multicrop").posteriors([(image,)])
    assert sum(seen) == 6  # 3 distinct rows x 1 column x 2 flips
    torch.testing.assert_close(got[0], expected)


# --------------------------------------------------------------------------- small networks

def test_multi_scale_step_is_relative_for_small_networks():
    # Issue 14: S = 73 at image size 64 asked for Q = 41 and failed; the paper's +-32 at
    # 224 is a seventh of the crop: +-9 at 64.
    assert scale_step(224) == 32 and scale_step(64) == 9 and scale_step(32) == 5
    assert paper_scales([73, 73], "multi", 64) == [64, 73, 82]
    assert resolve_scales(["multi"], (73, 73), 64) == [64, 73, 82]
    assert resolve_scales(["single"], (73, 73), 64) == [73]
    assert paper_scales([256, 256], "multi", 224) == [224, 256, 288]  # the paper's, unchanged


def test_a_scale_far_from_the_papers_is_warned_with_the_papers_q():
    # Issue 11.8: a network trained at S = [32; 48] tested at Q = 256.
    warning = scale_warning([256], (32, 48), 32)
    assert "Q=256" in warning and "40 (--scale single)" in warning and "32,40,48" in warning
    assert scale_warning([256], (256, 256), 224) is None
    assert scale_warning([32, 40, 48], (32, 48), 32) is None
    assert scale_warning([384], (256, 512), 224) is None
    assert scale_warning([2000], (256, 512), 224) is not None
    assert scale_warning([256], None, 224) is None  # unknown S: nothing to compare


def test_the_far_scale_warning_starts_1_5x_outside_the_papers_range():
    """Tables 3-4 test S = [48;96] at Q in {48, 72, 96}: Q from 48 / 1.5 = 32 to 96 x 1.5 =
    144 pass, one pixel further is warned (with the ratio to the single Q, 72); a fixed S
    = 40 at image size 32 has the range {35, 40, 45} (step 5), not the 224 step's {8, 40,
    72}; a fixed S = 256 at 224 reaches 224 / 1.5 and 288 x 1.5 = 432."""
    assert scale_warning([32, 144], (48, 96), 32) is None
    assert "Q=31,145 " in scale_warning([31, 145], (48, 96), 32)
    assert "S=[48;96]" in scale_warning([145], (48, 96), 32)
    assert "2.0x" in scale_warning([145], (48, 96), 32)  # 145 / 72
    assert scale_warning([67], (40, 40), 32) is None
    assert "S=40:" in scale_warning([100], (40, 40), 32)
    assert scale_warning([150, 432], (256, 256), 224) is None
    assert scale_warning([433], (256, 256), 224) is not None


def test_top5_is_reported_only_above_5_classes():
    assert reported_topk(2) == (1,) and reported_topk(5) == (1,)
    assert reported_topk(6) == (1, 5) and reported_topk(1000) == (1, 5)


def test_limit_takes_a_seeded_sample_across_the_split():
    labels = [i // 50 for i in range(100)]  # sorted by class, as image folders are
    sample = sample_indices(100, 10, seed=0)
    assert sample == sample_indices(100, 10, seed=0) != sample_indices(100, 10, seed=1)
    assert len(set(sample)) == 10 and sample == sorted(sample)
    assert {labels[i] for i in sample} == {0, 1}
    assert sample_indices(100, None) == sample_indices(100, 500) == list(range(100))


# --------------------------------------------------------------------------- ensembles

def test_each_network_of_an_ensemble_gets_the_q_of_its_own_s():
    """Issue 21.11: Sec. 3.2 tests a net at the Q of its S (Tables 3-4), and Table 6 averages
    the posteriors of nets so tested; integers Q apply to every network."""
    nets = [((256, 256), 224), ((384, 384), 224), ((256, 512), 224)]
    assert network_scales(["single"], nets) == ([256, 384], [[0], [1], [1]])
    union, indices = network_scales(["multi"], nets)
    assert union == [224, 256, 288, 352, 384, 416, 512]
    assert [[union[i] for i in chosen] for chosen in indices] == \
        [[224, 256, 288], [352, 384, 416], [256, 384, 512]]
    assert network_scales([300], nets) == ([300], [[0], [0], [0]])
    with pytest.raises(EvaluationError, match="--train_scale"):
        network_scales(["single"], [((256, 256), 224), (None, 224)])


def test_an_ensemble_averages_each_networks_own_scales_then_the_networks():
    a, b = tiny(0), tiny(1)
    small, large = torch.randn(3, 32, 40), torch.randn(3, 48, 60)  # one image at two scales

    def single(model, image):
        return Evaluator([model], "dense").posteriors([(image,)])

    got = Evaluator([a, b], "dense", scale_indices=[[0], [0, 1]]).posteriors([(small, large)])
    expected = 0.5 * (single(a, small) + 0.5 * (single(b, small) + single(b, large)))
    torch.testing.assert_close(got, expected)
    with pytest.raises(EvaluationError, match="2 networks"):
        Evaluator([a, b], "dense", scale_indices=[[0]])


def test_an_ensemble_of_different_training_scales_is_evaluated_at_each_ones_q(tmp_path,
                                                                               capsys):
    """End to end: nets trained at S = 32 and S = 40 (--scale single: Q = 32 and Q = 40),
    checked against each network's own posteriors at its own Q."""
    import json

    from tests.evalnets import save_tiny_checkpoint
    from tests.test_evaluate_cli import digits_inputs, run_cli

    models = [save_tiny_checkpoint(tmp_path / f"s{s}.pt", seed=i, train_scale=(s, s))
              for i, s in enumerate((32, 40))]
    out = tmp_path / "r.json"
    assert run_cli("--checkpoint", tmp_path / "s32.pt", tmp_path / "s40.pt", "--protocol",
                   "center", "--limit", 6, "--workers", 0, "--out", out,
                   "--progress", "false") == 0
    results = json.loads(out.read_text())
    assert results["scales"] == [32, 40] and results["network_scales"] == [[32], [40]]
    printed = capsys.readouterr().out
    assert "Q of " + str(tmp_path / "s32.pt") + ": 32\n" in printed
    assert "Q of " + str(tmp_path / "s40.pt") + ": 40\n" in printed
    images, labels = digits_inputs([32, 40], 6)
    with torch.no_grad():
        by_hand = torch.stack([0.5 * (softmax_of(models[0], center_crop(q32, 32)[None])[0]
                                      + softmax_of(models[1], center_crop(q40, 32)[None])[0])
                               for q32, q40 in images])
    tally = Tally(10)
    tally.update(by_hand, labels)
    assert results["top1_correct"] == tally.summary()["top1_correct"]
    assert results["top5_correct"] == tally.summary()["top5_correct"]
