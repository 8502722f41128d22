"""Built-in objectives: clean training, PGD-AT (Madry et al.) and TRADES (Zhang et al.)."""

from __future__ import annotations

import torch

from advkit import KL_REDUCTIONS, Objective, Option, StepContext, kl_divergence_logits, soft_cross_entropy


class Standard(Objective):
    """Clean training: CE(S(x), targets). No attack is run."""

    default_attack = "none"
    uses_adversarial = False

    def loss(self, ctx: StepContext) -> torch.Tensor:
        assert ctx.targets is not None, "the rectifier runs before the objective"
        logits = ctx.model(ctx.x)
        ctx.logits_for_accuracy = logits
        return soft_cross_entropy(logits, ctx.targets)


class AdversarialTraining(Objective):
    """PGD-AT: CE(S(x'), targets), mean over the batch; x' from PGD on the same targets."""

    def loss(self, ctx: StepContext) -> torch.Tensor:
        assert ctx.targets is not None and ctx.x_adv is not None, "the rectifier and the attack run first"
        logits = ctx.model(ctx.x_adv)
        ctx.logits_for_accuracy = logits
        return soft_cross_entropy(logits, ctx.targets)


class Trades(Objective):
    """TRADES: CE(S(x), targets) + β·KL(P_S(x) ‖ P_S(x')).

    As in the official code the KL target P_S(x) is not detached (gradients flow through both
    branches) and the KL is batchmean; it is computed from log-probabilities so that its gradient stays
    finite where a clean probability underflows to 0. ``concat`` runs x and x' as one 2B batch (ADR's variant:
    BatchNorm statistics over both halves).
    """

    default_attack = "trades-kl"
    options = (
        Option("beta", float, 6.0, "weight of the robustness (KL) term", low=0.0),
        Option("kl_reduction", str, "batchmean", "KL reduction", choices=KL_REDUCTIONS),
        Option("concat", bool, False, "one forward on cat[x, x'] instead of two (ADR-TRADES)"),
    )
    beta: float
    kl_reduction: str
    concat: bool

    def loss(self, ctx: StepContext) -> torch.Tensor:
        assert ctx.targets is not None and ctx.x_adv is not None, "the rectifier and the attack run first"
        if self.concat:
            logits_clean, logits_adv = ctx.model(torch.cat([ctx.x, ctx.x_adv])).chunk(2)
        else:
            logits_clean, logits_adv = ctx.model(ctx.x), ctx.model(ctx.x_adv)
        ctx.logits_for_accuracy = logits_adv
        robust = kl_divergence_logits(logits_clean, logits_adv, self.kl_reduction)
        return soft_cross_entropy(logits_clean, ctx.targets) + self.beta * robust
