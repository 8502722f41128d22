"""The ℓ2 threat model: helpers by hand and against torchattacks.PGDL2, and --norm as a run-level setting."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
import torchattacks
import yaml

from advkit import (
    AdvkitError,
    OptionError,
    TrainConfig,
    Trainer,
    eps_option,
    project,
    sign_ascent,
    start_point,
    supported_norms,
)
from advkit.attacks import Attack
from advkit.builtin.attacks import FGSM, PGD, NoAttack, TradesKL
from advkit.config import _check_norm_support
from advkit.evaluate import validation_attack


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))


def test_l2_projection_by_hand():
    x = torch.full((1, 1, 1, 2), 0.5)
    outside = x + torch.tensor([0.3, 0.4]).view(1, 1, 1, 2)  # ‖δ‖ = 0.5
    assert torch.allclose(project(outside, x, 0.25, "L2"), x + torch.tensor([0.15, 0.2]).view(1, 1, 1, 2))
    inside = x + torch.tensor([0.03, 0.04]).view(1, 1, 1, 2)
    assert torch.allclose(project(inside, x, 0.25, "L2"), inside)
    assert torch.equal(project(x, x, 0.25, "L2"), x)  # a zero perturbation stays finite
    assert project(x + 0.6, x, 10.0, "L2").max() == 1.0  # then into the image box


@pytest.mark.parametrize("random_start", [False, True])
def test_l2_pgd_matches_torchattacks_pgdl2(random_start):
    model = tiny_model()
    x, y = torch.rand(5, 3, 2, 2), torch.tensor([0, 1, 2, 0, 1])
    torch.manual_seed(7)
    reference = torchattacks.PGDL2(model, eps=0.4, alpha=0.1, steps=5, random_start=random_start)(x, y)
    torch.manual_seed(7)
    ours = PGD(
        model, eps=0.4, alpha=0.1, steps=5, start="uniform" if random_start else "none", norm="L2", bn_mode="eval"
    )(x, y)
    assert torch.allclose(ours, reference, atol=1e-6)
    assert ((ours - x).flatten(1).norm(dim=1) <= 0.4 + 1e-5).all()


def test_l2_start_point_lies_in_the_ball_and_the_fgm_step_has_length_eps():
    x = torch.full((64, 3, 4, 4), 0.5)
    start = start_point(x, "uniform-noclamp", 0.3, "L2")
    radii = (start - x).flatten(1).norm(dim=1)
    assert (radii <= 0.3 + 1e-6).all() and radii.std() > 0.01  # radius r·ε with r ~ U(0, 1)
    step = FGSM(tiny_model_for(x), eps=0.2, norm="L2")(x, torch.zeros(64, dtype=torch.long)) - x
    assert torch.allclose(step.flatten(1).norm(dim=1), torch.full((64,), 0.2), atol=1e-5)


def tiny_model_for(x: torch.Tensor) -> torch.nn.Module:
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(x[0].numel(), 3))


def test_sign_ascent_under_l2_takes_normalised_gradient_steps():
    x = torch.full((1, 1, 1, 2), 0.5)
    moved = sign_ascent(
        x, lambda z: (3 * z[..., 0] + 4 * z[..., 1]).sum(), eps=1.0, alpha=0.1, steps=1, start="none", norm="L2"
    )
    assert torch.allclose(moved - x, torch.tensor([0.06, 0.08]).view(1, 1, 1, 2))  # α·g/‖g‖, g = (3, 4)


def test_attacks_declare_their_norms_and_linf_radii_stay_in_the_unit_box():
    assert supported_norms(PGD) == supported_norms(FGSM) == supported_norms(TradesKL) == ("Linf", "L2")
    assert supported_norms(NoAttack) == ("Linf", "L2")  # no radius, no norm to disagree with

    class LinfOnly(Attack):
        options = (eps_option(),)

    assert supported_norms(LinfOnly) == ("Linf",)
    with pytest.raises(AdvkitError, match="attack 'linf-only' supports --norm Linf only, not L2"):
        _check_norm_support("linf-only", LinfOnly, "L2")
    with pytest.raises(OptionError, match="'eps' is an ℓ∞ radius and must lie in \\[0, 1\\], got 2"):
        PGD(tiny_model(), eps=2.0)
    assert PGD(tiny_model(), eps=2.0, norm="L2").eps == 2.0
    assert validation_attack(tiny_model(), 0.5, 3, "L2").norm == "L2"


def digits_l2(**overrides) -> TrainConfig:
    values = dict(
        dataset="digits",
        model="small-cnn",
        norm="L2",
        eps=0.5,
        epochs=1,
        batch_size=64,
        lr=0.05,
        val_steps=3,
        val_size=100,
        device="cpu",
        options={"attack": {"steps": 3}},
    )
    values.update(overrides)
    return TrainConfig(**values)


def test_training_under_l2_attacks_and_validates_in_l2(tmp_path):
    trainer = Trainer(digits_l2(), tmp_path / "run", progress=False)
    trainer.fit()
    assert trainer.attack.norm == "L2" and trainer.attack.eps == 0.5
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert config["norm"] == "L2" and config["options"]["attack"]["norm"] == "L2"
    # ℓ∞ PGD at ε = 0.5 would leave nothing robust; the ℓ2 ball of 0.5 on 8×8 digits leaves most examples.
    assert trainer.history[-1]["val_robust_acc"] > 0.3
    report = subprocess.run(
        [
            sys.executable,
            "-m",
            "advkit",
            "eval",
            str(tmp_path / "run"),
            "--attack",
            "pgd",
            "--n-examples",
            "50",
            "--quiet",
            "--json",
            str(tmp_path / "r.json"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert report.returncode == 0, report.stderr
    assert json.loads((tmp_path / "r.json").read_text())["norm"] == "L2"  # eval defaults to the run's norm


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"eps": None}, "--norm L2 needs --eps"),
        ({"norm": "L1"}, "--norm must be one of Linf, L2"),
        ({"norm": "Linf", "eps": 1.5}, "--eps must lie in \\[0, 1\\] for Linf"),
        ({"options": {"attack": {"norm": "Linf"}}}, "attack option norm=Linf differs from the run's --norm L2"),
    ],
)
def test_threat_model_mistakes_are_one_line_errors(tmp_path, overrides, message):
    with pytest.raises(AdvkitError, match=message):
        Trainer(digits_l2(**overrides), tmp_path / "run", progress=False)


def test_a_run_from_before_norm_existed_resumes(tmp_path):
    run = tmp_path / "run"
    config = digits_l2(norm="Linf", eps=0.1, epochs=2)
    Trainer(config, run, progress=False).fit(stop_after_epoch=1)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    del saved["norm"], saved["options"]["attack"]["norm"]  # as an older advkit wrote it
    (run / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    state = torch.load(run / "last.pt", weights_only=False)
    del state["config"]["norm"], state["config"]["options"]["attack"]["norm"]
    (run / "best.pt").unlink()
    (run / "last.pt").unlink()
    torch.save(state, run / "last.pt")
    torch.save(state, run / "best.pt")
    resumed = Trainer.resume_run(run, progress=False)
    resumed.fit()
    assert [record["epoch"] for record in resumed.history] == [1, 2]
    assert math.isfinite(resumed.history[-1]["val_robust_acc"])
