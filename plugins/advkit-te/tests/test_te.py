"""Temporal ensembling: the ramp, the memory by hand, DDP gathering, the attack and loss, an exact resume."""

from __future__ import annotations

import math

import pytest
import torch
from advkit_te import (
    CACHE_KEY,
    EnsembleTargets,
    TemporalEnsembling,
    TemporalEnsemblingAT,
    TemporalEnsemblingPGD,
    sigmoid_rampup,
)

from advkit import Progress, RunSetup, StepContext, TrainConfig, sign_ascent, soft_cross_entropy
from advkit.testing import LogitModel, straight_and_resumed


def test_sigmoid_rampup_by_hand():
    assert sigmoid_rampup(89, 90, 150) == 0.0
    assert sigmoid_rampup(90, 90, 150) == pytest.approx(math.exp(-5.0))
    assert sigmoid_rampup(120, 90, 150) == pytest.approx(math.exp(-1.25))
    assert sigmoid_rampup(150, 90, 150) == 1.0 and sigmoid_rampup(170, 90, 150) == 1.0


def rectifier(epochs: int = 10, gather=None, **options) -> TemporalEnsembling:
    te = TemporalEnsembling(**options)
    te.setup(
        RunSetup(
            model=torch.nn.Identity(),
            num_classes=2,
            device=torch.device("cpu"),
            epochs=epochs,
            iterations_per_epoch=1,
            teacher=None,
            weight_average=None,
            num_examples=4,
            **({"gather_from_ranks": gather} if gather else {}),
        )
    )
    return te


def step(te: TemporalEnsembling, logits, index, labels, epoch: int) -> StepContext:
    model = LogitModel()
    model.train()
    ctx = StepContext(
        model=model,
        x=torch.tensor(logits).view(len(logits), 1, 1, 2),
        y=torch.tensor(labels),
        num_classes=2,
        progress=Progress(epoch - 1, 0, 1, 1),
        index=torch.tensor(index),
    )
    ctx.targets = te.targets(ctx)
    assert model.training  # the prediction ran in eval mode and the mode came back
    return ctx


def test_the_memory_is_an_ema_of_clean_predictions_normalised_against_its_zero_start():
    te = rectifier()  # start 0.45·10 = 4.5: epochs 5 on; end 7.5
    early = step(te, [[math.log(3.0), 0.0]], [2], [0], epoch=4)
    assert torch.equal(early.targets, torch.tensor([[1.0, 0.0]]))
    assert early.cache[CACHE_KEY].weight == 0.0 and torch.count_nonzero(te.memory) == 0
    p1, p2 = torch.tensor([0.75, 0.25]), torch.tensor([0.5, 0.5])
    first = step(te, [[math.log(3.0), 0.0]], [2], [0], epoch=5)
    assert torch.allclose(te.memory[2], 0.1 * p1)
    assert torch.allclose(first.cache[CACHE_KEY].soft_labels, p1.view(1, 2))  # the zero start is normalised away
    second = step(te, [[0.0, 0.0]], [2], [0], epoch=6)
    assert torch.allclose(second.cache[CACHE_KEY].soft_labels, ((0.9 * p1 + p2) / 1.9).view(1, 2))
    assert second.cache[CACHE_KEY].weight == pytest.approx(300 * sigmoid_rampup(6, 4.5, 7.5))
    assert torch.equal(second.targets, torch.tensor([[1.0, 0.0]]))  # official form: targets stay one-hot
    assert torch.count_nonzero(te.memory[[0, 1, 3]]) == 0


def test_mix_puts_the_ensemble_into_the_targets():
    te = rectifier(mix=0.5, start=0.0, end=0.5)
    ctx = step(te, [[0.0, math.log(3.0)]], [1], [0], epoch=6)  # past the ramp: r = 1
    assert torch.allclose(ctx.targets, torch.tensor([[0.5 + 0.5 * 0.25, 0.5 * 0.75]]))


def test_every_process_applies_every_processs_updates():
    other_index, other_predictions = torch.tensor([3]), torch.tensor([[0.2, 0.8]])

    def gather(tensor):  # this process is rank 0 of two; rank 1 trained example 3
        return torch.cat([tensor, other_index if tensor.dtype == torch.long else other_predictions])

    te = rectifier(gather=gather, start=0.0)
    step(te, [[0.0, 0.0]], [1], [0], epoch=1)
    assert torch.allclose(te.memory[1], torch.tensor([0.05, 0.05]))
    assert torch.allclose(te.memory[3], torch.tensor([0.02, 0.08]))


def published_context(weight: float) -> StepContext:
    ctx = StepContext(
        model=LogitModel(),
        x=torch.tensor([[[[0.2, 0.1]]]]),
        y=torch.tensor([0]),
        num_classes=2,
        progress=Progress(0, 0, 1, 1),
        x_adv=torch.tensor([[[[0.0, 0.0]]]]),
    )
    ctx.targets = torch.tensor([[1.0, 0.0]])
    ctx.attack_targets = ctx.targets
    ctx.cache[CACHE_KEY] = EnsembleTargets(torch.tensor([[0.2, 0.8]]), weight)
    return ctx


def test_the_objective_adds_the_weighted_squared_distance_to_the_ensemble():
    ctx = published_context(300.0)
    loss = TemporalEnsemblingAT().loss(ctx).item()
    assert loss == pytest.approx(math.log(2.0) + 300 * ((0.5 - 0.2) ** 2 + (0.5 - 0.8) ** 2) / 2)
    assert ctx.metrics["te_regulariser"].item() == pytest.approx(300 * 0.09)
    with pytest.raises(RuntimeError, match="--rectifier te"):
        TemporalEnsemblingAT().loss(
            StepContext(model=LogitModel(), x=ctx.x, y=ctx.y, num_classes=2, progress=ctx.progress, x_adv=ctx.x_adv)
        )


def test_the_attack_maximises_the_same_regularised_loss():
    ctx = published_context(50.0)
    attack = TemporalEnsemblingPGD(LogitModel(), eps=0.3, steps=3, start="none")
    torch.manual_seed(0)
    x_adv = attack.perturb(ctx)
    soft = torch.tensor([[0.2, 0.8]])

    def by_hand(z):
        logits = z.flatten(1)
        return soft_cross_entropy(logits, ctx.targets) + 50.0 * ((torch.softmax(logits, 1) - soft) ** 2).mean()

    expected = sign_ascent(ctx.x, by_hand, eps=0.3, alpha=0.075, steps=3, start="none")
    assert torch.allclose(x_adv, expected)
    plain = sign_ascent(
        ctx.x, lambda z: soft_cross_entropy(z.flatten(1), ctx.targets), eps=0.3, alpha=0.075, steps=3, start="none"
    )
    assert not torch.allclose(x_adv, plain)  # the regulariser changed the direction
    assert torch.allclose(attack(ctx.x, ctx.y), plain)  # standalone, outside training: plain PGD


def digits(**overrides) -> TrainConfig:
    values = dict(
        dataset="digits",
        model="small-cnn",
        objective="te",
        eps=0.1,
        epochs=2,
        batch_size=64,
        lr=0.05,
        val_steps=1,
        val_size=100,
        seed=2,
        device="cpu",
        options={"te": {"start": 0.0, "end": 0.5}, "attack": {"steps": 2}},
    )
    values.update(overrides)
    return TrainConfig(**values)


def test_the_memory_survives_a_mid_epoch_resume_exactly(tmp_path):
    straight, resumed = straight_and_resumed(digits(), tmp_path, stop_after_steps=22)  # two steps into epoch 2
    assert len(straight.train_loader) == 20
    assert torch.equal(straight.rectifier.memory, resumed.rectifier.memory)
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert straight.history[-1]["te_regulariser"] == resumed.history[-1]["te_regulariser"] > 0


def test_start_and_end_follow_the_length_of_training_so_a_run_cannot_be_extended():
    assert rectifier().length_dependent_options() == ["start", "end"]
