"""What a sweep leaves in its folder: the trials table, best.yaml and Optuna's plots.

Everything is read from the study's database (states, values, parameters, each trial's configuration) and,
where they are on this machine, from the trials' run directories (the ``advkit summarize`` columns), so a
worker on any machine writes the whole table. Every file is written atomically.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from ..checkpoint import atomic_write_text
from ..studies.summary import Group, csv_table, markdown_table, read_run
from .driver import CONFIG, OUTCOME, RUN_FOLDER, SURPLUS, SweepSettings, describe, run_folder, short, tally
from .space import Sweep
from .storage import shown

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

PLOTS = (
    ("history.png", "plot_optimization_history"),
    ("importances.png", "plot_param_importances"),
    ("parallel-coordinates.png", "plot_parallel_coordinate"),
)
MIN_TRIALS_FOR_IMPORTANCE = 3


def objective_value(trial: FrozenTrial) -> float:
    """A COMPLETE trial's objective (Optuna types ``value`` as optional: other states may lack one)."""
    if trial.value is None:
        raise ValueError(f"trial {trial.number} has no objective value")
    return trial.value


def write_outputs(study: optuna.Study, sweep: Sweep, settings: SweepSettings) -> list[str]:
    """summary.md, summary.csv, best.yaml and the plots in ``settings.out``; returns what to tell the user."""
    trials = [trial for trial in study.get_trials(deepcopy=False) if not trial.user_attrs.get(SURPLUS)]
    out = settings.out
    complete = [trial for trial in trials if trial.state.name == "COMPLETE"]
    best = max(complete, key=objective_value) if complete else None
    header = _header(study, sweep, settings, trials, best)
    groups, leading = _table(trials, sweep, settings)
    atomic_write_text("\n".join(header) + "\n\n" + markdown_table(groups, leading, "trial"), out / "summary.md")
    atomic_write_text(csv_table(groups, leading, "trial"), out / "summary.csv")
    lines = header[1:] + [f"summary: {out / 'summary.md'}, {out / 'summary.csv'}"]
    if best is not None:
        atomic_write_text(best_config(study, best, sweep, settings), out / "best.yaml")
        lines.append(f"best configuration: {out / 'best.yaml'} (advkit train --config {out / 'best.yaml'} --out DIR)")
    return lines + write_plots(study, out, len(sweep.parameters))


def _header(
    study: optuna.Study,
    sweep: Sweep,
    settings: SweepSettings,
    trials: list[FrozenTrial],
    best: FrozenTrial | None,
) -> list[str]:
    states: dict[str, int] = {}
    for trial in trials:
        states[trial.state.name.lower()] = states.get(trial.state.name.lower(), 0) + 1
    seeds = f" (mean over seeds {', '.join(map(str, settings.seeds))})" if settings.seeds is not None else ""
    lines = [
        f"# Sweep {study.study_name}",
        "",
        f"- study: {study.study_name} in {shown(settings.storage)}",
        f"- objective: {sweep.objective.describe()}{seeds}, on the validation split",
        f"- trials: {tally(trials).ended} of {settings.trials} ended ("
        + ", ".join(f"{count} {state}" for state, count in sorted(states.items()))
        + ")",
    ]
    if best is not None:
        settings_text = describe(sweep.values(best.params))
        lines.append(f"- best: trial {best.number}, {100 * objective_value(best):.2f}%: {settings_text}")
    return lines


def _table(
    trials: list[FrozenTrial], sweep: Sweep, settings: SweepSettings
) -> tuple[list[Group], dict[str, list[str]]]:
    """One row per trial: state, objective, parameters, then the summary columns of its runs found here.

    A re-queued failure shows no runs: its copy, which continued the same folder, shows them."""
    requeued_as = {number: trial.number for trial in trials for number in trial.system_attrs.get("retry_history", [])}
    leading: dict[str, list[str]] = {"state": [], "objective (%)": []}
    leading.update({parameter.name: [] for parameter in sweep.parameters})
    groups = []
    for trial in trials:
        state = trial.state.name
        if trial.number in requeued_as:
            state += f" (re-queued as {requeued_as[trial.number]})"
        elif trial.state.name == "PRUNED" and OUTCOME in trial.user_attrs:
            state += trial.user_attrs[OUTCOME].removeprefix("pruned")  # PRUNED after epoch 1
        elif trial.state.name == "FAIL" and OUTCOME in trial.user_attrs:
            state += f": {trial.user_attrs[OUTCOME].removeprefix('failed: ')}"[:90]
        leading["state"].append(state)
        complete = trial.state.name == "COMPLETE"  # a pruned trial's value is only where it stopped: see its columns
        leading["objective (%)"].append(f"{100 * objective_value(trial):.2f}" if complete else "–")
        complete_params = all(axis in trial.params for parameter in sweep.parameters for axis in parameter.axis_names())
        values = sweep.values(trial.params) if complete_params else {}
        for parameter in sweep.parameters:
            leading[parameter.name].append(short(values[parameter.name]) if values else "–")
        runs = []
        if RUN_FOLDER in trial.user_attrs and trial.number not in requeued_as:
            root = run_folder(settings.out, trial.user_attrs[RUN_FOLDER])
            folders = [root / f"seed{seed}" for seed in settings.seeds] if settings.seeds is not None else [root]
            runs = [read_run(folder) for folder in folders if (folder / "metrics.jsonl").is_file()]
        groups.append(Group(str(trial.number), trial.user_attrs.get(CONFIG, {}), runs))
    return groups, leading


def best_config(study: optuna.Study, best: FrozenTrial, sweep: Sweep, settings: SweepSettings) -> str:
    """A runnable ``--config`` of the best trial (its first seed's run), with a header saying where it came from."""
    config = best.user_attrs[CONFIG]
    folder = run_folder(settings.out, best.user_attrs[RUN_FOLDER])
    if settings.seeds is not None:
        folder = folder / f"seed{config['seed']}"
    seeds = f" (mean over seeds {', '.join(map(str, settings.seeds))})" if settings.seeds is not None else ""
    lines = [
        f"# advkit sweep {study.study_name}: best trial {best.number}, {sweep.objective.describe()} "
        f"{100 * objective_value(best):.2f}%{seeds}",
        f"# parameters: {describe(sweep.values(best.params))}",
        f"# its run: {folder}",
        "# reproduce it: advkit train --config best.yaml --out runs/best",
    ]
    if settings.seeds is not None and len(settings.seeds) > 1:
        lines.append(f"# this file trains seed {config['seed']}; set seed: to train the trial's other seeds")
    return "\n".join(lines) + "\n" + yaml.safe_dump(config, sort_keys=False)


def write_plots(study: optuna.Study, out: Path, n_parameters: int) -> list[str]:
    """Optuna's optimisation history, parameter importances and parallel coordinates as PNG files."""
    import matplotlib
    from matplotlib import pyplot
    from optuna.visualization import matplotlib as plots

    from ..checkpoint import atomic_write_bytes

    complete = [trial for trial in study.get_trials(deepcopy=False) if trial.state.name == "COMPLETE"]
    if not complete:
        return ["plots: none yet (no trial completed)"]
    written, notes = [], []
    for name, function in PLOTS:
        if name == "importances.png" and (n_parameters < 2 or len(complete) < MIN_TRIALS_FOR_IMPORTANCE):
            notes.append(
                f"{name} skipped: parameter importances need at least 2 parameters and "
                f"{MIN_TRIALS_FOR_IMPORTANCE} completed trials"
            )
            continue
        if name == "parallel-coordinates.png" and len(complete) < 2:
            notes.append(f"{name} skipped: parallel coordinates need at least 2 completed trials")
            continue
        with matplotlib.rc_context():  # Optuna switches the global style to ggplot
            try:
                axes = getattr(plots, function)(study, target_name="objective")
            except (ValueError, RuntimeError) as exc:  # e.g. importances of parameters that never varied
                notes.append(f"{name} skipped: {exc}")
                continue
            figure = axes.figure
            figure.set_size_inches(9, 5.5)
            buffer = io.BytesIO()
            figure.savefig(buffer, dpi=110, format="png", bbox_inches="tight")
            pyplot.close(figure)
        atomic_write_bytes(buffer.getvalue(), out / name)
        written.append(str(out / name))
    return [f"plots: {', '.join(written)}"] + notes
