"""AdaAD and AdaIAD (Huang et al., CVPR 2023): the teacher takes part in the inner maximisation.

The attack ``adaad`` searches for the x′ where student and teacher disagree most, KL(P_T(x′) ‖ P_S(x′)),
with the input gradient flowing through both networks; the objective ``adaad`` then matches the student
to the teacher at that x′. ``adaiad`` adds IAD's reliability-weighted self-introspection. The attack is
an ordinary advkit attack, so ``--objective trades --attack adaad --teacher …`` works as well.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from advkit import (
    KL_REDUCTIONS,
    AdvkitError,
    Attack,
    Objective,
    Option,
    RunSetup,
    Schedule,
    StepContext,
    adversarial_distillation_loss,
    common_attack_options,
    distillation_kl,
    distillation_options,
    frozen_for_attack,
    kl_divergence_logits,
    sign_ascent,
)


class AdaADAttack(Attack):
    """ℓ∞ PGD maximising KL_sum(P_T(x′) ‖ P_S(x′)); gradients w.r.t. x′ flow through teacher and student.

    Defaults follow the official code: start x + 0.001·N(0, 1) (no initial clamp), K = 10, α = ε/4,
    both networks in eval mode. The teacher's parameters stay frozen, so autograd computes input
    gradients through it but never a weight gradient. ``eps_schedule`` replaces the constant ε by one
    that follows training progress (the AdaAD paper's increasing-ε training, not in the released code).
    """

    needs_teacher: ClassVar[bool] = True
    uses_targets: ClassVar[bool] = False
    options = common_attack_options(start="gauss", bn_mode="eval") + (
        Option(
            "eps_schedule",
            Schedule,
            None,
            "ε over training, e.g. 2/255:8/255:linear (overrides eps; "
            "alpha, if unset, follows it as ε/4); unset: constant eps",
            low=0.0,
            high=1.0,
            optional=True,
        ),
    )

    def __init__(self, model: nn.Module, teacher: nn.Module | None = None, **values: Any) -> None:
        super().__init__(model, **values)
        self.teacher = teacher

    def epsilon_at(self, fraction: float) -> float:
        """The attack radius at training progress ``fraction`` (constant unless ``eps_schedule`` is set)."""
        return self.eps if self.eps_schedule is None else self.eps_schedule.at(fraction)

    def perturb(self, ctx: StepContext) -> torch.Tensor:
        return self(ctx.x, None, eps=self.epsilon_at(ctx.progress.fraction), teacher=ctx.teacher)

    def forward(
        self,
        images: torch.Tensor,
        labels: torch.Tensor | None = None,
        *,
        eps: float | None = None,
        teacher: nn.Module | None = None,
    ) -> torch.Tensor:
        teacher = teacher if teacher is not None else self.teacher
        if teacher is None:
            raise AdvkitError("attack 'adaad' needs a teacher: pass --teacher, or AdaADAttack(model, teacher=...)")
        eps = self.eps if eps is None else eps
        alpha = eps / 4 if self.alpha is None else self.alpha

        def disagreement(z: torch.Tensor) -> torch.Tensor:
            return kl_divergence_logits(teacher(z), self.get_logits(z), reduction="sum")

        with frozen_for_attack(teacher, "eval"):
            return sign_ascent(images, disagreement, eps=eps, alpha=alpha, steps=self.steps, start=self.start)


# The official code's KL is elem-mean on CIFAR-10 (0.1 × batchmean) but batchmean on CIFAR-100.
OFFICIAL_SCALE = 0.1
OFFICIAL_SCALE_BY_DATASET = {"cifar100": 1.0}


class AdaAD(Objective):
    """scale·[w·τ²KL(P_T^τ(x′) ‖ P_S^τ(x′)) + (1 − w)·τ²KL(P_T^τ(x) ‖ P_S^τ(x))], x′ from the attack.

    w is the paper's α (official ``AdaAD_alpha``); its default 1 switches the clean term off, and then
    neither S(x) nor T(x) is computed. The official code's KL is elem-mean on CIFAR-10 and batchmean on
    CIFAR-100, a 10× difference; ``scale`` reproduces each (0.1, or 1.0 on cifar100) in batchmean units.
    """

    needs_teacher: ClassVar[bool] = True
    default_attack: ClassVar[str] = "adaad"
    options = (
        Option(
            "adv_weight",
            float,
            1.0,
            "weight w (the paper's α) of the adversarial term; the clean term gets 1 − w",
            low=0.0,
            high=1.0,
        ),
        Option("temperature", float, 1.0, "softmax temperature τ of both networks (AdaAD: 1)", low=0.0, low_open=True),
        Option("kl_reduction", str, "batchmean", "KL reduction", choices=KL_REDUCTIONS),
        Option(
            "scale",
            float,
            None,
            "factor on the loss; default: the official 0.1 (1.0 on cifar100)",
            low=0.0,
            optional=True,
        ),
    )

    def setup(self, run: RunSetup) -> None:
        if self.scale is None:
            self.scale = OFFICIAL_SCALE_BY_DATASET.get(run.dataset, OFFICIAL_SCALE)
            self.option_values["scale"] = self.scale

    def loss(self, ctx: StepContext) -> torch.Tensor:
        scale = OFFICIAL_SCALE if self.scale is None else self.scale
        # Clean forward first, as in the official code (it decides the order of BatchNorm updates).
        logits_clean = ctx.model(ctx.x) if self.adv_weight < 1 else None
        logits_adv = ctx.model(ctx.x_adv) if self.adv_weight > 0 else None
        ctx.logits_for_accuracy = logits_adv if logits_adv is not None else logits_clean
        total = torch.zeros((), device=ctx.x.device)
        if logits_adv is not None:
            teacher_adv = ctx.teacher_logits(adversarial=True)
            total = total + self.adv_weight * distillation_kl(
                teacher_adv, logits_adv, self.temperature, self.kl_reduction
            )
        if logits_clean is not None:
            teacher_clean = ctx.teacher_logits()
            total = total + (1.0 - self.adv_weight) * distillation_kl(
                teacher_clean, logits_clean, self.temperature, self.kl_reduction
            )
        return scale * total


class AdaIAD(Objective):
    """α·scale·τ²KL(P_T^τ(x′) ‖ P_S^τ(x′)) + α·introspection (from ``begin``) + (1 − α)·CE(S(x), targets).

    AdaAD's ``AdaAD_with_IAD1``: IAD-I with the teacher term on x′ instead of x. Defaults are the
    official code's (τ = 30, β = 0.1, begin = 60, α = 1). The official code runs the teacher with
    gradients and a per-sample loop; here the teacher is frozen and the weights are one tensor op.
    """

    needs_teacher: ClassVar[bool] = True
    default_attack: ClassVar[str] = "adaad"
    options = distillation_options(temperature=30.0, kl_reduction="batchmean", introspection=True)

    def loss(self, ctx: StepContext) -> torch.Tensor:
        beta = self.beta if ctx.progress.epoch >= self.begin else None
        return adversarial_distillation_loss(
            ctx,
            alpha=self.alpha,
            temperature=self.temperature,
            kl_reduction=self.kl_reduction,
            scale=self.scale,
            teacher_on_adversarial=True,
            introspection_beta=beta,
        )
