"""Every shipped example config loads, validates, and builds its components with the options it names."""

from __future__ import annotations

from pathlib import Path

import pytest
from torch import nn

from advkit.config import load_config_file, select_components
from advkit.registry import default_registry

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "examples" / "configs").glob("*.yaml"))


def test_there_are_example_configs() -> None:
    assert CONFIGS, "examples/configs/*.yaml is empty"


@pytest.mark.parametrize("path", CONFIGS, ids=[path.name for path in CONFIGS])
def test_example_config_loads_and_builds(path: Path) -> None:
    config = load_config_file(path)
    config.validate()
    components = select_components(config, default_registry())
    built = components.build(nn.Linear(2, 2))  # option values are converted and range-checked here
    assert set(built) == {"rectifier", "attack", "objective"}
