"""Devices and processes: which device a process trains on.

Imported by training and evaluation alike (it imports neither), so the two never import each other.
"""

from __future__ import annotations

import torch

from .errors import AdvkitError


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when present; asking for CUDA where there is none is a user error, not a crash."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise AdvkitError(f"--device {name} was asked for, but CUDA is not available here (use --device cpu)")
    return torch.device(name)
