"""Architectures, the normalising wrapper and model-name errors, on tiny inputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from advkit.data import CIFAR10_INFO, DIGITS_INFO, MNIST_INFO, DatasetInfo
from advkit.errors import AdvkitError
from advkit.models import MODELS, NormalizedModel, WideResNet, build_model, parse_wrn

TINY_RGB = DatasetInfo("toy-rgb", 7, (3, 16, 16), (0.1, 0.2, 0.3), (0.5, 0.25, 2.0), 0, False)


@pytest.mark.parametrize(
    ("name", "info", "size"),
    [
        ("resnet18", CIFAR10_INFO, 32),
        ("resnet18", MNIST_INFO, 8),  # one channel, and the smallest input the CIFAR networks accept
        ("preact-resnet18", TINY_RGB, 16),
        ("wrn-10-1", CIFAR10_INFO, 32),
        ("wrn-16-2", MNIST_INFO, 28),
        ("mobilenetv2", TINY_RGB, 32),
        ("small-cnn", DIGITS_INFO, 8),
        ("small-cnn", MNIST_INFO, 28),
        ("small-cnn", TINY_RGB, 32),
    ],
)
def test_architecture_gives_logits_and_input_gradients(name: str, info: DatasetInfo, size: int) -> None:
    torch.manual_seed(0)
    model = build_model(name, info)
    x = torch.rand(2, info.input_shape[0], size, size, requires_grad=True)
    logits = model(x)
    assert logits.shape == (2, info.num_classes) and torch.isfinite(logits).all()
    (grad,) = torch.autograd.grad(logits[:, 0].sum(), x)  # attacks need input gradients
    assert grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        assert model(x[:1]).shape == (1, info.num_classes)


@pytest.mark.parametrize(
    ("name", "parameters"),
    [
        ("resnet18", 11_173_962),  # the CIFAR ResNet-18 every distillation repo uses
        ("mobilenetv2", 2_296_922),
        ("wrn-34-10", 46_160_474),  # TRADES WRN-34-10 without its unused sub_block1
    ],
)
def test_reference_parameter_counts(name: str, parameters: int) -> None:
    model = build_model(name, CIFAR10_INFO)
    assert sum(p.numel() for p in model.parameters()) == parameters


def test_wrn_depth_and_width_are_parsed() -> None:
    assert parse_wrn("wrn-34-10") == (34, 10) and parse_wrn("wrn-70-16") == (70, 16)
    net = build_model("wrn-16-3", CIFAR10_INFO).net
    assert isinstance(net, WideResNet)
    assert [len(stage) for stage in (net.block1, net.block2, net.block3)] == [2, 2, 2]
    assert net.fc.in_features == 64 * 3 and net.block1[0].conv1.out_channels == 16 * 3


def test_normalized_model_normalises_inside() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    model = NormalizedModel(net, TINY_RGB.mean, TINY_RGB.std)
    x = torch.rand(2, 3, 8, 8)
    mean = torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1)
    std = torch.tensor([0.5, 0.25, 2.0]).view(1, 3, 1, 1)
    assert torch.allclose(model(x), net((x - mean) / std))
    assert model.mean.shape == (1, 3, 1, 1) and model.std.shape == (1, 3, 1, 1)
    assert {"mean", "std"} <= set(model.state_dict())  # the stats travel with checkpoints and .to(device)
    assert model.double().mean.dtype == torch.float64


def test_build_model_uses_dataset_stats() -> None:
    model = build_model("small-cnn", MNIST_INFO).eval()
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(model(x), model.net((x - 0.1307) / 0.3081), atol=1e-6)


def test_timm_models_are_built_without_download() -> None:
    model = build_model("timm:resnet10t", DIGITS_INFO)
    assert model(torch.rand(2, 1, 8, 8)).shape == (2, 10)
    with pytest.raises(AdvkitError, match="unknown timm model 'resnet10x'.*did you mean 'timm:resnet10t'"):
        build_model("timm:resnet10x", DIGITS_INFO)


def test_unknown_model_lists_names_and_closest_match() -> None:
    with pytest.raises(AdvkitError) as info:
        build_model("resnet-18", CIFAR10_INFO)
    message = str(info.value)
    assert "did you mean 'resnet18'" in message and "\n" not in message
    assert all(name in message for name in MODELS) and "timm:<name>" in message


@pytest.mark.parametrize(
    ("name", "pattern"),
    [
        ("wrn-33-10", r"depth must be 6n\+4.*28 or 34"),
        ("wrn-4-10", r"depth must be 6n\+4.*10 or 16"),
        ("wrn-34-0", "width must be at least 1"),
        ("wrn-34", "wrn-<depth>-<width>"),
    ],
)
def test_bad_wrn_spec(name: str, pattern: str) -> None:
    with pytest.raises(AdvkitError, match=pattern):
        build_model(name, CIFAR10_INFO)
