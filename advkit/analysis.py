"""Output analysis: calibration (ECE, reliability bins), entropy and clean-vs-adversarial divergence.

ADR (§3.2) argues that robust models are better calibrated and less over-confident; these are the
numbers behind that argument, computed from softmax outputs. Everything works on tensors already
on the host: analysis runs once per evaluation, never inside a training step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import AdvkitError


def softmax_outputs(
    model: nn.Module, x: torch.Tensor, batch_size: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Class probabilities of ``model`` (eval mode) on ``x``, in batches; returned on the CPU."""
    was_training = model.training
    model.eval()
    parts = []
    with torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            logits = model(x[start : start + batch_size].to(device))
            parts.append(torch.softmax(logits.float(), dim=1).cpu())
    model.train(was_training)
    return torch.cat(parts) if parts else torch.empty(0)


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy per row, in nats (0 · log 0 counts as 0)."""
    return -torch.special.xlogy(probs, probs).sum(dim=1)


def js_divergence(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence per row, in nats: ½KL(p‖m) + ½KL(q‖m), m = ½(p + q); bounded by ln 2."""
    m = 0.5 * (p + q)
    kl_pm = (torch.special.xlogy(p, p) - torch.special.xlogy(p, m)).sum(dim=1)
    kl_qm = (torch.special.xlogy(q, q) - torch.special.xlogy(q, m)).sum(dim=1)
    return 0.5 * (kl_pm + kl_qm)


@dataclass(frozen=True)
class ReliabilityBins:
    """Equal-width confidence bins (Guo et al. 2017): bin b holds confidences in (b/B, (b+1)/B]."""

    edges: torch.Tensor  # (B + 1,)
    count: torch.Tensor  # (B,) examples per bin
    confidence: torch.Tensor  # (B,) mean max-probability per bin (0 where empty)
    accuracy: torch.Tensor  # (B,) fraction correct per bin (0 where empty)

    @property
    def ece(self) -> float:
        """Expected calibration error: Σ_b (n_b / N) · |acc_b − conf_b|."""
        total = self.count.sum()
        if total == 0:
            return 0.0
        return float((self.count / total * (self.accuracy - self.confidence).abs()).sum())


def reliability_bins(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> ReliabilityBins:
    """Bin predictions by confidence (the max probability) and compare with accuracy per bin."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    confidence, predicted = probs.max(dim=1)
    correct = (predicted == labels).double()
    edges = torch.linspace(0.0, 1.0, n_bins + 1, dtype=torch.float64)
    index = torch.bucketize(confidence.double(), edges[1:-1], right=False)
    count = torch.bincount(index, minlength=n_bins).double()
    safe = count.clamp(min=1.0)
    mean_conf = torch.bincount(index, weights=confidence.double(), minlength=n_bins) / safe
    mean_acc = torch.bincount(index, weights=correct, minlength=n_bins) / safe
    return ReliabilityBins(edges, count, mean_conf, mean_acc)


@dataclass
class OutputAnalysis:
    """Softmax outputs on clean, adversarial and (optionally) out-of-distribution inputs, plus their numbers."""

    labels: torch.Tensor
    clean: torch.Tensor
    adversarial: torch.Tensor
    ood: torch.Tensor | None
    n_bins: int = 15

    def bins(self, which: str) -> ReliabilityBins:
        return reliability_bins(getattr(self, which), self.labels, self.n_bins)

    def correct(self, which: str) -> torch.Tensor:
        return getattr(self, which).argmax(dim=1) == self.labels

    def summary(self) -> dict[str, Any]:
        """The numbers a report prints: accuracy, ECE, mean confidence and entropy, JS(clean, adv)."""
        result: dict[str, Any] = {
            "n_examples": int(self.labels.shape[0]),
            "n_bins": self.n_bins,
            "max_entropy": math.log(self.clean.shape[1]),
        }
        for which in ("clean", "adversarial"):
            probs = getattr(self, which)
            correct = self.correct(which)
            ent = entropy(probs)
            result[which] = {
                "accuracy": float(correct.double().mean()),
                "ece": self.bins(which).ece,
                "mean_confidence": float(probs.max(dim=1).values.double().mean()),
                "mean_entropy": float(ent.double().mean()),
                "mean_entropy_correct": _mean_or_none(ent[correct]),
                "mean_entropy_wrong": _mean_or_none(ent[~correct]),
            }
        result["js_clean_adversarial"] = float(js_divergence(self.clean.double(), self.adversarial.double()).mean())
        if self.ood is not None:
            result["ood"] = {
                "n_examples": int(self.ood.shape[0]),
                "mean_entropy": float(entropy(self.ood).double().mean()),
                "mean_confidence": float(self.ood.max(dim=1).values.double().mean()),
            }
        return result


def _mean_or_none(values: torch.Tensor) -> float | None:
    return float(values.double().mean()) if values.numel() else None


def analyse_outputs(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    x_adv: torch.Tensor,
    *,
    batch_size: int,
    device: torch.device | str = "cpu",
    x_ood: torch.Tensor | None = None,
    n_bins: int = 15,
) -> OutputAnalysis:
    """Softmax outputs of ``model`` on x, x_adv and optional OOD inputs, ready for numbers and plots."""

    def outputs(inputs: torch.Tensor) -> torch.Tensor:
        return softmax_outputs(model, inputs, batch_size, device)

    return OutputAnalysis(
        labels=y.cpu(),
        clean=outputs(x),
        adversarial=outputs(x_adv),
        ood=None if x_ood is None else outputs(x_ood),
        n_bins=n_bins,
    )


def match_input_shape(x: torch.Tensor, shape: tuple[int, ...], source: str) -> torch.Tensor:
    """Bring another dataset's images to a model's (C, H, W): grey ↔ RGB, then bilinear resize.

    Used for out-of-distribution entropy, where the OOD set (fashion-mnist for a digits model, say)
    rarely has the model's input shape.
    """
    channels, height, width = shape
    if x.shape[1] != channels:
        if x.shape[1] == 1:
            x = x.expand(-1, channels, -1, -1)
        elif channels == 1 and x.shape[1] == 3:
            x = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(dim=1, keepdim=True)
        else:
            raise AdvkitError(
                f"{source} has {x.shape[1]}-channel images and the model expects {channels}; "
                "only grey ↔ RGB conversions are supported"
            )
    if tuple(x.shape[2:]) != (height, width):
        x = torch.nn.functional.interpolate(
            x, size=(height, width), mode="bilinear", antialias=True, align_corners=False
        )
    return x.clamp(0.0, 1.0).contiguous()


def analyse_checkpoint(
    target: str | Path,
    attack: str = "pgd",
    *,
    ood: str | None = None,
    n_bins: int = 15,
    batch_size: int = 256,
    norm: str | None = None,
    progress: bool = False,
    **setup: Any,
) -> tuple[OutputAnalysis, dict[str, Any]]:
    """Outputs of a checkpoint on clean, adversarial (``attack`` spec) and optional OOD test examples.

    ``setup`` takes ``prepare_evaluation``'s keywords (eps, seed, which, averaged, device, data_dir,
    n_examples); the OOD set is subsampled to the same number of examples with the same seed.
    """
    from .evaluate import load_test_tensors, parse_attack, prepare_evaluation, run_attacks

    loaded, ctx = prepare_evaluation(target, norm=norm, **setup)
    spec = parse_attack(attack, ctx.norm)
    x_ood = None
    if ood is not None:
        x_ood, _ = load_test_tensors(
            ood,
            setup.get("data_dir") or loaded.config.get("data_dir", "data"),
            n_examples=int(loaded.y.shape[0]),
            seed=ctx.seed,
        )
        x_ood = match_input_shape(x_ood, tuple(loaded.info.input_shape), f"--ood {ood}")
    x_adv = run_attacks(ctx, loaded.x, loaded.y, [spec], batch_size=batch_size, progress=progress)[spec.text].x_adv
    assert x_adv is not None, "run_attacks keeps the examples unless asked not to"
    analysis = analyse_outputs(
        loaded.model, loaded.x, loaded.y, x_adv, batch_size=batch_size, device=loaded.device, x_ood=x_ood, n_bins=n_bins
    )
    report = {
        "header": loaded.header(ctx),
        "checkpoint": str(loaded.path),
        "attack": spec.text,
        "attack_description": spec.describe(ctx),
        "ood_dataset": ood,
        **analysis.summary(),
    }
    return analysis, report


def format_analysis(report: dict[str, Any]) -> str:
    """The numbers of ``analyse_checkpoint`` for the terminal."""

    def value(number: float | None, percent: bool = False) -> str:
        if number is None:
            return "n/a"
        return f"{100 * number:.2f}%" if percent else f"{number:.4f}"

    lines = [
        report["header"],
        f"adversarial examples: {report['attack_description']}",
        f"{'':12} {'accuracy':>9} {'ECE':>8} {'confidence':>10} {'entropy':>8} {'H correct':>9} {'H wrong':>8}",
    ]
    for which in ("clean", "adversarial"):
        row = report[which]
        lines.append(
            f"{which:12} {value(row['accuracy'], True):>9} {value(row['ece'], True):>8} "
            f"{value(row['mean_confidence'], True):>10} {value(row['mean_entropy']):>8} "
            f"{value(row['mean_entropy_correct']):>9} {value(row['mean_entropy_wrong']):>8}"
        )
    lines.append(
        f"JS divergence clean ↔ adversarial: {report['js_clean_adversarial']:.4f} nats (max ln 2 = 0.6931); "
        f"entropy in nats (max {report['max_entropy']:.4f})"
    )
    if "ood" in report:
        ood = report["ood"]
        lines.append(
            f"out-of-distribution ({report['ood_dataset']}, n={ood['n_examples']}): mean entropy "
            f"{ood['mean_entropy']:.4f}, mean confidence {100 * ood['mean_confidence']:.2f}%"
        )
    return "\n".join(lines)
