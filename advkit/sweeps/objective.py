"""What a sweep maximises: one number per trial from its runs' validation metrics (never the test split).

The columns are those of ``advkit summarize`` (:mod:`advkit.studies.summary`), so a trial's value is what
the summary of its run directories shows: the best-epoch or last-epoch validation robust accuracy, or a
weighted mix of clean and robust accuracy at the best epoch, averaged over the trial's seeds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..studies.grid import check_keys, file_error
from ..studies.summary import RunResult, mean_std, validation_values

METRICS = ("best_val_robust", "last_val_robust", "mix")
OBJECTIVE_KEYS = ("metric", "clean_weight")


@dataclass(frozen=True)
class Objective:
    """``metric``: best_val_robust (the epoch best.pt keeps), last_val_robust, or mix:
    clean_weight · clean + (1 − clean_weight) · robust, both at the best epoch."""

    metric: str = "best_val_robust"
    clean_weight: float = 0.0

    def of_values(self, values: dict[str, float]) -> float:
        """The objective of one run from its summary columns."""
        if self.metric == "last_val_robust":
            return values["val robust (last)"]
        if self.metric == "mix":
            return (
                self.clean_weight * values["val clean (best)"] + (1.0 - self.clean_weight) * values["val robust (best)"]
            )
        return values["val robust (best)"]

    def so_far(self, config: dict[str, Any], records: list[dict[str, Any]]) -> float:
        """The objective of a run as if it ended after the last of ``records``: what the pruner is told."""
        return self.of_values(validation_values(config, records))

    def of_runs(self, runs: list[RunResult]) -> float:
        """The trial's value: the mean over its runs (its seeds)."""
        return mean_std([self.of_values(run.values) for run in runs])[0]

    def describe(self) -> str:
        if self.metric == "mix":
            return (
                f"{self.clean_weight:g}·clean + {1 - self.clean_weight:g}·robust validation accuracy at the best epoch"
            )
        return f"{self.metric.split('_')[0]}-epoch validation robust accuracy"

    def to_dict(self) -> dict[str, Any]:
        return (
            {"metric": self.metric, "clean_weight": self.clean_weight}
            if self.metric == "mix"
            else {"metric": self.metric}
        )


def parse_objective(source: Path, data: dict[str, Any]) -> Objective:
    """The ``objective:`` mapping of a space file (default: the best-epoch validation robust accuracy)."""
    check_keys(source, "objective", data, OBJECTIVE_KEYS)
    metric = data.get("metric", "best_val_robust")
    if metric not in METRICS:
        raise file_error(source, f"objective.metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if metric != "mix":
        if "clean_weight" in data:
            raise file_error(source, "objective.clean_weight applies to metric: mix only")
        return Objective(metric)
    weight = data.get("clean_weight")
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0.0 <= weight <= 1.0:
        raise file_error(source, f"objective metric mix needs clean_weight, a number in [0, 1], got {weight!r}")
    return Objective(metric, float(weight))
