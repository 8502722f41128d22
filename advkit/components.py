"""The interfaces every method plugs into, and the per-step context through which they meet.

A training step is: ``LabelRectifier`` → targets, ``Attack`` → x_adv, ``Objective`` → loss, optimizer step,
then every component's ``after_step``. Components never call each other; they read and write the
``StepContext`` only, which is what lets any rectifier compose with any objective and any attack.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from .options import Option, depends_on_training_length, plain, resolve_options

if TYPE_CHECKING:
    from .averaging import WeightAverage


@dataclass(frozen=True)
class Progress:
    """Where training stands; schedules read ``fraction`` so they step per iteration."""

    epoch: int
    iteration: int
    total_iterations: int
    iterations_per_epoch: int

    @property
    def fraction(self) -> float:
        return self.iteration / max(self.total_iterations, 1)


def _alone(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


@dataclass
class RunSetup:
    """What a component may need once, before the first step (model, classes, teacher, length of training).

    ``weight_average(decay)`` hands out the run's shared EMA copy of the model, so a rectifier that needs
    an EMA teacher (ADR) and the ``--wa`` option share one averaged model instead of keeping two.

    ``num_examples`` is the range of ``StepContext.index`` (training examples, then generated ones), for
    per-example memories. Under torchrun each process sees its own slice of every batch: state that must
    agree across processes goes through ``sum_over_ranks(t)`` (a summed copy) or ``gather_from_ranks(t)``
    (every process's ``t`` concatenated along dim 0, in rank order); with one process both return ``t``.
    They are collectives: every process must call them at the same point, with tensors of equal shape.
    """

    model: nn.Module
    num_classes: int
    device: torch.device
    epochs: int
    iterations_per_epoch: int
    teacher: nn.Module | None
    weight_average: Callable[[float], WeightAverage]
    dataset: str = ""
    num_examples: int = 0
    rank: int = 0
    world_size: int = 1
    sum_over_ranks: Callable[[torch.Tensor], torch.Tensor] = _alone
    gather_from_ranks: Callable[[torch.Tensor], torch.Tensor] = _alone


@dataclass
class StepContext:
    """Everything one training step knows. Components meet here and nowhere else.

    ``cache`` holds values computed once per step and shared between components (``cached``); the
    teacher's outputs go through ``teacher_logits`` so they are computed at most once per step.
    ``index`` holds each example's position in the training set (stable across epochs, resume and
    processes; see ``RunSetup.num_examples``); it is ``None`` where a caller builds a context by hand.
    ``log_metric`` adds a per-step scalar to the epoch's record in metrics.jsonl.
    """

    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    num_classes: int
    progress: Progress
    teacher: nn.Module | None = None
    targets: torch.Tensor | None = None
    attack_targets: torch.Tensor | None = None
    x_adv: torch.Tensor | None = None
    logits_for_accuracy: torch.Tensor | None = None
    index: torch.Tensor | None = None
    cache: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)

    def log_metric(self, name: str, value: torch.Tensor | float) -> None:
        """Record a scalar for this step; the epoch's record gets its mean over the steps (and processes).

        It stays on the device: nothing is read back until the epoch ends, so logging costs no host sync.
        ``name`` becomes the metrics.jsonl key and must not be one of the trainer's own keys.
        """
        value = torch.as_tensor(value, device=self.x.device)
        if value.numel() != 1:
            raise ValueError(f"log_metric('{name}', ...) takes a scalar, got a tensor of shape {tuple(value.shape)}")
        self.metrics[name] = value.detach().reshape(()).float()

    def cached(self, key: str, compute: Callable[[], Any]) -> Any:
        """Compute ``key`` once per step; later callers get the stored value."""
        if key not in self.cache:
            self.cache[key] = compute()
        return self.cache[key]

    def teacher_logits(self, adversarial: bool = False) -> torch.Tensor:
        """The frozen teacher's logits on x (or x_adv), computed without gradients, once per step."""
        if self.teacher is None:
            raise RuntimeError("this component needs a teacher, but the run has none (pass --teacher)")
        inputs = self.x_adv if adversarial else self.x
        if inputs is None:
            raise RuntimeError("teacher_logits(adversarial=True) was asked for before the attack ran")
        teacher = self.teacher
        key = "teacher_logits_adv" if adversarial else "teacher_logits_clean"
        return self.cached(key, lambda: _no_grad_forward(teacher, inputs))


def _no_grad_forward(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(inputs)


class Configurable:
    """Typed options, declared once on the class, validated at construction and stored as attributes."""

    kind: ClassVar[str] = "component"
    name: ClassVar[str] = ""
    options: ClassVar[tuple[Option, ...]] = ()
    needs_teacher: ClassVar[bool] = False

    def configure(self, values: Mapping[str, Any]) -> None:
        resolved = resolve_options(self.options, values, self.describe())
        for key, value in resolved.items():
            setattr(self, key, value)
        self.option_values = resolved

    @classmethod
    def describe(cls) -> str:
        return f"{cls.kind} '{cls.name or cls.__name__}'"

    def resolved_options(self) -> dict[str, Any]:
        """The option values in force, in YAML-friendly form (written to config.yaml)."""
        return {key: plain(value) for key, value in self.option_values.items()}

    def length_dependent_options(self) -> list[str]:
        """Options in force whose effect depends on the total length of training: a schedule that is not
        constant, or an option declared ``fraction_of_training``. Extending a run (``--resume --epochs``)
        would change what they did at the steps already trained, so the trainer refuses it.

        A component that reads ``RunSetup.epochs``, ``Progress.total_iterations`` or ``Progress.fraction``
        in some other way must say so by overriding this, naming the options that make it do so.
        """
        return [
            option.name
            for option in self.options
            if depends_on_training_length(option, self.option_values.get(option.name))
        ]

    def setup(self, run: RunSetup) -> None:
        """Called once before training (and before a resumed state is loaded)."""

    def after_step(self, ctx: StepContext) -> None:
        """Called after every optimizer step (ADR updates nothing here; its EMA lives in the core)."""

    def on_epoch_start(self, epoch: int) -> None:
        """Called before the first step of ``epoch`` (1-based), not again when a run resumes inside it."""

    def on_epoch_end(self, epoch: int, metrics: Mapping[str, float]) -> Mapping[str, float] | None:
        """Called after ``epoch``'s validation with its record so far (train and validation metrics), before
        its checkpoint is written, so state changed here is saved with the epoch. Return a mapping to add
        epoch-level metrics to the record. Under torchrun every process calls it at the same point."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """State that must survive checkpoint/resume exactly (tensors and plain Python values only)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""


class LabelRectifier(Configurable):
    """Turns hard labels into training targets: a B×C matrix of probabilities."""

    kind = "rectifier"

    def __init__(self, **values: Any) -> None:
        self.configure(values)

    def targets(self, ctx: StepContext) -> torch.Tensor:
        raise NotImplementedError

    def attack_targets(self, ctx: StepContext, targets: torch.Tensor) -> torch.Tensor:
        """What a target-consuming attack maximises against; the training targets unless overridden."""
        return targets


class Objective(Configurable):
    """The outer loss. Reads ``ctx.x``, ``ctx.x_adv``, ``ctx.targets`` and returns a scalar.

    ``default_attack`` (with ``default_attack_options``) is used unless ``--attack`` names another;
    ``default_rectifier`` likewise. An objective should set ``ctx.logits_for_accuracy`` to the logits
    whose accuracy against ``ctx.y`` is logged as training accuracy.
    """

    kind = "objective"
    default_attack: ClassVar[str] = "pgd"
    default_attack_options: ClassVar[dict[str, Any]] = {}
    default_rectifier: ClassVar[str] = "onehot"
    uses_adversarial: ClassVar[bool] = True

    def __init__(self, **values: Any) -> None:
        self.configure(values)

    def loss(self, ctx: StepContext) -> torch.Tensor:
        raise NotImplementedError
