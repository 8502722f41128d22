"""Teachers: RobustBench zoo offline from the cache, advkit runs, plain state_dicts, and every refusal."""

import builtins
import random
import re
import socket
from pathlib import Path

import pytest
import torch

from advkit import AdvkitError, TrainConfig, Trainer, safe_load
from advkit.compat import import_robustbench
from advkit.data import CIFAR10_INFO, CIFAR100_INFO, DIGITS_INFO, FASHION_MNIST_INFO, DatasetInfo
from advkit.models import build_model
from advkit.teachers import load_teacher, robustbench_checkpoint_paths

# A small real zoo entry (ResNet-18, 11M parameters) keeps the RobustBench test light.
ZOO_NAME = "Sehwag2021Proxy_R18"


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test: loading must work from files alone."""

    def refuse(*args, **kwargs):
        raise AssertionError("a teacher tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Path:
    """An advkit run directory holding a small digits model (one epoch of clean training)."""
    out = tmp_path_factory.mktemp("teacher") / "run"
    config = TrainConfig(
        dataset="digits",
        model="small-cnn",
        objective="standard",
        epochs=1,
        batch_size=64,
        lr=0.05,
        val_steps=1,
        eps=0.1,
        device="cpu",
    )
    Trainer(config, out, progress=False).fit()
    return out


class Evil:
    """Unpickling this object creates a file: proof that a loader executed code from a checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return builtins.open, (str(self.marker), "w")


def assert_frozen(model: torch.nn.Module) -> None:
    assert not model.training and all(not module.training for module in model.modules())
    assert all(not param.requires_grad for param in model.parameters())


@pytest.fixture(scope="module")
def zoo_cache(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    """A RobustBench cache holding a real zoo architecture with random weights, in the zoo's layout."""
    import_robustbench()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    torch.manual_seed(0)
    zoo_model = model_dicts[BenchmarkDataset("cifar10")][ThreatModel("Linf")][ZOO_NAME]["model"]().eval()
    cache = tmp_path_factory.mktemp("data") / "robustbench"
    (path,) = robustbench_checkpoint_paths(cache, "cifar10", "Linf", ZOO_NAME)
    assert path == cache / "cifar10" / "Linf" / f"{ZOO_NAME}.pt"
    path.parent.mkdir(parents=True)
    torch.save(zoo_model.state_dict(), path)
    return cache, zoo_model


def test_robustbench_teacher_loads_offline_from_the_cache(zoo_cache, no_network):
    cache, zoo_model = zoo_cache
    teacher = load_teacher(f"robustbench:{ZOO_NAME}", CIFAR10_INFO, "cpu", cache_dir=cache)
    assert_frozen(teacher)
    saved = zoo_model.state_dict()
    assert all(torch.equal(value, saved[key]) for key, value in teacher.state_dict().items())
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(teacher(x), zoo_model(x))
    # the default cache is DATA_DIR/robustbench; dataset and threat model may be named explicitly
    qualified = load_teacher(f"robustbench:cifar10/Linf/{ZOO_NAME}", CIFAR10_INFO, "cpu", data_dir=cache.parent)
    assert_frozen(qualified)


def test_robustbench_teacher_must_fit_the_dataset(zoo_cache, no_network):
    cache, _ = zoo_cache
    with pytest.raises(
        AdvkitError, match=f"teacher robustbench:cifar10/{ZOO_NAME} predicts 10 classes, but cifar100 has 100"
    ):
        load_teacher(f"robustbench:cifar10/{ZOO_NAME}", CIFAR100_INFO, "cpu", cache_dir=cache)
    with pytest.raises(AdvkitError, match="cannot take fashion-mnist images of shape \\(1, 28, 28\\)"):
        load_teacher(f"robustbench:cifar10/{ZOO_NAME}", FASHION_MNIST_INFO, "cpu", cache_dir=cache)


def test_missing_robustbench_checkpoint_says_where_to_put_it(tmp_path, no_network):
    with pytest.raises(AdvkitError) as error:
        load_teacher("robustbench:Chen2021LTD_WRN34_20", CIFAR10_INFO, "cpu", cache_dir=tmp_path)
    expected = tmp_path / "cifar10" / "Linf" / "Chen2021LTD_WRN34_20.pt"
    assert f"put its RobustBench checkpoint at {expected}" in str(error.value)
    assert not expected.parent.exists()  # nothing was created or downloaded


@pytest.mark.parametrize(
    "spec, info, message",
    [
        (
            "robustbench:Chen2021LTD_WRN34_2O",
            CIFAR10_INFO,
            "unknown RobustBench model 'Chen2021LTD_WRN34_2O' for cifar10/Linf; did you mean Chen2021LTD_WRN34_20",
        ),
        ("robustbench:Standard", DIGITS_INFO, "RobustBench has no model zoo for dataset 'digits'"),
        ("robustbench:cifar10/L3/Standard", CIFAR10_INFO, "RobustBench has no 'L3' models for cifar10"),
        ("robustbench:a/b/c/d", CIFAR10_INFO, "expected robustbench:NAME"),
    ],
)
def test_robustbench_spec_errors(tmp_path, no_network, spec, info, message):
    with pytest.raises(AdvkitError, match=re.escape(message)):
        load_teacher(spec, info, "cpu", cache_dir=tmp_path)


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, no_network, monkeypatch):
    marker = tmp_path / "executed"
    plain = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(1), "payload": Evil(marker)}, plain)
    with pytest.raises(AdvkitError) as error:
        load_teacher(str(plain), DIGITS_INFO, "cpu", arch="small-cnn")
    assert str(error.value).startswith(
        f"teacher checkpoint {plain} refers to Python object 'io.open', which advkit "
        "will not load (loading it could execute code)"
    )
    assert "weights_only" not in str(error.value)
    # the same file in the RobustBench cache, where robustbench's own torch.load reads it
    cached = cache_file(tmp_path / "cache", plain.read_bytes())
    with pytest.raises(AdvkitError) as error:
        load_teacher(f"robustbench:{ZOO_NAME}", CIFAR10_INFO, "cpu", cache_dir=tmp_path / "cache")
    assert str(error.value).startswith(
        f"robustbench:cifar10/Linf/{ZOO_NAME}: cached checkpoint {cached} refers to "
        "Python object 'io.open', which advkit will not load"
    )
    assert "weights_only" not in str(error.value)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # would turn robustbench's torch.load unsafe
    with pytest.raises(AdvkitError, match="TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD is set"):
        load_teacher(f"robustbench:{ZOO_NAME}", CIFAR10_INFO, "cpu", cache_dir=tmp_path / "cache")
    assert not marker.exists()
    torch.load(plain, weights_only=False)  # the payload is live: an unsafe load does run it
    assert marker.exists()


def cache_file(cache: Path, content: bytes) -> Path:
    """Put ``content`` where RobustBench's load_model reads the zoo entry ZOO_NAME from."""
    (path,) = robustbench_checkpoint_paths(cache, "cifar10", "Linf", ZOO_NAME)
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    return path


@pytest.mark.parametrize("damage", ["random-bytes", "truncated"])
def test_a_damaged_robustbench_checkpoint_is_unreadable_not_refused(zoo_cache, tmp_path, no_network, damage):
    source, _ = zoo_cache
    (real,) = robustbench_checkpoint_paths(source, "cifar10", "Linf", ZOO_NAME)
    content = random.Random(0).randbytes(4096) if damage == "random-bytes" else real.read_bytes()[:100_000]
    cached = cache_file(tmp_path, content)
    with pytest.raises(AdvkitError) as error:
        load_teacher(f"robustbench:{ZOO_NAME}", CIFAR10_INFO, "cpu", cache_dir=tmp_path)
    message = str(error.value)
    assert message.startswith(
        f"robustbench:cifar10/Linf/{ZOO_NAME}: cached checkpoint {cached} is not a readable PyTorch file ("
    )
    assert "refuse" not in message and "will not load" not in message and "weights_only" not in message


def test_advkit_run_directory_and_checkpoint_file(digits_run):
    teacher = load_teacher(str(digits_run), DIGITS_INFO, "cpu")
    assert_frozen(teacher)
    trained = safe_load(digits_run / "best.pt")["model"]
    assert all(torch.equal(value, trained[key]) for key, value in teacher.state_dict().items())
    from_file = load_teacher(str(digits_run / "last.pt"), DIGITS_INFO, "cpu")
    assert all(
        torch.equal(a, b) for a, b in zip(from_file.state_dict().values(), teacher.state_dict().values(), strict=True)
    )


def test_plain_state_dict_with_architecture(tmp_path, digits_run):
    reference = load_teacher(str(digits_run), DIGITS_INFO, "cpu")
    whole, network = tmp_path / "whole.pt", tmp_path / "net.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in reference.state_dict().items()}}, whole)
    torch.save(reference.net.state_dict(), network)
    x = torch.rand(4, 1, 8, 8)
    for path in (whole, network):
        teacher = load_teacher(str(path), DIGITS_INFO, "cpu", arch="small-cnn")
        assert_frozen(teacher)
        assert torch.allclose(teacher(x), reference(x))
    with pytest.raises(AdvkitError, match="plain state_dict: name its architecture with --teacher-arch"):
        load_teacher(str(network), DIGITS_INFO, "cpu")
    with pytest.raises(
        AdvkitError,
        match=r"weights do not fit architecture 'resnet18': missing \d+ keys "
        r"\(conv1\.weight, .*\); unexpected \d+ \(\S+, ",
    ):
        load_teacher(str(network), DIGITS_INFO, "cpu", arch="resnet18")


def test_timm_teacher_with_a_weights_file(tmp_path):
    model = build_model("timm:resnet10t", DIGITS_INFO)
    path = tmp_path / "timm.pt"
    torch.save(model.state_dict(), path)
    teacher = load_teacher(f"timm:resnet10t@{path}", DIGITS_INFO, "cpu")
    assert_frozen(teacher)
    x = torch.rand(2, 1, 8, 8)
    assert torch.allclose(teacher(x), model.eval()(x))


def test_incompatible_or_missing_teachers_are_refused(tmp_path, digits_run):
    five_classes = DatasetInfo("five", 5, (1, 8, 8), (0.3,), (0.4,), 0, False)
    with pytest.raises(
        AdvkitError,
        match="was trained on digits \\(10 classes, inputs \\(1, 8, 8\\)\\), which does not match five \\(5 classes",
    ):
        load_teacher(str(digits_run), five_classes, "cpu")
    state = tmp_path / "ten.pt"
    torch.save(build_model("small-cnn", DIGITS_INFO).state_dict(), state)
    with pytest.raises(
        AdvkitError,
        match=r"weights do not fit architecture 'small-cnn': shape of net\.\S+\.weight is "
        r"\[10, \d+\] in the file but \[5, \d+\] in the model",
    ):
        load_teacher(str(state), five_classes, "cpu", arch="small-cnn")
    with pytest.raises(AdvkitError, match="teacher .*missing.pt not found"):
        load_teacher(str(tmp_path / "missing.pt"), DIGITS_INFO, "cpu")
    with pytest.raises(AdvkitError, match="holds no best.pt or last.pt"):
        load_teacher(str(tmp_path), DIGITS_INFO, "cpu")
    with pytest.raises(AdvkitError, match="timm has no model 'resnet1O'; did you mean"):
        load_teacher("timm:resnet1O", DIGITS_INFO, "cpu")


def test_cli_passes_the_teacher_cache_and_fails_with_exit_status_2(tmp_path, no_network):
    from click.testing import CliRunner

    from advkit.cli import cli

    args = [
        "train",
        "--dataset",
        "digits",
        "--model",
        "small-cnn",
        "--objective",
        "rslad",
        "--out",
        str(tmp_path / "r"),
        "--teacher",
        f"robustbench:cifar10/{ZOO_NAME}",
        "--teacher-cache",
        str(tmp_path / "zoo"),
    ]
    result = CliRunner().invoke(cli, args)
    expected = tmp_path / "zoo" / "cifar10" / "Linf" / f"{ZOO_NAME}.pt"
    assert f"put its RobustBench checkpoint at {expected}" in str(result.exception)
    assert isinstance(result.exception, AdvkitError)  # advkit.cli.main turns it into one line and exit status 2
