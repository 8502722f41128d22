"""N-FGSM against the formula by hand, its (lack of) clipping, and a training run."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from advkit_nfgsm import NFGSM

from advkit.testing import LogitModel, train_digits


def test_one_signed_step_from_twice_eps_noise_by_hand():
    x = torch.full((2, 1, 1, 3), 0.5)
    y = torch.tensor([0, 2])
    eps = 0.1
    torch.manual_seed(0)
    x_adv = NFGSM(LogitModel(), eps=eps)(x, y)
    torch.manual_seed(0)
    noise = torch.empty_like(x).uniform_(-1.0, 1.0) * (2 * eps)
    # The input is the logits: ∂CE/∂z = softmax(z) − onehot(y), negative only at the label.
    direction = torch.ones_like(x)
    direction[0, ..., 0] = direction[1, ..., 2] = -1.0
    assert torch.allclose(x_adv, (x + noise + eps * direction).clamp(0, 1))


def test_the_perturbation_is_not_clipped_unless_asked():
    x = torch.full((64, 1, 1, 10), 0.5)
    y = torch.zeros(64, dtype=torch.long)
    torch.manual_seed(1)
    free = (NFGSM(LogitModel(), eps=0.1)(x, y) - x).abs().max().item()
    torch.manual_seed(1)
    clipped = (NFGSM(LogitModel(), eps=0.1, clip=1.0)(x, y) - x).abs().max().item()
    assert 0.25 < free <= 0.3 + 1e-6  # up to (k + 1)·ε = 3ε
    assert clipped <= 0.1 + 1e-6
    torch.manual_seed(1)
    assert torch.allclose(
        NFGSM(LogitModel(), eps=0.1, noise=0.0)(x, y),
        x + 0.1 * torch.where(torch.arange(10) == 0, -1.0, 1.0).view(1, 1, 1, 10),
    )  # k = 0: plain FGSM from x


def test_training_with_n_fgsm(tmp_path):
    run = train_digits(tmp_path / "run", objective="at", attack="n-fgsm", epochs=2)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert yaml.safe_load((run / "config.yaml").read_text())["attack"] == "n-fgsm"
    assert len(records) == 2 and records[-1]["val_robust_acc"] > 0.3  # robust well above chance (0.1)


def test_an_l2_run_or_evaluation_with_n_fgsm_is_refused(tmp_path):
    from advkit import AdvkitError, TrainConfig, Trainer
    from advkit.evaluate import parse_attack

    with pytest.raises(AdvkitError, match="attack 'n-fgsm' supports --norm Linf only, not L2"):
        Trainer(
            TrainConfig(dataset="digits", model="small-cnn", attack="n-fgsm", norm="L2", eps=0.5, device="cpu"),
            tmp_path / "run",
            progress=False,
        )
    with pytest.raises(AdvkitError, match="attack 'plugin:n-fgsm' supports --norm Linf, not L2"):
        parse_attack("plugin:n-fgsm", "L2")
