"""GKL-AT (Cui et al., "Decoupled Kullback-Leibler Divergence Loss", NeurIPS 2024; official code jiequancui/DKL).

TRADES' KL(P(x) ‖ P(x′)) is, up to its gradient, a weighted MSE between the pairwise logit differences of
x and x′ plus a cross-entropy against P(x) (the paper's decoupling). GKL keeps both terms, lets the MSE
term act on the clean logits too (the KL's asymmetry would stop it there), and weights it by class-wise
global information: the previous epoch's mean softened prediction of each class instead of the sample's
own prediction.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from advkit import Objective, Option, RunSetup, StepContext


def weighted_pair_mse(clean_logits: torch.Tensor, adv_logits: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """¼·Σ_b Σ_ij w_bi w_bj ((z_i − z_j) − (z′_i − z′_j))² / Σ_b Σ_ij w_bi w_bj, in O(B·C).

    With e = z − z′, S = Σ w and ē = Σ w e / S the pair sum is Σ_ij w_i w_j (e_i − e_j)² = 2S·Σ_i w_i (e_i − ē)²
    (centred, so it neither cancels nor goes negative in float32) and the normaliser is S², so the B×C×C
    tensor of the official code is never built.
    """
    e = clean_logits - adv_logits
    total = weights.sum(dim=1, keepdim=True)
    centred = e - (weights * e).sum(dim=1, keepdim=True) / total
    pairs = 2 * total.squeeze(1) * (weights * centred * centred).sum(dim=1)
    return 0.25 * pairs.sum() / (total * total).sum()


def soft_label_cross_entropy(clean_logits: torch.Tensor, adv_logits: torch.Tensor) -> torch.Tensor:
    """−mean_b Σ_c softmax(z)_c · log softmax(z′)_c, with softmax(z) a constant (detached)."""
    target = torch.softmax(clean_logits.detach(), dim=1)
    return -(target * F.log_softmax(adv_logits, dim=1)).sum(dim=1).mean()


class GeneralizedKL(Objective):
    """CE(f(x), y) + β·wMSE(f(x), f(x′); w) + α·CE(softmax(f(x)), f(x′)).

    w_b = prior[y_b]^γ, where prior[c] is the mean of softmax(f(x)/T) over the class-c training examples
    of the previous epoch (uniform 1/C in the first epoch), summed over all processes under torchrun.
    Defaults are the official script's: α = 4, β = 20, γ = 1, T = 4, and TRADES' attack (eval mode,
    start x + 0.001·N(0, 1)), whose sign steps follow the cross-entropy term alone, as the official
    attack's (α = 1, β = 0) do.
    """

    default_attack: ClassVar[str] = "trades-kl"
    options = (
        Option("alpha", float, 4.0, "weight α of the soft-label cross-entropy term", low=0.0),
        Option("beta", float, 20.0, "weight β of the weighted MSE on pairwise logit differences", low=0.0),
        Option("gamma", float, 1.0, "exponent γ of the class-wise prior in the MSE weights", low=0.0),
        Option(
            "temperature",
            float,
            4.0,
            "temperature T of the clean predictions averaged into the prior",
            low=0.0,
            low_open=True,
        ),
        Option(
            "class_prior",
            bool,
            True,
            "weight by the class-wise prior (GKL); false: by the sample's own "
            "clean prediction, detached (the plain DKL decoupling of KL)",
        ),
    )

    def setup(self, run: RunSetup) -> None:
        classes = run.num_classes
        self.sum_over_ranks = run.sum_over_ranks
        self.prior = torch.full((classes, classes), 1.0 / classes, device=run.device)
        self.accumulated = torch.zeros(classes, classes, device=run.device)

    def loss(self, ctx: StepContext) -> torch.Tensor:
        # Both train-mode forwards, x′ first as in the official code.
        adv_logits = ctx.model(ctx.x_adv)
        clean_logits = ctx.model(ctx.x)
        ctx.logits_for_accuracy = adv_logits
        onehot = F.one_hot(ctx.y, ctx.num_classes).to(clean_logits.dtype)
        with torch.no_grad():
            self.accumulated += onehot.t() @ torch.softmax(clean_logits.float() / self.temperature, dim=1)
            if self.class_prior:
                weights = (onehot @ self.prior.to(onehot.dtype)) ** self.gamma
            else:
                weights = torch.softmax(clean_logits, dim=1) ** self.gamma
        mse = weighted_pair_mse(clean_logits, adv_logits, weights)
        sce = soft_label_cross_entropy(clean_logits, adv_logits)
        ctx.log_metric("gkl_wmse", mse)  # the two terms' epoch means land in metrics.jsonl
        ctx.log_metric("gkl_sce", sce)
        return F.cross_entropy(clean_logits, ctx.y) + self.beta * mse + self.alpha * sce

    def on_epoch_end(self, epoch: int, metrics: Mapping[str, float]) -> None:
        """The epoch's class-wise mean predictions become the next epoch's prior (a class not seen keeps its row)."""
        totals = self.sum_over_ranks(self.accumulated)
        counts = totals.sum(dim=1, keepdim=True)
        self.prior = torch.where(counts > 0, totals / counts.clamp_min(1e-12), self.prior)
        self.accumulated.zero_()

    def state_dict(self) -> dict[str, Any]:
        return {"prior": self.prior.clone(), "accumulated": self.accumulated.clone()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.prior = state["prior"].to(self.prior.device)
        self.accumulated = state["accumulated"].to(self.accumulated.device)
