"""Temporal ensembling (Dong et al., "Exploring Memorization in Adversarial Training", ICLR 2022; official
code dongyp13/memorization-AT, ``train_te.py`` and ``loss.py``).

Robust overfitting comes with the network memorising its hardest (often mislabelled) training examples.
TE keeps, for every training example, an exponential moving average of the model's clean predictions and,
after a warm-up, pulls the adversarial prediction towards it. Three components meet in the step context:

- rectifier ``te`` keeps the memory (indexed by ``ctx.index``, so it follows each example across epochs,
  resumes and processes) and publishes the batch's ensemble targets q and the regulariser weight as
  ``ctx.cache["te"]``; with ``mix`` > 0 it also mixes q into the training targets;
- attack ``te-pgd`` is PGD on CE(f(x′), y) + w·mean((softmax(f(x′)) − q)²), the official inner problem;
- objective ``te`` is the same loss as the outer problem.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from advkit import (
    NORMS,
    Attack,
    LabelRectifier,
    Objective,
    Option,
    RunSetup,
    StepContext,
    common_attack_options,
    frozen_for_attack,
    sign_ascent,
    soft_cross_entropy,
)

CACHE_KEY = "te"


@dataclass(frozen=True)
class EnsembleTargets:
    """What the ``te`` rectifier publishes for one step: the normalised memory rows and the regulariser weight."""

    soft_labels: torch.Tensor
    weight: float


def sigmoid_rampup(epoch: float, start: float, end: float) -> float:
    """0 before ``start``, exp(−5(1 − (epoch − start)/(end − start))²) up to ``end``, then 1 (Laine & Aila 2017)."""
    if epoch < start:
        return 0.0
    if epoch >= end:
        return 1.0
    phase = 1.0 - (epoch - start) / (end - start)
    return math.exp(-5.0 * phase * phase)


def regulariser(logits: torch.Tensor, published: EnsembleTargets) -> torch.Tensor:
    """w·mean over batch and classes of (softmax(logits) − q)²; zero (and no work) while w = 0."""
    if published.weight == 0.0:
        return logits.new_zeros(())
    return published.weight * ((torch.softmax(logits, dim=1) - published.soft_labels) ** 2).mean()


def published_targets(ctx: StepContext, who: str) -> EnsembleTargets:
    if CACHE_KEY not in ctx.cache:
        raise RuntimeError(f"{who} needs the ensemble targets of the te rectifier: train with --rectifier te")
    return ctx.cache[CACHE_KEY]


class TemporalEnsembling(LabelRectifier):
    """A per-example EMA of clean predictions: M_i ← m·M_i + (1 − m)·softmax(f(x_i)), q_i = M_i / Σ_c M_ic.

    Official defaults: m = 0.9, memory from zeros (hence the normalisation, which removes the EMA's start-up
    bias), predictions of the model in eval mode, updates from epoch ``start``·E on (90 of 200) and the
    weight w = ``weight``·rampup(epoch; start·E, end·E) with ``weight`` 300 and ``end`` 150/200, both per
    epoch as in the official script. The targets stay one-hot unless ``mix`` λ > 0:
    ỹ = (1 − λr)·onehot(y) + λr·q, r the ramp (an advkit option; the official method uses the regulariser).
    Under torchrun every process applies every process's updates, so the memory stays identical.
    """

    options = (
        Option(
            "momentum", float, 0.9, "EMA momentum m of the prediction memory (official te-alpha 0.9)", low=0.0, high=1.0
        ),
        Option(
            "start",
            float,
            0.45,
            "fraction of the epochs after which the memory is updated and used (official 90/200)",
            low=0.0,
            high=1.0,
            fraction_of_training=True,
        ),
        Option(
            "end",
            float,
            0.75,
            "fraction of the epochs at which the weight's ramp-up ends (official 150/200)",
            low=0.0,
            high=1.0,
            fraction_of_training=True,
        ),
        Option(
            "weight",
            float,
            300.0,
            "regulariser weight at full ramp, for te-pgd and the te objective (official 300)",
            low=0.0,
        ),
        Option(
            "mix",
            float,
            0.0,
            "share λ of q mixed into the training targets at full ramp (0: official, one-hot targets)",
            low=0.0,
            high=1.0,
        ),
    )

    def setup(self, run: RunSetup) -> None:
        if self.end <= self.start:
            raise ValueError(f"rectifier 'te': end ({self.end}) must be after start ({self.start})")
        self.epochs = run.epochs
        self.gather = run.gather_from_ranks
        self.memory = torch.zeros(run.num_examples, run.num_classes, device=run.device)

    def targets(self, ctx: StepContext) -> torch.Tensor:
        onehot = F.one_hot(ctx.y, ctx.num_classes).to(torch.float32)
        epoch = ctx.progress.epoch + 1  # the official script counts epochs from 1
        start, end = self.start * self.epochs, self.end * self.epochs
        if epoch < start:
            ctx.cache[CACHE_KEY] = EnsembleTargets(onehot, 0.0)
            return onehot
        if ctx.index is None:
            raise RuntimeError(
                "rectifier 'te' needs the examples' indices (ctx.index), which this run does not provide"
            )
        with torch.no_grad(), frozen_for_attack(ctx.model, "eval"):
            predictions = torch.softmax(ctx.model(ctx.x).float(), dim=1)
        index, gathered = self.gather(ctx.index), self.gather(predictions)
        self.memory[index] = self.momentum * self.memory[index] + (1 - self.momentum) * gathered
        rows = self.memory[ctx.index]
        soft_labels = rows / rows.sum(dim=1, keepdim=True)
        ramp = sigmoid_rampup(epoch, start, end)
        ctx.cache[CACHE_KEY] = EnsembleTargets(soft_labels, self.weight * ramp)
        if self.mix == 0.0:
            return onehot
        share = self.mix * ramp
        return (1 - share) * onehot + share * soft_labels

    def state_dict(self) -> dict[str, Any]:
        return {"memory": self.memory.clone()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.memory = state["memory"].to(self.memory.device)


class TemporalEnsemblingPGD(Attack):
    """PGD maximising CE(f(x′), targets) + w·mean((softmax(f(x′)) − q)²) (official: eval mode, uniform start)."""

    options = common_attack_options(start="uniform", bn_mode="eval", norms=NORMS)

    def perturb(self, ctx: StepContext) -> torch.Tensor:
        self.published = published_targets(ctx, "attack 'te-pgd'")
        try:
            return super().perturb(ctx)
        finally:
            del self.published

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        published = getattr(self, "published", None)

        def loss_of(x_adv: torch.Tensor) -> torch.Tensor:
            logits = self.get_logits(x_adv)
            loss = soft_cross_entropy(logits, labels, reduction="mean")
            return loss + regulariser(logits, published) if published is not None else loss

        return sign_ascent(
            images, loss_of, eps=self.eps, alpha=self.step_size, steps=self.steps, start=self.start, norm=self.norm
        )


class TemporalEnsemblingAT(Objective):
    """CE(f(x′), targets) + w·mean((softmax(f(x′)) − q)²): PGD-AT with TE's regulariser (``PGD_TE``)."""

    default_rectifier: ClassVar[str] = "te"
    default_attack: ClassVar[str] = "te-pgd"

    def loss(self, ctx: StepContext) -> torch.Tensor:
        published = published_targets(ctx, "objective 'te'")
        logits = ctx.model(ctx.x_adv)
        ctx.logits_for_accuracy = logits
        term = regulariser(logits, published)
        ctx.log_metric("te_regulariser", term)  # its epoch mean lands in metrics.jsonl
        return soft_cross_entropy(logits, ctx.targets, reduction="mean") + term
