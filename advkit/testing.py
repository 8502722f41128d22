"""Helpers for testing components on tiny inputs: the plugins' own tests use them, and so may yours.

- ``LogitModel``: a "network" whose B×1×1×C input *is* its logits (times a factor), so expected losses
  can be derived by hand; it records its inputs, so a test can count forwards and see which input
  went where.
- ``kl_by_hand``: KL(p ‖ q) of two short Python lists, for writing those expected values.
- ``train_digits``: a complete advkit run on the embedded 8×8 digits set (seconds on a CPU), e.g. a
  small teacher for a distillation test, or an end-to-end check of a new component.
- ``straight_and_resumed``: the same run trained straight through and stopped-then-resumed, to check
  that a component's state survives ``--resume`` exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from .config import TrainConfig
    from .registry import Registry
    from .train import Trainer


class LogitModel(nn.Module):
    """Returns ``factor · x.flatten(1)`` and appends every input to ``inputs``."""

    def __init__(self, factor: float = 1.0) -> None:
        super().__init__()
        self.factor = factor
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x)
        return self.factor * x.flatten(1)


def kl_by_hand(p: Sequence[float], q: Sequence[float]) -> float:
    """Σ p log(p / q) in plain floats (terms with p = 0 count as 0)."""
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True) if a > 0)


def train_digits(out_dir: str | Path, objective: str = "standard", **settings: Any) -> Path:
    """Train ``small-cnn`` on digits for one epoch (unless ``settings`` say otherwise); returns the run directory.

    Defaults, chosen for speed and unlike ``TrainConfig``'s: eps 0.1, epochs 1, batch 64, lr 0.05,
    val_steps 1, cpu. ``settings`` are ``TrainConfig`` fields that override them, e.g.
    ``teacher=str(run)``, ``options={"iad": {"begin": 0}}``.
    """
    from .config import TrainConfig
    from .train import Trainer

    values: dict[str, Any] = dict(
        dataset="digits",
        model="small-cnn",
        objective=objective,
        eps=0.1,
        epochs=1,
        batch_size=64,
        lr=0.05,
        val_steps=1,
        device="cpu",
    )
    values.update(settings)
    Trainer(TrainConfig(**values), out_dir, progress=False).fit()
    return Path(out_dir)


def straight_and_resumed(
    config: TrainConfig, out_dir: str | Path, stop_after_steps: int, registry: Registry | None = None
) -> tuple[Trainer, Trainer]:
    """Train ``config`` straight through (``out_dir/straight``), and again stopped after ``stop_after_steps``
    optimizer steps (a mid-epoch checkpoint when it falls inside an epoch) and resumed (``out_dir/resumed``).

    Returns both finished trainers: with every component's state in ``state_dict``, their weights, component
    state and metrics agree exactly.
    """
    from .train import Trainer

    straight = Trainer(config, Path(out_dir) / "straight", registry=registry, progress=False)
    straight.fit()
    Trainer(config, Path(out_dir) / "resumed", registry=registry, progress=False).fit(stop_after_steps=stop_after_steps)
    resumed = Trainer.resume_run(Path(out_dir) / "resumed", registry=registry, progress=False)
    resumed.fit()
    return straight, resumed
