"""Make robustbench and timm work with today's packages, in one place (docs/install.md explains why).

robustbench 1.1.1 imports ``pkg_resources`` (removed from setuptools 82) and a module ``autoattack``,
while its dependency ``pyautoattack`` installs the module ``pyautoattack``. ``import_robustbench()``
installs two small aliases first, checks that robustbench's files are its own (torchattacks' wheel
carries an old copy that can overwrite them), then imports it. timm 1.0.9 silently switches its
Hugging Face support off under huggingface_hub 1.0 or newer; ``timm_hub_problem()`` says so. robustbench
and timm import deprecated torch APIs; their warnings are hidden here so that CLI output stays readable.
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import importlib.metadata as metadata
import importlib.util
import os
import sys
import types
import warnings
from pathlib import Path
from typing import Any

from .errors import AdvkitError

ROBUSTBENCH_REPAIR = "pip install --no-deps --force-reinstall robustbench==1.1.1"


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


def altered_files(distribution: metadata.Distribution, package: str) -> list[str]:
    """The ``.py`` files of ``package`` whose content no longer matches ``distribution``'s RECORD."""
    altered = []
    for record in distribution.files or []:
        if record.hash is None or not str(record).startswith(f"{package}/") or not str(record).endswith(".py"):
            continue
        path = Path(str(record.locate()))
        data = path.read_bytes() if path.is_file() else b""
        digest = base64.urlsafe_b64encode(hashlib.new(record.hash.mode, data).digest()).rstrip(b"=").decode()
        if digest != record.hash.value:
            altered.append(str(record))
    return altered


def import_robustbench() -> Any:
    """``import robustbench`` after the shims and the file check; returns the module."""
    try:
        distribution = metadata.distribution("robustbench")
    except metadata.PackageNotFoundError:
        raise AdvkitError("robustbench is not installed: pip install 'advkit[robustbench]'") from None
    altered = altered_files(distribution, "robustbench")
    if altered:
        raise AdvkitError(
            f"robustbench {distribution.version}'s files were replaced by the old copy inside the "
            f"torchattacks wheel ({len(altered)} files, e.g. {altered[0]}); repair: {ROBUSTBENCH_REPAIR}"
        )
    _install_pkg_resources_shim()
    _alias_autoattack()
    return _quietly_import("robustbench")


def import_timm() -> Any:
    """``import timm`` without the torch.jit deprecation warning it triggers (noise in CLI output)."""
    try:
        return _quietly_import("timm")
    except ModuleNotFoundError as exc:
        if exc.name != "timm":
            raise
        raise AdvkitError("timm is not installed: pip install 'advkit[timm]'") from None


def timm_hub_problem() -> str | None:
    """Why timm cannot reach the Hugging Face hub here, or None when it can.

    timm catches the ImportError of its hub module and sets a flag, so a hub download later fails with
    "package not installed" even when huggingface_hub is installed but of a version timm cannot use.
    """
    timm = import_timm()
    hub = importlib.import_module("timm.models._hub")
    if getattr(hub, "_has_hf_hub", True):
        return None
    try:
        installed = (
            f"huggingface_hub {metadata.version('huggingface_hub')} is installed but timm {timm.__version__} "
            "cannot use it"
        )
    except metadata.PackageNotFoundError:
        installed = "huggingface_hub is not installed"
    return f"{installed}: pip install 'huggingface_hub>=0.23,<1.0' (advkit[timm] pins it)"


def import_autoattack() -> Any:
    """The official AutoAttack implementation (PyPI ``pyautoattack``, fra31's code)."""
    try:
        return importlib.import_module("pyautoattack")
    except ImportError:
        return importlib.import_module("autoattack")
