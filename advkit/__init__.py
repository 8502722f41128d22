"""advkit: plugin-based adversarial training for PyTorch.

This module is the public API. Plugins import from ``advkit`` only (never from submodules' private
names): the three interfaces, the step context, typed options, the shared losses and attack helpers,
the training and evaluation entry points, and the component registry's two calls (a class by name; a
class defined in a script, registered for the running process).

Every name is imported on first use, so ``import advkit`` (and the ``advkit`` command's start-up, where
a Ctrl-C must not end in a traceback from deep inside ``import torch``) costs nothing until a component
is actually needed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.2.0"

# public name -> the module that defines it
_EXPORTS = {
    "BN_MODES": "advkit.attacks",
    "START_POINTS": "advkit.attacks",
    "Attack": "advkit.attacks",
    "common_attack_options": "advkit.attacks",
    "eps_option": "advkit.attacks",
    "frozen_for_attack": "advkit.attacks",
    "NORMS": "advkit.attacks",
    "norm_option": "advkit.attacks",
    "supported_norms": "advkit.attacks",
    "project": "advkit.attacks",
    "sign_ascent": "advkit.attacks",
    "start_point": "advkit.attacks",
    "WeightAverage": "advkit.averaging",
    "LabelRectifier": "advkit.components",
    "Objective": "advkit.components",
    "Progress": "advkit.components",
    "RunSetup": "advkit.components",
    "StepContext": "advkit.components",
    "adversarial_distillation_loss": "advkit.distillation",
    "distillation_kl": "advkit.distillation",
    "distillation_options": "advkit.distillation",
    "introspection_kl": "advkit.distillation",
    "AdvkitError": "advkit.errors",
    "OptionError": "advkit.errors",
    "PluginError": "advkit.errors",
    "KL_REDUCTIONS": "advkit.losses",
    "cw_margin": "advkit.losses",
    "kl_divergence": "advkit.losses",
    "kl_divergence_logits": "advkit.losses",
    "one_hot": "advkit.losses",
    "soft_cross_entropy": "advkit.losses",
    "Option": "advkit.options",
    "Schedule": "advkit.options",
    "load_component": "advkit.registry",
    "register_component": "advkit.registry",
    "TrainConfig": "advkit.config",
    "Logger": "advkit.tracking",
    "Trainer": "advkit.train",
    "load_trained_model": "advkit.checkpoint",
    "safe_load": "advkit.checkpoint",
    "evaluate_checkpoint": "advkit.evaluate",
    "load_teacher": "advkit.teachers",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> object:
    """Import the module behind a public name on first use, and keep the value for later look-ups."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'advkit' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # what type checkers and IDEs see: the same names, imported eagerly
    from .attacks import (
        BN_MODES,
        NORMS,
        START_POINTS,
        Attack,
        common_attack_options,
        eps_option,
        frozen_for_attack,
        norm_option,
        project,
        sign_ascent,
        start_point,
        supported_norms,
    )
    from .averaging import WeightAverage
    from .checkpoint import load_trained_model, safe_load
    from .components import LabelRectifier, Objective, Progress, RunSetup, StepContext
    from .config import TrainConfig
    from .distillation import adversarial_distillation_loss, distillation_kl, distillation_options, introspection_kl
    from .errors import AdvkitError, OptionError, PluginError
    from .evaluate import evaluate_checkpoint
    from .losses import KL_REDUCTIONS, cw_margin, kl_divergence, kl_divergence_logits, one_hot, soft_cross_entropy
    from .options import Option, Schedule
    from .registry import load_component, register_component
    from .teachers import load_teacher
    from .tracking import Logger
    from .train import Trainer
