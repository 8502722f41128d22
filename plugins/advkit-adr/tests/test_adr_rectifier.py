"""ADR's rectified labels and schedules on tiny tensors (no dataset, no trainer)."""

from __future__ import annotations

import math
from itertools import pairwise

import pytest
import torch
from advkit_adr import ADR, PRESETS, rectified_labels
from torch import nn

from advkit import OptionError, Progress, RunSetup, StepContext, WeightAverage


def _logits_for(probs: list[list[float]], temperature: float) -> torch.Tensor:
    """Logits whose softmax at this temperature is exactly ``probs``."""
    return temperature * torch.tensor(probs).log()


def _setup(
    rectifier: ADR, model: nn.Module, dataset: str = "digits", epochs: int = 2, per_epoch: int = 5
) -> dict[float, WeightAverage]:
    averages: dict[float, WeightAverage] = {}

    def weight_average(decay: float) -> WeightAverage:
        return averages.setdefault(decay, WeightAverage(model, decay))

    rectifier.setup(
        RunSetup(
            model=model,
            num_classes=3,
            device=torch.device("cpu"),
            epochs=epochs,
            iterations_per_epoch=per_epoch,
            teacher=None,
            weight_average=weight_average,
            dataset=dataset,
        )
    )
    return averages


def test_rectified_labels_match_hand_derived_values() -> None:
    # p = (0.5, 0.25, 0.25) at τ = 2. Label 0: the teacher agrees, λ_i = λ = 0.7.
    # Label 1: gap p_max − p_y = 0.25, λ_i = 0.45, ỹ = 0.45·p + 0.55·e_1.
    logits = _logits_for([[0.5, 0.25, 0.25], [0.5, 0.25, 0.25]], 2.0)
    targets = rectified_labels(logits, torch.tensor([0, 1]), temperature=2.0, interpolation=0.7)
    expected = torch.tensor([[0.65, 0.175, 0.175], [0.225, 0.6625, 0.1125]])
    assert torch.allclose(targets, expected, atol=1e-6)


def test_temperature_softens_only_the_teacher() -> None:
    logits = torch.tensor([[2.0, 0.0, 0.0]])
    sharp = rectified_labels(logits, torch.tensor([0]), temperature=1.0, interpolation=1.0)
    soft = rectified_labels(logits, torch.tensor([0]), temperature=4.0, interpolation=1.0)
    assert torch.allclose(sharp, torch.softmax(logits, dim=1))  # λ_i = 1: ỹ is the tempered teacher
    assert torch.allclose(soft, torch.softmax(logits / 4.0, dim=1))
    assert soft[0, 0] < sharp[0, 0]


def test_interpolation_weight_is_clipped_at_both_ends() -> None:
    probs = [[0.1, 0.8, 0.1]]
    label = torch.tensor([0])
    # Lower end: λ − gap = 0.3 − 0.7 < 0 → λ_i = 0 → the plain one-hot label.
    low = rectified_labels(_logits_for(probs, 1.0), label, temperature=1.0, interpolation=0.3)
    assert torch.equal(low, torch.tensor([[1.0, 0.0, 0.0]]))
    # Upper end: λ − gap = 1.5 − 0 > 1 → λ_i = 1 → the teacher distribution itself (no negative one-hot mass).
    agree = [[0.6, 0.3, 0.1]]
    high = rectified_labels(_logits_for(agree, 1.0), label, temperature=1.0, interpolation=1.5)
    assert torch.allclose(high, torch.tensor(agree), atol=1e-6)
    assert (high >= 0).all()


@pytest.mark.parametrize("seed", range(5))
def test_targets_are_distributions_where_the_true_class_is_largest(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    logits = 6.0 * torch.randn(256, 10, generator=generator)
    labels = torch.randint(0, 10, (256,), generator=generator)
    temperature = 0.5 + 3.0 * torch.rand((), generator=generator).item()
    interpolation = torch.rand((), generator=generator).item()
    targets = rectified_labels(logits, labels, temperature, interpolation)
    assert (targets >= 0).all()
    assert torch.allclose(targets.sum(dim=1), torch.ones(256), atol=1e-5)
    true_class = targets.gather(1, labels[:, None]).squeeze(1)
    assert (true_class >= targets.amax(dim=1) - 1e-6).all()


def test_schedules_hit_their_endpoints_and_are_monotone_per_iteration() -> None:
    rectifier = ADR(preset="cifar10")
    epochs, per_epoch = 3, 7
    total = epochs * per_epoch
    values = [rectifier.schedule(Progress(t // per_epoch, t, total, per_epoch)) for t in range(total + 1)]
    temperatures, interpolations = zip(*values, strict=True)
    assert temperatures[0] == 2.5 and interpolations[0] == 0.7
    assert math.isclose(temperatures[-1], 2.0) and math.isclose(interpolations[-1], 0.95)
    assert all(a > b for a, b in pairwise(temperatures))  # strictly: it moves every iteration
    assert all(a < b for a, b in pairwise(interpolations))
    # cosine, not linear: half-way is the mid-point, a quarter of the way is less than a quarter of the change
    assert math.isclose(rectifier.schedule(Progress(0, total // 2, total, per_epoch))[0], 2.25, rel_tol=0.02)
    quarter = rectifier.schedule(Progress(0, 1, 4, 1))[1]
    assert 0.7 < quarter < 0.7 + 0.25 * 0.25


@pytest.mark.parametrize(
    ("dataset", "preset"),
    [("cifar10", "cifar10"), ("cifar100", "cifar100"), ("tiny-imagenet", "tiny-imagenet"), ("digits", "cifar10")],
)
def test_auto_preset_follows_the_dataset(tiny_net: nn.Module, dataset: str, preset: str) -> None:
    rectifier = ADR()
    _setup(rectifier, tiny_net, dataset=dataset)
    assert str(rectifier.temperature) == PRESETS[preset]["temperature"]
    assert str(rectifier.interpolation) == PRESETS[preset]["interpolation"]
    assert rectifier.resolved_options()["temperature"] == PRESETS[preset]["temperature"]


def test_explicit_options_override_the_preset(tiny_net: nn.Module) -> None:
    rectifier = ADR(preset="tiny-imagenet", temperature="3:1.5")
    _setup(rectifier, tiny_net, dataset="cifar10")
    assert str(rectifier.temperature) == "3:1.5"
    assert str(rectifier.interpolation) == PRESETS["tiny-imagenet"]["interpolation"]


def test_teacher_is_the_shared_weight_average_in_eval_mode(
    tiny_net: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    rectifier = ADR(decay=0.9)
    averages = _setup(rectifier, tiny_net)
    assert rectifier.average is averages[0.9]
    x, y = batch
    ctx = StepContext(model=tiny_net, x=x, y=y, num_classes=3, progress=Progress(0, 0, 10, 5))
    targets = rectifier.targets(ctx)
    with torch.no_grad():
        expected = rectified_labels(averages[0.9].model(x), y, 2.5, 0.7)
    assert torch.allclose(targets, expected)
    assert not averages[0.9].model.training
    assert rectifier.attack_targets(ctx, targets) is targets
    hard = ADR(in_attack=False).attack_targets(ctx, targets)
    assert torch.equal(hard, torch.nn.functional.one_hot(y, 3).float())


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"interpolation": "0.7:1.2"}, r"'interpolation' must lie in \[0, 1\]"),
        ({"interpolation": "-0.1:0.9"}, r"'interpolation' must lie in \[0, 1\]"),
        ({"temperature": "2.5:0"}, r"'temperature' must lie in \(0, inf\]"),
        ({"temperature": "-1"}, r"'temperature' must lie in \(0, inf\]"),
        ({"decay": 1.0}, r"'decay' must lie in \(0, 1\)"),
        ({"decay": 0}, r"'decay' must lie in \(0, 1\)"),
        ({"preset": "imagenet"}, r"'preset' must be one of auto, cifar10, cifar100, tiny-imagenet"),
    ],
)
def test_invalid_options_name_the_rectifier_and_the_valid_range(values: dict, message: str) -> None:
    with pytest.raises(OptionError, match=message) as error:
        ADR(**values)
    assert "rectifier 'adr'" in str(error.value)


def test_annealed_schedules_tie_adr_to_the_length_of_training():
    """Extending a run would stretch τ and λ over the steps already trained: the trainer refuses it."""
    assert ADR(preset="cifar10").length_dependent_options() == ["temperature", "interpolation"]
    assert ADR(temperature="2", interpolation="0.9").length_dependent_options() == []
