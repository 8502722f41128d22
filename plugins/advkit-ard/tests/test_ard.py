import math

import pytest
import torch
import yaml
from advkit_ard import ARD, IAD
from click.testing import CliRunner
from torch import nn

from advkit import Progress, StepContext, one_hot
from advkit.cli import cli
from advkit.testing import LogitModel, kl_by_hand, train_digits

LN3 = math.log(3.0)


def context(epoch=0):
    ctx = StepContext(
        model=nn.Flatten(),
        x=torch.tensor([[[[0.0, LN3 / 2]]]]),
        y=torch.tensor([1]),
        num_classes=2,
        progress=Progress(epoch, 0, 1, 1),
        teacher=LogitModel(factor=2.0),
        x_adv=torch.tensor([[[[0.0, 0.0]]]]),
    )
    ctx.targets = one_hot(ctx.y, 2)
    return ctx


def test_ard_by_hand():
    # T(x) = [0, ln 3]; at τ = 1: [1/4, 3/4] against S(x′) = [1/2, 1/2]; elem-mean over C = 2 classes
    term = kl_by_hand([0.25, 0.75], [0.5, 0.5])
    assert ARD(temperature=1).loss(context()).item() == pytest.approx(term / 2, rel=1e-5)
    ce = -math.log(torch.softmax(torch.tensor([0.0, LN3 / 2]), 0)[1].item())
    mixed = ARD(temperature=1, alpha=0.25, kl_reduction="batchmean", scale=2).loss(context()).item()
    assert mixed == pytest.approx(0.25 * 2 * term + 0.75 * ce, rel=1e-5)
    ctx = context()
    ARD().loss(ctx)
    assert ctx.teacher.inputs == [ctx.x]  # ARD's teacher sees the clean input only
    assert (ARD().temperature, ARD().kl_reduction, ARD().alpha) == (30.0, "elem-mean", 1.0)
    assert ARD.default_attack == "pgd" and ARD.default_attack_options["bn_mode"] == "train"


def test_iad_adds_introspection_from_begin():
    iad = IAD(beta=1.0, begin=3)
    before, after = iad.loss(context(epoch=2)).item(), iad.loss(context(epoch=3)).item()
    assert before == pytest.approx(kl_by_hand([0.25, 0.75], [0.5, 0.5]), rel=1e-5)
    # reliability from T(x′) = uniform: w = 1/2; introspection KL(P_S(x) ‖ P_S(x′))
    p_clean = torch.softmax(torch.tensor([0.0, LN3 / 2]), 0).tolist()
    assert after - before == pytest.approx(0.5 * kl_by_hand(p_clean, [0.5, 0.5]), rel=1e-4)
    assert (IAD().temperature, IAD().beta, IAD().begin) == (1.0, 0.1, 60)


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    return train_digits(tmp_path_factory.mktemp("ard") / "teacher")


@pytest.mark.parametrize("objective, options", [("ard", {}), ("iad", {"iad": {"begin": 0}})])
def test_trains_end_to_end(tmp_path, teacher_run, objective, options):
    run = train_digits(tmp_path / objective, objective, teacher=str(teacher_run), options=options)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["attack"] == "pgd" and saved["options"]["attack"]["start"] == "uniform-noclamp"
    listing = {tuple(line.split()[:3]) for line in CliRunner().invoke(cli, ["plugins"]).output.splitlines()}
    assert ("objective", objective, "advkit-ard") in listing
