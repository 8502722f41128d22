"""The Attack interface: advkit attacks are ``torchattacks.Attack`` subclasses with typed options.

They work wherever a torchattacks attack does (``atk(images, labels)``, ``MultiAttack``), and add what
training needs: soft targets, a BatchNorm mode for the inner maximisation, a choice of start point,
input-only gradients, and a guarantee that the model comes back exactly as it was (every submodule's
mode flag, every parameter's ``requires_grad``, no stray ``.grad``).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, ClassVar, Iterator

import torch
from torchattacks.attack import Attack as TorchAttack
from torch import nn

from .components import Configurable, StepContext
from .options import Option

START_POINTS = ("uniform", "uniform-noclamp", "gauss", "gauss-clamp", "tiny-uniform", "none")
BN_MODES = ("train", "eval")


@contextmanager
def frozen_for_attack(model: nn.Module, bn_mode: str) -> Iterator[None]:
    """Put ``model`` in ``bn_mode`` with parameters frozen; restore every flag afterwards.

    Freezing parameters means autograd builds no weight-gradient graph during the attack: the
    attack costs forward + input-backward only, and no ``.grad`` can leak into the optimizer.
    """
    modes = [(module, module.training) for module in model.modules()]
    requires = [(param, param.requires_grad) for param in model.parameters()]
    model.train(bn_mode == "train")
    for param, _ in requires:
        param.requires_grad_(False)
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training
        for param, flag in requires:
            param.requires_grad_(flag)


def start_point(x: torch.Tensor, kind: str, eps: float) -> torch.Tensor:
    """The first iterate of an attack; the official codes differ here (methods-spec §2)."""
    if kind == "none":
        return x.clone()
    if kind in ("uniform", "uniform-noclamp"):
        start = x + torch.empty_like(x).uniform_(-eps, eps)
        return start.clamp(0.0, 1.0) if kind == "uniform" else start
    if kind in ("gauss", "gauss-clamp"):
        start = x + 0.001 * torch.randn_like(x)
        return start.clamp(0.0, 1.0) if kind == "gauss-clamp" else start
    if kind == "tiny-uniform":
        return x + 0.001 * torch.rand_like(x)
    raise ValueError(f"unknown start point '{kind}', expected one of {', '.join(START_POINTS)}")


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Project onto the ℓ∞ ball of radius eps around x, then into the image box [0, 1]."""
    return torch.min(torch.max(x_adv, x - eps), x + eps).clamp_(0.0, 1.0)


def sign_ascent(
    x: torch.Tensor,
    loss_of: Callable[[torch.Tensor], torch.Tensor],
    *,
    eps: float,
    alpha: float,
    steps: int,
    start: str,
) -> torch.Tensor:
    """Projected sign-gradient ascent on ``loss_of`` (a scalar), taking input gradients only."""
    x = x.detach()
    x_adv = start_point(x, start, eps)
    if steps == 0:
        return project(x_adv, x, eps)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(loss_of(x_adv), x_adv)
        x_adv = project(x_adv.detach() + alpha * grad.sign(), x, eps)
    return x_adv


def eps_option(default: float = 8 / 255) -> Option:
    """The ε option every ℓ∞ attack declares, so ``--eps`` reaches all of them the same way."""
    return Option("eps", float, default, "ℓ∞ radius in [0, 1] pixel units (8/255 accepted)", low=0.0, high=1.0)


def common_attack_options(start: str, bn_mode: str, steps: int = 10) -> tuple[Option, ...]:
    """Options every iterative training attack shares; plugins reuse them instead of redeclaring."""
    return (
        eps_option(),
        Option("alpha", float, None, "step size; default eps/4", low=0.0, optional=True),
        Option("steps", int, steps, "number of sign-gradient steps", low=0),
        Option("start", str, start, "start point", choices=START_POINTS),
        Option("bn_mode", str, bn_mode, "model mode during the attack (BatchNorm batch stats in train)", choices=BN_MODES),
    )


class Attack(TorchAttack, Configurable):
    """Base class of advkit attacks (a torchattacks attack with typed options).

    Subclasses implement ``forward(images, labels)``; labels may be hard (B,) or soft (B×C).
    ``perturb(ctx)`` is what the trainer calls; attacks that need more than images and labels (a
    teacher, say) override it and read the context.
    """

    kind = "attack"
    uses_targets: ClassVar[bool] = True
    bn_mode: str = "eval"

    def __init__(self, model: nn.Module, **values: Any) -> None:
        TorchAttack.__init__(self, type(self).__name__, model)
        self.configure(values)

    @property
    def step_size(self) -> float:
        alpha = getattr(self, "alpha", None)
        return self.eps / 4 if alpha is None else alpha

    def perturb(self, ctx: StepContext) -> torch.Tensor:
        labels = ctx.attack_targets if self.uses_targets else ctx.y
        if labels is None:
            labels = ctx.y
        return self(ctx.x, labels)

    def __call__(self, inputs: torch.Tensor, labels: torch.Tensor | None = None, *args: Any, **kwargs: Any) -> torch.Tensor:
        with frozen_for_attack(self.model, self.bn_mode):
            return self.forward(inputs, labels, *args, **kwargs)


def run_attack(attack: Any, ctx: StepContext) -> torch.Tensor:
    """Run an advkit attack on the context, or any torchattacks attack on (x, hard labels)."""
    if isinstance(attack, Attack):
        return attack.perturb(ctx)
    with frozen_for_attack(ctx.model, "eval"):
        return attack(ctx.x, ctx.y)
