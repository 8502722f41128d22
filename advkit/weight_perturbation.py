"""Adversarial weight perturbation as update rules that wrap the trainer's plain update.

Two different methods go by "AWP" in the literature, so they are two separate, named variants:

- ``official`` — Wu et al. 2020 (csdongxian/AWP). A proxy copy of the model takes one SGD step that
  *maximises* the objective's own loss; the layer-wise relative difference v_l = ‖w_l‖/(‖Δw_l‖+1e-20)·Δw_l
  of every conv/linear weight (a parameter named ``*weight*`` with more than one dimension) is added as
  w ← w + γ·v, the normal step is taken there (weight decay sees w + γv), and γ·v is removed again.
  The proxy keeps the model's BatchNorm statistics out of the extra forward.
- ``adr-sam`` — what ADR's code calls AWP (methods-spec §9.4): a SAM-style two-pass step. Every parameter
  with a gradient (BatchNorm affine parameters and biases too) moves by ρ·‖p‖/(‖g‖+1e-20)·g, the loss is
  recomputed there with BatchNorm momentum 0, the weights are restored exactly, and the optimizer steps
  with the gradients of the perturbed point.

Both implement ``step(ctx, compute_loss)`` like the trainer's ``PlainUpdate``: ``compute_loss`` re-runs the
objective at the current weights, on ``ctx.model``. Per-layer norms use fused multi-tensor ops and nothing
here synchronises with the host.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol

import torch
from torch import nn

from .components import StepContext

AWP_VARIANTS = ("official", "adr-sam")
_EPS = 1e-20  # both official codes add this to the norm of the direction


class WeightUpdate(Protocol):
    """The trainer's update rule: ``PlainUpdate`` or one of the perturbations below."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler

    def step(self, ctx: StepContext, compute_loss: Callable[[], torch.Tensor]) -> torch.Tensor: ...


def layerwise_relative(
    directions: list[torch.Tensor], weights: list[torch.Tensor], radius: float
) -> list[torch.Tensor]:
    """radius·‖w‖/(‖d‖ + 1e-20)·d per tensor: a step whose size is relative to each layer's weight norm."""
    weight_norms = torch._foreach_norm(weights)
    direction_norms = torch._foreach_norm(directions)
    torch._foreach_add_(direction_norms, _EPS)
    ratios = torch._foreach_div(weight_norms, direction_norms)
    torch._foreach_mul_(ratios, radius)
    return list(torch._foreach_mul(directions, ratios))


@contextmanager
def _objective_on(ctx: StepContext, model: nn.Module) -> Iterator[None]:
    """Let the objective evaluate ``model`` instead of the student (its loss reads ``ctx.model``)."""
    student, logits = ctx.model, ctx.logits_for_accuracy
    ctx.model = model
    try:
        yield
    finally:
        ctx.model, ctx.logits_for_accuracy = student, logits


@contextmanager
def frozen_running_stats(model: nn.Module) -> Iterator[None]:
    """BatchNorm momentum 0: a forward in train mode still normalises by batch statistics but leaves the
    running statistics as they were (ADR's ``bypass_bn``)."""
    norms = [
        (module, module.momentum) for module in model.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)
    ]
    for module, _ in norms:
        module.momentum = 0.0
    try:
        yield
    finally:
        for module, momentum in norms:
            module.momentum = momentum


class AdversarialWeightPerturbation:
    """Official AWP (Wu et al. 2020): perturb conv/linear weights by γ·v, step there, remove γ·v.

    ``gamma`` is the only knob (0.01 for AT-AWP, 5e-3 for TRADES-AWP); the proxy's learning rate cancels in
    the layer-wise normalisation. No perturbation before epoch ``warmup_epochs`` (0-based).
    """

    def __init__(
        self,
        base: WeightUpdate,
        gamma: float,
        warmup_epochs: int = 0,
        proxy_lr: float = 0.01,
        mean_over_ranks: Callable[[list[torch.Tensor]], None] | None = None,
    ) -> None:
        self.base = base
        self.mean_over_ranks = mean_over_ranks
        self.model, self.optimizer, self.scaler = base.model, base.optimizer, base.scaler
        self.gamma = gamma
        self.warmup_epochs = warmup_epochs
        self.proxy = copy.deepcopy(self.model).train()
        self.proxy_optimizer = torch.optim.SGD(self.proxy.parameters(), lr=proxy_lr)
        self._model_state = list(self.model.state_dict(keep_vars=True).values())
        self._proxy_state = list(self.proxy.state_dict(keep_vars=True).values())
        perturbed = {name for name, p in self.model.named_parameters() if "weight" in name and p.dim() > 1}
        self._weights: list[torch.Tensor] = [p for name, p in self.model.named_parameters() if name in perturbed]
        self._proxy_weights: list[torch.Tensor] = [p for name, p in self.proxy.named_parameters() if name in perturbed]

    def perturbation(self, ctx: StepContext, compute_loss: Callable[[], torch.Tensor]) -> list[torch.Tensor]:
        """γ·v for each conv/linear weight, from one ascent step of the proxy on the objective's loss."""
        with torch.no_grad():
            torch._foreach_copy_(self._proxy_state, self._model_state)
        self.proxy.train()
        with _objective_on(ctx, self.proxy):
            loss = compute_loss()
        self.proxy_optimizer.zero_grad(set_to_none=True)
        (-loss).backward()
        if self.mean_over_ranks is not None:  # data parallel: the proxy is not DDP-wrapped, so average here
            self.mean_over_ranks([p.grad for p in self.proxy.parameters() if p.grad is not None])
        self.proxy_optimizer.step()
        with torch.no_grad():
            difference = list(torch._foreach_sub(self._proxy_weights, self._weights))
            return layerwise_relative(difference, self._weights, self.gamma)

    def step(self, ctx: StepContext, compute_loss: Callable[[], torch.Tensor]) -> torch.Tensor:
        if ctx.progress.epoch < self.warmup_epochs:
            return self.base.step(ctx, compute_loss)
        offset = self.perturbation(ctx, compute_loss)
        with torch.no_grad():
            torch._foreach_add_(self._weights, offset)
        loss = self.base.step(ctx, compute_loss)
        with torch.no_grad():
            torch._foreach_sub_(self._weights, offset)
        return loss


class SharpnessAwarePerturbation:
    """ADR's "AWP" (a SAM-style two-pass step with a layer-wise relative radius ρ), see the module docstring.

    ρ = 5e-3 for CIFAR, 1e-3 for Tiny-ImageNet in ADR's configs. The logged loss and training accuracy
    are those at the unperturbed weights.
    """

    def __init__(self, base: WeightUpdate, rho: float, warmup_epochs: int = 0) -> None:
        self.base = base
        self.model, self.optimizer, self.scaler = base.model, base.optimizer, base.scaler
        self.rho = rho
        self.warmup_epochs = warmup_epochs

    def _backward(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()

    def step(self, ctx: StepContext, compute_loss: Callable[[], torch.Tensor]) -> torch.Tensor:
        if ctx.progress.epoch < self.warmup_epochs:
            return self.base.step(ctx, compute_loss)
        loss = compute_loss()
        self._backward(loss)
        logits = ctx.logits_for_accuracy
        params: list[torch.Tensor] = [p for p in self.model.parameters() if p.grad is not None]
        grads = [p.grad for p in params if p.grad is not None]
        with torch.no_grad():
            saved = torch._foreach_mul(params, 1.0)
            torch._foreach_add_(params, layerwise_relative(grads, params, self.rho))
        with frozen_running_stats(self.model):
            self._backward(compute_loss())
        with torch.no_grad():
            torch._foreach_copy_(params, saved)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        ctx.logits_for_accuracy = logits
        return loss


def weight_update(
    base: WeightUpdate,
    awp: float | None,
    variant: str = "official",
    warmup_epochs: int = 0,
    mean_over_ranks: Callable[[list[torch.Tensor]], None] | None = None,
) -> WeightUpdate:
    """The update rule a run asked for: ``base`` itself without ``--awp``, else the named variant around it.

    ``mean_over_ranks`` averages gradients that no DDP backward reduced (AWP's proxy) under data parallelism;
    the SAM-style variant's two backward passes both go through DDP and need nothing more.
    """
    if awp is None:
        return base
    if variant == "official":
        return AdversarialWeightPerturbation(base, awp, warmup_epochs, mean_over_ranks=mean_over_ranks)
    if variant == "adr-sam":
        return SharpnessAwarePerturbation(base, awp, warmup_epochs)
    raise ValueError(f"unknown AWP variant '{variant}', expected one of {', '.join(AWP_VARIANTS)}")
