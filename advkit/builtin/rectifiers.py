"""Built-in label rectifiers: one-hot labels and label smoothing."""

from __future__ import annotations

import torch

from advkit import LabelRectifier, Option, StepContext, one_hot


class OneHot(LabelRectifier):
    """The hard label as a one-hot distribution (plain adversarial training)."""

    def targets(self, ctx: StepContext) -> torch.Tensor:
        return one_hot(ctx.y, ctx.num_classes)


class LabelSmoothing(LabelRectifier):
    """ỹ = (1 − s)·onehot(y) + s/C (Szegedy et al.); optionally only for the loss, not the attack."""

    options = (
        Option("smoothing", float, 0.1, "mass s spread uniformly over all classes", low=0.0, high=1.0),
        Option("in_attack", bool, True, "also maximise against the smoothed label (as ADR does with its labels)"),
    )
    smoothing: float
    in_attack: bool

    def targets(self, ctx: StepContext) -> torch.Tensor:
        return one_hot(ctx.y, ctx.num_classes) * (1.0 - self.smoothing) + self.smoothing / ctx.num_classes

    def attack_targets(self, ctx: StepContext, targets: torch.Tensor) -> torch.Tensor:
        return targets if self.in_attack else one_hot(ctx.y, ctx.num_classes)
