"""Many runs as one table: group by configuration minus the seed, mean ± std of each metric, Markdown and CSV.

A run directory contributes its ``config.yaml`` (the grouping key), ``metrics.jsonl`` (validation curves,
time per epoch) and any ``eval-<checkpoint>.json`` that ``advkit eval --json`` wrote into it (test-split
results of its best or last checkpoint).
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ..config import SETTING_DEFAULTS, TRACKING_SETTINGS, config_from_mapping, select_components
from ..errors import AdvkitError
from ..options import plain
from ..plots import new_figure, read_metrics, save_figure
from ..registry import component_options, default_registry

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# Settings that do not change what a run computes, and the seed that a group averages over.
NOT_CONFIGURATION = (
    frozenset({"seed", "data_dir", "device", "download", "teacher_cache", "checkpoint_every", "threads", "software"})
    | TRACKING_SETTINGS
)
EVAL_PREFIX = "eval-"


@dataclass
class RunResult:
    """One run directory's metrics, flattened to ``{column: value}``."""

    path: Path
    config: dict[str, Any]
    values: dict[str, float]
    curve: list[tuple[int, float]]
    attack_sets: dict[str, tuple[str, ...]] = field(default_factory=dict)  # checkpoint -> the attacks it scored

    @property
    def finished(self) -> bool:
        """Every epoch of its config ran (a run still training, stopped or pruned has fewer)."""
        return self.values["epochs"] >= int(self.config.get("epochs", SETTING_DEFAULTS["epochs"]))

    def progress(self) -> str:
        return f"{self.path} (epoch {self.values['epochs']:.0f} of {self.config.get('epochs')})"


@dataclass
class Summary:
    """The groups of a set of runs, and the unfinished runs that were left out of them."""

    groups: list[Group]
    unfinished: list[RunResult]

    def note(self) -> str:
        """Lines under the table naming what was not counted (empty when every run finished and every group
        scored its seeds alike)."""
        lines = [
            f"{group.label}: {', '.join(f'test robust ({checkpoint})' for checkpoint in mixed)} not averaged, its "
            "seeds were scored with different attacks (the per-attack columns hold each)"
            for group in self.groups
            if (mixed := group.mixed_checkpoints())
        ]
        if self.unfinished:
            lines.append(f"Not counted, unfinished: {', '.join(run.progress() for run in self.unfinished)}.")
        return "".join(f"\n{line}\n" for line in lines)


@dataclass
class Group:
    """Runs that differ only in their seed."""

    label: str
    config: dict[str, Any]
    runs: list[RunResult] = field(default_factory=list)

    def column(self, name: str) -> list[float]:
        """Every seed's value of a metric; none for a headline robust column (or the gap) whose checkpoint the
        seeds scored with different attacks: a mean over AutoAttack and APGD would mean neither."""
        mixed = self.mixed_checkpoints()
        if any(name == f"test robust ({checkpoint})" for checkpoint in mixed) or (mixed and name == "test gap"):
            return []
        return [run.values[name] for run in self.runs if name in run.values]

    def mixed_checkpoints(self) -> list[str]:
        """Checkpoints that the group's seeds were scored on with different sets of attacks."""
        checkpoints = sorted({checkpoint for run in self.runs for checkpoint in run.attack_sets})
        return [
            checkpoint
            for checkpoint in checkpoints
            if len({run.attack_sets[checkpoint] for run in self.runs if checkpoint in run.attack_sets}) > 1
        ]


@dataclass(frozen=True)
class Column:
    """A metric column and how to print it (accuracies as percentages)."""

    name: str
    kind: str  # "accuracy", "seconds" or "count"


def find_run_dirs(paths: Iterable[str | Path]) -> list[Path]:
    """Each path is a run directory (holds config.yaml) or a folder searched for run directories."""
    found: list[Path] = []
    for given in paths:
        path = Path(given)
        if not path.is_dir():
            raise AdvkitError(f"{path} is not a folder: pass run directories or folders that hold them")
        if (path / "config.yaml").is_file():
            found.append(path)
            continue
        inside = sorted(
            config.parent for config in path.rglob("config.yaml") if (config.parent / "metrics.jsonl").is_file()
        )
        if not inside:
            raise AdvkitError(f"{path} holds no advkit run (no config.yaml with a metrics.jsonl beside it)")
        found.extend(inside)
    return list(dict.fromkeys(found))


def validation_keys(config: dict[str, Any]) -> tuple[str, str]:
    """The metrics.jsonl keys (robust, clean) of the model that picks best.pt: the weight average's under
    ``select: wa``."""
    key = "val_wa_robust_acc" if config.get("select") == "wa" else "val_robust_acc"
    return key, key.replace("robust", "clean")


def read_run(path: Path) -> RunResult:
    """The metrics of one run directory whose first epoch finished."""
    try:
        config = yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise AdvkitError(f"{path / 'config.yaml'} is not readable YAML: {exc}") from None
    if not isinstance(config, dict):
        raise AdvkitError(f"{path / 'config.yaml'} does not hold a mapping of settings")
    records = read_metrics(path)
    if not records:
        raise AdvkitError(f"{path / 'metrics.jsonl'} is empty: no epoch of this run finished")
    key, _ = validation_keys(config)
    values = validation_values(config, records)
    attack_sets = {}
    for checkpoint, report in _eval_reports(path).items():
        values.update(_eval_values(checkpoint, report))
        attack_sets[checkpoint] = tuple(attack for attack in report["accuracy"] if attack != "clean")
    headline = {checkpoint: values.get(f"test robust ({checkpoint})") for checkpoint in ("best", "last")}
    if headline["best"] is not None and headline["last"] is not None:
        values["test gap"] = headline["best"] - headline["last"]
    return RunResult(path, config, values, [(record["epoch"], record[key]) for record in records], attack_sets)


def validation_values(config: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, float]:
    """The validation columns of a run from its per-epoch records (at least one): best epoch (as best.pt
    keeps it), last epoch, their gap, the time per epoch."""
    key, clean_key = validation_keys(config)
    best = max(records, key=lambda record: record[key])  # the first best epoch, as best.pt keeps it
    last = records[-1]
    return {
        "epochs": float(last["epoch"]),
        "best epoch": float(best["epoch"]),
        "val clean (best)": best[clean_key],
        "val robust (best)": best[key],
        "val robust (last)": last[key],
        "val gap": best[key] - last[key],
        "s/epoch": statistics.fmean(record["time_s"] for record in records),
    }


def _eval_reports(path: Path) -> dict[str, dict[str, Any]]:
    reports = {}
    for file in sorted(path.glob(f"{EVAL_PREFIX}*.json")):
        try:
            report = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise AdvkitError(f"{file} is not a readable advkit eval JSON: {exc}") from None
        if not isinstance(report, dict) or not isinstance(report.get("accuracy"), dict):
            raise AdvkitError(f"{file} is not an advkit eval report (it has no 'accuracy' mapping)")
        reports[file.stem[len(EVAL_PREFIX) :]] = report
    return reports


def _eval_values(checkpoint: str, report: dict[str, Any]) -> dict[str, float]:
    """Test accuracy per attack, and the headline robust accuracy: the worst case over the attacks run."""
    values = {f"test {attack} ({checkpoint})": accuracy for attack, accuracy in report["accuracy"].items()}
    attacks = [attack for attack in report["accuracy"] if attack != "clean"]
    if attacks:
        worst = report.get("worst_case")
        values[f"test robust ({checkpoint})"] = worst if worst is not None else report["accuracy"][attacks[0]]
    return values


def configuration_of(config: Mapping[str, Any]) -> dict[str, Any]:
    """What a run computes: its settings less the seed and bookkeeping, with the settings and component
    options that an older advkit did not write yet filled in with their defaults, so that a run from before a
    setting existed groups with newer runs of the same configuration."""
    filled = {**SETTING_DEFAULTS, **config}
    filled["options"] = _options_with_defaults(filled)
    return {key: value for key, value in filled.items() if key not in NOT_CONFIGURATION}


def _options_with_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """config.yaml's per-role options, each completed with the values training would give its component
    today (declared defaults, and the settings routed to it such as the attack's training bn_mode); a run
    whose components are not installed here keeps what it wrote."""
    written = config.get("options") or {}
    try:
        components = select_components(config_from_mapping(config, "config.yaml"), default_registry())
    except AdvkitError:
        return written
    options = {}
    for role, values in written.items():
        declared = component_options(components.classes[role]) if role in components.classes else ()
        defaults = {option.name: plain(option.default) for option in declared}
        options[role] = {**defaults, **components.options.get(role, {}), **values}  # as routed in training
    return options


def group_runs(runs: list[RunResult]) -> list[Group]:
    """Group by every setting except the seed (and those that do not change a run), in first-seen order."""
    groups: dict[str, Group] = {}
    for run in runs:
        configuration = configuration_of(run.config)
        key = json.dumps(configuration, sort_keys=True, default=str)
        groups.setdefault(key, Group("", configuration)).runs.append(run)
    result = list(groups.values())
    for group, label in zip(result, _labels(result), strict=True):
        group.label = label
    return result


def _labels(groups: list[Group]) -> list[str]:
    """A group's name: its runs' common parent folder (a study's row) if that tells groups apart, else the
    settings in which it differs from the others."""
    parents = [{run.path.parent.name for run in group.runs} for group in groups]
    names = [next(iter(names)) for names in parents if len(names) == 1]
    if len(names) == len(groups) and len(set(names)) == len(names):
        return names
    differing = sorted(
        {
            key
            for group in groups
            for key in group.config
            if any(other.config.get(key) != group.config.get(key) for other in groups)
        }
    )
    labels = []
    for group in groups:
        parts = [f"{key}={_short(group.config.get(key))}" for key in differing if key != "options"]
        if "options" in differing:
            parts.append("options differ")
        labels.append(", ".join(parts) or "all runs")
    return labels


def _short(value: Any) -> str:
    return json.dumps(value, default=str) if isinstance(value, (dict, list)) else str(value)


def columns_of(groups: list[Group]) -> list[Column]:
    """Validation columns, then the test columns the eval reports provide, then the gap and time."""
    present = {name for group in groups for run in group.runs for name in run.values}
    fixed = [
        Column("val clean (best)", "accuracy"),
        Column("val robust (best)", "accuracy"),
        Column("val robust (last)", "accuracy"),
        Column("val gap", "accuracy"),
        Column("best epoch", "count"),
    ]
    tests = sorted(
        (name for name in present if name.startswith("test ") and name != "test gap"),
        key=lambda name: (not name.endswith("(best)"), "robust" in name, name),
    )
    tail = [Column("test gap", "accuracy")] if "test gap" in present else []
    return fixed + [Column(name, "accuracy") for name in tests] + tail + [Column("s/epoch", "seconds")]


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single run)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _format(values: list[float], kind: str, n_runs: int) -> str:
    """A cell over the seeds that have the metric, saying how many when that is not all ``n_runs`` of them
    (an evaluation still to run on some seeds must not read as a mean over all)."""
    if not values:
        return "–"
    mean, std = mean_std(values)
    if kind == "accuracy":
        cell = f"{100 * mean:.1f} ± {100 * std:.1f}" if len(values) > 1 else f"{100 * mean:.1f}"
    elif kind == "seconds":
        cell = f"{mean:.0f}"
    else:
        cell = f"{mean:.1f}" if len(values) > 1 and not float(mean).is_integer() else f"{mean:.0f}"
    return cell if len(values) == n_runs else f"{cell} ({len(values)} of {n_runs})"


def markdown_table(groups: list[Group], leading: Mapping[str, Sequence[str]] | None = None, label: str = "run") -> str:
    """One row per group: mean ± std over its seeds (accuracies in %, n = number of seeds).

    ``leading``: more columns after the first (``label``), one cell per group (a sweep's trial state and parameters).
    """
    columns = columns_of(groups)
    leading = leading or {}
    header = [label, *leading, "n"] + [column.name for column in columns]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] * (2 + len(leading)) + ["---:"] * len(columns)) + "|",
    ]
    for index, group in enumerate(groups):
        cells = [group.label, *(values[index] for values in leading.values()), str(len(group.runs))] + [
            _format(group.column(column.name), column.kind, len(group.runs)) for column in columns
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def csv_table(groups: list[Group], leading: Mapping[str, Sequence[Any]] | None = None, label: str = "run") -> str:
    """Machine-readable form: mean, std and the number of seeds that have it per metric, and the run
    directories of each group."""
    columns = columns_of(groups)
    leading = leading or {}
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        [label, *leading, "n"]
        + [f"{column.name} {stat}" for column in columns for stat in ("mean", "std", "n")]
        + ["run_dirs"]
    )
    for index, group in enumerate(groups):
        row: list[Any] = [group.label, *(values[index] for values in leading.values()), len(group.runs)]
        for column in columns:
            values = group.column(column.name)
            row += [*mean_std(values), len(values)] if values else ["", "", 0]
        writer.writerow(row + [" ".join(str(run.path) for run in group.runs)])
    return buffer.getvalue()


def summarize_runs(paths: Iterable[str | Path], include_unfinished: bool = False) -> Summary:
    """Read and group every run under ``paths``; runs that have not trained every epoch are left out (a
    mean over seeds at different epochs would mean nothing) unless ``include_unfinished``."""
    runs = [read_run(path) for path in find_run_dirs(paths)]
    unfinished = [] if include_unfinished else [run for run in runs if not run.finished]
    return Summary(group_runs([run for run in runs if include_unfinished or run.finished]), unfinished)


def headline_column(groups: list[Group]) -> str:
    """The metric a bar chart shows: test robust accuracy of the best checkpoint where evaluated, else validation."""
    return "test robust (best)" if all(group.column("test robust (best)") for group in groups) else "val robust (best)"


def plot_summary(groups: list[Group], out: str | Path) -> Path:
    """Validation robust accuracy per epoch (mean line, ±std band over seeds) and each group's headline
    metric as mean ± std with every seed's value drawn as a point (a dot plot, not bars: the axis is
    zoomed to the values, and a collapsed seed stays visible instead of hiding in a wide error bar)."""
    return save_figure(summary_figure(groups), out)


def summary_figure(groups: list[Group]) -> Figure:
    """The figure that :func:`plot_summary` saves."""
    figure, axes = new_figure(1, 2, 13.0, 4.8)
    curves, dots = axes[0][0], axes[0][1]
    for group in groups:
        by_epoch: dict[int, list[float]] = {}
        for run in group.runs:
            for epoch, value in run.curve:
                by_epoch.setdefault(epoch, []).append(value)
        epochs = sorted(by_epoch)
        stats = [mean_std(by_epoch[epoch]) for epoch in epochs]
        means = [100 * mean for mean, _ in stats]
        line = curves.plot(epochs, means, label=f"{group.label} (n={len(group.runs)})")[0]
        curves.fill_between(
            epochs,
            [m - 100 * s for m, (_, s) in zip(means, stats, strict=True)],
            [m + 100 * s for m, (_, s) in zip(means, stats, strict=True)],
            color=line.get_color(),
            alpha=0.2,
        )
    curves.set_xlabel("epoch")
    curves.set_ylabel("validation robust accuracy (%)")
    curves.set_title("validation robust accuracy (mean ± std over seeds)")
    curves.grid(alpha=0.3)
    curves.legend(fontsize=7)
    metric = headline_column(groups)
    values = [[100 * value for value in group.column(metric)] for group in groups]
    stats = [mean_std(group.column(metric)) for group in groups]
    positions = list(range(len(groups)))
    for position, seeds in zip(positions, values, strict=True):
        # beside the diamond, not under it: with a small std the diamond would hide every seed
        dots.plot([position - 0.2] * len(seeds), seeds, "o", color="0.55", markersize=4, zorder=2)
    dots.errorbar(
        positions,
        [100 * mean for mean, _ in stats],
        yerr=[100 * std for _, std in stats],
        fmt="D",
        color="tab:blue",
        capsize=5,
        zorder=3,
    )
    for position, (mean, _) in zip(positions, stats, strict=True):
        dots.annotate(
            f"{100 * mean:.1f}",
            (position, 100 * mean),
            xytext=(8, 0),
            textcoords="offset points",
            va="center",
            fontsize=8,
        )
    dots.set_xticks(positions, [group.label for group in groups], rotation=35, ha="right", fontsize=8)
    dots.set_xlim(-0.6, len(groups) - 0.4)
    low = min(min(seeds + [100 * (m - s)]) for seeds, (m, s) in zip(values, stats, strict=True))
    high = max(max(seeds + [100 * (m + s)]) for seeds, (m, s) in zip(values, stats, strict=True))
    margin = max(1.0, 0.15 * (high - low))
    dots.set_ylim(max(0.0, low - margin), min(100.0, high + margin))
    dots.set_ylabel(f"{metric} (%)")
    dots.set_title(f"{metric}: mean ± std (diamond), each seed (dot, left of it)")
    dots.grid(axis="y", alpha=0.3)
    return figure
