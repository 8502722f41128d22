"""The adversarial-distillation building blocks against hand-derived values on tiny tensors."""

import math

import pytest
import torch

from advkit import (
    OptionError,
    Progress,
    StepContext,
    adversarial_distillation_loss,
    distillation_kl,
    distillation_options,
    introspection_kl,
    kl_divergence,
    one_hot,
)
from advkit.options import resolve_options
from advkit.testing import LogitModel, kl_by_hand

LN3 = math.log(3.0)


def context(clean, adv, y, teacher_scale=1.0, epoch=0):
    teacher = LogitModel(factor=teacher_scale)  # logits differ from the student's unless the factor is 1
    ctx = StepContext(
        model=LogitModel(),
        x=clean,
        y=y,
        num_classes=clean.shape[-1],
        progress=Progress(epoch, 0, 1, 1),
        teacher=teacher,
        x_adv=adv,
    )
    ctx.targets = one_hot(y, clean.shape[-1])
    return ctx, teacher


def logits(*values):
    return torch.tensor([[[list(values)]]])


def test_distillation_kl_by_hand():
    teacher, student = torch.tensor([[0.0, 2 * LN3]]), torch.tensor([[0.0, 0.0]])
    # τ = 2: softmax(t/2) = [1/4, 3/4], softmax(s/2) = [1/2, 1/2]; the term carries τ² = 4
    expected = 4 * kl_by_hand([0.25, 0.75], [0.5, 0.5])
    assert distillation_kl(teacher, student, 2.0, "batchmean").item() == pytest.approx(expected)
    assert distillation_kl(teacher, student, 2.0, "elem-mean").item() == pytest.approx(expected / 2)
    assert distillation_kl(teacher, student).item() == pytest.approx(kl_by_hand([0.1, 0.9], [0.5, 0.5]))


def test_introspection_by_hand_and_against_a_per_sample_loop():
    clean, adv = torch.tensor([[0.0, LN3]]), torch.tensor([[0.0, 0.0]])
    teacher_adv = torch.tensor([[LN3, 0.0]])  # P_T(x')[y = 1] = 1/4; β = 1/2 gives w = 1/2
    expected = 0.5 * kl_by_hand([0.25, 0.75], [0.5, 0.5])
    assert introspection_kl(clean, adv, teacher_adv, torch.tensor([1]), 0.5).item() == pytest.approx(expected)

    generator = torch.Generator().manual_seed(0)
    clean, adv, teacher_adv = (torch.randn(6, 4, generator=generator) for _ in range(3))
    labels = torch.randint(0, 4, (6,), generator=generator)
    loop = 0.0
    for i in range(6):
        weight = torch.softmax(teacher_adv[i], 0)[labels[i]].item() ** 0.1
        loop += (1 - weight) * kl_divergence(torch.softmax(clean[i : i + 1], 1), adv[i : i + 1], "sum").item()
    assert introspection_kl(clean, adv, teacher_adv, labels, 0.1).item() == pytest.approx(loop / 6, rel=1e-5)


def test_introspection_target_is_not_detached():
    clean = torch.tensor([[0.0, LN3]], requires_grad=True)
    value = introspection_kl(clean, torch.zeros(1, 2), torch.tensor([[LN3, 0.0]]), torch.tensor([1]), 0.5)
    (grad,) = torch.autograd.grad(value, clean)
    assert grad.abs().sum() > 0


def test_ard_form_by_hand_and_no_clean_forward_at_alpha_one():
    adv, y = logits(0.0, 0.0), torch.tensor([1])
    ctx, teacher = context(logits(0.0, LN3), adv, y, teacher_scale=2.0)
    loss = adversarial_distillation_loss(ctx, alpha=1.0, temperature=2.0, kl_reduction="elem-mean", scale=1.0)
    # T(x)/τ = [0, ln 3] → [1/4, 3/4]; S(x')/τ = [0, 0] → [1/2, 1/2]; τ² / C = 4 / 2
    assert loss.item() == pytest.approx(2 * kl_by_hand([0.25, 0.75], [0.5, 0.5]))
    assert [s is ctx.x_adv for s in ctx.model.inputs] == [True]  # the clean student forward is skipped
    assert [s is ctx.x for s in teacher.inputs] == [True]
    assert torch.equal(ctx.logits_for_accuracy, adv.flatten(1))

    ctx, _ = context(logits(0.0, LN3), adv, y, teacher_scale=2.0)
    loss = adversarial_distillation_loss(ctx, alpha=0.5, temperature=2.0, kl_reduction="elem-mean", scale=3.0)
    ce = -math.log(0.75)  # CE(S(x), y = 1) with S(x) = [1/4, 3/4]
    assert loss.item() == pytest.approx(0.5 * 3.0 * 2 * kl_by_hand([0.25, 0.75], [0.5, 0.5]) + 0.5 * ce)


def test_iad_and_adaiad_forms_by_hand():
    clean, adv, y = logits(0.0, LN3), logits(0.0, 0.0), torch.tensor([1])
    ctx, teacher = context(clean, adv, y)
    # teacher on x (IAD): [1/4, 3/4]; reliability from T(x') = uniform: w = (1/2)^β
    loss = adversarial_distillation_loss(
        ctx, alpha=1.0, temperature=1.0, kl_reduction="batchmean", scale=1.0, introspection_beta=1.0
    )
    teacher_term = kl_by_hand([0.25, 0.75], [0.5, 0.5])
    assert loss.item() == pytest.approx(teacher_term + 0.5 * kl_by_hand([0.25, 0.75], [0.5, 0.5]))
    assert [s is ctx.x for s in teacher.inputs] == [True, False]  # T(x) and T(x'), once each

    ctx, teacher = context(clean, adv, y)
    loss = adversarial_distillation_loss(
        ctx,
        alpha=1.0,
        temperature=1.0,
        kl_reduction="batchmean",
        scale=1.0,
        teacher_on_adversarial=True,
        introspection_beta=1.0,
    )
    assert loss.item() == pytest.approx(0.0 + 0.5 * kl_by_hand([0.25, 0.75], [0.5, 0.5]))  # T(x') = S(x')
    assert len(teacher.inputs) == 1  # the teacher term and the reliability share one T(x') forward


def test_distillation_options_declare_the_method_defaults():
    ard_options = distillation_options(temperature=30.0, kl_reduction="elem-mean", introspection=False)
    ard = resolve_options(ard_options, {}, "x")
    assert ard == {"alpha": 1.0, "temperature": 30.0, "kl_reduction": "elem-mean", "scale": 1.0}
    iad = resolve_options(distillation_options(temperature=1.0, kl_reduction="batchmean", introspection=True), {}, "x")
    assert iad["beta"] == 0.1 and iad["begin"] == 60
    with pytest.raises(OptionError, match="alpha"):
        resolve_options(
            distillation_options(temperature=1.0, kl_reduction="sum", introspection=False),
            {"alpha": "1.5"},
            "objective 'x'",
        )
