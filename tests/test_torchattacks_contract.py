"""advkit attacks keep torchattacks' Attack contract, with torchattacks.PGD / FGSM as the reference.

Each item of the contract (normalisation, the model's mode, targeted modes, standalone defaults) is
checked by running the advkit attack and its torchattacks counterpart from the same seed.
"""

from __future__ import annotations

import pytest
import torch
import torchattacks
from torch import nn

from advkit import TrainConfig
from advkit.builtin.attacks import FGSM, PGD, NoAttack, TradesKL
from advkit.config import select_components
from advkit.registry import default_registry

MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)


def network() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Dropout(0.3),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 5),
    )


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.rand(8, 3, 4, 4, generator=generator), torch.randint(0, 5, (8,), generator=generator)


def pair(model: nn.Module, **settings) -> tuple[PGD, torchattacks.PGD]:
    ours = PGD(model, eps=0.1, alpha=0.02, steps=4, start="uniform", bn_mode="eval")
    reference = torchattacks.PGD(model, eps=0.1, alpha=0.02, steps=4, random_start=True)
    return ours, reference


def run_both(ours, reference, x, y) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(5)
    mine = ours(x, y)
    torch.manual_seed(5)
    theirs = reference(x, y)
    return mine, theirs


def test_plain_call_matches_torchattacks_pgd_in_eval_mode_by_default():
    model = network().eval()
    x, y = batch()
    ours = PGD(model, eps=0.1, alpha=0.02, steps=4)  # standalone: eval mode unless told otherwise
    assert ours.bn_mode == "eval"
    running = model[1].running_mean.clone()
    mine, theirs = run_both(ours, torchattacks.PGD(model, eps=0.1, alpha=0.02, steps=4, random_start=True), x, y)
    assert torch.allclose(mine, theirs, atol=1e-6)
    assert torch.equal(model[1].running_mean, running)  # BatchNorm statistics untouched by the attack


def test_set_normalization_used_works_in_pixel_space_like_torchattacks():
    model = network().eval()
    x, y = batch()
    normalise = lambda t: (t - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)  # noqa: E731
    ours, reference = pair(model)
    for attack in (ours, reference):
        attack.set_normalization_used(MEAN, STD)
    mine, theirs = run_both(ours, reference, normalise(x), y)
    assert torch.allclose(mine, theirs, atol=1e-5)
    pixels = mine * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)
    assert (pixels - x).abs().max() <= 0.1 + 1e-5 and pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6


def test_set_model_training_mode_decides_the_modes_during_the_attack():
    x, y = batch()
    seen = []

    def record(module, inputs):
        seen.append((type(module).__name__, module.training))

    model = network().eval()
    for layer in (model[1], model[3]):
        layer.register_forward_pre_hook(record)
    ours, reference = pair(model)
    for attack in (ours, reference):
        attack.set_model_training_mode(model_training=True, batchnorm_training=False, dropout_training=True)
    run_both(ours, reference, x, y)
    half = len(seen) // 2
    assert seen[:half] == seen[half:] and ("Dropout", True) in seen and ("BatchNorm2d", False) in seen
    model.eval()  # torchattacks itself leaves an eval model in train mode here; advkit restores every flag
    ours(x, y)
    assert not any(module.training for module in model.modules())


@pytest.mark.parametrize("mode", ["by_label", "least_likely", "random", "by_function"])
def test_targeted_modes_match_torchattacks(mode):
    model = network().eval()
    x, y = batch()
    ours, reference = pair(model)
    for attack in (ours, reference):
        if mode == "by_function":
            attack.set_mode_targeted_by_function(lambda images, labels: (labels + 1) % 5, quiet=True)
        else:
            getattr(attack, f"set_mode_targeted_{mode}")(quiet=True)
    mine, theirs = run_both(ours, reference, x, y)
    assert torch.allclose(mine, theirs, atol=1e-6)


def test_targeted_fgsm_matches_torchattacks():
    model = network().eval()
    x, y = batch()
    ours, reference = FGSM(model, eps=0.05), torchattacks.FGSM(model, eps=0.05)
    for attack in (ours, reference):
        attack.set_mode_targeted_by_label(quiet=True)
    target = (y + 2) % 5
    assert torch.allclose(ours(x, target), reference(x, target), atol=1e-6)


def test_attacks_without_a_target_refuse_targeted_modes_clearly():
    model = network()
    for attack in (TradesKL(model), NoAttack(model)):
        with pytest.raises(ValueError, match="has no targeted mode"):
            attack.set_mode_targeted_by_label(quiet=True)
    soft = PGD(model)
    soft.set_mode_targeted_by_label(quiet=True)
    with pytest.raises(ValueError, match="needs hard labels"):
        soft(batch()[0], torch.full((8, 5), 0.2))


def test_training_keeps_the_official_train_mode_where_the_official_code_uses_it():
    def attack_options(**settings):
        config = TrainConfig(dataset="digits", **settings)
        config.validate()
        return select_components(config, default_registry()).options["attack"]

    assert attack_options(objective="at")["bn_mode"] == "train"  # ADR's PGD-AT
    assert attack_options(objective="trades")["bn_mode"] == "eval"  # official TRADES
    assert attack_options(objective="at", options={"attack": {"bn_mode": "eval"}})["bn_mode"] == "eval"
