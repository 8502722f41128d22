"""Fixtures of ADR's tests: a tiny BatchNorm network and a batch (the plugin's tests are self-contained)."""

from __future__ import annotations

import pytest
import torch
from torch import nn


@pytest.fixture
def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3))


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.rand(8, 1, 4, 4, generator=generator), torch.randint(0, 3, (8,), generator=generator)
