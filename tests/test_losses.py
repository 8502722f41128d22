import math

import pytest
import torch

from advkit import cw_margin, kl_divergence, one_hot, soft_cross_entropy

LOGITS = torch.tensor([[0.0, math.log(3.0)], [0.0, math.log(3.0)]])  # softmax = [1/4, 3/4]
HALF = torch.tensor([[0.5, 0.5], [0.5, 0.5]])


def test_soft_cross_entropy_matches_hand_value_and_hard_labels():
    expected = 0.5 * math.log(4) + 0.5 * math.log(4 / 3)
    assert soft_cross_entropy(LOGITS, HALF).item() == pytest.approx(expected)
    hard = torch.tensor([1, 1])
    assert soft_cross_entropy(LOGITS, one_hot(hard, 2)).item() == pytest.approx(math.log(4 / 3))
    assert soft_cross_entropy(LOGITS, hard).item() == pytest.approx(math.log(4 / 3))
    assert soft_cross_entropy(LOGITS, HALF, reduction="sum").item() == pytest.approx(2 * expected)


def test_kl_reductions_by_hand():
    per_sample = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert kl_divergence(HALF, LOGITS, "sum").item() == pytest.approx(2 * per_sample)
    assert kl_divergence(HALF, LOGITS, "batchmean").item() == pytest.approx(per_sample)
    assert kl_divergence(HALF, LOGITS, "elem-mean").item() == pytest.approx(per_sample / 2)
    assert torch.allclose(kl_divergence(HALF, LOGITS, "none"), torch.full((2,), per_sample))


def test_kl_of_identical_distributions_is_zero_even_with_zero_mass():
    probs = torch.tensor([[1.0, 0.0]])
    logits = torch.tensor([[50.0, 0.0]])
    assert kl_divergence(probs, logits, "sum").item() == pytest.approx(0.0, abs=1e-6)


def test_cw_margin():
    logits = torch.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, 1.0]])
    labels = torch.tensor([0, 2])
    assert cw_margin(logits, labels, "none").tolist() == [-1.0, 4.0]
