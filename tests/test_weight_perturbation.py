"""AWP update rules: the official proxy-based AWP and ADR's SAM-style variant, against hand-derived steps."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advkit import AdvkitError, Progress, StepContext, TrainConfig, Trainer
from advkit.train import PlainUpdate
from advkit.weight_perturbation import (
    AdversarialWeightPerturbation,
    SharpnessAwarePerturbation,
    layerwise_relative,
    weight_update,
)

LR = 0.5


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(48, 3))


def _plain(model: nn.Module) -> PlainUpdate:
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    return PlainUpdate(model, optimizer, torch.amp.GradScaler("cpu", enabled=False))


def _context(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], epoch: int = 0) -> StepContext:
    x, y = batch
    return StepContext(model=model, x=x, y=y, num_classes=3, progress=Progress(epoch, epoch * 4, 40, 4))


def _loss_of(ctx: StepContext):
    """What the trainer passes: the objective re-run on ``ctx.model`` in train mode."""

    def compute_loss() -> torch.Tensor:
        ctx.model.train()
        logits = ctx.model(ctx.x)
        ctx.logits_for_accuracy = logits
        return F.cross_entropy(logits, ctx.y)

    return compute_loss


def _grads_at(
    model: nn.Module, offsets: dict[str, torch.Tensor], batch: tuple[torch.Tensor, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], nn.Module]:
    """Gradients of the loss at w + offsets (a fresh copy in train mode), and that copy."""
    probe = copy.deepcopy(model).train()
    with torch.no_grad():
        for name, param in probe.named_parameters():
            param.add_(offsets.get(name, torch.zeros_like(param)))
    loss = F.cross_entropy(probe(batch[0]), batch[1])
    grads = torch.autograd.grad(loss, list(probe.parameters()))
    return dict(zip([name for name, _ in probe.named_parameters()], grads, strict=True)), probe


def _relative(direction: torch.Tensor, weight: torch.Tensor, radius: float) -> torch.Tensor:
    return radius * weight.norm() / (direction.norm() + 1e-20) * direction


def test_layerwise_relative_scales_each_tensor_to_a_fraction_of_its_weight_norm() -> None:
    weights = [torch.tensor([3.0, 4.0]), torch.tensor([[1.0, 0.0], [0.0, 0.0]])]
    directions = [torch.tensor([0.0, 2.0]), torch.tensor([[0.0, 0.0], [0.0, -10.0]])]
    steps = layerwise_relative(directions, weights, 0.1)
    assert torch.allclose(steps[0], torch.tensor([0.0, 0.5]))  # 0.1 · 5 · unit direction
    assert torch.allclose(steps[1], torch.tensor([[0.0, 0.0], [0.0, -0.1]]))
    zero = layerwise_relative([torch.zeros(2)], [torch.ones(2)], 0.1)[0]
    assert torch.equal(zero, torch.zeros(2))  # a zero gradient gives no perturbation, not NaN


def test_official_awp_matches_the_hand_derived_step(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    model, gamma = _net(), 0.05
    reference = copy.deepcopy(model)
    g0, _ = _grads_at(reference, {}, batch)
    weights = dict(reference.named_parameters())
    # Only conv/linear weights ('weight' in the name, more than one dimension) are perturbed; the
    # proxy's SGD difference is lr·g, and the learning rate cancels in the normalisation.
    offsets = {name: _relative(g0[name], weights[name].detach(), gamma) for name in ("0.weight", "4.weight")}
    g1, probe = _grads_at(reference, offsets, batch)

    ctx = _context(model, batch)
    AdversarialWeightPerturbation(_plain(model), gamma).step(ctx, _loss_of(ctx))

    for name, param in model.named_parameters():
        assert torch.allclose(param, weights[name] - LR * g1[name], atol=1e-6), name
    # The proxy took the ascent forward, so the model's BatchNorm saw exactly one batch (at w + γv).
    assert int(model[1].num_batches_tracked) == 1
    assert torch.allclose(model[1].running_mean, probe[1].running_mean)
    assert ctx.model is model


def test_adr_sam_variant_matches_the_hand_derived_step(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    model, rho = _net(), 0.05
    reference = copy.deepcopy(model)
    g0, first_pass = _grads_at(reference, {}, batch)
    weights = dict(reference.named_parameters())
    # Every parameter with a gradient moves, BatchNorm affine parameters and biases included.
    offsets = {name: _relative(g0[name], weights[name].detach(), rho) for name in weights}
    g1, _ = _grads_at(reference, offsets, batch)
    loss_at_w = F.cross_entropy(reference.train()(batch[0]), batch[1])

    ctx = _context(model, batch)
    loss = SharpnessAwarePerturbation(_plain(model), rho).step(ctx, _loss_of(ctx))

    for name, param in model.named_parameters():
        assert torch.allclose(param, weights[name] - LR * g1[name], atol=1e-6), name
    # Second pass with momentum 0: the running statistics are those of the first pass only.
    assert torch.allclose(model[1].running_mean, first_pass[1].running_mean)
    assert model[1].momentum == 0.1
    assert torch.allclose(loss, loss_at_w)  # logged at the unperturbed weights
    assert torch.allclose(ctx.logits_for_accuracy, first_pass(batch[0]), atol=1e-6)


def test_weights_come_back_exactly_when_the_optimizer_does_nothing(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    for rule in (AdversarialWeightPerturbation, SharpnessAwarePerturbation):
        model = _net()
        before = copy.deepcopy(model.state_dict())
        plain = _plain(model)
        plain.optimizer.param_groups[0]["lr"] = 0.0
        ctx = _context(model, batch)
        rule(plain, 0.1).step(ctx, _loss_of(ctx))
        for name, param in model.named_parameters():
            assert torch.allclose(param, before[name], atol=1e-7), (rule.__name__, name)


@pytest.mark.parametrize("variant", ["official", "adr-sam"])
def test_warmup_epochs_take_the_plain_step(batch: tuple[torch.Tensor, torch.Tensor], variant: str) -> None:
    plain_model, perturbed_model = _net(), _net()
    plain = _plain(plain_model)
    rule = weight_update(_plain(perturbed_model), 0.05, variant, warmup_epochs=2)
    for epoch in (0, 1):
        ctx_plain, ctx_rule = _context(plain_model, batch, epoch), _context(perturbed_model, batch, epoch)
        plain.step(ctx_plain, _loss_of(ctx_plain))
        rule.step(ctx_rule, _loss_of(ctx_rule))
        for a, b in zip(plain_model.parameters(), perturbed_model.parameters(), strict=True):
            assert torch.equal(a, b)
    ctx_plain, ctx_rule = _context(plain_model, batch, 2), _context(perturbed_model, batch, 2)
    plain.step(ctx_plain, _loss_of(ctx_plain))
    rule.step(ctx_rule, _loss_of(ctx_rule))
    assert not all(
        torch.equal(a, b) for a, b in zip(plain_model.parameters(), perturbed_model.parameters(), strict=True)
    )


def test_weight_update_picks_the_named_variant() -> None:
    plain = _plain(_net())
    assert weight_update(plain, None) is plain
    assert isinstance(weight_update(plain, 0.01), AdversarialWeightPerturbation)
    assert isinstance(weight_update(plain, 0.005, "adr-sam"), SharpnessAwarePerturbation)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"awp": 0.0}, "--awp must be positive"),
        ({"awp": -0.01}, "--awp must be positive"),
        ({"awp": 0.01, "awp_variant": "sam"}, "--awp-variant must be one of official, adr-sam"),
        ({"awp": 0.01, "awp_warmup": -1}, "--awp-warmup must be non-negative"),
        ({"awp": 0.01, "amp": "fp16"}, "--awp cannot be combined with --amp fp16"),
    ],
)
def test_invalid_awp_settings_are_rejected(settings: dict, message: str) -> None:
    with pytest.raises(AdvkitError, match=message):
        TrainConfig(**settings).validate()


def test_trainer_applies_awp_from_the_config(tmp_path) -> None:
    def final_weights(name: str, **awp: object) -> dict[str, torch.Tensor]:
        config = TrainConfig(
            dataset="digits",
            model="small-cnn",
            objective="at",
            eps=0.1,
            epochs=1,
            batch_size=128,
            val_size=100,
            val_steps=1,
            options={"attack": {"steps": 1}},
            **awp,
        )
        trainer = Trainer(config, tmp_path / name, progress=False)
        trainer.fit()
        return trainer.model.state_dict()

    plain = final_weights("plain")
    warming_up = final_weights("warmup", awp=0.01, awp_warmup=1)  # AWP would start in epoch 2: plain steps only
    perturbed = final_weights("awp", awp=0.01)
    assert all(torch.equal(plain[key], warming_up[key]) for key in plain)
    assert not all(torch.equal(plain[key], perturbed[key]) for key in plain)
