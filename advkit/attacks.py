"""The Attack interface: advkit attacks are ``torchattacks.Attack`` subclasses with typed options.

They work wherever a torchattacks attack does (``atk(images, labels)``, ``MultiAttack``), and add what
training needs: soft targets, a BatchNorm mode for the inner maximisation, a choice of start point,
input-only gradients, and a guarantee that the model comes back exactly as it was (every submodule's
mode flag, every parameter's ``requires_grad``, no stray ``.grad``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import torch
from torch import nn
from torchattacks.attack import Attack as TorchAttack

from .components import Configurable, StepContext
from .errors import OptionError
from .options import NORMS, Option

START_POINTS = ("uniform", "uniform-noclamp", "gauss", "gauss-clamp", "tiny-uniform", "none")
BN_MODES = ("train", "eval")
DIVISION_EPS = 1e-10  # keeps a zero gradient's ℓ2 normalisation finite (torchattacks' eps_for_division)


@contextmanager
def frozen_for_attack(
    model: nn.Module, bn_mode: str, set_modes: Callable[[nn.Module], None] | None = None
) -> Iterator[None]:
    """Put ``model`` in ``bn_mode`` (or let ``set_modes`` set every submodule's mode) with parameters frozen;
    restore every flag afterwards.

    Freezing parameters means autograd builds no weight-gradient graph during the attack: the
    attack costs forward + input-backward only, and no ``.grad`` can leak into the optimizer.
    """
    modes = [(module, module.training) for module in model.modules()]
    requires = [(param, param.requires_grad) for param in model.parameters()]
    if set_modes is None:
        model.train(bn_mode == "train")
    else:
        set_modes(model)
    for param, _ in requires:
        param.requires_grad_(False)
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training
        for param, flag in requires:
            param.requires_grad_(flag)


def _l2_norms(t: torch.Tensor) -> torch.Tensor:
    """Per-example ℓ2 norms, shaped to broadcast against ``t`` (B×1×1×1 for images)."""
    return t.flatten(1).norm(p=2, dim=1).view(-1, *([1] * (t.dim() - 1)))


def _check_norm(norm: str) -> None:
    if norm not in NORMS:
        raise ValueError(f"unknown norm '{norm}', expected one of {', '.join(NORMS)}")


def start_point(x: torch.Tensor, kind: str, eps: float, norm: str = "Linf") -> torch.Tensor:
    """The first iterate of an attack; the official codes differ here (methods-spec §2).

    ``uniform`` under ℓ2 is torchattacks PGDL2's random start: a Gaussian direction scaled to a radius
    r·ε with r ~ U(0, 1) per example. The small-noise starts (``gauss``, ``tiny-uniform``) do not depend on
    the norm.
    """
    _check_norm(norm)
    if kind == "none":
        return x.clone()
    if kind in ("uniform", "uniform-noclamp"):
        if norm == "Linf":
            start = x + torch.empty_like(x).uniform_(-eps, eps)
        else:
            direction = torch.empty_like(x).normal_()
            radius = torch.zeros_like(_l2_norms(direction)).uniform_(0, 1)
            start = x + direction * (radius / _l2_norms(direction) * eps)
        return start.clamp(0.0, 1.0) if kind == "uniform" else start
    if kind in ("gauss", "gauss-clamp"):
        start = x + 0.001 * torch.randn_like(x)
        return start.clamp(0.0, 1.0) if kind == "gauss-clamp" else start
    if kind == "tiny-uniform":
        return x + 0.001 * torch.rand_like(x)
    raise ValueError(f"unknown start point '{kind}', expected one of {', '.join(START_POINTS)}")


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str = "Linf") -> torch.Tensor:
    """Project onto the ℓ∞ (or ℓ2) ball of radius eps around x, then into the image box [0, 1]."""
    _check_norm(norm)
    if norm == "Linf":
        return torch.min(torch.max(x_adv, x - eps), x + eps).clamp_(0.0, 1.0)
    delta = x_adv - x
    factor = (eps / _l2_norms(delta)).clamp(max=1.0)  # a zero delta gives inf → 1: unchanged
    return (x + delta * factor).clamp_(0.0, 1.0)


def sign_ascent(
    x: torch.Tensor,
    loss_of: Callable[[torch.Tensor], torch.Tensor],
    *,
    eps: float,
    alpha: float,
    steps: int,
    start: str,
    norm: str = "Linf",
) -> torch.Tensor:
    """Projected steepest ascent on ``loss_of`` (a scalar), taking input gradients only.

    The step is the steepest direction of the norm: α·sign(g) for ℓ∞, α·g/‖g‖₂ per example for ℓ2 (the
    PGDL2 step). Each iterate is projected onto the ε-ball of that norm and into [0, 1].
    """
    x = x.detach()
    x_adv = start_point(x, start, eps, norm)
    if steps == 0:
        return project(x_adv, x, eps, norm)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(loss_of(x_adv), x_adv)
        direction = grad.sign() if norm == "Linf" else grad / (_l2_norms(grad) + DIVISION_EPS)
        x_adv = project(x_adv.detach() + alpha * direction, x, eps, norm)
    return x_adv


def eps_option(default: float = 8 / 255) -> Option:
    """The ε option every attack declares, so ``--eps`` reaches all of them the same way (in the units of
    the attack's norm: an ℓ∞ radius must lie in [0, 1], checked when the attack is built)."""
    return Option(
        "eps",
        float,
        default,
        "radius in pixel units (images in [0, 1]), in the attack's norm (ℓ∞ e.g. 8/255, "
        "ℓ2 e.g. 0.5); set by the run's --eps",
        low=0.0,
    )


def norm_option(norms: tuple[str, ...] = NORMS) -> Option:
    """The threat model of an attack that supports several; set by the run's --norm."""
    return Option(
        "norm",
        str,
        norms[0],
        "threat model (set by the run's --norm): Linf sign steps in the ε-box, "
        "L2 normalised-gradient steps in the ε-ball",
        choices=norms,
    )


def common_attack_options(
    start: str, bn_mode: str, steps: int = 10, norms: tuple[str, ...] = ("Linf",)
) -> tuple[Option, ...]:
    """Options every iterative training attack shares; plugins reuse them instead of redeclaring.

    ``norms`` beyond ℓ∞ add a ``norm`` option; the attack must then pass ``norm=self.norm`` to
    ``sign_ascent`` / ``project`` / ``start_point``.
    """
    return (
        eps_option(),
        Option("alpha", float, None, "step size; default eps/4", low=0.0, optional=True),
        Option("steps", int, steps, "number of ascent steps", low=0),
        Option("start", str, start, "start point", choices=START_POINTS),
        Option(
            "bn_mode", str, bn_mode, "model mode during the attack (BatchNorm batch stats in train)", choices=BN_MODES
        ),
    ) + ((norm_option(norms),) if norms != ("Linf",) else ())


def supported_norms(attack_class: type) -> tuple[str, ...]:
    """The norms an advkit attack declares through its ``norm`` option: ℓ∞ alone when it has an ``eps`` but
    no ``norm`` option, every norm when it has neither (it has no radius: the identity attack)."""
    names = {option.name: option for option in getattr(attack_class, "options", ())}
    if "norm" in names:
        return tuple(names["norm"].choices)
    return ("Linf",) if "eps" in names else NORMS


class Attack(TorchAttack, Configurable):
    """Base class of advkit attacks (a torchattacks attack with typed options).

    Subclasses implement ``forward(images, labels)``; labels may be hard (B,) or soft (B×C).
    ``perturb(ctx)`` is what the trainer calls; attacks that need more than images and labels (a
    teacher, say) override it and read the context.

    torchattacks' contract holds: ``set_normalization_used`` (inputs and outputs in normalised units, the
    attack in pixel space), ``set_model_training_mode`` (it then decides the model's mode instead of
    ``bn_mode``), targeted modes for attacks with ``supports_targeted``, and inputs moved to the
    attack's device. An attack built outside training runs the model in eval mode unless told otherwise;
    ``training_bn_mode`` is the mode the trainer gives it (the official code's) unless the run sets one.
    """

    kind = "attack"
    uses_targets: ClassVar[bool] = True
    supports_targeted: ClassVar[bool] = False
    training_bn_mode: ClassVar[str] = "eval"
    bn_mode: str = "eval"

    def __init__(self, model: nn.Module, **values: Any) -> None:
        TorchAttack.__init__(self, type(self).__name__, model)
        self.configure(values)
        if getattr(self, "norm", "Linf") == "Linf" and getattr(self, "eps", 0.0) > 1.0:
            raise OptionError(
                f"{self.describe()}: option 'eps' is an ℓ∞ radius and must lie in [0, 1], got {self.eps:g}"
            )
        if self.supports_targeted:
            self.supported_mode = ["default", "targeted"]
        self._modes_from_torchattacks = False

    def set_model_training_mode(
        self, model_training: bool = False, batchnorm_training: bool = False, dropout_training: bool = False
    ) -> None:
        """torchattacks' setting of the model's mode during the attack; once called, it replaces ``bn_mode``."""
        super().set_model_training_mode(model_training, batchnorm_training, dropout_training)
        self._modes_from_torchattacks = True

    def _set_mode_targeted(self, mode: str, quiet: bool) -> None:
        if not self.supports_targeted:
            raise ValueError(
                f"{self.describe()} has no targeted mode (it does not aim at a label); advkit's pgd and fgsm have one"
            )
        super()._set_mode_targeted(mode, quiet)

    def target_labels(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The labels a targeted attack aims at (torchattacks' target modes); hard labels only."""
        if labels.dim() != 1:
            raise ValueError(f"{self.describe()}: targeted mode needs hard labels (B,), not soft targets")
        return self.get_target_label(images, labels)

    @property
    def step_size(self) -> float:
        alpha = getattr(self, "alpha", None)
        return self.eps / 4 if alpha is None else alpha

    def perturb(self, ctx: StepContext) -> torch.Tensor:
        labels = ctx.attack_targets if self.uses_targets else ctx.y
        if labels is None:
            labels = ctx.y
        return self(ctx.x, labels)

    def __call__(
        self, inputs: torch.Tensor, labels: torch.Tensor | None = None, *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        if self.device is not None:  # torchattacks' habit: CPU images for a CUDA model
            inputs = inputs.to(self.device)
            labels = labels.to(self.device) if isinstance(labels, torch.Tensor) else labels
        normalised = self._normalization_applied is True
        if normalised:  # attack in pixel space; get_logits normalises before the model
            inputs = self.inverse_normalize(inputs)
            self._set_normalization_applied(False)
        set_modes = (lambda model: self._change_model_mode(True)) if self._modes_from_torchattacks else None
        try:
            with frozen_for_attack(self.model, self.bn_mode, set_modes):
                adversarial = self.forward(inputs, labels, *args, **kwargs)
        finally:
            if normalised:
                self._set_normalization_applied(True)
        return self.normalize(adversarial) if normalised else adversarial


def run_attack(attack: Any, ctx: StepContext) -> torch.Tensor:
    """Run an advkit attack on the context, or any torchattacks attack on (x, hard labels)."""
    if isinstance(attack, Attack):
        return attack.perturb(ctx)
    with frozen_for_attack(ctx.model, "eval"):
        return attack(ctx.x, ctx.y)
