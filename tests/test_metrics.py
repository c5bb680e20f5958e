"""Top-1/top-5 counting against hand-computed values."""

import torch

from vgg.metrics import topk_correct


def test_topk_hand_computed():
    # 6 classes, 4 samples; targets' ranks (0 = best) worked out by hand.
    scores = torch.tensor([
        [0.9, 0.1, 0.0, 0.0, 0.0, 0.0],   # target 0: rank 0 -> top-1 and top-5
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],   # target 1: 4 classes above -> rank 4, top-5 only
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],   # target 0: 5 classes above -> rank 5, neither
        [0.5, 0.1, 0.2, 0.0, 0.3, 0.4],   # target 4: 0.5, 0.4 above -> rank 2, top-5 only
    ])
    targets = torch.tensor([0, 1, 0, 4])
    assert topk_correct(scores, targets, (1, 5)).tolist() == [1, 3]
    assert topk_correct(scores, targets, (1, 2, 3)).tolist() == [1, 1, 2]


def test_ties_count_against_the_model():
    # A tie with the target at the top is not a top-1 hit; a constant output never hits.
    scores = torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.2, 0.2]])
    targets = torch.tensor([0, 2])
    assert topk_correct(scores, targets, (1, 2)).tolist() == [0, 1]  # row 0 rank 1; row 1 rank 2
    # 7 classes all equal: target's rank is 6, outside the top 5.
    assert topk_correct(torch.zeros(1, 7), torch.tensor([3]), (1, 5)).tolist() == [0, 0]
    # 6 equal classes: rank 5, just outside the top 5.
    assert topk_correct(torch.zeros(1, 6), torch.tensor([0]), (1, 5)).tolist() == [0, 0]


def test_fewer_than_five_classes():
    # With 3 classes every sample is within the top 5, even a tied or last-ranked target.
    scores = torch.tensor([[0.1, 0.7, 0.2], [0.3, 0.3, 0.4], [1.0, 0.0, 0.0]])
    targets = torch.tensor([0, 1, 0])
    assert topk_correct(scores, targets, (1, 5)).tolist() == [1, 3]
    # Two classes, binary-style output.
    assert topk_correct(torch.tensor([[0.4, 0.6]]), torch.tensor([0]), (1, 5)).tolist() == [0, 1]


def test_non_finite_rows_are_never_correct():
    # NaN compares false with everything: without care a NaN row ranks its target first.
    scores = torch.tensor([[float("nan"), 0.1, 0.2], [0.9, float("inf"), 0.0], [0.9, 0.1, 0.0]])
    assert topk_correct(scores, torch.tensor([0, 0, 0]), (1, 5)).tolist() == [1, 1]
