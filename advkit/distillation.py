"""Building blocks of adversarial-distillation objectives (ARD, IAD, AdaIAD and their relatives).

Three papers in two plugin distributions share one loss family and differ only in their defaults and
in which input the teacher sees. The family is written here once, and its options are declared by
``distillation_options`` (as ``common_attack_options`` does for attacks); each plugin keeps only its
defaults and the choice of teacher input.
"""

from __future__ import annotations

import torch

from .components import StepContext
from .losses import KL_REDUCTIONS, kl_divergence_logits, soft_cross_entropy
from .options import Option


def distillation_kl(
    teacher_logits: torch.Tensor,
    student_logits: torch.Tensor,
    temperature: float = 1.0,
    reduction: str = "batchmean",
) -> torch.Tensor:
    """τ²·KL(softmax(t/τ) ‖ softmax(s/τ)), Hinton's distillation term.

    The τ² keeps the gradient's scale independent of τ; the ARD, IAD and AdaIAD codes all multiply by
    it, and at τ = 1 it is plain KL.
    """
    return temperature**2 * kl_divergence_logits(teacher_logits / temperature, student_logits / temperature, reduction)


def introspection_kl(
    clean_logits: torch.Tensor,
    adv_logits: torch.Tensor,
    teacher_adv_logits: torch.Tensor,
    labels: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """IAD's self-introspection term: mean_i (1 − w_i)·KL(P_S(x_i) ‖ P_S(x′_i)), w_i = P_T(x′_i)[y_i]^β.

    Where the teacher is unreliable on x′ (low w_i) the student leans on its own clean prediction
    instead. As in the official IAD code the target P_S(x) is not detached (so the KL is computed from
    log-probabilities, whose gradient stays finite at extreme logits). Vectorised: no per-sample
    loop and no host synchronisation (the official AdaIAD code reads two ``.item()`` per sample).
    """
    reliability = torch.softmax(teacher_adv_logits, dim=1).gather(1, labels[:, None]).squeeze(1).pow(beta)
    per_sample = kl_divergence_logits(clean_logits, adv_logits, reduction="none")
    return ((1.0 - reliability) * per_sample).mean()


def distillation_options(*, temperature: float, kl_reduction: str, introspection: bool) -> tuple[Option, ...]:
    """The options of ``adversarial_distillation_loss`` with a method's defaults (α = 1, scale 1).

    ``introspection`` adds ``beta`` (0.1) and ``begin`` (epoch 60), IAD's defaults.
    """
    options = [
        Option(
            "alpha", float, 1.0, "weight of the distillation terms; CE(S(x), targets) gets 1 − alpha", low=0.0, high=1.0
        ),
        Option("temperature", float, temperature, "temperature τ of the teacher term", low=0.0, low_open=True),
        Option("kl_reduction", str, kl_reduction, "reduction of the teacher KL", choices=KL_REDUCTIONS),
        Option("scale", float, 1.0, "factor on the teacher term", low=0.0),
    ]
    if introspection:
        options += [
            Option("beta", float, 0.1, "exponent of the reliability weight P_T(x′)[y]^β", low=0.0),
            Option("begin", int, 60, "first epoch (counted from 0) of the introspection term", low=0),
        ]
    return tuple(options)


def adversarial_distillation_loss(
    ctx: StepContext,
    *,
    alpha: float,
    temperature: float,
    kl_reduction: str,
    scale: float,
    teacher_on_adversarial: bool = False,
    introspection_beta: float | None = None,
) -> torch.Tensor:
    """α·scale·τ²KL(P_T^τ(x_T) ‖ P_S^τ(x′)) [+ α·introspection_kl] + (1 − α)·CE(S(x), ctx.targets).

    ARD is x_T = x; IAD-I adds the introspection term (exponent ``introspection_beta``, None = off);
    AdaIAD is x_T = x′ with the introspection term. A term whose weight is zero costs no forward (the
    official codes run them anyway); the teacher's outputs come from ``ctx.teacher_logits``, once per
    step. Sets ``ctx.logits_for_accuracy``.
    """
    introspect = alpha > 0 and introspection_beta is not None
    logits_adv = ctx.model(ctx.x_adv) if alpha > 0 else None
    logits_clean = ctx.model(ctx.x) if introspect or alpha < 1 else None
    ctx.logits_for_accuracy = logits_adv if logits_adv is not None else logits_clean
    total = torch.zeros((), device=ctx.x.device)
    if logits_adv is not None:
        teacher = ctx.teacher_logits(adversarial=teacher_on_adversarial)
        total = total + alpha * scale * distillation_kl(teacher, logits_adv, temperature, kl_reduction)
    if introspect:
        assert logits_clean is not None and logits_adv is not None and introspection_beta is not None
        teacher_adv = ctx.teacher_logits(adversarial=True)
        total = total + alpha * introspection_kl(logits_clean, logits_adv, teacher_adv, ctx.y, introspection_beta)
    if alpha < 1:
        assert logits_clean is not None and ctx.targets is not None, "the rectifier runs before the objective"
        total = total + (1.0 - alpha) * soft_cross_entropy(logits_clean, ctx.targets)
    return total
