"""A study's grid file: shared settings, named rows, seeds and the evaluation of every run.

```yaml
out: runs/study            # where the run directories go: OUT/<row>/seed<k>
jobs: 2                    # runs (or evaluations) at a time
threads: 1                 # torch threads per job
seeds: [0, 1]
base: {dataset: digits, model: small-cnn, epochs: 3}
evaluate: {n_examples: 1000, best: [clean, autoattack], last: [clean, apgd-ce, apgd-t]}
runs:
  at: {}
  at-adr: {rectifier: adr}
  teacher: {model: resnet18, seeds: [0], evaluate: {best: [clean, apgd-ce, apgd-t]}}
  ard: {objective: ard, teacher: "{out}/teacher/seed0"}
  trades: {objective: trades, evaluate: {best: {1: [clean, apgd-ce, apgd-t]}}}
```

A row holds train settings (those of ``advkit train``'s config files) and may set its own ``seeds``. A
``{out}`` in a setting's text is the study's output folder; a run whose teacher is another run of the
study waits for that run to finish. A row's ``evaluate`` replaces the study's attack list of a
checkpoint, for every seed of the row or (a mapping seed → list) for some: an expensive attack can run
on one seed while the others get a cheaper one.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..config import TrainConfig, config_from_mapping, merge_options, normalise_options
from ..errors import AdvkitError

GRID_KEYS = ("out", "jobs", "threads", "seeds", "base", "evaluate", "runs")
EVALUATE_KEYS = ("n_examples", "batch_size", "seed", "best", "last")
CHECKPOINTS = ("best", "last")
Attacks = dict[str, tuple[str, ...]]  # checkpoint ("best", "last") -> the attack specs it is evaluated with


@dataclass(frozen=True)
class Evaluation:
    """What ``advkit eval`` runs on each checkpoint of every run (an empty list: that checkpoint is skipped),
    unless a row gives its own lists; the examples and seed are the same for every run."""

    attacks: Attacks
    n_examples: int = 1000
    batch_size: int = 500
    seed: int = 0


@dataclass
class StudyRun:
    """One training run of the grid: a row at one seed."""

    row: str
    seed: int
    directory: Path
    config: TrainConfig
    attacks: Attacks = field(default_factory=dict)  # its evaluation: the study's attack lists, or its row's
    depends_on: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.row}/seed{self.seed}"


@dataclass
class Study:
    source: Path
    out: Path
    jobs: int
    threads: int
    evaluation: Evaluation
    runs: list[StudyRun]


def file_error(source: Path, message: str) -> AdvkitError:
    return AdvkitError(f"{source}: {message}")


def read_yaml(source: Path, what: str) -> Any:
    """The YAML content of ``source``; a missing, unreadable or malformed file is one line naming ``what``."""
    if not source.is_file():
        raise AdvkitError(f"{what} not found: {source}")
    try:
        return yaml.safe_load(source.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise AdvkitError(f"{what} {source} is not readable UTF-8 text: {exc}") from None
    except yaml.YAMLError as exc:
        raise AdvkitError(f"{what} {source} is not valid YAML: {str(exc).splitlines()[0]}") from None


def check_keys(source: Path, where: str, data: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    for key in data:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; expected {', '.join(allowed)}"
            raise file_error(source, f"unknown key '{key}' in {where}{hint}")


def _count(source: Path, where: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise file_error(source, f"{where} must be an integer of at least {low}, got {value!r}")
    return value


def _seeds(source: Path, where: str, value: Any) -> list[int]:
    if not isinstance(value, list) or not value:
        raise file_error(source, f"{where} must be a non-empty list of integers, e.g. [0, 1]")
    seeds = [_count(source, f"each of {where}", seed, 0) for seed in value]
    if len(set(seeds)) != len(seeds):
        raise file_error(source, f"{where} lists a seed twice: {seeds}")
    return seeds


def mapping_of(source: Path, where: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise file_error(source, f"{where} must be a mapping, got {type(value).__name__}")
    return value


def _attack_list(source: Path, where: str, listed: Any) -> tuple[str, ...]:
    if not isinstance(listed, list) or not all(isinstance(item, str) and item.strip() for item in listed):
        raise file_error(source, f"{where} must be a list of attack specs, e.g. [clean, autoattack]")
    return tuple(listed)


def _evaluation(source: Path, data: dict[str, Any]) -> Evaluation:
    check_keys(source, "evaluate", data, EVALUATE_KEYS)
    return Evaluation(
        {
            checkpoint: _attack_list(source, f"evaluate.{checkpoint}", data.get(checkpoint, []))
            for checkpoint in CHECKPOINTS
        },
        n_examples=_count(source, "evaluate.n_examples", data.get("n_examples", 1000), 1),
        batch_size=_count(source, "evaluate.batch_size", data.get("batch_size", 500), 1),
        seed=_count(source, "evaluate.seed", data.get("seed", 0), 0),
    )


def _row_attacks(source: Path, row: str, data: dict[str, Any], seeds: list[int], study: Attacks) -> dict[int, Attacks]:
    """Each seed's attack lists: the study's, replaced by the row's ``evaluate`` where it gives one (a list
    for every seed, or a mapping from some of the row's seeds to lists)."""
    where = f"run '{row}': evaluate"
    check_keys(source, where, data, CHECKPOINTS)
    by_seed = {seed: dict(study) for seed in seeds}
    for checkpoint, given in data.items():
        per_seed = given if isinstance(given, dict) else dict.fromkeys(seeds, given)
        for seed, listed in per_seed.items():
            if seed not in by_seed:
                raise file_error(
                    source, f"{where}.{checkpoint} names seed {seed!r}, not one of the row's seeds {seeds}"
                )
            by_seed[seed][checkpoint] = _attack_list(source, f"{where}.{checkpoint}", listed)
    return by_seed


def _substitute(value: Any, out: Path) -> Any:
    if isinstance(value, str):
        return value.replace("{out}", str(out))
    if isinstance(value, dict):
        return {key: _substitute(item, out) for key, item in value.items()}
    if isinstance(value, list):
        return [_substitute(item, out) for item in value]
    return value


def _run_settings(
    source: Path, row: str, base: dict[str, Any], settings: dict[str, Any], seed: int, out: Path
) -> TrainConfig:
    merged = {**base, **settings, "seed": seed}
    merged["options"] = merge_options(
        normalise_options(base.get("options") or {}, str(source)),
        normalise_options(settings.get("options") or {}, str(source)),
    )
    config = config_from_mapping(_substitute(merged, out), f"{source}: run '{row}'")
    try:
        config.validate()
    except AdvkitError as exc:
        raise file_error(source, f"run '{row}': {exc}") from None
    return config


def load_study(path: str | Path, out: str | Path | None = None, jobs: int | None = None) -> Study:
    """Read and expand a grid file into its runs, checking every run's settings before anything starts."""
    source = Path(path)
    data = mapping_of(source, "the grid", read_yaml(source, "study grid"))
    check_keys(source, "the grid", data, GRID_KEYS)
    rows = mapping_of(source, "runs", data.get("runs"))
    if not rows:
        raise file_error(source, "'runs' is empty: name at least one run, e.g. runs: {at: {}}")
    out_dir = Path(out if out is not None else data.get("out", f"runs/{source.stem}"))
    base = mapping_of(source, "base", data.get("base"))
    if "seed" in base:
        raise file_error(source, "base sets 'seed'; list the seeds under 'seeds' instead")
    default_seeds = _seeds(source, "seeds", data.get("seeds", [0]))
    evaluation = _evaluation(source, mapping_of(source, "evaluate", data.get("evaluate")))
    runs: list[StudyRun] = []
    for row, raw in rows.items():
        settings = dict(mapping_of(source, f"run '{row}'", raw))
        if not isinstance(row, str) or not row or "/" in row or row.startswith("."):
            raise file_error(source, f"run name {row!r} must be a plain folder name")
        if "seed" in settings:
            raise file_error(source, f"run '{row}' sets 'seed'; give it 'seeds: [...]' instead")
        seeds = _seeds(source, f"run '{row}': seeds", settings.pop("seeds")) if "seeds" in settings else default_seeds
        row_evaluation = mapping_of(source, f"run '{row}': evaluate", settings.pop("evaluate", None))
        attacks = _row_attacks(source, row, row_evaluation, seeds, evaluation.attacks)
        for seed in seeds:
            config = _run_settings(source, row, base, settings, seed, out_dir)
            runs.append(StudyRun(row, seed, out_dir / row / f"seed{seed}", config, attacks[seed]))
    by_directory = {run.directory.resolve(): run for run in runs}
    for run in runs:
        teacher = by_directory.get(Path(run.config.teacher).resolve()) if run.config.teacher else None
        if teacher is not None:
            run.depends_on.append(teacher.name)
    return Study(
        source,
        out_dir,
        jobs if jobs is not None else _count(source, "jobs", data.get("jobs", 1), 1),
        _count(source, "threads", data.get("threads", 1), 1),
        evaluation,
        runs,
    )
