"""RSLAD (Zi et al., ICCV 2021): robust soft labels from a pretrained robust teacher in every loss term.

Two components that meet only in the step context: the rectifier ``rslad`` turns the teacher's clean
output into the training targets, and the objective ``rslad`` distils whatever targets it is given. So
``--rectifier adr`` (an EMA teacher instead of a pretrained one) composes with no code for the pair.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from advkit import KL_REDUCTIONS, LabelRectifier, Objective, Option, StepContext, kl_divergence


class TeacherSoftLabels(LabelRectifier):
    """Targets softmax(T(x)/τ): the frozen teacher's soft labels on the clean batch.

    The teacher forward goes through ``ctx.teacher_logits()``, so it runs once per step however many
    components read it. The targets also drive the default attack (PGD on soft labels), which therefore
    maximises KL(softmax(T(x)) ‖ P_S(x′)) up to a constant, exactly RSLAD's inner problem.
    """

    needs_teacher: ClassVar[bool] = True
    options = (
        Option(
            "temperature", float, 1.0, "softmax temperature of the teacher's labels (RSLAD: 1)", low=0.0, low_open=True
        ),
    )

    def targets(self, ctx: StepContext) -> torch.Tensor:
        return torch.softmax(ctx.teacher_logits() / self.temperature, dim=1)


class RSLAD(Objective):
    """scale·[w·KL(t ‖ P_S(x′)) + (1 − w)·KL(t ‖ P_S(x))] with t = ctx.targets, w = 5/6.

    The official code's KL is elem-mean (×10 for CIFAR-100), i.e. 0.1 × batchmean on both datasets; the
    defaults reproduce that. A term whose weight is 0 costs no forward.
    """

    default_rectifier: ClassVar[str] = "rslad"
    default_attack: ClassVar[str] = "pgd"
    default_attack_options: ClassVar[dict[str, object]] = {"bn_mode": "eval", "start": "gauss"}
    options = (
        Option(
            "adv_weight",
            float,
            5 / 6,
            "weight w of the adversarial term; the natural term gets 1 − w",
            low=0.0,
            high=1.0,
        ),
        Option("kl_reduction", str, "batchmean", "KL reduction", choices=KL_REDUCTIONS),
        Option("scale", float, 0.1, "factor on the whole loss (official: 0.1 in batchmean units)", low=0.0),
    )

    def loss(self, ctx: StepContext) -> torch.Tensor:
        # Two train-mode forwards, x′ first as in the official code; a zero-weight term is not computed.
        logits_adv = ctx.model(ctx.x_adv) if self.adv_weight > 0 else None
        logits_clean = ctx.model(ctx.x) if self.adv_weight < 1 else None
        ctx.logits_for_accuracy = logits_adv if logits_adv is not None else logits_clean
        total = torch.zeros((), device=ctx.x.device)
        if logits_adv is not None:
            total = total + self.adv_weight * kl_divergence(ctx.targets, logits_adv, self.kl_reduction)
        if logits_clean is not None:
            total = total + (1.0 - self.adv_weight) * kl_divergence(ctx.targets, logits_clean, self.kl_reduction)
        return self.scale * total
