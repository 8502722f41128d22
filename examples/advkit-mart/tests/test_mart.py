import math

import pytest
import torch
from advkit_mart import Mart, boosted_cross_entropy
from click.testing import CliRunner
from torch import nn

from advkit import OptionError, Progress, StepContext, one_hot
from advkit.cli import cli

# nn.Flatten() as the model: an input of shape B×1×1×C is its own logits.
CLEAN = torch.tensor([[[[0.0, math.log(3.0)]]]])  # softmax [1/4, 3/4]
ADV = torch.tensor([[[[math.log(3.0), 0.0]]]])  # softmax [3/4, 1/4]
Y = torch.tensor([1])


def test_boosted_cross_entropy_by_hand():
    # p' = [3/4, 1/4], y = 1: -log(1/4) - log(1 - 3/4)
    assert boosted_cross_entropy(ADV.flatten(1), Y).item() == pytest.approx(2 * math.log(4), rel=1e-5)


def test_mart_loss_by_hand():
    ctx = StepContext(model=nn.Flatten(), x=CLEAN, y=Y, num_classes=2, progress=Progress(0, 0, 1, 1), x_adv=ADV)
    ctx.targets = one_hot(Y, 2)
    kl = 0.25 * math.log(0.25 / 0.75) + 0.75 * math.log(0.75 / 0.25)
    expected = 2 * math.log(4) + 6.0 * kl * (1 - 0.75)
    assert Mart().loss(ctx).item() == pytest.approx(expected, rel=1e-5)
    assert Mart(beta=0).loss(ctx).item() == pytest.approx(2 * math.log(4), rel=1e-5)


def test_negative_beta_is_refused():
    with pytest.raises(OptionError, match="objective 'mart'|objective 'Mart'"):
        Mart(beta=-1)


def test_mart_trains_end_to_end_and_is_listed(tmp_path):
    runner = CliRunner()
    listing = runner.invoke(cli, ["plugins"])
    assert any(line.split()[:3] == ["objective", "mart", "advkit-mart"] for line in listing.output.splitlines())
    result = runner.invoke(
        cli,
        [
            "train",
            "--dataset",
            "digits",
            "--model",
            "small-cnn",
            "--objective",
            "mart",
            "--eps",
            "0.1",
            "--epochs",
            "1",
            "--batch-size",
            "64",
            "--val-steps",
            "2",
            "-o",
            "mart.beta=5",
            "--out",
            str(tmp_path / "run"),
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "best.pt").is_file()
    assert "beta: 5.0" in (tmp_path / "run" / "config.yaml").read_text()
