"""Keep a study's records where they outlive the machine, and put them back on a new one.

A study folder (``runs/...``) holds gigabytes of training state and is usually not kept: a VM is reset, a
cluster's scratch is purged. What a study's results need is small: each finished run's config.yaml,
study-config.yaml, metrics.jsonl and eval JSON, plus the weights of a checkpoint whose evaluation the grid
still asks for (or that another run learns from, a teacher). This script copies exactly that into
RECORDS/<row>/seed<k>/, with checkpoints slimmed to what ``advkit eval`` and a teacher load read (the
model, its dataset and config, and the weight-averaged model for ``select: wa`` runs; no optimiser state).
A run that has not finished keeps its whole last.pt instead, so that the study resumes it.

    python examples/studies/keep_records.py GRID RECORDS            # after runs finish: copy into RECORDS
    python examples/studies/keep_records.py GRID RECORDS --restore  # on a new machine: copy back

After ``--restore``, ``advkit study GRID`` skips the kept runs' training and runs their missing evaluations
from the kept checkpoints. docs/results.md keeps the Fashion-MNIST study's records this way.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import click

from advkit.checkpoint import atomic_save, safe_load
from advkit.errors import AdvkitError
from advkit.studies.driver import STUDY_CONFIG, evaluation_done, training_state
from advkit.studies.grid import Study, StudyRun, load_study

RECORD_FILES = ("config.yaml", STUDY_CONFIG, "metrics.jsonl", "eval-best.json", "eval-last.json")
CHECKPOINTS = ("best", "last")


def checkpoint_needed(run: StudyRun, which: str, study: Study) -> bool:
    """The grid still asks for this checkpoint's evaluation, or another run learns from this run's best.pt."""
    if which == "best" and any(run.name in other.depends_on for other in study.runs):
        return True
    return bool(run.attacks.get(which)) and not evaluation_done(run, which, study.evaluation)


def slim_checkpoint(source: Path, target: Path, keep_averages: bool) -> None:
    """The entries ``load_trained_model`` reads, without optimiser, scheduler and RNG state."""
    state = safe_load(source)
    kept = {key: state[key] for key in ("model", "dataset_info", "config") if key in state}
    if keep_averages and state.get("averages"):
        kept["averages"] = state["averages"]
    atomic_save(kept, target)


def keep(study: Study, records: Path) -> list[str]:
    """Copy every finished run's records (and the checkpoints still needed), and every stopped run's
    last.pt, into ``records``."""
    done: list[str] = []
    for run in study.runs:
        state = training_state(run)
        if state == "start":
            continue
        folder = records / run.row / f"seed{run.seed}"
        folder.mkdir(parents=True, exist_ok=True)
        for name in RECORD_FILES:
            if (run.directory / name).is_file():
                shutil.copy2(run.directory / name, folder / name)
        if state == "resume":  # stopped part-way: everything a resume reads
            shutil.copy2(run.directory / "last.pt", folder / "last.pt")
            done.append(f"{run.name} (unfinished, + last.pt to resume)")
            continue
        kept = []
        for which in CHECKPOINTS:
            source, target = run.directory / f"{which}.pt", folder / f"{which}.pt"
            if checkpoint_needed(run, which, study) and source.is_file():
                slim_checkpoint(source, target, keep_averages=run.config.select == "wa")
                kept.append(target.name)
            elif not checkpoint_needed(run, which, study):
                target.unlink(missing_ok=True)  # its evaluation is done: the weights are no longer needed
        done.append(f"{run.name}" + (f" (+ {', '.join(kept)})" if kept else ""))
    return done


def restore(study: Study, records: Path) -> list[str]:
    """Copy kept runs into the study folder where it does not hold them yet (a run there is never overwritten)."""
    done: list[str] = []
    for run in study.runs:
        folder = records / run.row / f"seed{run.seed}"
        if not (folder / STUDY_CONFIG).is_file() or (run.directory.is_dir() and any(run.directory.iterdir())):
            continue
        run.directory.mkdir(parents=True, exist_ok=True)
        for path in sorted(folder.iterdir()):
            shutil.copy2(path, run.directory / path.name)
        done.append(run.name)
    return done


@click.command(help=__doc__.split("\n\n")[0])
@click.argument("grid", type=click.Path(exists=True, dir_okay=False))
@click.argument("records", type=click.Path(file_okay=False))
@click.option("--out", type=click.Path(file_okay=False), help="the study folder [the grid's out: setting]")
@click.option("--restore", "direction", flag_value="restore", help="copy RECORDS back into the study folder")
def main(grid: str, records: str, out: str | None, direction: str | None) -> None:
    try:
        study = load_study(grid, out)
        names = (restore if direction == "restore" else keep)(study, Path(records))
    except AdvkitError as error:
        click.echo(f"Error: {error}", err=True)
        sys.exit(2)
    verb = "restored into " + str(study.out) if direction == "restore" else "kept in " + records
    click.echo(f"{len(names)} run(s) {verb}" + "".join(f"\n  {name}" for name in names))


if __name__ == "__main__":
    main()
