"""PNG figures: training curves of runs, reliability diagrams, entropy histograms.

matplotlib is imported on first use and drawn through ``matplotlib.figure.Figure`` (the Agg canvas),
never through pyplot, so plotting touches no global backend state and needs no display.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .checkpoint import atomic_write_bytes
from .errors import AdvkitError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .analysis import OutputAnalysis


def new_figure(rows: int, cols: int, width: float, height: float) -> tuple[Figure, Any]:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    return figure, figure.subplots(rows, cols, squeeze=False)


def save_figure(figure: Figure, path: str | Path) -> Path:
    """Render to memory, then write atomically: a failed write never leaves half a PNG."""
    buffer = io.BytesIO()
    figure.savefig(buffer, dpi=120, format="png")
    atomic_write_bytes(buffer.getvalue(), path)
    return Path(path)


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The per-epoch records a run wrote to ``metrics.jsonl``."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise AdvkitError(f"{run_dir} holds no metrics.jsonl: is it an advkit run directory whose first epoch finished?")
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except json.JSONDecodeError as exc:
        raise AdvkitError(f"{path} is not valid JSON lines: {exc}") from None


def overfitting_summary(records: list[dict[str, Any]], key: str = "val_robust_acc") -> dict[str, Any]:
    """Best versus last validation robust accuracy: the robust-overfitting gap (Rice et al. 2020)."""
    if not records or key not in records[0]:
        raise AdvkitError(f"metrics have no '{key}' column")
    best = max(records, key=lambda record: record[key])
    last = records[-1]
    return {"best_epoch": best["epoch"], "best": best[key], "last_epoch": last["epoch"], "last": last[key],
            "gap": best[key] - last[key]}


def training_curves(runs: list[str | Path], out: str | Path, labels: list[str] | None = None) -> dict[str, Any]:
    """Validation accuracy (clean and robust, WA too if kept), best-so-far minus current robust accuracy, LR.

    Returns each run's best/last summary, keyed by label.
    """
    labels = labels or [Path(run).name or str(run) for run in runs]
    figure, axes = new_figure(1, 3, 15, 4.2)
    acc_ax, gap_ax, lr_ax = axes[0]
    summaries = {}
    colors = [f"C{i % 10}" for i in range(len(runs))]
    for run, label, color in zip(runs, labels, colors):
        records = read_metrics(run)
        epochs = [record["epoch"] for record in records]
        for key, style, name in (("val_robust_acc", "-", "robust"), ("val_clean_acc", "--", "clean"),
                                 ("val_wa_robust_acc", ":", "WA robust"), ("val_wa_clean_acc", "-.", "WA clean")):
            if key in records[0]:
                acc_ax.plot(epochs, [100 * r[key] for r in records], style, color=color, label=f"{label} {name}")
        summary = overfitting_summary(records)
        summaries[label] = summary
        acc_ax.plot([summary["best_epoch"]], [100 * summary["best"]], "o", color=color)
        best_so_far, gaps = -math.inf, []
        for record in records:
            best_so_far = max(best_so_far, record["val_robust_acc"])
            gaps.append(100 * (best_so_far - record["val_robust_acc"]))
        gap_ax.plot(epochs, gaps, "-", color=color, label=f"{label} (last {summary['gap'] * 100:.2f})")
        lr_ax.plot(epochs, [r["lr"] for r in records], "-", color=color, label=label)
    acc_ax.set(xlabel="epoch", ylabel="validation accuracy (%)", title="clean and robust accuracy (● best)")
    gap_ax.set(xlabel="epoch", ylabel="points", title="best-so-far minus current robust accuracy")
    lr_ax.set(xlabel="epoch", ylabel="learning rate (end of epoch)", title="learning rate")
    from matplotlib.ticker import MaxNLocator

    for ax in (acc_ax, gap_ax, lr_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    save_figure(figure, out)
    return summaries


def reliability_diagram(analysis: OutputAnalysis, out: str | Path) -> Path:
    """Accuracy against confidence per bin, clean and adversarial; the gap to the diagonal is miscalibration."""
    import torch

    figure, axes = new_figure(1, 2, 10, 4.5)
    for ax, which in zip(axes[0], ("clean", "adversarial")):
        bins = analysis.bins(which)
        edges = bins.edges.numpy()
        width = edges[1] - edges[0]
        filled = bins.count > 0
        ax.bar(edges[:-1][filled.numpy()], bins.accuracy[filled].numpy(), width=width, align="edge",
               edgecolor="black", alpha=0.7, label="accuracy")
        low = torch.minimum(bins.accuracy, bins.confidence)[filled].numpy()
        ax.bar(edges[:-1][filled.numpy()], (bins.confidence - bins.accuracy)[filled].abs().numpy(), bottom=low,
               width=width, align="edge", facecolor="none", edgecolor="red", hatch="//",
               label="gap to mean confidence")
        ax.plot([0, 1], [0, 1], "k--", linewidth=1)
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy",
               title=f"{which}: ECE {100 * bins.ece:.2f}%")
        ax.legend(loc="upper left", fontsize="small")
    return save_figure(figure, out)


def entropy_histograms(analysis: OutputAnalysis, out: str | Path) -> Path:
    """Output entropy of correct vs wrong predictions (clean inputs), and clean vs adversarial (vs OOD)."""
    from .analysis import entropy

    figure, axes = new_figure(1, 2, 10, 4.2)
    left, right = axes[0]
    top = math.log(analysis.clean.shape[1])  # float32 entropies can exceed ln C by an ulp: clamp
    edges = [top * i / 30 for i in range(31)]
    clean_entropy = entropy(analysis.clean)
    correct = analysis.correct("clean")
    for ax, groups, title in (
        (left, [("correct", clean_entropy[correct]), ("wrong", clean_entropy[~correct])], "clean inputs"),
        (right, [("clean", clean_entropy), ("adversarial", entropy(analysis.adversarial))]
         + ([("out-of-distribution", entropy(analysis.ood))] if analysis.ood is not None else []),
         "clean vs adversarial" + (" vs OOD" if analysis.ood is not None else "")),
    ):
        for name, values in groups:
            if values.numel():
                ax.hist(values.double().clamp(0.0, top).numpy(), bins=edges, alpha=0.5, density=True,
                        label=f"{name} (n={values.numel()})")
        ax.set(xlabel="entropy (nats)", ylabel="density", title=title)
        ax.legend(fontsize="small")
    return save_figure(figure, out)
