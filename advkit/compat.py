"""Make ``import robustbench`` work with today's packages, in one place (docs/install.md explains why).

robustbench 1.1.1 imports ``pkg_resources`` (removed from setuptools 82) and a module ``autoattack``,
while its dependency ``pyautoattack`` installs the module ``pyautoattack``. ``import_robustbench()``
installs two small aliases first, then imports it. robustbench and timm import deprecated torch APIs;
their warnings are hidden here so that CLI output stays readable.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types
import warnings
from typing import Any


def _install_pkg_resources_shim() -> None:
    if "pkg_resources" in sys.modules or importlib.util.find_spec("pkg_resources") is not None:
        return
    shim = types.ModuleType("pkg_resources")

    def resource_filename(package: str, resource: str) -> str:
        """The one pkg_resources call robustbench makes: a file path inside an installed package."""
        module = importlib.import_module(package)
        return os.path.join(os.path.dirname(module.__file__ or ""), resource)

    def fixup_namespace_packages(*_: object) -> None:
        """Called by tools that see ``pkg_resources`` loaded (pytest's ``syspath_prepend``); nothing to fix."""

    shim.resource_filename = resource_filename  # type: ignore[attr-defined]
    shim.fixup_namespace_packages = fixup_namespace_packages  # type: ignore[attr-defined]
    sys.modules["pkg_resources"] = shim


def _alias_autoattack() -> None:
    if "autoattack" in sys.modules or importlib.util.find_spec("autoattack") is not None:
        return
    if importlib.util.find_spec("pyautoattack") is None:
        return
    sys.modules["autoattack"] = importlib.import_module("pyautoattack")
    sys.modules["autoattack.state"] = importlib.import_module("pyautoattack.state")


def _quietly_import(name: str) -> Any:
    """Import ``name`` hiding the deprecation warnings its own imports raise under current torch/timm."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (FutureWarning, DeprecationWarning))
        return importlib.import_module(name)


def import_robustbench() -> Any:
    """``import robustbench`` after the shims; returns the module."""
    _install_pkg_resources_shim()
    _alias_autoattack()
    return _quietly_import("robustbench")


def import_timm() -> Any:
    """``import timm`` without the torch.jit deprecation warning it triggers (noise in CLI output)."""
    return _quietly_import("timm")


def import_autoattack() -> Any:
    """The official AutoAttack implementation (PyPI ``pyautoattack``, fra31's code)."""
    try:
        return importlib.import_module("pyautoattack")
    except ImportError:
        return importlib.import_module("autoattack")
