"""Sanity checks against gradient masking (Athalye et al. 2018; Carlini et al. 2019; ADR Appendix E).

A robustness number measured with gradient attacks means little if the gradients lie. Each check runs
attacks whose outcome is known in advance for an honestly differentiable model and reports pass/fail
with the numbers it measured:

- an unbounded attack (the whole image box) must drive accuracy to about 0;
- accuracy must not increase with ε, nor with the number of PGD steps;
- black-box attacks (Square, and a transfer attack when a surrogate is given) must not beat white-box PGD;
- input gradients of the loss must be neither zero nor NaN/Inf.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .attacks import frozen_for_attack
from .evaluate import AttackContext, device_of, parse_attack, prepare_evaluation, run_attacks
from .losses import cw_margin


@dataclass
class CheckResult:
    """One check: whether it passed, one line saying what was measured against what, and the numbers."""

    name: str
    passed: bool
    summary: str
    numbers: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class SanitySettings:
    """Knobs of the checks; the defaults are cheap enough for a few hundred examples on a CPU."""

    eps_factors: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)
    steps: tuple[int, ...] = (1, 5, 20, 50)
    pgd_steps: int = 20
    unbounded_steps: int = 50
    unbounded_max: float = 0.01
    tolerance: float = 0.02
    queries: int = 1000
    zero_gradient_max: float = 0.0


class _PGDAccuracy:
    """PGD accuracy at (ε, steps), each computed once: the checks share runs (ε at its default steps, say)."""

    def __init__(self, ctx: AttackContext, x: torch.Tensor, y: torch.Tensor, batch_size: int, progress: bool) -> None:
        self.ctx, self.x, self.y, self.batch_size, self.progress = ctx, x, y, batch_size, progress
        self.cache: dict[tuple[float, int], float] = {}

    def __call__(self, eps: float, steps: int) -> float:
        if (eps, steps) not in self.cache:
            text = f"pgd:steps={steps}"
            ctx = dataclasses.replace(self.ctx, eps=eps)
            results = run_attacks(
                ctx,
                self.x,
                self.y,
                [parse_attack(text, ctx.norm)],
                batch_size=self.batch_size,
                progress=self.progress,
                keep_adversarial=False,
            )
            self.cache[(eps, steps)] = results[text].accuracy
        return self.cache[(eps, steps)]


def box_radius(norm: str, shape: tuple[int, ...]) -> float:
    """The radius whose ball around any image covers the whole box [0, 1]^d."""
    return 1.0 if norm == "Linf" else math.sqrt(math.prod(shape))


def unbounded_check(pgd: _PGDAccuracy, settings: SanitySettings) -> CheckResult:
    """With ε covering the whole box, a working gradient attack fools every example."""
    radius = box_radius(pgd.ctx.norm, tuple(pgd.x.shape[1:]))
    acc = pgd(radius, settings.unbounded_steps)
    return CheckResult(
        "unbounded attack",
        acc <= settings.unbounded_max,
        f"PGD-{settings.unbounded_steps} at ε={radius:.4g} (the whole box): accuracy {100 * acc:.2f}% "
        f"(expected ≤ {100 * settings.unbounded_max:.2f}%)",
        {"eps": radius, "steps": settings.unbounded_steps, "accuracy": acc, "max_accuracy": settings.unbounded_max},
    )


def slack(tolerance: float, n: int) -> float:
    """Allowed accuracy rise: the tolerance, but never less than one example (a single flip is noise)."""
    return max(tolerance, 1.0 / max(n, 1))


def _rises(values: list[float], allowed: float) -> list[int]:
    """Indices i where values[i] exceeds values[i - 1] by more than ``allowed``."""
    return [i for i in range(1, len(values)) if values[i] > values[i - 1] + allowed + 1e-12]


def _monotone_check(
    name: str, axis: str, points: list[Any], accuracies: list[float], tolerance: float, fmt: Callable[[Any], str]
) -> CheckResult:
    bad = _rises(accuracies, tolerance)
    curve = ", ".join(f"{fmt(p)}: {100 * a:.2f}%" for p, a in zip(points, accuracies, strict=True))
    verdict = "non-increasing" if not bad else "rises at " + ", ".join(f"{axis}={fmt(points[i])}" for i in bad)
    return CheckResult(
        name,
        not bad,
        f"{verdict} (tolerance {100 * tolerance:.1f} points): {curve}",
        {axis: list(points), "accuracy": accuracies, "tolerance": tolerance},
    )


def eps_check(pgd: _PGDAccuracy, settings: SanitySettings) -> CheckResult:
    """A larger ball contains the smaller one, so accuracy can only fall as ε grows."""
    radius = box_radius(pgd.ctx.norm, tuple(pgd.x.shape[1:]))
    eps_values = sorted({min(pgd.ctx.eps * factor, radius) for factor in settings.eps_factors})
    accuracies = [pgd(eps, settings.pgd_steps) for eps in eps_values]
    return _monotone_check(
        f"accuracy vs ε (PGD-{settings.pgd_steps})",
        "eps",
        eps_values,
        accuracies,
        slack(settings.tolerance, pgd.x.shape[0]),
        lambda eps: f"{eps:.4g}",
    )


def steps_check(pgd: _PGDAccuracy, settings: SanitySettings) -> CheckResult:
    """More iterations of the same attack should never help the model."""
    steps = sorted(set(settings.steps))
    accuracies = [pgd(pgd.ctx.eps, k) for k in steps]
    return _monotone_check(
        f"accuracy vs PGD steps (ε={pgd.ctx.eps:.4g})",
        "steps",
        steps,
        accuracies,
        slack(settings.tolerance, pgd.x.shape[0]),
        str,
    )


def black_box_check(pgd: _PGDAccuracy, settings: SanitySettings) -> CheckResult:
    """Attacks that never see a gradient must not beat the white-box ones; if they do, gradients are masked.

    The white-box reference is the strongest of cross-entropy PGD at each step count and, under ℓ∞, PGD on
    the CW margin, which does not saturate where the cross-entropy does: a black box beating CE-PGD alone
    is common on small, well-behaved models and says nothing about masking.
    """
    white = {f"pgd-{k}": pgd(pgd.ctx.eps, k) for k in sorted(set(settings.steps) | {settings.pgd_steps})}
    margin = [parse_attack(f"cw:steps={settings.pgd_steps}", pgd.ctx.norm)] if pgd.ctx.norm == "Linf" else []
    specs = [parse_attack(f"square:queries={settings.queries}", pgd.ctx.norm)]
    if pgd.ctx.surrogate is not None:
        specs.append(parse_attack(f"transfer:steps={settings.pgd_steps}", pgd.ctx.norm))
    results = run_attacks(
        pgd.ctx, pgd.x, pgd.y, margin + specs, batch_size=pgd.batch_size, progress=pgd.progress, keep_adversarial=False
    )
    white.update({f"cw-{settings.pgd_steps}": results[spec.text].accuracy for spec in margin})
    best_white = min(white.values())
    black = {spec.name: results[spec.text].accuracy for spec in specs}
    allowed = slack(settings.tolerance, pgd.x.shape[0])
    stronger = [name for name, acc in black.items() if acc < best_white - allowed - 1e-12]
    parts = ", ".join(f"{name} {100 * acc:.2f}%" for name, acc in black.items())
    verdict = (
        "black-box not stronger"
        if not stronger
        else f"{' and '.join(stronger)} beat{'s' if len(stronger) == 1 else ''}"
    )
    return CheckResult(
        "black box vs white box",
        not stronger,
        f"{verdict}: {parts} vs best white-box ({', '.join(white)}) {100 * best_white:.2f}% "
        f"(tolerance {100 * allowed:.1f} points)",
        {"white_box": white, "black_box": black, "queries": settings.queries, "tolerance": allowed},
    )


def input_gradients(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    """Per-example input gradients of the cross-entropy or CW-margin loss (eval mode, parameters frozen)."""
    x = x.detach().clone().requires_grad_(True)
    with frozen_for_attack(model, "eval"):
        logits = model(x)
        value = F.cross_entropy(logits, y, reduction="sum") if loss == "ce" else cw_margin(logits, y, reduction="sum")
        (grad,) = torch.autograd.grad(value, x)
    return grad


def gradient_check(
    ctx: AttackContext, x: torch.Tensor, y: torch.Tensor, batch_size: int, settings: SanitySettings
) -> CheckResult:
    """Zero gradients leave gradient attacks blind (quantised or saturated models); NaN/Inf break them.

    Both the cross-entropy (what PGD ascends) and the CW margin (which never saturates) are checked.
    """
    device = device_of(ctx.model)
    numbers: dict[str, Any] = {"max_zero_fraction": settings.zero_gradient_max}
    problems, details = [], []
    for loss in ("ce", "cw"):
        norms = torch.cat(
            [
                input_gradients(ctx.model, x[i : i + batch_size].to(device), y[i : i + batch_size].to(device), loss)
                .flatten(1)
                .norm(dim=1)
                .cpu()
                for i in range(0, x.shape[0], batch_size)
            ]
        )
        non_finite = int((~torch.isfinite(norms)).sum())
        zero = int((norms == 0).sum())
        finite = norms[torch.isfinite(norms)]
        median = float(finite.median()) if finite.numel() else math.nan
        numbers[loss] = {
            "zero": zero,
            "non_finite": non_finite,
            "n": int(norms.numel()),
            "median_norm": median if finite.numel() else None,
        }
        details.append(f"{loss}: {zero} zero, {non_finite} NaN/Inf, median ‖∇x‖ {median:.3g}")
        if non_finite:
            problems.append(f"{non_finite} NaN/Inf {loss} gradients")
        if zero > settings.zero_gradient_max * norms.numel():
            problems.append(f"{zero}/{norms.numel()} zero {loss} gradients")
    summary = "; ".join(details) + f" (n={x.shape[0]})"
    prefix = "; ".join(problems) + " — " if problems else ""
    return CheckResult("input gradients", not problems, prefix + summary, numbers)


def run_sanity_checks(
    ctx: AttackContext,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    batch_size: int,
    settings: SanitySettings | None = None,
    progress: bool = False,
) -> list[CheckResult]:
    """All checks on the same examples; PGD runs shared between checks are computed once."""
    settings = settings or SanitySettings()
    pgd = _PGDAccuracy(ctx, x, y, batch_size, progress)
    return [
        gradient_check(ctx, x, y, batch_size, settings),
        unbounded_check(pgd, settings),
        eps_check(pgd, settings),
        steps_check(pgd, settings),
        black_box_check(pgd, settings),
    ]


def format_checks(results: list[CheckResult], header: str) -> str:
    """A terminal report: one line per check, PASS/FAIL first."""
    width = max(len(result.name) for result in results)
    lines = [header]
    lines += [f"{'PASS' if r.passed else 'FAIL'}  {r.name.ljust(width)}  {r.summary}" for r in results]
    failed = sum(not r.passed for r in results)
    lines.append(
        "all checks passed"
        if not failed
        else f"{failed} of {len(results)} checks failed: "
        "the robustness numbers of this model may be inflated by gradient masking"
    )
    return "\n".join(lines)


def format_checks_markdown(results: list[CheckResult], header: str) -> str:
    """The checks as a Markdown table, for reports next to ``advkit eval --markdown`` output."""
    lines = [f"**{header}**", "", "| check | result | measured |", "|---|---|---|"]
    lines += [f"| {r.name} | {'pass' if r.passed else '**FAIL**'} | {r.summary} |" for r in results]
    return "\n".join(lines) + "\n"


def sanity_for_checkpoint(
    target: str | Path,
    settings: SanitySettings | None = None,
    *,
    batch_size: int = 256,
    progress: bool = False,
    **setup: Any,
) -> dict[str, Any]:
    """Run every check on a checkpoint; ``setup`` takes ``prepare_evaluation``'s keywords (eps, norm, …)."""
    settings = settings or SanitySettings()
    loaded, ctx = prepare_evaluation(target, **setup)
    checks = run_sanity_checks(ctx, loaded.x, loaded.y, batch_size=batch_size, settings=settings, progress=progress)
    return {
        "header": loaded.header(ctx),
        "checkpoint": str(loaded.path),
        "dataset": loaded.info.name,
        "n_examples": int(loaded.y.shape[0]),
        "eps": ctx.eps,
        "norm": ctx.norm,
        "seed": ctx.seed,
        "settings": dataclasses.asdict(settings),
        "passed": all(check.passed for check in checks),
        "checks": checks,
    }
