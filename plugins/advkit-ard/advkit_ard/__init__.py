"""ARD (Goldblum et al., AAAI 2020) and IAD (Zhu et al., ICLR 2022): the distillation baselines that
RSLAD and AdaAD compare against.

Both attack the student alone (PGD on the targets, BatchNorm in train mode, uniform start without the
initial clamp) and distil the teacher's clean output into the student's output on x′. IAD adds a
self-introspection term, weighted by how little the teacher can be trusted on x′.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from advkit import Objective, StepContext, adversarial_distillation_loss, distillation_options

# The student alone is attacked: PGD on the targets, BatchNorm in train mode, U(−ε, ε) start unclamped.
_OFFICIAL_ATTACK: dict[str, object] = {"bn_mode": "train", "start": "uniform-noclamp"}


class ARD(Objective):
    """α·scale·τ²KL(P_T^τ(x) ‖ P_S^τ(x′)) + (1 − α)·CE(S(x), targets).

    Defaults are the official code's: τ = 30, α = 1 and an elem-mean KL (so the teacher term is τ²/C
    in batchmean units). At α = 1 the clean forward, which the official code runs anyway, is skipped.
    """

    needs_teacher: ClassVar[bool] = True
    default_attack_options: ClassVar[dict[str, object]] = _OFFICIAL_ATTACK
    options = distillation_options(temperature=30.0, kl_reduction="elem-mean", introspection=False)

    def loss(self, ctx: StepContext) -> torch.Tensor:
        return adversarial_distillation_loss(
            ctx, alpha=self.alpha, temperature=self.temperature, kl_reduction=self.kl_reduction, scale=self.scale
        )


class IAD(Objective):
    """ARD plus α·mean_i (1 − P_T(x′_i)[y_i]^β)·KL(P_S(x_i) ‖ P_S(x′_i)) from epoch ``begin`` (IAD-I).

    The teacher term is not reliability-weighted (as in the official IAD-I) and the introspection
    target P_S(x) is not detached. Defaults are the official code's: τ = 1, batchmean KL, β = 0.1,
    begin = 60 (epochs counted from 0).
    """

    needs_teacher: ClassVar[bool] = True
    default_attack_options: ClassVar[dict[str, object]] = _OFFICIAL_ATTACK
    options = distillation_options(temperature=1.0, kl_reduction="batchmean", introspection=True)

    def loss(self, ctx: StepContext) -> torch.Tensor:
        beta = self.beta if ctx.progress.epoch >= self.begin else None
        return adversarial_distillation_loss(
            ctx,
            alpha=self.alpha,
            temperature=self.temperature,
            kl_reduction=self.kl_reduction,
            scale=self.scale,
            introspection_beta=beta,
        )
