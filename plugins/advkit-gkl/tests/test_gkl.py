"""GKL: the decoupled terms against their definitions, the class-wise prior, and an exact resume."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from advkit_gkl import GeneralizedKL, soft_label_cross_entropy, weighted_pair_mse

from advkit import Progress, RunSetup, StepContext, TrainConfig
from advkit.testing import LogitModel, straight_and_resumed


def pair_mse_by_definition(clean, adv, weights) -> float:
    """¼ Σ_b Σ_ij w_bi w_bj ((z_i − z_j) − (z′_i − z′_j))² / Σ_b Σ_ij w_bi w_bj, with Python loops
    (the official form)."""
    top = bottom = 0.0
    for z, z_adv, w in zip(clean.tolist(), adv.tolist(), weights.tolist(), strict=True):
        for i, j in itertools.product(range(len(z)), repeat=2):
            top += w[i] * w[j] * ((z[i] - z[j]) - (z_adv[i] - z_adv[j])) ** 2
            bottom += w[i] * w[j]
    return 0.25 * top / bottom


def test_pair_mse_by_hand_and_against_the_pairwise_definition():
    # z = (1, 0), z′ = (0, 0), w = (1, 1): the two off-diagonal pairs differ by 1 each → ¼·2/4.
    assert weighted_pair_mse(torch.tensor([[1.0, 0.0]]), torch.zeros(1, 2), torch.ones(1, 2)).item() == pytest.approx(
        0.125
    )
    generator = torch.Generator().manual_seed(0)
    clean, adv = torch.randn(4, 5, generator=generator), torch.randn(4, 5, generator=generator)
    weights = torch.rand(4, 5, generator=generator)
    assert weighted_pair_mse(clean, adv, weights).item() == pytest.approx(pair_mse_by_definition(clean, adv, weights))
    assert weighted_pair_mse(clean + 3.0, adv, weights).item() != pytest.approx(0.0)
    assert weighted_pair_mse(clean, clean + 7.0, weights).item() == pytest.approx(0.0, abs=1e-9)  # shift-invariant


def test_soft_label_cross_entropy_is_constant_in_the_clean_logits():
    clean = torch.tensor([[math.log(3.0), 0.0]], requires_grad=True)
    adv = torch.tensor([[0.0, 0.0]], requires_grad=True)
    loss = soft_label_cross_entropy(clean, adv)
    assert loss.item() == pytest.approx(-(0.75 * math.log(0.5) + 0.25 * math.log(0.5)))
    loss.backward()
    assert clean.grad is None or torch.count_nonzero(clean.grad) == 0
    assert torch.allclose(adv.grad, torch.tensor([[0.5 - 0.75, 0.5 - 0.25]]))  # softmax(z′) − softmax(z)


def setup_for(objective: GeneralizedKL, classes: int, other_rank: list[torch.Tensor] | None = None) -> None:
    def sum_over_ranks(tensor):
        return tensor + other_rank[0] if other_rank else tensor

    objective.setup(
        RunSetup(
            model=torch.nn.Identity(),
            num_classes=classes,
            device=torch.device("cpu"),
            epochs=1,
            iterations_per_epoch=1,
            teacher=None,
            weight_average=None,
            sum_over_ranks=sum_over_ranks,
        )
    )


def context(clean, adv, labels) -> StepContext:
    return StepContext(
        model=LogitModel(),
        x=torch.tensor(clean).view(len(clean), 1, 1, -1),
        y=torch.tensor(labels),
        num_classes=len(clean[0]),
        progress=Progress(0, 0, 1, 1),
        x_adv=torch.tensor(adv).view(len(adv), 1, 1, -1),
    )


def test_loss_by_hand_with_the_uniform_prior_of_the_first_epoch():
    objective = GeneralizedKL()
    setup_for(objective, 2)
    ctx = context([[math.log(3.0), 0.0]], [[0.0, 0.0]], [0])
    ce = -math.log(0.75)
    mse = 0.25 * 2 * math.log(3.0) ** 2 / 4  # e = z − z′ = (ln 3, 0); uniform weights ½ cancel in the ratio
    sce = math.log(2.0)  # −Σ (¾, ¼)·log(½, ½)
    assert objective.loss(ctx).item() == pytest.approx(ce + 20 * mse + 4 * sce)
    assert [x is ctx.x_adv for x in ctx.model.inputs] == [True, False]  # x′ first, as officially
    assert ctx.metrics["gkl_wmse"].item() == pytest.approx(mse) and ctx.metrics["gkl_sce"].item() == pytest.approx(sce)


def test_the_prior_is_the_class_mean_of_softened_clean_predictions_over_all_ranks():
    other = [torch.zeros(3, 3)]
    objective = GeneralizedKL(temperature=2.0)
    setup_for(objective, 3, other)
    clean = [[2.0, 0.0, 0.0], [0.0, 4.0, 0.0]]
    objective.loss(context(clean, clean, [0, 0]))
    other[0][2] = torch.tensor([1.0, 1.0, 2.0])  # another process saw class 2 (twice, soft predictions summed)
    objective.on_epoch_end(1, {})
    soft = torch.softmax(torch.tensor(clean) / 2.0, dim=1)
    assert torch.allclose(objective.prior[0], soft.mean(dim=0))
    assert torch.allclose(objective.prior[1], torch.full((3,), 1 / 3))  # a class nobody saw keeps its row
    assert torch.allclose(objective.prior[2], torch.tensor([0.25, 0.25, 0.5]))
    assert torch.count_nonzero(objective.accumulated) == 0
    # The next epoch weighs class-0 examples by prior[0]^γ.
    objective_gamma = GeneralizedKL(gamma=2.0)
    setup_for(objective_gamma, 3)
    objective_gamma.prior = objective.prior.clone()
    ctx = context([[1.0, 0.0, 0.0]], [[0.0, 0.0, 0.0]], [0])
    objective_gamma.loss(ctx)
    weights = objective.prior[0:1] ** 2
    expected = weighted_pair_mse(torch.tensor([[1.0, 0.0, 0.0]]), torch.zeros(1, 3), weights)
    assert ctx.metrics["gkl_wmse"].item() == pytest.approx(expected.item())


STEPS_PER_EPOCH = 20  # digits: 1797 − 359 test − 100 validation = 1338 examples, 20 full batches of 64


def digits(**overrides) -> TrainConfig:
    values = dict(
        dataset="digits",
        model="small-cnn",
        objective="gkl",
        eps=0.1,
        epochs=2,
        batch_size=64,
        lr=0.05,
        val_steps=1,
        val_size=100,
        seed=1,
        device="cpu",
        options={"attack": {"steps": 2}},
    )
    values.update(overrides)
    return TrainConfig(**values)


def test_training_resumes_exactly_with_the_prior_and_its_running_sums(tmp_path):
    straight, resumed = straight_and_resumed(digits(), tmp_path, stop_after_steps=STEPS_PER_EPOCH + 3)  # in epoch 2
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(straight.objective.prior, resumed.objective.prior)
    assert straight.history[-1]["gkl_wmse"] == resumed.history[-1]["gkl_wmse"]
    assert not torch.allclose(straight.objective.prior, torch.full_like(straight.objective.prior, 0.1))
