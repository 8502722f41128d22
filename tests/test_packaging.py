"""The installed environment: a clean dependency set, robustbench through the shim and its own files, timm's hub."""

import base64
import hashlib
import importlib.metadata as metadata
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement

import advkit
from advkit import compat
from advkit.compat import altered_files, import_autoattack, import_robustbench
from advkit.errors import AdvkitError

REPO = Path(__file__).resolve().parents[1]


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


def test_pip_check_finds_no_conflict():
    result = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_version_lives_in_one_place_and_every_plugin_accepts_it():
    assert metadata.version("advkit") == advkit.__version__
    plugins = sorted(
        {
            entry.dist.name
            for group in ("advkit.rectifiers", "advkit.attacks", "advkit.objectives")
            for entry in metadata.entry_points(group=group)
            if entry.dist.name != "advkit"
        }
    )
    assert len(plugins) >= 7
    for plugin in plugins:
        requirement = next(
            Requirement(line) for line in metadata.requires(plugin) or [] if Requirement(line).name == "advkit"
        )
        assert requirement.specifier, f"{plugin} depends on an unversioned advkit"
        assert advkit.__version__ in requirement.specifier, f"{plugin} requires {requirement}"
    assert "version = attr: advkit.__version__" in (REPO / "setup.cfg").read_text()


def _fake_distribution(root: Path, files: dict[str, bytes], record: dict[str, bytes]) -> metadata.Distribution:
    """A distribution whose RECORD hashes ``record`` while the disk holds ``files``."""
    info = root / "fake-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake\nVersion: 1.0\n")
    lines = []
    for name, data in record.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        lines.append(f"{name},sha256={digest},{len(data)}")
    (info / "RECORD").write_text("\n".join(lines) + "\n")
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return metadata.PathDistribution(info)


def test_altered_files_names_the_overwritten_and_the_deleted(tmp_path):
    own = {"fake/__init__.py": b"VERSION = 2\n", "fake/utils.py": b"def f(): pass\n", "fake/eval.py": b"x = 1\n"}
    on_disk = {"fake/__init__.py": b"VERSION = 1  # an older copy\n", "fake/utils.py": own["fake/utils.py"]}
    distribution = _fake_distribution(tmp_path, on_disk, own)
    assert sorted(altered_files(distribution, "fake")) == ["fake/__init__.py", "fake/eval.py"]
    assert altered_files(distribution, "other") == []


def test_robustbench_overwritten_by_torchattacks_copy_stops_with_the_repair(tmp_path, monkeypatch):
    own = {"robustbench/__init__.py": b"from .eval import benchmark\n"}
    distribution = _fake_distribution(tmp_path, {"robustbench/__init__.py": b"# from .eval import benchmark\n"}, own)
    monkeypatch.setattr(compat.metadata, "distribution", lambda name: distribution)
    with pytest.raises(
        AdvkitError,
        match=r"replaced by the old copy inside the torchattacks wheel \(1 files, e\.g\. "
        r"robustbench/__init__\.py\); repair: pip install --no-deps --force-reinstall "
        r"robustbench==1\.1\.1",
    ):
        import_robustbench()


def test_timm_reaches_the_hub_with_the_installed_huggingface_hub():
    assert compat.timm_hub_problem() is None


def test_timm_pretrained_teacher_loads_from_a_local_hugging_face_cache(tmp_path, monkeypatch):
    """``timm:NAME`` goes through timm's own hub loader; offline, it reads the weights from the HF cache."""
    from safetensors.torch import save_file

    from advkit.data import DatasetInfo
    from advkit.teachers import load_teacher

    timm = compat.import_timm()
    reference = timm.create_model("resnet10t")
    repository = "models--" + reference.pretrained_cfg["hf_hub_id"].replace("/", "--")
    snapshot = tmp_path / repository / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    save_file(
        {key: value.contiguous() for key, value in reference.state_dict().items()}, snapshot / "model.safetensors"
    )
    (tmp_path / repository / "refs").mkdir()
    (tmp_path / repository / "refs" / "main").write_text(snapshot.name)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)

    imagenet_like = DatasetInfo("imagenet-like", 1000, (3, 32, 32), (0.5,) * 3, (0.25,) * 3, 0, False)
    teacher = load_teacher("timm:resnet10t", imagenet_like, "cpu")
    x = torch.rand(2, 3, 32, 32)
    mean = torch.tensor(reference.pretrained_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(reference.pretrained_cfg["std"]).view(1, 3, 1, 1)
    assert torch.allclose(teacher(x), reference.eval()((x - mean) / std), atol=1e-5)


def test_timm_without_hub_support_says_why_and_what_to_do(monkeypatch):
    from advkit.data import DatasetInfo
    from advkit.teachers import load_teacher

    compat.import_timm()
    monkeypatch.setattr("timm.models._hub._has_hf_hub", False)
    imagenet_like = DatasetInfo("imagenet-like", 1000, (3, 32, 32), (0.5,) * 3, (0.25,) * 3, 0, False)
    with pytest.raises(
        AdvkitError,
        match=r"huggingface_hub \S+ is installed but timm \S+ cannot use it: "
        r"pip install 'huggingface_hub>=0\.23,<1\.0'.*timm:resnet10t@FILE",
    ):
        load_teacher("timm:resnet10t", imagenet_like, "cpu")


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
