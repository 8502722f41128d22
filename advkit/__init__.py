"""advkit: plugin-based adversarial training for PyTorch.

This module is the public API. Plugins import from ``advkit`` only (never from submodules' private
names): the three interfaces, the step context, typed options, the shared losses and attack helpers.
"""

from .attacks import (
    BN_MODES,
    START_POINTS,
    Attack,
    common_attack_options,
    eps_option,
    frozen_for_attack,
    project,
    sign_ascent,
    start_point,
)
from .averaging import WeightAverage
from .components import LabelRectifier, Objective, Progress, RunSetup, StepContext
from .distillation import (
    adversarial_distillation_loss,
    distillation_kl,
    distillation_options,
    introspection_kl,
)
from .errors import AdvkitError, OptionError, PluginError
from .losses import KL_REDUCTIONS, cw_margin, kl_divergence, kl_divergence_logits, one_hot, soft_cross_entropy
from .options import Option, Schedule

__version__ = "0.1.0"

__all__ = [
    "Attack",
    "AdvkitError",
    "BN_MODES",
    "KL_REDUCTIONS",
    "LabelRectifier",
    "Objective",
    "Option",
    "OptionError",
    "PluginError",
    "Progress",
    "RunSetup",
    "START_POINTS",
    "Schedule",
    "StepContext",
    "WeightAverage",
    "adversarial_distillation_loss",
    "common_attack_options",
    "cw_margin",
    "distillation_kl",
    "distillation_options",
    "eps_option",
    "frozen_for_attack",
    "introspection_kl",
    "kl_divergence",
    "kl_divergence_logits",
    "one_hot",
    "project",
    "sign_ascent",
    "soft_cross_entropy",
    "start_point",
]

_LAZY = {
    "TrainConfig": ("advkit.config", "TrainConfig"),
    "Trainer": ("advkit.train", "Trainer"),
    "load_trained_model": ("advkit.checkpoint", "load_trained_model"),
    "safe_load": ("advkit.checkpoint", "safe_load"),
    "evaluate_checkpoint": ("advkit.evaluate", "evaluate_checkpoint"),
    "load_teacher": ("advkit.teachers", "load_teacher"),
}
__all__ += list(_LAZY)


def __getattr__(name: str) -> object:
    """Training and evaluation entry points, imported on first use (they pull in data and models)."""
    if name in _LAZY:
        import importlib

        module, attribute = _LAZY[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'advkit' has no attribute '{name}'")
