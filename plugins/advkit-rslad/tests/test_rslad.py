import math

import pytest
import torch
import yaml
from advkit_rslad import RSLAD, TeacherSoftLabels
from click.testing import CliRunner
from torch import nn

from advkit import Progress, StepContext, TrainConfig, Trainer
from advkit.cli import cli
from advkit.testing import LogitModel, kl_by_hand, train_digits

LN3 = math.log(3.0)


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    return train_digits(tmp_path_factory.mktemp("rslad") / "teacher")


def test_rslad_loss_by_hand():
    student = LogitModel()
    ctx = StepContext(
        model=student,
        x=torch.tensor([[[[0.0, 0.0]]]]),
        y=torch.tensor([1]),
        num_classes=2,
        progress=Progress(0, 0, 1, 1),
        x_adv=torch.tensor([[[[LN3, 0.0]]]]),
    )
    ctx.targets = torch.tensor([[0.25, 0.75]])
    adv_term, clean_term = kl_by_hand([0.25, 0.75], [0.75, 0.25]), kl_by_hand([0.25, 0.75], [0.5, 0.5])
    assert RSLAD().loss(ctx).item() == pytest.approx(0.1 * (5 / 6 * adv_term + 1 / 6 * clean_term))
    assert [x is ctx.x_adv for x in student.inputs] == [True, False]  # x′ first, then x, as officially
    assert torch.equal(ctx.logits_for_accuracy, ctx.x_adv.flatten(1))
    student.inputs.clear()
    assert RSLAD(adv_weight=1, scale=1, kl_reduction="sum").loss(ctx).item() == pytest.approx(adv_term)
    assert len(student.inputs) == 1  # a zero-weight term costs no forward
    assert RSLAD(adv_weight=0).loss(ctx).item() == pytest.approx(0.1 * clean_term)
    assert torch.equal(ctx.logits_for_accuracy, ctx.x.flatten(1))


def test_soft_labels_come_from_one_teacher_forward():
    teacher = LogitModel()
    ctx = StepContext(
        model=nn.Flatten(),
        x=torch.tensor([[[[0.0, LN3]]]]),
        y=torch.tensor([0]),
        num_classes=2,
        progress=Progress(0, 0, 1, 1),
        teacher=teacher,
    )
    rectifier = TeacherSoftLabels()
    targets = rectifier.targets(ctx)
    assert torch.allclose(targets, torch.tensor([[0.25, 0.75]]))
    assert rectifier.attack_targets(ctx, targets) is targets  # PGD maximises KL to the same soft labels
    assert torch.allclose(TeacherSoftLabels(temperature=2).targets(ctx), torch.softmax(torch.tensor([[0, LN3 / 2]]), 1))
    assert len(teacher.inputs) == 1  # three reads, one forward (the per-step cache)
    assert TeacherSoftLabels.needs_teacher and not RSLAD.needs_teacher


def test_rslad_trains_with_one_teacher_forward_per_step(tmp_path, teacher_run):
    config = TrainConfig(
        dataset="digits",
        model="small-cnn",
        objective="rslad",
        teacher=str(teacher_run),
        eps=0.1,
        epochs=1,
        batch_size=64,
        lr=0.05,
        val_steps=1,
        device="cpu",
    )
    trainer = Trainer(config, tmp_path / "run", progress=False)
    calls = []
    trainer.teacher.register_forward_hook(lambda module, inputs, output: calls.append(inputs[0].shape[0]))
    history = trainer.fit()
    assert calls == [64] * len(trainer.train_loader)  # validation never runs the teacher
    assert math.isfinite(history[0]["train_loss"])
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert (saved["rectifier"], saved["attack"]) == ("rslad", "pgd")
    assert saved["options"]["attack"]["bn_mode"] == "eval" and saved["options"]["attack"]["start"] == "gauss"
    assert saved["options"]["objective"]["scale"] == 0.1


def test_rslad_composes_with_a_self_distilled_teacher(tmp_path):
    pytest.importorskip("advkit_adr")
    saved = yaml.safe_load((train_digits(tmp_path / "r", "rslad", rectifier="adr") / "config.yaml").read_text())
    assert (saved["rectifier"], saved["attack"]) == ("adr", "pgd")


def test_rslad_without_a_teacher_is_a_clear_error_and_is_listed(tmp_path):
    result = CliRunner().invoke(
        cli,
        ["train", "--dataset", "digits", "--model", "small-cnn", "--objective", "rslad", "--out", str(tmp_path / "r")],
    )
    assert "rectifier 'rslad' needs a teacher: pass --teacher" in str(result.exception)
    listing = {tuple(line.split()[:3]) for line in CliRunner().invoke(cli, ["plugins"]).output.splitlines()}
    assert {("objective", "rslad", "advkit-rslad"), ("rectifier", "rslad", "advkit-rslad")} <= listing
