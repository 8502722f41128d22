"""N-FGSM (de Jorge et al., "Make Some Noise: Reliable and Efficient Single-Step Adversarial Training",
NeurIPS 2022; official code pdejorge/N-FGSM).

Fast AT's FGSM from a random start overfits catastrophically at larger ε. N-FGSM starts from a much
noisier point (η ~ U(−kε, kε), k = 2), takes one signed step of α = ε, and does not clip the result back
to the ε-ball: the training perturbation is up to (k + 1)·ε, at the cost of one forward and backward.
"""

from __future__ import annotations

import torch

from advkit import BN_MODES, Attack, Option, eps_option, soft_cross_entropy


class NFGSM(Attack):
    """x′ = clip_[0,1](x + η + α·sign(∇ CE(f(x + η), targets))), η ~ U(−kε, kε), x + η clipped to [0, 1].

    Defaults follow the official code: k = 2, α = ε, no projection onto an ε-ball (``clip`` c projects onto
    the c·ε-ball, as FGSM-RS does with c = 1), the model in train mode during training (the official script
    never leaves it; built outside training the attack uses eval mode). Soft targets are accepted.
    """

    options = (
        eps_option(),
        Option("alpha", float, None, "step size; default ε (official)", low=0.0, optional=True),
        Option(
            "noise", float, 2.0, "noise magnitude k relative to ε: η ~ U(−kε, kε) (official 2; 0: no noise)", low=0.0
        ),
        Option(
            "clip",
            float,
            None,
            "project onto the (clip·ε)-ball around x after the step; default none (official)",
            low=0.0,
            low_open=True,
            optional=True,
        ),
        Option(
            "bn_mode",
            str,
            "eval",
            "model mode during the attack (in training: train, the official code's)",
            choices=BN_MODES,
        ),
    )
    training_bn_mode = "train"

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x = images.detach()
        start = (x + torch.empty_like(x).uniform_(-1.0, 1.0) * (self.noise * self.eps)).clamp_(0.0, 1.0)
        start.requires_grad_(True)
        (grad,) = torch.autograd.grad(soft_cross_entropy(self.get_logits(start), labels, reduction="sum"), start)
        step = self.eps if self.alpha is None else self.alpha
        x_adv = start.detach() + step * grad.sign()
        if self.clip is not None:
            radius = self.clip * self.eps
            x_adv = torch.min(torch.max(x_adv, x - radius), x + radius)
        return x_adv.clamp_(0.0, 1.0)
