"""Weight averaging (EMA): hand-derived updates, buffers included, exact state round trip."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from advkit import TrainConfig, Trainer, WeightAverage, load_trained_model


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


def test_one_update_is_the_convex_combination(tiny_net: nn.Module) -> None:
    average = WeightAverage(tiny_net, 0.9)
    start = _state(tiny_net)
    with torch.no_grad():
        for param in tiny_net.parameters():
            param.add_(1.0)
    average.update(tiny_net)
    for name, value in average.model.named_parameters():
        assert torch.allclose(value, start[name] + 0.1)  # 0.9·w + 0.1·(w + 1)


def test_repeated_updates_follow_the_geometric_closed_form() -> None:
    source = nn.Linear(2, 1)
    average = WeightAverage(source, 0.5)
    initial = source.weight.detach().clone()
    with torch.no_grad():
        source.weight.fill_(3.0)
    for _ in range(4):
        average.update(source)
    assert torch.allclose(average.model.weight, 3.0 + 0.5**4 * (initial - 3.0))
    assert average.updates == 4


def test_batchnorm_buffers_are_averaged_and_counters_copied(
    tiny_net: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    average = WeightAverage(tiny_net, 0.75)
    before = tiny_net.bn.running_mean.clone()
    tiny_net.train()
    tiny_net(batch[0])  # moves the running statistics
    after = tiny_net.bn.running_mean.clone()
    assert not torch.allclose(before, after)
    average.update(tiny_net)
    assert torch.allclose(average.model.bn.running_mean, 0.75 * before + 0.25 * after)
    assert not torch.allclose(average.model.bn.running_mean, after)  # averaged, not copied
    assert int(average.model.bn.num_batches_tracked) == int(tiny_net.bn.num_batches_tracked) == 1


def test_averaged_model_is_a_frozen_eval_copy(tiny_net: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    tiny_net.train()
    average = WeightAverage(tiny_net, 0.99)
    assert average.model is not tiny_net
    assert not average.model.training and not any(m.training for m in average.model.modules())
    assert not any(p.requires_grad for p in average.model.parameters())
    average.update(tiny_net)
    assert not average.model.training
    assert all(p.requires_grad for p in tiny_net.parameters())  # the student is untouched


def test_in_place_loads_into_the_source_are_seen_after_the_first_update(tiny_net: nn.Module) -> None:
    average = WeightAverage(tiny_net, 0.5)
    average.update(tiny_net)  # builds the cached tensor lists
    target = copy.deepcopy(tiny_net)
    with torch.no_grad():
        for param in target.parameters():
            param.fill_(2.0)
    tiny_net.load_state_dict(target.state_dict())  # how --resume restores weights
    snapshot = _state(average.model)
    average.update(tiny_net)
    for name, value in average.model.named_parameters():
        assert torch.allclose(value, 0.5 * snapshot[name] + 1.0)


def test_state_dict_round_trip_is_exact(tiny_net: nn.Module) -> None:
    average = WeightAverage(tiny_net, 0.9)
    with torch.no_grad():
        for param in tiny_net.parameters():
            param.mul_(-2.0)
    average.update(tiny_net)
    restored = WeightAverage(copy.deepcopy(tiny_net), 0.9)
    restored.load_state_dict(average.state_dict())
    assert restored.updates == 1
    for key, value in average.model.state_dict().items():
        assert torch.equal(value, restored.model.state_dict()[key])


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.5, 1.5])
def test_decay_outside_the_open_unit_interval_is_rejected(tiny_net: nn.Module, decay: float) -> None:
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        WeightAverage(tiny_net, decay)


def test_wa_run_validates_selects_and_evaluates_the_average(tmp_path) -> None:
    config = TrainConfig(
        dataset="digits",
        model="small-cnn",
        objective="at",
        eps=0.1,
        epochs=2,
        batch_size=128,
        val_size=100,
        val_steps=1,
        wa=0.9,
        select="wa",
        options={"attack": {"steps": 1}},
    )
    trainer = Trainer(config, tmp_path / "run", progress=False)
    history = trainer.fit()
    assert all({"val_wa_clean_acc", "val_wa_robust_acc"} <= set(record) for record in history)
    best = max(history, key=lambda record: record["val_wa_robust_acc"])
    assert trainer.best["epoch"] == best["epoch"]  # selected by the averaged model's robust accuracy
    assert trainer.averages[0.9].updates == 2 * len(trainer.train_loader)
    averaged, _, _ = load_trained_model(tmp_path / "run" / "last.pt", averaged=True)
    student, _, _ = load_trained_model(tmp_path / "run" / "last.pt")
    for key, value in trainer.averages[0.9].model.state_dict().items():
        assert torch.equal(averaged.state_dict()[key], value), key
    assert not all(
        torch.equal(a, b) for a, b in zip(averaged.state_dict().values(), student.state_dict().values(), strict=True)
    )
