"""Loss functions shared by attacks and objectives, with the reductions the official codes disagree on.

KL(p‖q) always takes the target distribution p first. Reductions: ``sum`` (Σ over batch and classes),
``batchmean`` (sum / B) and ``elem-mean`` (sum / (B·C), PyTorch's legacy ``KLDivLoss()`` default).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

KL_REDUCTIONS = ("sum", "batchmean", "elem-mean")


def one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Hard labels as float32 B×C targets, the form every rectifier returns."""
    return F.one_hot(labels, num_classes).to(torch.float32)


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy against hard labels (B,) or a B×C matrix of target probabilities."""
    if targets.dtype in (torch.int64, torch.int32):
        return F.cross_entropy(logits, targets, reduction=reduction)
    per_sample = -(targets * F.log_softmax(logits, dim=1)).sum(dim=1)
    return _reduce(per_sample, reduction)


def kl_divergence(target_probs: torch.Tensor, logits: torch.Tensor, reduction: str = "batchmean") -> torch.Tensor:
    """KL(target_probs ‖ softmax(logits)); 0·log 0 counts as 0.

    For targets that carry no gradient (rectifier targets, detached teacher outputs). When the target
    is itself a softmax that gradients flow through, use :func:`kl_divergence_logits`: the gradient of
    p·log p is −inf at a probability that underflowed to 0, which turns into NaN.
    """
    total = F.kl_div(F.log_softmax(logits, dim=1), target_probs, reduction="none")
    return _reduce_kl(total, reduction)


def kl_divergence_logits(
    target_logits: torch.Tensor, logits: torch.Tensor, reduction: str = "batchmean"
) -> torch.Tensor:
    """KL(softmax(target_logits) ‖ softmax(logits)), computed from log-probabilities on both sides.

    Equal in value to ``kl_divergence(softmax(target_logits), logits)``, but its gradient stays finite
    with respect to both arguments at any logits: log p comes from ``log_softmax`` (finite even where p
    underflows to 0), so the p = 0 terms contribute 0 instead of 0·(−inf).
    """
    log_p = F.log_softmax(target_logits, dim=1)
    total = F.kl_div(F.log_softmax(logits, dim=1), log_p, reduction="none", log_target=True)
    return _reduce_kl(total, reduction)


def _reduce_kl(total: torch.Tensor, reduction: str) -> torch.Tensor:
    """Reduce elementwise KL terms (B×C) by one of ``KL_REDUCTIONS`` or ``none`` (per sample)."""
    if reduction == "none":
        return total.sum(dim=1)
    summed = total.sum()
    if reduction == "sum":
        return summed
    if reduction == "batchmean":
        return summed / total.shape[0]
    if reduction == "elem-mean":
        return summed / total.numel()
    raise ValueError(f"unknown KL reduction '{reduction}', expected one of {', '.join(KL_REDUCTIONS)}")


def cw_margin(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """Carlini–Wagner margin: best wrong logit minus the true logit (positive once misclassified)."""
    true_logit = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.masked_fill(F.one_hot(labels, logits.shape[1]).bool(), float("-inf"))
    return _reduce(others.max(dim=1).values - true_logit, reduction)


def _reduce(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    if reduction == "none":
        return per_sample
    raise ValueError(f"unknown reduction '{reduction}'")
