"""Built-in attacks: PGD (soft-target CE or CW margin), TRADES-KL, FGSM and the identity; ℓ∞ and ℓ2."""

from __future__ import annotations

from typing import Any

import torch

from advkit import Attack, Option, common_attack_options, eps_option, kl_divergence_logits, norm_option, sign_ascent
from advkit.attacks import BN_MODES, NORMS, START_POINTS
from advkit.losses import cw_margin, soft_cross_entropy


class PGD(Attack):
    """PGD maximising cross-entropy against hard or soft targets (or the CW margin), ℓ∞ or ℓ2.

    Defaults follow ADR's PGD-AT: uniform start in the ε-ball, K = 10, α = ε/4, BatchNorm in train mode
    inside advkit train (``training_bn_mode``; built outside training it runs the model in eval mode).
    With ``restarts`` > 1 each sample keeps the restart with the highest final loss. Under ℓ2 the steps
    are torchattacks PGDL2's (normalised gradient, projection onto the ε-ball, random start in it).
    """

    supports_targeted = True
    training_bn_mode = "train"
    options = common_attack_options(start="uniform", bn_mode="eval", norms=NORMS) + (
        Option("restarts", int, 1, "random restarts; the worst case per sample is kept", low=1),
        Option(
            "loss",
            str,
            "ce",
            "ce: cross-entropy on the targets; cw: Carlini-Wagner margin (hard labels)",
            choices=("ce", "cw"),
        ),
    )

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        images = images.detach()
        if self.targeted and self.loss == "cw":
            raise ValueError(f"{self.describe()}: targeted mode maximises −CE towards the target; use loss=ce")
        if self.loss == "cw" and labels.dim() == 2:
            labels = labels.argmax(dim=1)
        aim = self.target_labels(images, labels) if self.targeted else labels

        def per_sample(x_adv: torch.Tensor) -> torch.Tensor:
            logits = self.get_logits(x_adv)
            if self.loss == "cw":
                return cw_margin(logits, labels, reduction="none")
            loss = soft_cross_entropy(logits, aim, reduction="none")
            return -loss if self.targeted else loss

        best: torch.Tensor | None = None
        best_loss: torch.Tensor | None = None
        for _ in range(self.restarts):
            x_adv = sign_ascent(
                images,
                lambda z: per_sample(z).sum(),
                eps=self.eps,
                alpha=self.step_size,
                steps=self.steps,
                start=self.start,
                norm=self.norm,
            )
            if self.restarts == 1:
                return x_adv
            with torch.no_grad():
                loss = per_sample(x_adv)
            if best is None or best_loss is None:
                best, best_loss = x_adv, loss
            else:
                better = loss > best_loss
                best = torch.where(better[:, None, None, None], x_adv, best)
                best_loss = torch.maximum(loss, best_loss)
        assert best is not None, "restarts is at least 1"
        return best


class TradesKL(Attack):
    """TRADES inner maximisation: KL(P(x) ‖ P(x')) with P(x) computed once; labels are ignored.

    Defaults follow the official TRADES code: start x + 0.001·N(0, 1), BatchNorm in eval mode.
    (ADR's TRADES uses ``start=tiny-uniform, bn_mode=train``.)
    """

    uses_targets = False
    options = common_attack_options(start="gauss", bn_mode="eval", norms=NORMS)

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        images = images.detach()
        with torch.no_grad():
            clean_logits = self.get_logits(images)
        return sign_ascent(
            images,
            lambda z: kl_divergence_logits(clean_logits, self.get_logits(z), reduction="sum"),
            eps=self.eps,
            alpha=self.step_size,
            steps=self.steps,
            start=self.start,
            norm=self.norm,
        )


class FGSM(Attack):
    """One signed step of size ε from x (Goodfellow et al.); soft targets accepted.

    Under ℓ2: one step of length ε along the normalised gradient (FGM).
    """

    supports_targeted = True
    options = (
        eps_option(),
        Option("start", str, "none", "start point", choices=START_POINTS),
        Option("bn_mode", str, "eval", "model mode during the attack", choices=BN_MODES),
        norm_option(),
    )

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        sign, aim = (-1.0, self.target_labels(images, labels)) if self.targeted else (1.0, labels)
        return sign_ascent(
            images,
            lambda z: sign * soft_cross_entropy(self.get_logits(z), aim, reduction="sum"),
            eps=self.eps,
            alpha=self.eps,
            steps=1,
            start=self.start,
            norm=self.norm,
        )


class NoAttack(Attack):
    """The identity: x_adv = x, as a copy (a caller may modify it in place without touching x).

    For clean training, or to see what an objective does without an attack.
    """

    options = ()

    def __call__(self, inputs: torch.Tensor, labels: Any = None, *args: Any, **kwargs: Any) -> torch.Tensor:
        return inputs.detach().clone()

    def forward(self, images: torch.Tensor, labels: Any = None) -> torch.Tensor:
        return images.detach().clone()
