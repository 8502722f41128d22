import math

import pytest
import torch

from advkit import cw_margin, kl_divergence, kl_divergence_logits, one_hot, soft_cross_entropy

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


def test_kl_from_logits_equals_kl_from_probabilities():
    generator = torch.Generator().manual_seed(0)
    target, logits = torch.randn(4, 5, generator=generator), torch.randn(4, 5, generator=generator)
    for reduction in ("sum", "batchmean", "elem-mean", "none"):
        expected = kl_divergence(torch.softmax(target, dim=1), logits, reduction)
        assert torch.allclose(kl_divergence_logits(target, logits, reduction), expected, atol=1e-6), reduction


def test_kl_from_logits_has_finite_hand_derived_gradients_at_extreme_logits():
    # p = softmax(t) underflows to exactly 0 in two classes; through kl_divergence(softmax(t), ·) the
    # gradient of p·log p at p = 0 is −inf and reaches t as NaN (the TRADES NaN of issue 8).
    t = torch.tensor([[0.0, 200.0, 0.0]], requires_grad=True)
    s = torch.tensor([[1.0, -2.0, 3.0]], requires_grad=True)
    kl_divergence(torch.softmax(t, dim=1), s.detach()).backward()
    assert torch.isnan(t.grad).any()

    t.grad = None
    kl = kl_divergence_logits(t, s)
    kl.backward()
    assert torch.isfinite(t.grad).all() and torch.isfinite(s.grad).all()
    # By hand, in float64: KL = Σ p (log p − log q); ∂KL/∂t = p ⊙ (log p − log q − KL); ∂KL/∂s = q − p.
    t64, s64 = t.detach().double(), s.detach().double()
    log_p, log_q = torch.log_softmax(t64, 1), torch.log_softmax(s64, 1)
    p, q = log_p.exp(), log_q.exp()
    value = (p * (log_p - log_q)).sum()
    assert kl.item() == pytest.approx(value.item(), rel=1e-5)
    assert torch.allclose(t.grad.double(), p * (log_p - log_q - value), atol=1e-6)
    assert torch.allclose(s.grad.double(), q - p, atol=1e-6)


def test_trades_loss_gradient_is_finite_when_clean_probabilities_underflow():
    from advkit.builtin.objectives import Trades
    from advkit.components import Progress, StepContext

    model = torch.nn.Linear(4, 3)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.0] * 4, [300.0] * 4, [0.0] * 4]))  # softmax(S(x)) = one-hot
    x = torch.ones(2, 4)
    ctx = StepContext(model=model, x=x, y=torch.tensor([1, 0]), num_classes=3, progress=Progress(0, 0, 1, 1))
    ctx.targets, ctx.x_adv = one_hot(ctx.y, 3), x + 0.01 * torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    Trades().loss(ctx).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
