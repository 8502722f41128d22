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
    from matplotlib.typing import LineStyleType

    from .analysis import OutputAnalysis


def new_figure(rows: int, cols: int, width: float, height: float, **subplots: Any) -> tuple[Figure, Any]:
    """A constrained-layout figure and its rows × cols axes; ``subplots`` go to ``Figure.subplots``."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    return figure, figure.subplots(rows, cols, squeeze=False, **subplots)


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
        raise AdvkitError(
            f"{run_dir} holds no metrics.jsonl: is it an advkit run directory whose first epoch finished?"
        )
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
    return {
        "best_epoch": best["epoch"],
        "best": best[key],
        "last_epoch": last["epoch"],
        "last": last[key],
        "gap": best[key] - last[key],
    }


# metrics.jsonl column, line style, legend name of the accuracy panel's curves
ACCURACY_CURVES: tuple[tuple[str, LineStyleType, str], ...] = (
    ("val_robust_acc", "-", "robust"),
    ("val_clean_acc", "--", "clean"),
    ("val_wa_robust_acc", ":", "WA robust"),
    ("val_wa_clean_acc", "-.", "WA clean"),
)


def training_curves(runs: list[str | Path], out: str | Path, labels: list[str] | None = None) -> dict[str, Any]:
    """Write ``curves_figure`` of ``runs`` to ``out``; returns each run's best/last summary, keyed by label."""
    figure, summaries = curves_figure(runs, labels)
    save_figure(figure, out)
    return summaries


def curves_figure(runs: list[str | Path], labels: list[str] | None = None) -> tuple[Figure, dict[str, Any]]:
    """Validation accuracy (clean and robust, WA too if kept), best-so-far minus current robust accuracy,
    training loss and LR per epoch, one colour per run; returns the figure and each run's best/last summary.

    The panels' axes carry labels ("accuracy", "gap", "train_loss", "lr") so that callers and tests find
    them. The LR is drawn as steps on a log axis: it is piecewise constant, and a decay by 10 must read as
    a step, not as a ramp to zero. Legends sit outside the panels, off the curves: the line-style key
    above them, the runs (with best and last robust accuracy) below.
    """
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    labels = labels or [Path(run).name or str(run) for run in runs]
    figure, axes = new_figure(2, 2, 12, 8.4, sharex=True)
    (acc_ax, gap_ax), (loss_ax, lr_ax) = axes
    summaries = {}
    run_handles, styles_used = [], set()
    for index, (run, label) in enumerate(zip(runs, labels, strict=True)):
        color = f"C{index % 10}"
        records = read_metrics(run)
        epochs = [record["epoch"] for record in records]
        for key, style, name in ACCURACY_CURVES:
            if key in records[0]:
                acc_ax.plot(epochs, [100 * r[key] for r in records], style, color=color)
                styles_used.add(name)
        summary = overfitting_summary(records)
        summaries[label] = summary
        acc_ax.plot(
            [summary["best_epoch"]],
            [100 * summary["best"]],
            "o",
            color=color,
            markerfacecolor="none",
            markersize=9,
            markeredgewidth=1.5,
        )
        best_so_far, gaps = -math.inf, []
        for record in records:
            best_so_far = max(best_so_far, record["val_robust_acc"])
            gaps.append(100 * (best_so_far - record["val_robust_acc"]))
        gap_ax.plot(epochs, gaps, "-", color=color)
        loss_ax.plot(epochs, [r["train_loss"] for r in records], ".-", color=color)
        # the LR recorded for epoch e is the one of its last step: drawn over the epoch, from e − 1 to e
        lrs = [r["lr"] for r in records]
        lr_ax.plot([epochs[0] - 1, *epochs], [*lrs, lrs[-1]], "-", color=color, drawstyle="steps-post")
        run_handles.append(
            Line2D(
                [],
                [],
                color=color,
                linewidth=2.5,
                label=f"{label}: best robust {100 * summary['best']:.2f}% (epoch {summary['best_epoch']}), "
                f"last {100 * summary['last']:.2f}%, gap {100 * summary['gap']:.2f} points",
            )
        )
    acc_ax.set(ylabel="validation accuracy (%)", title="validation accuracy (○ best robust)")
    gap_ax.set(ylabel="points", title="best-so-far minus current robust accuracy")
    top = max(1.0, 1.15 * max(line.get_ydata().max() for line in gap_ax.lines))
    gap_ax.set_ylim(-0.03 * top, top)  # a little below 0, so that a run without overfitting stays visible
    loss_ax.set(
        xlabel="epoch (x = e: the end of epoch e)", ylabel="training loss (mean over the epoch)", title="training loss"
    )
    lr_ax.set(
        xlabel="epoch (x = e: the end of epoch e)",
        ylabel="learning rate (log scale)",
        title="learning rate (each epoch's last step)",
        yscale="log",
    )
    for ax, name in ((acc_ax, "accuracy"), (gap_ax, "gap"), (loss_ax, "train_loss"), (lr_ax, "lr")):
        ax.set_label(name)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.grid(alpha=0.15, which="minor")
    style_handles = [
        Line2D([], [], linestyle=style, color="black", label=name)
        for _, style, name in ACCURACY_CURVES
        if name in styles_used
    ]
    style_handles.append(
        Line2D([], [], linestyle="none", marker="o", markerfacecolor="none", color="black", label="best robust epoch")
    )
    figure.legend(handles=style_handles, loc="outside upper center", fontsize="small", ncols=len(style_handles))
    figure.legend(handles=run_handles, loc="outside lower center", fontsize="small")
    return figure, summaries


def reliability_diagram(analysis: OutputAnalysis, out: str | Path) -> Path:
    """Write ``reliability_figure`` of ``analysis`` to ``out``."""
    return save_figure(reliability_figure(analysis), out)


def reliability_figure(analysis: OutputAnalysis) -> Figure:
    """Accuracy against confidence per bin, clean and adversarial; the gap to the diagonal is miscalibration.

    Under each diagram, the examples per bin: a bin of three examples says little, and the ECE weighs
    bins by their counts. Axes are labelled "clean", "clean counts", "adversarial", "adversarial counts".
    """
    import torch
    from matplotlib.patches import Patch

    figure, axes = new_figure(2, 2, 10, 6.4, sharex=True, height_ratios=(3, 1))
    for column, which in enumerate(("clean", "adversarial")):
        ax, count_ax = axes[0][column], axes[1][column]
        bins = analysis.bins(which)
        edges = bins.edges.numpy()
        width = edges[1] - edges[0]
        filled = (bins.count > 0).numpy()
        ax.bar(
            edges[:-1][filled],
            bins.accuracy[filled].numpy(),
            width=width,
            align="edge",
            edgecolor="black",
            facecolor="C0",
            alpha=0.7,
        )
        low = torch.minimum(bins.accuracy, bins.confidence)[filled].numpy()
        ax.bar(
            edges[:-1][filled],
            (bins.confidence - bins.accuracy).abs()[filled].numpy(),
            bottom=low,
            width=width,
            align="edge",
            facecolor="none",
            edgecolor="red",
            hatch="//",
        )
        ax.plot([0, 1], [0, 1], "k--", linewidth=1)
        ax.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy", title=f"{which}: ECE {100 * bins.ece:.2f}%")
        counts = bins.count.numpy()
        count_ax.bar(edges[:-1], counts, width=width, align="edge", facecolor="0.6", edgecolor="black")
        for left, count in zip(edges[:-1], counts, strict=True):
            if count:
                count_ax.annotate(
                    f"{count:.0f}",
                    (left + width / 2, count),
                    xytext=(0, 1),
                    textcoords="offset points",
                    ha="center",
                    va="bottom",
                    fontsize="x-small",
                )
        count_ax.set(
            yscale="log",
            ylim=(0.5, 4 * max(counts.max(), 1)),
            xlabel="confidence (max probability)",
            ylabel="examples",
            title=f"examples per bin (n = {counts.sum():.0f}; log scale)",
        )
        ax.set_label(which)
        count_ax.set_label(f"{which} counts")
    figure.legend(
        handles=[
            Patch(facecolor="C0", alpha=0.7, edgecolor="black", label="accuracy of the bin"),
            Patch(facecolor="none", edgecolor="red", hatch="//", label="gap to its mean confidence"),
            Patch(facecolor="0.6", edgecolor="black", label="examples in the bin"),
        ],
        loc="outside lower center",
        ncols=3,
        fontsize="small",
    )
    return figure


def entropy_histograms(analysis: OutputAnalysis, out: str | Path) -> Path:
    """Write ``entropy_figure`` of ``analysis`` to ``out``."""
    return save_figure(entropy_figure(analysis), out)


def entropy_figure(analysis: OutputAnalysis) -> Figure:
    """Output entropy of correct vs wrong predictions (clean inputs), and clean vs adversarial (vs OOD).

    Histograms are outlines of their own colour and dash: overlapping filled ones blend into colours the
    legend does not show, and a dash keeps a curve visible where another one covers it.
    """
    from .analysis import entropy

    figure, axes = new_figure(1, 2, 10, 4.2)
    left, right = axes[0]
    top = math.log(analysis.clean.shape[1])  # float32 entropies can exceed ln C by an ulp: clamp
    edges = [top * i / 30 for i in range(31)]
    clean_entropy = entropy(analysis.clean)
    correct = analysis.correct("clean")
    for ax, groups, title in (
        (left, [("correct", clean_entropy[correct]), ("wrong", clean_entropy[~correct])], "clean inputs"),
        (
            right,
            [("clean", clean_entropy), ("adversarial", entropy(analysis.adversarial))]
            + ([("out-of-distribution", entropy(analysis.ood))] if analysis.ood is not None else []),
            "clean vs adversarial" + (" vs OOD" if analysis.ood is not None else ""),
        ),
    ):
        for index, (name, values) in enumerate(groups):
            if values.numel():
                ax.hist(
                    values.double().clamp(0.0, top).numpy(),
                    bins=edges,
                    density=True,
                    histtype="step",
                    linewidth=1.8,
                    color=f"C{index}",
                    linestyle=("-", "--", "-.")[index],
                    label=f"{name} (n={values.numel()})",
                )
        ax.axvline(top, color="0.4", linestyle=":", linewidth=1, label=f"maximum entropy, ln {analysis.clean.shape[1]}")
        ax.set(xlabel="entropy (nats)", ylabel="density", title=title)
        ax.set_label(title)
        ax.legend(fontsize="small", loc="upper left")
    return figure
