import math

import pytest
import torch
import yaml
from advkit_adaad import AdaAD, AdaADAttack, AdaIAD
from click.testing import CliRunner
from torch import nn

from advkit import AdvkitError, Progress, RunSetup, StepContext, kl_divergence
from advkit.cli import cli
from advkit.testing import LogitModel, kl_by_hand, train_digits

LN3 = math.log(3.0)
EPS = 0.1


def net(seed: int, scale: float = 1.0) -> nn.Module:
    """A small conv net with BatchNorm; ``scale`` sharpens its logits so teacher and student disagree."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3))
    with torch.no_grad():
        model[-1].weight.mul_(scale)
    return model


def disagreement(teacher, student, x):
    with torch.no_grad():
        return kl_divergence(torch.softmax(teacher(x), 1), student(x), "sum").item()


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    return train_digits(tmp_path_factory.mktemp("adaad") / "teacher")


def test_attack_increases_the_disagreement_and_leaves_both_networks_untouched():
    student, teacher = net(0), net(1, scale=3.0)
    teacher.train()  # a user-supplied teacher, trainable and in train mode: the attack must not change it
    x = torch.rand(8, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    x_adv = AdaADAttack(student, teacher=teacher, eps=EPS)(x)
    assert (x_adv - x).abs().max() <= EPS + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    teacher.eval(), student.eval()
    assert disagreement(teacher, student, x_adv) > 1.5 * disagreement(teacher, student, x)
    assert all(p.grad is None and p.requires_grad for p in [*teacher.parameters(), *student.parameters()])
    teacher.train()
    AdaADAttack(student, teacher=teacher, eps=EPS)(x)
    assert teacher.training and teacher[1].training  # mode flags restored, not just put in eval


def test_the_input_gradient_flows_through_the_teacher():
    # The student ignores its input, so only the teacher's gradient can move x′ to the ε-ball's surface.
    class Blind(nn.Module):
        def forward(self, x):
            return x.flatten(1)[:, :3] * 0.0

    teacher = net(1, scale=3.0).requires_grad_(False)
    x = torch.rand(4, 1, 4, 4, generator=torch.Generator().manual_seed(3)) * 0.5 + 0.25
    x_adv = AdaADAttack(Blind(), teacher=teacher, eps=EPS)(x)
    assert (x_adv - x).abs().amax() == pytest.approx(EPS, abs=1e-6)


def test_eps_schedule_follows_training_progress():
    student, teacher = net(0), net(1, scale=3.0).requires_grad_(False)
    attack = AdaADAttack(student, eps=8 / 255, eps_schedule="0.02:0.1:linear")
    x = torch.rand(4, 1, 4, 4, generator=torch.Generator().manual_seed(4)) * 0.5 + 0.25
    for fraction, radius in ((0.0, 0.02), (0.5, 0.06), (1.0, 0.1)):
        assert attack.epsilon_at(fraction) == pytest.approx(radius)
        ctx = StepContext(
            model=student,
            x=x,
            y=torch.zeros(4, dtype=torch.long),
            num_classes=3,
            progress=Progress(0, int(fraction * 10), 10, 10),
            teacher=teacher,
        )
        assert (attack.perturb(ctx) - x).abs().amax() == pytest.approx(radius, abs=1e-6)
    assert AdaADAttack(student).epsilon_at(0.3) == pytest.approx(8 / 255)  # unset: constant ε


def test_attack_without_a_teacher_is_a_clear_error():
    with pytest.raises(AdvkitError, match="attack 'adaad' needs a teacher"):
        AdaADAttack(net(0))(torch.rand(2, 1, 4, 4))


def test_adaad_loss_by_hand_skips_the_clean_terms():
    student, teacher = LogitModel(), LogitModel(factor=2.0)
    x, x_adv = torch.tensor([[[[0.0, 0.0]]]]), torch.tensor([[[[0.0, LN3]]]])
    ctx = StepContext(
        model=student,
        x=x,
        y=torch.tensor([1]),
        num_classes=2,
        progress=Progress(0, 0, 1, 1),
        teacher=teacher,
        x_adv=x_adv,
    )
    # T(x′) = [0, 2 ln 3] → [1/10, 9/10]; S(x′) = [1/4, 3/4]; official scale 0.1
    adv_term = kl_by_hand([0.1, 0.9], [0.25, 0.75])
    assert AdaAD().loss(ctx).item() == pytest.approx(0.1 * adv_term, rel=1e-5)
    assert student.inputs == [x_adv] and teacher.inputs == [x_adv]  # no S(x), no T(x) at w = 1
    both = AdaAD(adv_weight=0.5, scale=1.0).loss(ctx).item()
    assert both == pytest.approx(0.5 * adv_term + 0.5 * 0.0, rel=1e-5)  # T(x) = S(x) = uniform on the clean input
    assert [i is x for i in student.inputs[1:]] == [True, False]  # clean forward first, as officially


def test_adaad_scale_follows_the_official_code_per_dataset():
    def setup(objective, dataset):
        objective.setup(
            RunSetup(
                model=nn.Flatten(),
                num_classes=10,
                device=torch.device("cpu"),
                epochs=1,
                iterations_per_epoch=1,
                teacher=None,
                weight_average=None,
                dataset=dataset,
            )
        )
        return objective.scale

    assert setup(AdaAD(), "cifar10") == 0.1 and setup(AdaAD(), "cifar100") == 1.0
    assert setup(AdaAD(scale=0.5), "cifar100") == 0.5


def test_adaiad_uses_the_teacher_on_x_adv_and_introspects_from_begin():
    teacher = LogitModel(factor=2.0)
    x, x_adv = torch.tensor([[[[0.0, LN3]]]]), torch.tensor([[[[0.0, 0.0]]]])

    def loss(epoch):
        ctx = StepContext(
            model=nn.Flatten(),
            x=x,
            y=torch.tensor([1]),
            num_classes=2,
            progress=Progress(epoch, 0, 1, 1),
            teacher=teacher,
            x_adv=x_adv,
        )
        return AdaIAD(temperature=1.0, beta=1.0, begin=2).loss(ctx).item()

    # T(x′) = S(x′) = uniform: the teacher term is 0; reliability w = 1/2 once epoch ≥ begin
    assert loss(1) == pytest.approx(0.0)
    assert loss(2) == pytest.approx(0.5 * kl_by_hand([0.25, 0.75], [0.5, 0.5]))
    assert all(i is x_adv for i in teacher.inputs)
    assert AdaIAD().temperature == 30.0 and AdaIAD().begin == 60 and AdaIAD.default_attack == "adaad"


def config_of(run):
    return yaml.safe_load((run / "config.yaml").read_text())


def test_adaad_and_adaiad_train_end_to_end(tmp_path, teacher_run):
    teacher = str(teacher_run)
    saved = config_of(
        train_digits(
            tmp_path / "adaad", "adaad", teacher=teacher, options={"attack": {"eps_schedule": "0.05:0.1:linear"}}
        )
    )
    assert saved["attack"] == "adaad" and saved["options"]["attack"]["eps_schedule"] == "0.05:0.1:linear"
    saved = config_of(train_digits(tmp_path / "adaiad", "adaiad", teacher=teacher, options={"adaiad": {"begin": 0}}))
    assert saved["attack"] == "adaad" and saved["options"]["objective"]["temperature"] == 30.0


def test_trades_with_the_adaad_attack(tmp_path, teacher_run):
    saved = config_of(train_digits(tmp_path / "trades", "trades", attack="adaad", teacher=str(teacher_run)))
    assert (saved["objective"], saved["attack"]) == ("trades", "adaad")
    result = CliRunner().invoke(
        cli,
        [
            "train",
            "--dataset",
            "digits",
            "--model",
            "small-cnn",
            "--objective",
            "trades",
            "--attack",
            "adaad",
            "--out",
            str(tmp_path / "none"),
        ],
    )
    assert "attack 'adaad' needs a teacher" in str(result.exception)
    listing = {tuple(line.split()[:3]) for line in CliRunner().invoke(cli, ["plugins"]).output.splitlines()}
    assert {
        ("attack", "adaad", "advkit-adaad"),
        ("objective", "adaad", "advkit-adaad"),
        ("objective", "adaiad", "advkit-adaad"),
    } <= listing
