"""The paper's six networks against PAPER.md §1 and torchvision's reference implementation."""

import math

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from vgg import VERSIONS, build_vgg
from vgg.model import local_response_norm
from vgg.summary import format_table, summarize

# PAPER.md §1: exact counts at 1000 classes and 224x224.
PAPER_PARAMS = {"A": 132_863_336, "A_lrn": 132_863_336, "B": 133_047_848,
                "C": 133_638_952, "D": 138_357_544, "E": 143_667_240}
PAPER_GMACS = {"A": 7.61, "B": 11.31, "D": 15.47, "E": 19.63}
TORCHVISION = {"A": "vgg11", "B": "vgg13", "D": "vgg16", "E": "vgg19"}


def meta_vgg(version, **kwargs):
    with torch.device("meta"):
        return build_vgg(version, init=None, **kwargs)


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("version", VERSIONS)
def test_parameter_count_matches_paper(version):
    assert n_params(meta_vgg(version)) == PAPER_PARAMS[version]


@pytest.mark.parametrize("version", TORCHVISION)
def test_batch_norm_parameter_count_matches_torchvision(version):
    with torch.device("meta"):
        reference = getattr(torchvision.models, TORCHVISION[version] + "_bn")(weights=None)
    assert n_params(meta_vgg(version, batch_norm=True)) == n_params(reference)


@pytest.mark.parametrize("version", PAPER_GMACS)
def test_multiply_accumulates_match_paper(version):
    macs = sum(row.macs for row in summarize(meta_vgg(version), in_channels=3))
    assert round(macs / 1e9, 2) == PAPER_GMACS[version]


def random_torchvision_vgg(name, seed=0):
    """A torchvision VGG with random weights and BN statistics (built without its slow
    default init: the values only need to be random and shared)."""
    with torch.device("meta"):
        model = getattr(torchvision.models, name)(weights=None)
    model.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, value in model.state_dict().items():
            if key.endswith("running_var"):
                value.uniform_(0.5, 1.5, generator=generator)
            elif value.is_floating_point():
                value.uniform_(-0.05, 0.05, generator=generator)
    return model.eval()


@pytest.mark.slow
@pytest.mark.parametrize("batch_norm", [False, True], ids=["plain", "bn"])
@pytest.mark.parametrize("version", TORCHVISION)
def test_torchvision_weights_load_strictly_and_give_identical_outputs(version, batch_norm):
    reference = random_torchvision_vgg(TORCHVISION[version] + ("_bn" if batch_norm else ""))
    ours = meta_vgg(version, batch_norm=batch_norm)
    ours.load_state_dict(reference.state_dict(), strict=True, assign=True)
    assert list(ours.state_dict()) == list(reference.state_dict())  # same order, too
    image = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(ours.eval()(image), reference(image))


def test_dense_form_equals_fc_form_and_maps_larger_images():
    torch.manual_seed(0)
    model = build_vgg("A", num_classes=10, fc_width=32).eval()
    dense = model.to_dense()
    image = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        score_map = dense(image)
        assert score_map.shape == (1, 10, 1, 1)
        torch.testing.assert_close(score_map.flatten(1), model(image), rtol=1e-4, atol=1e-5)
        for side, expected in ((256, 2), (288, 3), (384, 6)):  # side/32 - 7 + 1
            assert dense(torch.randn(1, 3, side, side + 32)).shape == (1, 10, expected,
                                                                       expected + 1)


def test_dense_form_shares_weights_with_fc_form():
    model = build_vgg("A", num_classes=10, image_size=32, fc_width=16)
    dense = model.to_dense()
    assert dense[1].weight.data_ptr() == model.classifier[0].weight.data_ptr()


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("version", VERSIONS)
def test_output_shapes_at_224_and_32(version, in_channels):
    # 224 on the meta device (shapes only, no compute); 32 for real.
    at_224 = meta_vgg(version, num_classes=7, in_channels=in_channels)
    assert at_224(torch.empty(2, in_channels, 224, 224, device="meta")).shape == (2, 7)
    at_32 = build_vgg(version, num_classes=7, in_channels=in_channels, image_size=32,
                      fc_width=16)
    assert at_32.classifier[0].in_features == 512
    assert at_32(torch.randn(2, in_channels, 32, 32)).shape == (2, 7)


@pytest.mark.parametrize("version, width, expected", [
    # Table 1's channel counts times the width, listed by hand.
    ("A", 0.25, [16, 32, 64, 64, 128, 128, 128, 128]),
    ("C", 0.5, [32, 32, 64, 64, 128, 128, 128, 256, 256, 256, 256, 256, 256]),
])
def test_width_scales_every_conv_and_fc1_takes_the_last_conv(version, width, expected):
    torch.manual_seed(0)
    model = build_vgg(version, num_classes=5, in_channels=1, image_size=64, fc_width=16,
                      width=width).eval()
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    assert [m.out_channels for m in convs] == expected
    assert [m.in_channels for m in convs] == [1] + expected[:-1]
    assert model.classifier[0].in_features == expected[-1] * 2 * 2  # 64px / 32 = 2x2 map
    image = torch.randn(2, 1, 64, 64)  # the dense form still equals the FC form
    with torch.no_grad():
        torch.testing.assert_close(model.to_dense()(image).flatten(1), model(image),
                                   rtol=1e-4, atol=1e-5)
        assert model.to_dense()(torch.randn(2, 1, 96, 96)).shape == (2, 5, 2, 2)


@pytest.mark.parametrize("width", [0.0, -1.0, float("nan")])
def test_width_must_be_positive(width):
    with pytest.raises(ValueError, match="width must be a positive"):
        build_vgg("A", image_size=32, width=width)


def test_wrong_input_size_names_the_expected_size():
    model = build_vgg("A", num_classes=3, image_size=32, fc_width=16)
    with pytest.raises(ValueError, match="32x32 inputs.*to_dense"):
        model(torch.randn(1, 3, 64, 64))


def test_config_c_one_by_one_convs_keep_the_spatial_size():
    features = meta_vgg("C").features
    one_by_one = [m for m in features if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
    assert [m.out_channels for m in one_by_one] == [256, 512, 512]
    assert all(m.padding == (0, 0) for m in one_by_one)
    rows = summarize(meta_vgg("C"), in_channels=3)
    last_feature_map = [r for r in rows if r.name.startswith("features")][-1]
    assert last_feature_map.output_shape == (512, 7, 7)


def test_lrn_matches_hand_computed_krizhevsky_formula():
    # b_i = a_i / (k + alpha * sum_{j=i-n/2}^{i+n/2} a_j^2)^beta over channels (n=5).
    a = np.random.default_rng(0).normal(size=(1, 7, 2, 3)) * 30
    n, alpha, beta, k = 5, 1e-4, 0.75, 2.0
    expected = np.empty_like(a)
    for i in range(a.shape[1]):
        window = a[:, max(0, i - n // 2): min(a.shape[1], i + n // 2 + 1)]
        expected[:, i] = a[:, i] / (k + alpha * (window ** 2).sum(1)) ** beta
    got = local_response_norm()(torch.from_numpy(a))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10)
    assert isinstance(meta_vgg("A_lrn").features[2], nn.LocalResponseNorm)


@pytest.mark.parametrize("scheme,expected_std", [
    ("xavier", lambda fan_in, fan_out: math.sqrt(2 / (fan_in + fan_out))),
    ("xavier_normal", lambda fan_in, fan_out: math.sqrt(2 / (fan_in + fan_out))),
    ("kaiming", lambda fan_in, fan_out: math.sqrt(2 / fan_out)),
    ("paper", lambda fan_in, fan_out: 0.01),
])
def test_initialisation_schemes_draw_the_documented_spread(scheme, expected_std):
    torch.manual_seed(0)
    model = build_vgg("A", num_classes=10, image_size=32, fc_width=64, init=scheme)
    conv = model.features[3]  # 64 -> 128, 3x3
    fan_in, fan_out = 64 * 9, 128 * 9
    assert conv.weight.std().item() == pytest.approx(expected_std(fan_in, fan_out), rel=0.03)
    assert conv.weight.mean().item() == pytest.approx(0, abs=0.03 * expected_std(fan_in, fan_out))
    assert all(torch.count_nonzero(m.bias) == 0 for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear)))


def test_paper_init_std_is_configurable():
    torch.manual_seed(0)
    model = build_vgg("A", num_classes=10, image_size=32, fc_width=64, init="paper",
                      init_std=0.1)
    assert model.features[3].weight.std().item() == pytest.approx(0.1, rel=0.03)


SMALL = dict(num_classes=10, image_size=32, fc_width=16)


@pytest.mark.parametrize("batch_norm", [False, True], ids=["plain", "bn"])
def test_from_A_copies_exactly_the_first_four_convs_and_the_three_fcs(batch_norm):
    torch.manual_seed(0)
    net_a = build_vgg("A", batch_norm=batch_norm, **SMALL)
    net_d = build_vgg("D", batch_norm=batch_norm, init="from_A",
                      a_state_dict=net_a.state_dict(), **SMALL)
    # Hand-read from Table 1: A's conv1_1, conv2_1, conv3_1, conv3_2 -> D's layers at the
    # same positions (D has two convs in stages 1-2, so its indices run further).
    if batch_norm:  # each conv is followed by its BN: conv, bn, relu
        pairs = {"features.0": "features.0", "features.1": "features.1",
                 "features.4": "features.7", "features.5": "features.8",
                 "features.8": "features.14", "features.9": "features.15",
                 "features.11": "features.17", "features.12": "features.18"}
    else:
        pairs = {"features.0": "features.0", "features.3": "features.5",
                 "features.6": "features.10", "features.8": "features.12"}
    pairs.update({f"classifier.{i}": f"classifier.{i}" for i in (0, 3, 6)})
    expected = sorted(f"{d}.{p}" for d in pairs.values() for p in ("weight", "bias"))
    assert sorted(net_d.copied_from_A) == expected
    d_state, a_state = net_d.state_dict(), net_a.state_dict()
    for a_name, d_name in pairs.items():
        for key in net_a.get_submodule(a_name).state_dict():  # incl. BN running stats
            assert torch.equal(d_state[f"{d_name}.{key}"], a_state[f"{a_name}.{key}"])
    untouched = [k for k in d_state if k.endswith("weight") and k not in expected]
    assert untouched and not any(k in net_d.copied_from_A for k in untouched)
    conv1_2 = [m for m in net_d.features if isinstance(m, nn.Conv2d)][1]  # random, not copied
    assert conv1_2.weight.std().item() == pytest.approx(0.01, rel=0.1)


def test_from_A_refuses_a_checkpoint_of_another_config():
    net_b = build_vgg("B", **SMALL)
    with pytest.raises(ValueError, match="trained config-A network"):
        build_vgg("D", init="from_A", a_state_dict=net_b.state_dict(), **SMALL)
    net_a_other_classes = build_vgg("A", num_classes=5, image_size=32, fc_width=16)
    with pytest.raises(ValueError, match="classifier.6"):
        build_vgg("D", init="from_A", a_state_dict=net_a_other_classes.state_dict(), **SMALL)


@pytest.mark.parametrize("kwargs,message", [
    (dict(version="F"), "valid versions: A, A_lrn, B, C, D, E"),
    (dict(version="vgg16"), "valid versions"),
    (dict(version="D", image_size=100), "multiple of 32"),
    (dict(version="D", image_size=0), "multiple of 32"),
    (dict(version="D", init="glorot"), "valid choices: xavier, xavier_normal, kaiming, "
                                       "paper, from_A"),
    (dict(version="D", init="from_A"), "a_state_dict"),
])
def test_bad_arguments_name_the_valid_choices(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_vgg(**kwargs)


def test_summary_table_reports_totals_and_receptive_field():
    rows = summarize(meta_vgg("D"), in_channels=3)
    convs = [r for r in rows if r.kind == "conv3x3"]
    assert convs[0].receptive_field == 3 and convs[0].output_shape == (64, 224, 224)
    # VGG-16's classic figures: conv5_3 sees 196 input pixels, pool5 212.
    assert convs[-1].receptive_field == 196
    assert [r for r in rows if r.name.startswith("features")][-1].receptive_field == 212
    text = format_table(rows, "D", 1000)
    assert "138,357,544" in text and "paper Table 2: 138M" in text and "15.47 G" in text


def test_activation_checkpointing_gives_the_same_gradients_and_bn_statistics():
    image, target = torch.randn(3, 3, 32, 32), torch.tensor([0, 3, 1])
    results = []
    for checkpointing in (False, True):
        torch.manual_seed(0)  # same weights and dropout masks
        model = build_vgg("B", num_classes=4, image_size=32, fc_width=16, batch_norm=True)
        model.activation_checkpointing = checkpointing
        nn.functional.cross_entropy(model(image), target).backward()
        results.append([p.grad for p in model.parameters()] + list(model.buffers()))
    assert len(model.stages()) == 5
    for plain, recomputed in zip(*results, strict=True):
        torch.testing.assert_close(recomputed, plain)


def test_class_scores_stay_fp32_under_bf16_autocast():
    # bf16 scores round near-equal classes to ties, which top-k counts as errors.
    torch.manual_seed(0)
    model = build_vgg("A", num_classes=100, image_size=32, fc_width=64).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        scores = model(x)
        hidden = model.classifier[:-1](torch.flatten(model.features(x), 1))
        dense_scores = model.to_dense()(x)
    assert hidden.dtype == torch.bfloat16  # the rest of the network does run in bf16
    assert scores.dtype == dense_scores.dtype == torch.float32
    last = model.classifier[-1]
    torch.testing.assert_close(scores, hidden.float() @ last.weight.T + last.bias,
                               rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(dense_scores.flatten(1), scores, rtol=0.05, atol=0.05)
    # Its state-dict keys stay torchvision's.
    assert {"classifier.6.weight", "classifier.6.bias"} <= set(model.state_dict())


def test_dropout_in_training_matches_torchvision_with_the_same_seed():
    """Sec. 3.1's dropout 0.5 after FC1 and FC2, checked in training mode (the comparison
    above runs in eval mode, where dropout is off): torchvision's vgg11 with the same
    weights and the same seed draws the same two masks, so the outputs are equal; a
    different rate on either layer draws other masks."""
    reference = random_torchvision_vgg("vgg11").train()
    ours = meta_vgg("A")
    ours.load_state_dict(reference.state_dict(), strict=True, assign=True)
    ours.train()
    features = torch.randn(4, 512 * 7 * 7, generator=torch.Generator().manual_seed(2))
    features = features.relu()
    outputs = []
    for model in (reference, ours):
        torch.manual_seed(3)
        with torch.no_grad():
            outputs.append(model.classifier(features))
    assert torch.equal(outputs[0], outputs[1])
    with torch.no_grad():
        assert not torch.equal(ours.eval().classifier(features), outputs[1])  # dropout is on


@pytest.mark.parametrize("trained, flags, needle", [
    ("paper", (), "Pass --input_convention paper"),
    ("dataset", ("--input_convention", "paper"), "Pass --input_convention dataset"),
])
def test_from_A_refuses_a_net_A_trained_on_another_input_scale(tmp_path, capsys, trained,
                                                               flags, needle):
    """Issue 21.8: a net A trained on Caffe's 0-255 input (its preprocessing record's std is
    1/255) gives its first layer to a deeper net only on that input, and the reverse: the
    error names the flag that fits, before anything is written; the matching input trains."""
    import dataset_class
    import train
    from tests.evalnets import save_tiny_checkpoint
    from tests.test_train_cli import tiny

    spec = dataset_class.dataset_spec("Digits")
    std = [1 / 255] if trained == "paper" else list(spec.std)
    a_path = tmp_path / "a.pt"
    save_tiny_checkpoint(a_path, train_scale=(32, 32), preprocessing={
        "dataset": "Digits", "classes": [str(d) for d in range(10)], "in_channels": 1,
        "image_size": 32, "mean": list(spec.mean), "std": std, "train_scale": [32, 32],
        "resize": "bilinear"})
    deeper = ("--model_version", "B", "--init", "from_A", "--init_from_A", str(a_path),
              "--max_steps", "1")
    assert train.main(tiny(tmp_path / "refused", *deeper, *flags)) == 2
    error = capsys.readouterr().err
    assert needle in error and str(a_path) in error and "Traceback" not in error
    assert not (tmp_path / "refused" / "last.pt").exists()
    fitting = ("--input_convention", trained)
    assert train.main(tiny(tmp_path / "fits", *deeper, *fitting)) == 0
    copied = torch.load(tmp_path / "fits" / "last.pt", weights_only=True)
    assert copied["preprocessing"]["std"] == pytest.approx(std)
