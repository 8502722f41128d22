"""ADR inside real runs on the embedded ``digits`` set: objectives, --wa / --awp, resume, CLI, discovery."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from advkit import Progress, StepContext, TrainConfig, Trainer
from advkit.cli import main


def _config(**overrides: object) -> TrainConfig:
    """A few seconds per epoch: 12 iterations of 128, PGD-2, a 100-image validation split."""
    settings: dict = dict(
        dataset="digits",
        model="small-cnn",
        objective="at",
        rectifier="adr",
        eps=0.1,
        epochs=1,
        batch_size=128,
        lr=0.05,
        val_steps=1,
        val_size=100,
        seed=1,
        options={"attack": {"steps": 2}},
    )
    settings.update(overrides)
    return TrainConfig(**settings)


def _probe(trainer: Trainer) -> torch.Tensor:
    """The targets ADR gives a fixed batch at a fixed point of the schedule."""
    x, y = next(iter(trainer.val_loader))
    progress = Progress(1, 17, 24, 12)
    ctx = StepContext(model=trainer.model, x=x[:32], y=y[:32], num_classes=10, progress=progress)
    return trainer.rectifier.targets(ctx)


@pytest.mark.parametrize("objective", ["at", "trades", "standard"])
def test_adr_trains_with_objectives_that_consume_targets(tmp_path: Path, objective: str) -> None:
    options = {} if objective == "standard" else {"attack": {"steps": 2}}  # standard runs no attack
    trainer = Trainer(_config(objective=objective, options=options), tmp_path / "run", progress=False)
    record = trainer.fit()[-1]
    assert math.isfinite(record["train_loss"]) and 0.0 <= record["val_robust_acc"] <= 1.0
    teacher = trainer.rectifier.average
    assert teacher.updates == len(trainer.train_loader)  # one EMA update per optimizer step
    assert not teacher.model.training
    moved = [
        not torch.equal(a, b)
        for a, b in zip(teacher.model.state_dict().values(), trainer.model.state_dict().values(), strict=True)
    ]
    assert any(moved)  # an average, not a copy
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["rectifier"] == "adr"
    assert saved["options"]["rectifier"]["temperature"] == "2.5:2"  # preset auto → CIFAR-10 values on digits
    targets = _probe(trainer)
    assert torch.allclose(targets.sum(dim=1), torch.ones(32)) and (targets < 1).any()


def test_adr_teacher_is_the_wa_model_and_awp_runs(tmp_path: Path) -> None:
    config = _config(
        wa=0.995,
        select="wa",
        awp=0.005,
        awp_variant="adr-sam",
        options={"attack": {"steps": 2}, "adr": {"interpolation": "0.7:0.85"}},
    )
    trainer = Trainer(config, tmp_path / "run", progress=False)
    assert list(trainer.averages) == [0.995]
    assert trainer.rectifier.average is trainer.averages[0.995]  # one EMA: teacher and WA model
    record = trainer.fit()[-1]
    assert {"val_wa_clean_acc", "val_wa_robust_acc"} <= set(record)
    assert trainer.best["val_robust_acc"] == record["val_wa_robust_acc"]


def test_resume_gives_the_same_targets_as_an_uninterrupted_run(tmp_path: Path) -> None:
    straight = Trainer(_config(epochs=2), tmp_path / "straight", progress=False)
    straight.fit()
    Trainer(_config(epochs=2), tmp_path / "stopped", progress=False).fit(stop_after_epoch=1)
    resumed = Trainer.resume_run(tmp_path / "stopped", progress=False)
    resumed.fit()
    assert torch.equal(_probe(straight), _probe(resumed))
    for key, value in straight.rectifier.average.model.state_dict().items():
        assert torch.equal(value, resumed.rectifier.average.model.state_dict()[key]), key


def test_cli_trains_at_with_adr_wa_and_official_awp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [
        "advkit",
        "train",
        "--dataset",
        "digits",
        "--model",
        "small-cnn",
        "--objective",
        "at",
        "--rectifier",
        "adr",
        "--wa",
        "0.995",
        "--select",
        "wa",
        "--awp",
        "0.01",
        "--eps",
        "0.1",
        "--epochs",
        "1",
        "--batch-size",
        "128",
        "--val-size",
        "100",
        "--val-steps",
        "1",
        "-o",
        "attack.steps=2",
        "--out",
        str(tmp_path / "run"),
        "--quiet",
    ]
    monkeypatch.setattr("sys.argv", args)
    main()
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert (saved["awp"], saved["awp_variant"], saved["wa"]) == (0.01, "official", 0.995)
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    summary = capsys.readouterr().out.splitlines()[-1]
    # the summary reports the model that selected best.pt: the weight average
    assert "(weight-averaged model)" in summary
    assert f"clean {100 * record['val_wa_clean_acc']:.2f}%" in summary


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("adr.interpolation=0.5:1.2", "rectifier 'adr': option 'interpolation' must lie in [0, 1], got 0.5:1.2"),
        ("adr.temperature=0", "rectifier 'adr': option 'temperature' must lie in (0, inf], got 0"),
        ("adr.decay=1", "rectifier 'adr': option 'decay' must lie in (0, 1), got 1"),
    ],
)
def test_cli_rejects_invalid_adr_options_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], option: str, message: str
) -> None:
    monkeypatch.setattr(
        "sys.argv",
        [
            "advkit",
            "train",
            "--dataset",
            "digits",
            "--model",
            "small-cnn",
            "--rectifier",
            "adr",
            "-o",
            option,
            "--out",
            str(tmp_path / "run"),
        ],
    )
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error == f"advkit: error: {message}"
    assert not (tmp_path / "run").exists()


def test_adr_is_listed_under_its_own_distribution(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.argv", ["advkit", "plugins"])
    main()
    listing = {tuple(line.split()[:3]) for line in capsys.readouterr().out.splitlines()}
    assert ("rectifier", "adr", "advkit-adr") in listing
