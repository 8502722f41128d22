"""Calibration, entropy and divergence numbers against hand-derived values; plots written and non-empty."""

import json
import math
import sys

import pytest
import torch

from advkit.analysis import (
    OutputAnalysis,
    entropy,
    js_divergence,
    match_input_shape,
    reliability_bins,
)
from advkit.cli import main
from advkit.errors import AdvkitError
from advkit.plots import entropy_histograms, overfitting_summary, reliability_diagram, training_curves

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"



def test_entropy_of_known_distributions():
    probs = torch.tensor([[1 / 3, 1 / 3, 1 / 3], [1.0, 0.0, 0.0], [0.5, 0.5, 0.0]])
    assert torch.allclose(entropy(probs), torch.tensor([math.log(3), 0.0, math.log(2)]))


def test_js_divergence_hand_values():
    p = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.3, 0.7]])
    q = torch.tensor([[0.0, 1.0], [0.5, 0.5], [0.3, 0.7]])
    # row 2: m = (0.75, 0.25); KL(p‖m) = ln(4/3); KL(q‖m) = ½ ln(2/3) + ½ ln 2
    expected = torch.tensor([math.log(2), 0.5 * (math.log(4 / 3) + 0.5 * math.log(2 / 3) + 0.5 * math.log(2)), 0.0])
    assert torch.allclose(js_divergence(p, q), expected, atol=1e-6)
    assert torch.allclose(js_divergence(p, q), js_divergence(q, p))


def test_ece_and_bins_hand_values():
    probs = torch.tensor([[0.9, 0.05, 0.05], [0.8, 0.1, 0.1], [0.4, 0.35, 0.25], [0.3, 0.45, 0.25]])
    labels = torch.tensor([0, 1, 0, 2])
    bins = reliability_bins(probs, labels, n_bins=2)
    assert bins.count.tolist() == [2, 2]
    assert torch.allclose(bins.confidence, torch.tensor([0.425, 0.85], dtype=torch.float64))
    assert torch.allclose(bins.accuracy, torch.tensor([0.5, 0.5], dtype=torch.float64))
    # ½·|0.5 − 0.425| + ½·|0.5 − 0.85|
    assert reliability_bins(probs, labels, n_bins=2).ece == pytest.approx(0.2125)


def test_bins_are_right_closed_and_empty_bins_do_not_count():
    probs = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    bins = reliability_bins(probs, torch.tensor([0, 0]), n_bins=4)
    assert bins.count.tolist() == [0, 1, 0, 1]  # 0.5 falls in (0.25, 0.5], 1.0 in (0.75, 1]
    assert bins.ece == pytest.approx(0.5 * 0.5 + 0.5 * 0.0)


def test_match_input_shape_converts_channels_and_size():
    grey = torch.rand(2, 1, 28, 28)
    rgb = match_input_shape(grey, (3, 8, 8), "test")
    assert rgb.shape == (2, 3, 8, 8) and torch.equal(rgb[:, 0], rgb[:, 2])
    colour = torch.zeros(1, 3, 8, 8)
    colour[:, 1] = 1.0
    assert torch.allclose(match_input_shape(colour, (1, 8, 8), "test"), torch.full((1, 1, 8, 8), 0.587))
    with pytest.raises(AdvkitError, match="4-channel"):
        match_input_shape(torch.rand(1, 4, 8, 8), (1, 8, 8), "test")


def _analysis():
    labels = torch.tensor([0, 1, 1, 0])
    clean = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.5, 0.5]])
    adversarial = torch.tensor([[0.4, 0.6], [0.2, 0.8], [0.9, 0.1], [0.5, 0.5]])
    return OutputAnalysis(labels, clean, adversarial, ood=torch.tensor([[0.5, 0.5], [0.5, 0.5]]), n_bins=5)


def binary_entropy(p):
    return -(p * math.log(p) + (1 - p) * math.log(1 - p))


def test_summary_numbers():
    summary = _analysis().summary()
    clean = summary["clean"]
    assert clean["accuracy"] == pytest.approx(0.75)  # argmax of (0.5, 0.5) is 0: correct
    assert clean["mean_entropy_wrong"] == pytest.approx(binary_entropy(0.4))
    assert clean["mean_entropy_correct"] == pytest.approx((binary_entropy(0.9) + binary_entropy(0.8) + math.log(2)) / 3)
    assert summary["adversarial"]["accuracy"] == pytest.approx(0.5)
    assert summary["ood"]["mean_entropy"] == pytest.approx(math.log(2))
    js = js_divergence(_analysis().clean.double(), _analysis().adversarial.double())
    assert summary["js_clean_adversarial"] == pytest.approx(float(js.mean()))
    assert js[1] == 0 and js[3] == 0 and js[0] > 0


def test_calibration_plots_are_png_files(tmp_path):
    analysis = _analysis()
    for function, name in ((reliability_diagram, "reliability.png"), (entropy_histograms, "entropy.png")):
        path = function(analysis, tmp_path / "figs" / name)
        data = path.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000


def _write_run(directory, robust, lr_values):
    directory.mkdir()
    records = [{"epoch": i + 1, "train_loss": 1.0, "train_acc": 0.5, "lr": lr, "val_clean_acc": 0.8,
                "val_robust_acc": r, "time_s": 1.0} for i, (r, lr) in enumerate(zip(robust, lr_values))]
    (directory / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_training_curves_summarise_best_versus_last(tmp_path):
    _write_run(tmp_path / "a", [0.2, 0.45, 0.40, 0.38], [0.1, 0.1, 0.01, 0.01])
    _write_run(tmp_path / "b", [0.1, 0.2, 0.3], [0.1, 0.1, 0.1])
    summaries = training_curves([tmp_path / "a", tmp_path / "b"], tmp_path / "curves.png")
    assert summaries["a"] == pytest.approx({"best_epoch": 2, "best": 0.45, "last_epoch": 4, "last": 0.38, "gap": 0.07})
    assert summaries["b"]["gap"] == 0 and summaries["b"]["best_epoch"] == 3
    assert (tmp_path / "curves.png").read_bytes().startswith(PNG_MAGIC)
    with pytest.raises(AdvkitError, match="no metrics.jsonl"):
        training_curves([tmp_path / "missing"], tmp_path / "x.png")
    with pytest.raises(AdvkitError, match="no 'val_robust_acc' column"):
        overfitting_summary([])


def test_plot_curves_cli(tmp_path, capsys, monkeypatch):
    _write_run(tmp_path / "run", [0.3, 0.5, 0.4], [0.1, 0.1, 0.01])
    out = tmp_path / "c.png"
    monkeypatch.setattr(sys, "argv", ["advkit", "plot", "curves", str(tmp_path / "run"), "--out", str(out),
                                      "--json", str(tmp_path / "c.json")])
    try:
        main()
    except SystemExit as exc:
        assert exc.code in (0, None)
    text = capsys.readouterr().out
    assert "best val robust 50.00% (epoch 2), last 40.00% (epoch 3), gap 10.00 points" in text
    assert out.stat().st_size > 5000
    assert json.loads((tmp_path / "c.json").read_text())["run"]["best_epoch"] == 2

