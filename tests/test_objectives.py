import math

import pytest
import torch
from torch import nn

from advkit import Progress, StepContext
from advkit.builtin.objectives import AdversarialTraining, Standard, Trades
from advkit.builtin.rectifiers import LabelSmoothing, OneHot


def context(x, x_adv, y, classes=2):
    return StepContext(model=nn.Flatten(), x=x, y=y, num_classes=classes, progress=Progress(0, 0, 1, 1), x_adv=x_adv)


CLEAN = torch.tensor([[[[0.0, math.log(3.0)]]]])  # model = Flatten, so these are the logits: softmax [1/4, 3/4]
ADV = torch.tensor([[[[0.0, 0.0]]]])  # softmax [1/2, 1/2]
Y = torch.tensor([1])


def test_trades_loss_by_hand():
    ctx = context(CLEAN, ADV, Y)
    ctx.targets = OneHot().targets(ctx)
    natural = math.log(4 / 3)
    kl = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert Trades().loss(ctx).item() == pytest.approx(natural + 6 * kl)
    assert Trades(beta=1, kl_reduction="elem-mean").loss(ctx).item() == pytest.approx(natural + kl / 2)
    assert Trades(concat=True).loss(ctx).item() == pytest.approx(natural + 6 * kl)
    assert torch.equal(ctx.logits_for_accuracy, ADV.flatten(1))


def test_trades_kl_target_is_not_detached():
    clean = CLEAN.clone().requires_grad_(True)
    ctx = context(clean, ADV, Y)
    ctx.targets = OneHot().targets(ctx)
    robust_only = Trades(beta=1).loss(ctx) - Trades(beta=0).loss(ctx)
    (grad,) = torch.autograd.grad(robust_only, clean)
    assert grad.abs().sum() > 0  # gradient flows through the clean branch of the KL term


def test_at_and_standard_use_the_right_inputs():
    ctx = context(CLEAN, ADV, Y)
    ctx.targets = OneHot().targets(ctx)
    assert AdversarialTraining().loss(ctx).item() == pytest.approx(math.log(2))
    assert Standard().loss(ctx).item() == pytest.approx(math.log(4 / 3))
    assert Standard.default_attack == "none" and Trades.default_attack == "trades-kl"


def test_label_smoothing_targets():
    ctx = context(torch.zeros(2, 1, 1, 10), None, torch.tensor([3, 7]), classes=10)
    targets = LabelSmoothing(smoothing=0.1).targets(ctx)
    assert torch.allclose(targets.sum(dim=1), torch.ones(2))
    assert targets[0, 3].item() == pytest.approx(0.91) and targets[0, 0].item() == pytest.approx(0.01)
    assert targets.argmax(dim=1).tolist() == [3, 7]
    hard_for_attack = LabelSmoothing(smoothing=0.1, in_attack=False).attack_targets(ctx, targets)
    assert hard_for_attack[0].tolist() == [0, 0, 0, 1, 0, 0, 0, 0, 0, 0]
