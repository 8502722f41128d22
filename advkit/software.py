"""What software produced a run or an evaluation: recorded in config.yaml and in eval JSON, for reproducing it.

A record, not a setting: config files may carry it, and loading them ignores it.
"""

from __future__ import annotations

import importlib.metadata as metadata
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

RECORD_KEY = "software"
LIBRARIES = ("torch", "torchvision", "torchattacks", "pyautoattack", "robustbench", "timm", "numpy")


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def git_commit(folder: Path) -> str | None:
    """The commit of the git checkout holding ``folder`` (``+dirty`` with uncommitted changes), if any."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}+dirty" if dirty else commit or None


def software_versions(device: Any = None) -> dict[str, Any]:
    """Python, the libraries advkit builds on, advkit and every installed plugin distribution, the git
    commit of advkit's source (when it is a checkout), and the device."""
    import torch

    from .registry import default_registry

    plugins = sorted(
        {
            (entry.distribution, entry.version)
            for entry in default_registry().entries()
            if entry.distribution not in ("advkit", "torchattacks") and entry.component is None
        }
    )
    record: dict[str, Any] = {
        "python": sys.version.split()[0],
        "advkit": _version("advkit"),
        "advkit_git_commit": git_commit(Path(__file__).resolve().parent),
        **{name: _version(name) for name in LIBRARIES},
        "plugins": {name: version for name, version in plugins},
        "torch_cuda": torch.version.cuda,  # the CUDA toolkit torch was built with (None: a CPU-only build)
    }
    on_gpu = device is not None and getattr(device, "type", "") == "cuda"
    record["device"] = torch.cuda.get_device_name(device) if on_gpu else f"cpu ({platform.machine()})"
    return record
