"""Top-k counting shared by training and evaluation."""

import torch

TOPK = (1, 5)  # the paper's two error measures


def topk_correct(scores: torch.Tensor, targets: torch.Tensor, ks: tuple[int, ...] = (1, 5)
                 ) -> torch.Tensor:
    """How many rows of ``scores`` (N, classes) rank their target within the top k, for
    each k. Ties count against the model: the target's rank is the number of *other*
    classes scoring at least as high, so a constant output is never "correct". With
    fewer than k classes every row is within the top k. A row with a NaN or infinite
    score is never correct, so a diverged model scores zero, not 100%."""
    target_scores = scores.gather(1, targets[:, None])
    rank = (scores >= target_scores).sum(1) - 1
    finite = torch.isfinite(scores).all(1)
    return torch.stack([((rank < k) & finite).sum() for k in ks])


def reported_topk(num_classes: int) -> tuple[int, ...]:
    """The top-k errors worth reporting for ``num_classes``: top-5 of 5 classes or fewer is
    always 0% and is left out."""
    return tuple(k for k in TOPK if k == 1 or k < num_classes)
