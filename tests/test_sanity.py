"""Gradient-masking checks: they pass on an honestly trained model and fail on a deliberately masked one."""

import dataclasses
import json

import pytest
import torch
from torch import nn

from advkit.evaluate import load_eval_setup
from advkit.sanity import CheckResult, SanitySettings, _monotone_check, gradient_check, run_sanity_checks, slack
from advkit.testing import train_digits

N = 32
CHEAP = SanitySettings(eps_factors=(0.5, 1.0, 2.0), steps=(1, 5, 20), queries=200)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return train_digits(tmp_path_factory.mktemp("sanity") / "run", epochs=2)


@pytest.fixture(scope="module")
def setup(run_dir):
    return load_eval_setup(run_dir, n_examples=N, device="cpu")


class Quantise(nn.Module):
    """Rounds pixels to 5 levels: the forward barely changes, the input gradient is exactly zero."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x * 4) / 4


class NaNGradient(torch.autograd.Function):
    """Identity forward, NaN backward: a broken custom layer."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


def by_name(results: list[CheckResult]) -> dict[str, CheckResult]:
    return {result.name.split(" (")[0]: result for result in results}


def test_checks_fail_on_a_gradient_masked_model(setup):
    masked = nn.Sequential(Quantise(), setup.model).eval()
    ctx = dataclasses.replace(setup.context(None, "Linf", 0), model=masked)
    checks = by_name(run_sanity_checks(ctx, setup.x, setup.y, batch_size=N, settings=CHEAP))
    assert not checks["input gradients"].passed and checks["input gradients"].numbers["ce"]["zero"] == N
    assert not checks["unbounded attack"].passed and checks["unbounded attack"].numbers["accuracy"] > 0.05
    # Square does not need gradients, so it beats the blinded PGD
    assert not checks["black box vs white box"].passed


def test_gradient_check_reports_nan(setup):
    class Broken(nn.Module):
        def forward(self, x):
            return setup.model(NaNGradient.apply(x))

    ctx = dataclasses.replace(setup.context(None, "Linf", 0), model=Broken())
    check = gradient_check(ctx, setup.x[:8], setup.y[:8], 8, SanitySettings())
    assert not check.passed and check.numbers["ce"]["non_finite"] == 8 and "NaN/Inf" in check.summary


def test_monotonicity_tolerance_and_one_example_slack():
    assert slack(0.02, 10) == 0.1 and slack(0.02, 1000) == 0.02
    rising = _monotone_check("t", "eps", [1, 2, 3], [0.5, 0.4, 0.45], 0.02, str)
    assert not rising.passed and "rises at eps=3" in rising.summary
    assert _monotone_check("t", "eps", [1, 2, 3], [0.5, 0.4, 0.41], 0.02, str).passed


def test_sanity_cli_reports_and_exit_status(run_dir, tmp_path, run_cli, monkeypatch):
    import advkit.sanity

    failing = CheckResult("unbounded attack", False, "accuracy 40.00% (expected ≤ 1.00%)", {"accuracy": 0.4})
    monkeypatch.setattr(advkit.sanity, "run_sanity_checks", lambda *args, **kwargs: [failing])
    code, out, err = run_cli(
        [
            "sanity",
            str(run_dir),
            "--n-examples",
            "8",
            "--quiet",
            "--device",
            "cpu",
            "--json",
            str(tmp_path / "s.json"),
            "--markdown",
            str(tmp_path / "s.md"),
        ]
    )
    assert code == 1
    assert "FAIL  unbounded attack  accuracy 40.00%" in out and "1 of 1 checks failed" in out
    report = json.loads((tmp_path / "s.json").read_text())
    assert report["passed"] is False and report["checks"][0]["numbers"] == {"accuracy": 0.4}
    assert "| unbounded attack | **FAIL** |" in (tmp_path / "s.md").read_text()


def test_sanity_cli_passes_on_an_honest_model(run_dir, tmp_path, run_cli):
    code, out, err = run_cli(
        [
            "sanity",
            str(run_dir),
            "--n-examples",
            str(N),
            "--queries",
            "200",
            "--quiet",
            "--device",
            "cpu",
            "--json",
            str(tmp_path / "s.json"),
        ]
    )
    assert code == 0, out + err
    assert out.count("PASS") == 5 and "all checks passed" in out
    checks = {check["name"].split(" (")[0]: check for check in json.loads((tmp_path / "s.json").read_text())["checks"]}
    assert checks["unbounded attack"]["numbers"]["accuracy"] <= 0.01
    accuracies = checks["accuracy vs ε"]["numbers"]["accuracy"]
    assert len(accuracies) == 5 and accuracies[0] > accuracies[-1]  # the curve was measured, and falls
    assert checks["input gradients"]["numbers"]["ce"]["zero"] == 0
