"""Calibration, entropy and divergence numbers against hand-derived values; the figures' content and files."""

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
from advkit.plots import (
    curves_figure,
    entropy_figure,
    entropy_histograms,
    overfitting_summary,
    reliability_diagram,
    reliability_figure,
    training_curves,
)

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


def axes_by_label(figure):
    return {ax.get_label(): ax for ax in figure.axes}


def test_reliability_figure_counts_every_example_under_its_diagram():
    analysis = _analysis()
    axes = axes_by_label(reliability_figure(analysis))
    for which in ("clean", "adversarial"):
        bars = axes[f"{which} counts"].patches
        assert [bar.get_height() for bar in bars] == analysis.bins(which).count.tolist()
        assert sum(bar.get_height() for bar in bars) == analysis.labels.shape[0]
        written = [int(text.get_text()) for text in axes[f"{which} counts"].texts]
        assert sum(written) == analysis.labels.shape[0] and 0 not in written  # empty bins carry no number
    assert all(ax.get_legend() is None for ax in axes.values())  # one legend, outside the diagrams


def test_entropy_histograms_are_outlines_whose_legend_matches_them():
    axes = axes_by_label(entropy_figure(_analysis()))
    for title, names in (
        ("clean inputs", ["correct", "wrong"]),
        ("clean vs adversarial vs OOD", ["clean", "adversarial", "out-of-distribution"]),
    ):
        ax = axes[title]
        outlines = ax.patches
        assert len(outlines) == len(names)
        assert not any(patch.get_fill() for patch in outlines)  # nothing blends into an unlisted colour
        assert len({patch.get_edgecolor() for patch in outlines}) == len(names)
        handles = {
            text.get_text().split(" (")[0]: handle
            for text, handle in zip(ax.get_legend().get_texts(), ax.get_legend().legend_handles, strict=True)
        }
        for name, patch in zip(names, outlines, strict=True):
            assert not handles[name].get_fill()
            assert handles[name].get_edgecolor() == patch.get_edgecolor()


def _write_run(directory, robust, lr_values, losses=None):
    directory.mkdir()
    losses = losses or [1.0] * len(robust)
    records = [
        {
            "epoch": i + 1,
            "train_loss": loss,
            "train_acc": 0.5,
            "lr": lr,
            "val_clean_acc": 0.8,
            "val_robust_acc": r,
            "time_s": 1.0,
        }
        for i, (r, lr, loss) in enumerate(zip(robust, lr_values, losses, strict=True))
    ]
    (directory / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_curves_draw_the_lr_as_steps_on_a_log_axis_and_the_training_loss(tmp_path):
    _write_run(tmp_path / "a", [0.2, 0.45, 0.40, 0.38], [0.1, 0.1, 0.01, 0.005], losses=[2.0, 1.5, 1.2, 1.1])
    _write_run(tmp_path / "b", [0.1, 0.2, 0.3], [0.1, 0.1, 0.1], losses=[2.2, 1.9, 1.7])
    figure, _ = curves_figure([tmp_path / "a", tmp_path / "b"])
    axes = axes_by_label(figure)
    assert axes["lr"].get_yscale() == "log"
    first, second = axes["lr"].lines
    assert first.get_drawstyle() == "steps-post"
    # epoch e's LR is held from e - 1 to e: 0.005 is a step of its own, not a ramp from 0.01
    assert list(first.get_xdata()) == [0, 1, 2, 3, 4] and list(first.get_ydata()) == [0.1, 0.1, 0.01, 0.005, 0.005]
    assert list(axes["train_loss"].lines[0].get_ydata()) == [2.0, 1.5, 1.2, 1.1]
    assert list(axes["train_loss"].lines[1].get_ydata()) == [2.2, 1.9, 1.7]
    assert first.get_color() == axes["train_loss"].lines[0].get_color() != second.get_color()
    assert all(ax.get_legend() is None for ax in axes.values()) and len(figure.legends) == 2
    runs = [text.get_text() for text in figure.legends[1].get_texts()]
    assert runs[0].startswith("a: best robust 45.00% (epoch 2), last 38.00%, gap 7.00 points")


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
    monkeypatch.setattr(
        sys,
        "argv",
        ["advkit", "plot", "curves", str(tmp_path / "run"), "--out", str(out), "--json", str(tmp_path / "c.json")],
    )
    try:
        main()
    except SystemExit as exc:
        assert exc.code in (0, None)
    text = capsys.readouterr().out
    assert "best val robust 50.00% (epoch 2), last 40.00% (epoch 3), gap 10.00 points" in text
    assert out.stat().st_size > 5000
    assert json.loads((tmp_path / "c.json").read_text())["run"]["best_epoch"] == 2
