"""MART (Wang et al., ICLR 2020): misclassification-aware adversarial training, as an advkit objective."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from advkit import Objective, Option, StepContext, kl_divergence_logits, one_hot


def boosted_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """−log p[y] − log(1 − max_{k≠y} p[k]), averaged over the batch."""
    probs = torch.softmax(logits, dim=1)
    wrong = probs.masked_fill(one_hot(labels, logits.shape[1]).bool(), 0.0)
    margin = -torch.log(1.0 - wrong.max(dim=1).values + 1e-12)
    return F.cross_entropy(logits, labels) + margin.mean()


class Mart(Objective):
    """BCE(S(x′), y) + β·mean_i[KL(P_S(x_i) ‖ P_S(x′_i))·(1 − P_S(x_i)[y_i])]."""

    default_attack = "pgd"
    default_attack_options = {"bn_mode": "eval", "start": "gauss"}
    options = (Option("beta", float, 6.0, "weight of the misclassification-aware KL term", low=0.0),)

    def loss(self, ctx: StepContext) -> torch.Tensor:
        logits_adv = ctx.model(ctx.x_adv)
        logits_clean = ctx.model(ctx.x)
        ctx.logits_for_accuracy = logits_adv
        true_prob = torch.softmax(logits_clean, dim=1).gather(1, ctx.y[:, None]).squeeze(1)
        kl = kl_divergence_logits(logits_clean, logits_adv, reduction="none")
        return boosted_cross_entropy(logits_adv, ctx.y) + self.beta * (kl * (1.0 - true_prob)).mean()
