"""ADR — Annealing Self-Distillation Rectification (Wu, Wang & Chen, ICLR 2024) as an advkit rectifier.

The one-hot label is replaced by a soft label built from an EMA copy of the model being trained
(``yuyuwu5/ADR``, ``src/adr.py``): with τ annealed high → low and λ low → high, per iteration,

    p   = softmax(E(x) / τ)                     E: the EMA teacher, eval mode, clean x
    λ_i = clip(λ − (max_c p_c − p_y), 0, 1)     trust the teacher less where it disagrees with y
    ỹ   = λ_i·p + (1 − λ_i)·onehot(y)

ỹ feeds the attack and the objective (with TRADES only its natural CE term consumes targets). The EMA
is the run's shared weight average (``RunSetup.weight_average``), so ``--wa`` with the same decay
evaluates the very model that teaches, as in the official code.
"""

from __future__ import annotations

from typing import Any

import torch

from advkit import LabelRectifier, Option, Progress, RunSetup, Schedule, StepContext, WeightAverage, one_hot

__all__ = ["ADR", "PRESETS", "rectified_labels"]

# The paper's stated values (Section 5.1), which match the official SGD PGD-AT configs.
PRESETS: dict[str, dict[str, str]] = {
    "cifar10": {"temperature": "2.5:2", "interpolation": "0.7:0.95"},
    "cifar100": {"temperature": "1.5:1", "interpolation": "0.7:0.95"},
    "tiny-imagenet": {"temperature": "2:1.5", "interpolation": "0.5:0.9"},
}
DEFAULT_PRESET = "cifar10"


def rectified_labels(
    teacher_logits: torch.Tensor, labels: torch.Tensor, temperature: float, interpolation: float
) -> torch.Tensor:
    """ỹ = λ_i·softmax(z/τ) + (1 − λ_i)·onehot(y) with λ_i = clip(λ − (p_max − p_y), 0, 1), row by row.

    λ_i uses the same tempered probabilities that are mixed in, so the true class always keeps the
    largest target probability.
    """
    probs = torch.softmax(teacher_logits.float() / temperature, dim=1)
    gap = probs.amax(dim=1) - probs.gather(1, labels[:, None]).squeeze(1)
    weight = (interpolation - gap).clamp_(0.0, 1.0)
    return torch.lerp(one_hot(labels, probs.shape[1]), probs, weight[:, None])


class ADR(LabelRectifier):
    """ADR: soft labels from the run's EMA teacher, with annealed temperature τ and interpolation λ.

    τ and λ come from a paper preset unless given explicitly; ``preset=auto`` picks the run's dataset
    (cifar10, cifar100, tiny-imagenet) and falls back to the CIFAR-10 values for any other dataset.
    """

    name = "adr"
    options = (
        Option(
            "preset",
            str,
            "auto",
            "paper values of τ and λ; auto: the run's dataset (CIFAR-10 values for "
            "others); explicit temperature/interpolation override it",
            choices=("auto", *PRESETS),
        ),
        Option(
            "temperature",
            Schedule,
            None,
            "teacher temperature τ, annealed high→low per iteration, e.g. 2.5:2 (cosine) [preset]",
            low=0.0,
            low_open=True,
            optional=True,
        ),
        Option(
            "interpolation",
            Schedule,
            None,
            "interpolation factor λ, annealed low→high per iteration, e.g. 0.7:0.95 [preset]",
            low=0.0,
            high=1.0,
            optional=True,
        ),
        Option(
            "decay",
            float,
            0.995,
            "EMA decay γ of the teacher, per optimizer step; shared with --wa of the same decay",
            low=0.0,
            high=1.0,
            low_open=True,
            high_open=True,
        ),
        Option("in_attack", bool, True, "the attack also maximises against ỹ (official); false: against onehot(y)"),
    )

    def __init__(self, **values: Any) -> None:
        super().__init__(**values)
        self.average: WeightAverage | None = None
        if self.preset != "auto":
            self._apply_preset(self.preset)

    def _apply_preset(self, preset: str) -> None:
        """Fill τ and λ that were not given explicitly; config.yaml then records the values in force."""
        for key, text in PRESETS[preset].items():
            if getattr(self, key) is None:
                value = Schedule.parse(text)
                setattr(self, key, value)
                self.option_values[key] = value

    def setup(self, run: RunSetup) -> None:
        if self.preset == "auto":
            self._apply_preset(run.dataset if run.dataset in PRESETS else DEFAULT_PRESET)
        self.average = run.weight_average(self.decay)

    def schedule(self, progress: Progress) -> tuple[float, float]:
        """(τ, λ) at this iteration: t/N with t the global iteration, N the total (ADR's per-iteration arrays)."""
        return self.temperature.at(progress.fraction), self.interpolation.at(progress.fraction)

    def targets(self, ctx: StepContext) -> torch.Tensor:
        if self.average is None:
            raise RuntimeError("rectifier 'adr' needs setup(run) before the first step (its EMA teacher)")
        temperature, interpolation = self.schedule(ctx.progress)
        with torch.no_grad():
            teacher_logits = self.average.model(ctx.x)
        return rectified_labels(teacher_logits, ctx.y, temperature, interpolation)

    def attack_targets(self, ctx: StepContext, targets: torch.Tensor) -> torch.Tensor:
        return targets if self.in_attack else one_hot(ctx.y, ctx.num_classes)
