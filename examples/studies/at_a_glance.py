"""Print a study's at-a-glance table: every grid row, with each seed's test numbers side by side.

``advkit summarize`` averages each metric over a row's seeds, which is right when every seed was scored the
same way. A study whose evaluation is trimmed scores some seeds' best checkpoints with AutoAttack and others
with APGD-CE + APGD-T (docs/results.md, "The evaluation plan"), and a mean over the two would mix attacks.
This table therefore keeps the best checkpoints' test numbers per seed, names the attack of each, and
shows how far each run got. With ``--stages`` it adds a table of AutoAttack's robust accuracy after each
of its four attacks, for every run that recorded them: what FAB-T and Square add to APGD-CE + APGD-T.

    python examples/studies/at_a_glance.py GRID [--out RECORDS_OR_STUDY_FOLDER] [--stages]

docs/results.md's tables come from ``... examples/studies/fashion-mnist.yaml --out docs/results/records``.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from advkit.errors import AdvkitError
from advkit.studies.grid import Study, StudyRun, load_study
from advkit.studies.summary import RunResult, mean_std, read_run

ATTACK_SETS = {("autoattack",): "AA", ("apgd-ce", "apgd-t"): "APGD-CE/T"}
AUTOATTACK_STAGES = ("apgd-ce", "apgd-t", "fab-t", "square")


def percent(values: list[float]) -> str:
    """Mean ± sample std in %, or the single value with the seed count said."""
    if not values:
        return "–"
    mean, std = mean_std(values)
    return f"{100 * mean:.1f} ± {100 * std:.1f}" if len(values) > 1 else f"{100 * mean:.1f} (1 seed)"


def read_report(run: StudyRun, checkpoint: str) -> dict[str, Any] | None:
    path = run.directory / f"eval-{checkpoint}.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdvkitError(f"{path} is not a readable advkit eval JSON: {exc}") from None


def attack_label(report: dict[str, Any]) -> str:
    attacks = tuple(name for name in report["accuracy"] if name != "clean")
    return ATTACK_SETS.get(attacks, "/".join(attacks))


def best_cell(run: StudyRun, result: RunResult | None) -> str:
    """``s0 AA 66.9 (clean 78.7)``, or where the run stands when its best checkpoint is not scored yet."""
    prefix = f"s{run.seed}"
    if result is None:
        return f"{prefix} not started"
    if not result.finished:
        return f"{prefix} training, epoch {result.values['epochs']:.0f} of {run.config.epochs}"
    report = read_report(run, "best")
    if report is None:
        return f"{prefix} to run" if run.attacks.get("best") else f"{prefix} not in the plan"
    clean = report["accuracy"].get("clean")
    clean_text = f" (clean {100 * clean:.1f})" if clean is not None else ""
    return f"{prefix} {attack_label(report)} {100 * report['worst_case']:.1f}{clean_text}"


def read_results(runs: list[StudyRun]) -> list[RunResult | None]:
    return [read_run(run.directory) if (run.directory / "metrics.jsonl").is_file() else None for run in runs]


def glance_table(study: Study) -> str:
    """One line per grid row: seeds finished, best validation robust accuracy (mean ± std over finished
    seeds), each seed's best checkpoint on test, and the last checkpoints' worst case over their attacks."""
    lines = [
        "| row | seeds finished | val robust (best) | best checkpoint, test (per seed) | worst case (last) |",
        "|---|---|---:|---|---:|",
    ]
    rows = list(dict.fromkeys(run.row for run in study.runs))
    for row in rows:
        runs = [run for run in study.runs if run.row == row]
        results = read_results(runs)
        pairs = list(zip(runs, results, strict=True))
        finished = [result for result in results if result is not None and result.finished]
        seeds = ", ".join(str(run.seed) for run, result in pairs if result is not None and result.finished)
        last = [report["worst_case"] for run in runs if (report := read_report(run, "last")) is not None]
        cells = [
            row,
            seeds or "–",
            percent([result.values["val robust (best)"] for result in finished]),
            "; ".join(best_cell(run, result) for run, result in pairs),
            percent(last),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def stages_table(study: Study) -> str:
    """AutoAttack's robust accuracy after each of its attacks, per run that recorded them (eval JSON
    ``stages``), and what FAB-T and Square took beyond APGD-CE + APGD-T, in points."""
    lines = [
        "| run | clean | " + " | ".join(f"after {stage}" for stage in AUTOATTACK_STAGES) + " | FAB-T + Square took |",
        "|---|" + "---:|" * (len(AUTOATTACK_STAGES) + 2),
    ]
    for run in study.runs:
        report = read_report(run, "best")
        stages = (report or {}).get("stages") or {}
        if not all(stage in stages for stage in AUTOATTACK_STAGES):
            continue
        cells = [run.name, f"{100 * report['accuracy']['clean']:.1f}"] + [
            f"{100 * stages[stage]:.1f}" for stage in AUTOATTACK_STAGES
        ]
        cells.append(f"{100 * (stages['apgd-t'] - stages['square']):.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


@click.command(help=__doc__.split("\n\n")[0])
@click.argument("grid", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", type=click.Path(file_okay=False), help="the records or study folder [the grid's out: setting]")
@click.option("--stages", is_flag=True, help="add AutoAttack's per-attack table")
def main(grid: str, out: str | None, stages: bool) -> None:
    try:
        study = load_study(grid, out)
        text = glance_table(study) + ("\n" + stages_table(study) if stages else "")
    except AdvkitError as error:
        click.echo(f"Error: {error}", err=True)
        sys.exit(2)
    click.echo(text, nl=False)


if __name__ == "__main__":
    main()
