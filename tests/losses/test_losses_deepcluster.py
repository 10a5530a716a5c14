"""DeepCluster-v2 loss against a float64 loop written from the definition (Caron et al. 2020, App. "DeepCluster-v2";
swav's main_deepclusterv2.py): per head, -log softmax(scores / tau)[cluster of the sample] averaged over every view
of every clustered sample, then averaged over heads."""

import math

import numpy as np
import pytest
import torch

from monai_ssl_ext.losses import DeepClusterV2Loss

IGNORE = -100


def loop_loss(scores: list[np.ndarray], assignments: np.ndarray, tau: float) -> float:
    heads = []
    for h, s in enumerate(scores):
        b = assignments.shape[1]
        terms = []
        for row in range(s.shape[0]):
            target = assignments[h, row % b]  # views one after the other: row = view * B + sample
            if target == IGNORE:
                continue
            logits = s[row] / tau
            terms.append(-(logits[target] - math.log(sum(math.exp(v) for v in logits))))
        heads.append(sum(terms) / len(terms))
    return sum(heads) / len(heads)


def _case(seed=0, views=2, b=5, ks=(4, 6, 3)):
    g = torch.Generator().manual_seed(seed)
    scores = [torch.randn(views * b, k, generator=g, dtype=torch.float64).requires_grad_(True) for k in ks]
    assignments = torch.stack([torch.randint(0, k, (b,), generator=g) for k in ks])
    return scores, assignments


@pytest.mark.parametrize("views", [1, 2, 8])
def test_value_and_gradient_against_loop(views):
    scores, assignments = _case(views=views)
    assignments[1, 2] = IGNORE  # not clustered yet: left out of head 1's mean
    loss = DeepClusterV2Loss(temperature=0.1)(scores, assignments)
    ref = loop_loss([s.detach().numpy() for s in scores], assignments.numpy(), 0.1)
    assert loss.item() == pytest.approx(ref, rel=1e-10)
    loss.backward()
    h = 1e-6
    for head, (r, c) in ((0, (0, 1)), (1, (2, 3)), (2, (views * 5 - 1, 2))):
        arr = [s.detach().numpy().copy() for s in scores]
        arr[head][r, c] += h
        up = loop_loss(arr, assignments.numpy(), 0.1)
        arr[head][r, c] -= 2 * h
        down = loop_loss(arr, assignments.numpy(), 0.1)
        assert scores[head].grad[r, c].item() == pytest.approx((up - down) / (2 * h), rel=1e-5, abs=1e-8)
    # an ignored sample's rows get no gradient in that head
    assert float(scores[1].grad[2::5].abs().max()) == 0.0


def test_every_view_uses_the_sample_assignment():
    """Scores that put every view of sample b on its own cluster give a lower loss than any permutation."""
    b, k = 4, 4
    assignments = torch.tensor([[2, 0, 3, 1]])
    right = torch.full((2 * b, k), -5.0, dtype=torch.float64)
    right[torch.arange(2 * b), assignments[0].repeat(2)] = 5.0
    wrong_second_view = right.clone()
    wrong_second_view[b:] = right[b:].roll(1, dims=1)
    loss = DeepClusterV2Loss()
    assert loss([right], assignments).item() < 1e-10
    assert loss([wrong_second_view], assignments).item() > 10


def test_unclustered_batch_gives_zero_not_nan():
    scores, assignments = _case()
    assignments[:] = IGNORE
    loss = DeepClusterV2Loss()(scores, assignments)
    assert loss.item() == 0.0
    loss.backward()


def test_bad_shapes_named():
    scores, assignments = _case()
    with pytest.raises(ValueError, match="heads"):
        DeepClusterV2Loss()(scores[:2], assignments)
    with pytest.raises(ValueError, match="views x"):
        DeepClusterV2Loss()([s[:7] for s in scores], assignments)
