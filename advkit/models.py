"""Network architectures and the wrapper that puts input normalisation inside the model.

Every model takes images in [0, 1] (RobustBench convention), so attacks, teachers and evaluation all work in
pixel space. The CIFAR-style networks use a 3×3 stem without max-pooling and adaptive average pooling, so
they accept any input of at least 8×8 (CIFAR 32×32, Tiny-ImageNet 64×64, MNIST 28×28).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence

import torch
from torch import nn

from .data import DatasetInfo
from .errors import AdvkitError

MODELS: tuple[str, ...] = (
    "resnet18",
    "preact-resnet18",
    "wrn-28-10",
    "wrn-34-10",
    "wrn-34-20",
    "wrn-70-16",
    "mobilenetv2",
    "small-cnn",
    "small-cnn-gn",
    "cnn3",
    "cnn3-wide",
)


class NormalizedModel(nn.Module):
    """Wraps a network so it takes inputs in [0, 1]: normalisation lives inside the model (RobustBench convention).

    ``mean`` and ``std`` are buffers shaped 1×C×1×1, so they travel with ``.to(device)`` and the state dict.
    """

    net: nn.Module
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std) or not len(mean):
            raise ValueError(f"mean and std need one value per channel, got {len(mean)} and {len(std)}")
        self.net = net
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


def _init_weights(net: nn.Module) -> None:
    """He init for convolutions, unit BatchNorm, zero biases: the usual CIFAR-ResNet initialisation."""
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.zeros_(module.bias)


# --- ResNet-18 (CIFAR variant) -------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """Post-activation residual block: conv-BN-ReLU-conv-BN plus a (projected) shortcut, then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class PreActBlock(nn.Module):
    """Pre-activation residual block (He et al. 2016) of PreActResNet and WideResNet; the projection shortcut
    reads the activated input."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(x))
        skip = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(torch.relu(self.bn2(out)))
        return out + skip


class ResNet(nn.Module):
    """CIFAR ResNet: 3×3 stem, no max-pool, four stages (64..512 channels), adaptive average pool, linear."""

    def __init__(
        self, block: type[BasicBlock] | type[PreActBlock], blocks: Sequence[int], in_channels: int, num_classes: int
    ) -> None:
        super().__init__()
        self.preact = block is PreActBlock
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        self.bn1 = None if self.preact else nn.BatchNorm2d(64)
        in_planes = 64
        stages = []
        for i, (planes, count) in enumerate(zip((64, 128, 256, 512), blocks, strict=True)):
            layers = []
            for j in range(count):
                layers.append(block(in_planes, planes, 2 if i > 0 and j == 0 else 1))
                in_planes = planes
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn = nn.BatchNorm2d(512) if self.preact else None
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(512, num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        if self.bn1 is not None:
            out = torch.relu(self.bn1(out))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        if self.bn is not None:
            out = torch.relu(self.bn(out))
        return self.linear(self.pool(out).flatten(1))


# --- WideResNet (TRADES / RobustBench style, pre-activation) -------------------------------------------------


class WideResNet(nn.Module):
    """WRN-depth-width: 16-channel stem, three stages of (depth-4)/6 blocks at 16k/32k/64k channels."""

    def __init__(self, depth: int, width: int, in_channels: int, num_classes: int) -> None:
        super().__init__()
        n = (depth - 4) // 6
        channels = (16, 16 * width, 32 * width, 64 * width)
        self.conv1 = nn.Conv2d(in_channels, channels[0], 3, 1, 1, bias=False)
        stages = []
        for i, stride in enumerate((1, 2, 2)):
            blocks = [
                PreActBlock(channels[i] if j == 0 else channels[i + 1], channels[i + 1], stride if j == 0 else 1)
                for j in range(n)
            ]
            stages.append(nn.Sequential(*blocks))
        self.block1, self.block2, self.block3 = stages
        self.bn = nn.BatchNorm2d(channels[3])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels[3], num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        return self.fc(self.pool(torch.relu(self.bn(out))).flatten(1))


# --- MobileNetV2 (CIFAR variant) -----------------------------------------------------------------------------


class InvertedResidual(nn.Module):
    """Expand (1×1) - depthwise (3×3) - project (1×1); a residual connection at stride 1."""

    def __init__(self, in_planes: int, planes: int, expansion: int, stride: int) -> None:
        super().__init__()
        hidden = expansion * in_planes
        self.body = nn.Sequential(
            nn.Conv2d(in_planes, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, planes, 1, bias=False),
            nn.BatchNorm2d(planes),
        )
        self.stride = stride
        self.shortcut = nn.Sequential()
        if stride == 1 and in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return out + self.shortcut(x) if self.stride == 1 else out


class MobileNetV2(nn.Module):
    """MobileNetV2 for small images: stride-1 stem and first two stages, so 32×32 ends at 4×4."""

    # (expansion, out channels, blocks, first stride)
    CONFIG = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True)
        )
        layers, in_planes = [], 32
        for expansion, planes, count, stride in self.CONFIG:
            for j in range(count):
                layers.append(InvertedResidual(in_planes, planes, expansion, stride if j == 0 else 1))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Conv2d(320, 1280, 1, bias=False),
            nn.BatchNorm2d(1280),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.linear = nn.Linear(1280, num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.head(self.layers(self.stem(x))))


# --- small CNN for MNIST-sized and 8×8 inputs ----------------------------------------------------------------


class SmallCNN(nn.Module):
    """Two 3×3 conv layers (32, 64 channels, the second at stride 2) with BatchNorm, 2×2 adaptive pool, linear.

    Cheap enough that a few epochs of adversarial training on 8×8 digits take seconds on a CPU.
    ``group_norm`` swaps BatchNorm for GroupNorm (8 groups), whose output does not depend on the rest of
    the batch: ``small-cnn-gn``, for which a data-parallel run equals a single-process one.
    """

    def __init__(self, in_channels: int, num_classes: int, group_norm: bool = False) -> None:
        super().__init__()

        def norm(channels: int) -> nn.Module:
            return nn.GroupNorm(8, channels) if group_norm else nn.BatchNorm2d(channels)

        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, 1, 1, bias=False),
            norm(32),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, 3, 2, 1, bias=False),
            norm(64),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
        )
        self.linear = nn.Linear(64 * 4, num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.features(x))


class ThreeConvCNN(nn.Module):
    """Three 3×3 convs (32, 64, 64 channels; the last two at stride 2) with BatchNorm, then 3136→128→10.

    The reproduction study's model (docs/results.md): unlike ``small-cnn`` it has the capacity to overfit
    adversarially on a 10k Fashion-MNIST subset, which is the setting ADR's rectified targets address.
    ``width`` multiplies every channel and hidden count (``cnn3-wide`` is ×2, the study's teacher). A 7×7
    adaptive pool keeps the 3136 features at 28×28 and lets other input sizes through.
    """

    def __init__(self, in_channels: int, num_classes: int, width: int = 1) -> None:
        super().__init__()
        c1, c2, hidden = 32 * width, 64 * width, 128 * width
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 3, 1, 1, bias=False),
            nn.BatchNorm2d(c1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c1, c2, 3, 2, 1, bias=False),
            nn.BatchNorm2d(c2),
            nn.ReLU(inplace=True),
            nn.Conv2d(c2, c2, 3, 2, 1, bias=False),
            nn.BatchNorm2d(c2),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(7),
            nn.Flatten(),
        )
        self.classifier = nn.Sequential(
            nn.Linear(c2 * 49, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes)
        )
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


# --- construction by name ------------------------------------------------------------------------------------

WRN_PATTERN = re.compile(r"wrn-(\d+)-(\d+)")


def parse_wrn(name: str) -> tuple[int, int]:
    """(depth, width) of a ``wrn-<depth>-<width>`` name; depth must be 6n+4 (10, 16, 22, 28, 34, 40, ..., 70)."""
    match = WRN_PATTERN.fullmatch(name)
    if match is None:
        raise AdvkitError(f"model '{name}' is not of the form wrn-<depth>-<width>, e.g. wrn-34-10")
    depth, width = int(match.group(1)), int(match.group(2))
    if depth < 10 or (depth - 4) % 6:
        lower = max(10, depth - (depth - 4) % 6)
        raise AdvkitError(
            f"model '{name}': WideResNet depth must be 6n+4 with n >= 1 (e.g. {lower} or {lower + 6}), got {depth}"
        )
    if width < 1:
        raise AdvkitError(f"model '{name}': WideResNet width must be at least 1, got {width}")
    return depth, width


def _build_timm(name: str, in_channels: int, num_classes: int) -> nn.Module:
    """A timm architecture with random weights (``pretrained=False``: nothing is downloaded)."""
    from .compat import import_timm

    timm = import_timm()

    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=1)
        hint = f" (did you mean 'timm:{close[0]}'?)" if close else ""
        raise AdvkitError(f"unknown timm model '{name}'{hint}; see timm.list_models() for valid names")
    return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_channels)


def build_model(name: str, info: DatasetInfo) -> NormalizedModel:
    """Build architecture ``name`` for ``info``'s input channels and classes, wrapped with its normalisation.

    Names: those in :data:`MODELS`, any ``wrn-<depth>-<width>``, or ``timm:<name>``.
    """
    in_channels, num_classes = info.input_shape[0], info.num_classes
    key = name.strip()
    if key.startswith("timm:"):
        net = _build_timm(key[len("timm:") :], in_channels, num_classes)
    else:
        key = key.lower()
        if key == "resnet18":
            net = ResNet(BasicBlock, (2, 2, 2, 2), in_channels, num_classes)
        elif key == "preact-resnet18":
            net = ResNet(PreActBlock, (2, 2, 2, 2), in_channels, num_classes)
        elif key.startswith("wrn-"):
            net = WideResNet(*parse_wrn(key), in_channels, num_classes)
        elif key == "mobilenetv2":
            net = MobileNetV2(in_channels, num_classes)
        elif key in ("small-cnn", "small-cnn-gn"):
            net = SmallCNN(in_channels, num_classes, group_norm=key == "small-cnn-gn")
        elif key in ("cnn3", "cnn3-wide"):
            net = ThreeConvCNN(in_channels, num_classes, width=2 if key == "cnn3-wide" else 1)
        else:
            close = difflib.get_close_matches(key, MODELS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise AdvkitError(
                f"unknown model '{name}'{hint}; choose one of: {', '.join(MODELS)}, wrn-<depth>-<width>, or timm:<name>"
            )
    return NormalizedModel(net, info.mean, info.std)
