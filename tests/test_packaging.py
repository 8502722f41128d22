"""The installed environment: robustbench importable through the shim, and the real copy of it."""

import base64
import hashlib
import importlib.metadata as metadata
from pathlib import Path

from advkit.compat import import_autoattack, import_robustbench


def test_robustbench_imports_through_the_shim():
    robustbench = import_robustbench()
    from robustbench.utils import load_model  # the function advkit's teachers use

    assert callable(load_model)
    assert hasattr(robustbench, "benchmark")  # torchattacks' bundled copy lacks it


def test_installed_robustbench_files_are_robustbench_own():
    """torchattacks' wheel bundles an old robustbench; the installed files must match robustbench's RECORD."""
    import_robustbench()
    dist = metadata.distribution("robustbench")
    assert dist.version == "1.1.1"
    checked = 0
    for record in dist.files or []:
        if record.hash is None or not str(record).startswith("robustbench/") or not str(record).endswith(".py"):
            continue
        data = Path(record.locate()).read_bytes()
        digest = hashlib.new(record.hash.mode, data).digest()
        assert base64.urlsafe_b64encode(digest).rstrip(b"=").decode() == record.hash.value, str(record)
        checked += 1
    assert checked > 10


def test_official_autoattack_is_importable():
    autoattack = import_autoattack()
    assert autoattack.__name__ in ("pyautoattack", "autoattack")
    assert hasattr(autoattack, "AutoAttack")


def test_requests_is_not_the_torchattacks_pin():
    major, minor = (int(part) for part in metadata.version("requests").split(".")[:2])
    assert (major, minor) >= (2, 31)


def test_shimmed_pkg_resources_keeps_pytest_syspath_prepend_working(monkeypatch, tmp_path):
    """Once the shim is in sys.modules, tools that see pkg_resources call fixup_namespace_packages on it."""
    import sys

    import_robustbench()
    (tmp_path / "advkit_probe_module.py").write_text("VALUE = 7\n")
    monkeypatch.syspath_prepend(str(tmp_path))  # calls pkg_resources.fixup_namespace_packages when loaded
    assert "pkg_resources" in sys.modules
    import advkit_probe_module

    assert advkit_probe_module.VALUE == 7
    sys.modules.pop("advkit_probe_module")
