"""Studies: --train-size, the study model, `advkit summarize` on hand-made runs, and the `advkit study` driver.

The driver tests run real `advkit train`/`advkit eval` children on digits for one or two epochs with a cheap
attack; that is the CI's smoke test of the whole study path (expand, run, skip, resume, evaluate, summarise).
"""

from __future__ import annotations

import csv
import io
import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from advkit import AdvkitError, Trainer
from advkit.data import load_dataset
from advkit.data.datasets import FASHION_MNIST_INFO
from advkit.interrupts import StopRequest
from advkit.models import build_model
from advkit.studies.driver import Driver, Selection, Task, commands, evaluation_done, plan, run_study, training_state
from advkit.studies.grid import load_study
from advkit.studies.summary import (
    csv_table,
    group_runs,
    headline_column,
    markdown_table,
    plot_summary,
    read_run,
    summarize_runs,
    summary_figure,
)

# --- --train-size ------------------------------------------------------------------------------------------


def test_train_size_is_a_seeded_subset_disjoint_from_validation_and_nested():
    full = load_dataset("digits", "data", val_size=100, seed=3)
    small = load_dataset("digits", "data", val_size=100, seed=3, train_size=200)
    larger = load_dataset("digits", "data", val_size=100, seed=3, train_size=400)
    assert len(small.train) == 200 and len(larger.train) == 400 and len(full.train) == len(full.train.x)
    assert torch.equal(small.val.x, full.val.x)  # the validation split does not depend on --train-size

    def rows(part):
        return {tuple(image.flatten().tolist()) for image in part.x}

    val, few, more = rows(small.val), rows(small.train), rows(larger.train)
    assert not few & val and not more & val
    assert few <= more  # one permutation: a larger subset contains the smaller one
    other_seed = load_dataset("digits", "data", val_size=100, seed=4, train_size=200)
    assert rows(other_seed.train) != few


def test_train_size_larger_than_what_is_left_is_one_clear_error():
    full = load_dataset("digits", "data", val_size=100)
    with pytest.raises(AdvkitError, match=rf"--train-size {len(full.train) + 1} is more than the {len(full.train)}"):
        load_dataset("digits", "data", val_size=100, train_size=len(full.train) + 1)
    with pytest.raises(AdvkitError, match="--train-size must be a count of at least 1"):
        load_dataset("digits", "data", train_size=0)


def test_split_seed_shares_one_split_across_run_seeds(tmp_path):
    from advkit import TrainConfig

    def trainer(seed):
        config = TrainConfig(
            dataset="digits",
            model="small-cnn",
            eps=0.1,
            epochs=1,
            train_size=300,
            val_size=100,
            split_seed=7,
            seed=seed,
            device="cpu",
        )
        return Trainer(config, tmp_path / f"s{seed}", progress=False)

    first, second = trainer(0), trainer(1)
    assert torch.equal(first.val_loader.x, second.val_loader.x)
    assert torch.equal(first.train_loader.x, second.train_loader.x) and len(first.train_loader.x) == 300


# --- the study model -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, width", [("cnn3", 1), ("cnn3-wide", 2)])
def test_cnn3_has_the_issue_shape(name, width):
    model = build_model(name, FASHION_MNIST_INFO)
    c1, c2, hidden = 32 * width, 64 * width, 128 * width
    convs = 9 * (1 * c1 + c1 * c2 + c2 * c2)  # 3×3 kernels, no conv biases (BatchNorm follows)
    batch_norms = 2 * (c1 + c2 + c2)
    linears = (c2 * 7 * 7 * hidden + hidden) + (hidden * 10 + 10)  # 64·7·7 = 3136 features at width 1
    assert sum(p.numel() for p in model.parameters()) == convs + batch_norms + linears
    assert model(torch.rand(3, 1, 28, 28)).shape == (3, 10)


# --- advkit summarize on hand-made runs -----------------------------------------------------------------------


def make_run(
    folder: Path,
    *,
    seed: int,
    objective: str,
    robust: list[float],
    eval_best: dict | None = None,
    eval_last: dict | None = None,
    select: str = "model",
    epochs: int | None = None,
) -> Path:
    folder.mkdir(parents=True)
    config = {
        "dataset": "digits",
        "objective": objective,
        "seed": seed,
        "epochs": len(robust) if epochs is None else epochs,
        "select": select,
        "device": "cpu",
        "checkpoint_every": None,
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    key = "val_wa_robust_acc" if select == "wa" else "val_robust_acc"
    lines = [
        {
            "epoch": epoch,
            key: value,
            key.replace("robust", "clean"): value + 0.2,
            "time_s": 10.0 * epoch,
            "val_robust_acc": value,
            "val_clean_acc": value + 0.2,
        }
        for epoch, value in enumerate(robust, start=1)
    ]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    for name, report in (("best", eval_best), ("last", eval_last)):
        if report is not None:
            (folder / f"eval-{name}.json").write_text(json.dumps(report))
    return folder


def report(clean: float, *robust: tuple[str, float], worst: float | None = None) -> dict:
    accuracy = {"clean": clean, **dict(robust)}
    return {"accuracy": accuracy, "worst_case": worst if worst is not None else min(accuracy.values())}


@pytest.fixture
def three_runs(tmp_path):
    study = tmp_path / "study"
    make_run(
        study / "at" / "seed0",
        seed=0,
        objective="at",
        robust=[0.50, 0.60, 0.55],
        eval_best=report(0.80, ("autoattack", 0.50)),
        eval_last=report(0.78, ("apgd-ce", 0.47), ("apgd-t", 0.45)),
    )
    make_run(
        study / "at" / "seed1",
        seed=1,
        objective="at",
        robust=[0.52, 0.64, 0.58],
        eval_best=report(0.82, ("autoattack", 0.54)),
        eval_last=report(0.80, ("apgd-ce", 0.50), ("apgd-t", 0.49)),
    )
    make_run(study / "trades" / "seed0", seed=0, objective="trades", robust=[0.40, 0.50])
    return study


def test_read_run_takes_best_by_validation_and_the_worst_case_as_test_robust(three_runs):
    run = read_run(three_runs / "at" / "seed0")
    assert run.values["best epoch"] == 2 and run.values["val robust (best)"] == pytest.approx(0.60)
    assert run.values["val robust (last)"] == pytest.approx(0.55)
    assert run.values["val gap"] == pytest.approx(0.05)
    assert run.values["test robust (best)"] == pytest.approx(0.50)
    assert run.values["test robust (last)"] == pytest.approx(0.45)  # min over APGD-CE and APGD-T
    assert run.values["test gap"] == pytest.approx(0.05)
    assert run.values["s/epoch"] == pytest.approx(20.0)  # mean of 10, 20, 30


def test_select_wa_runs_are_read_on_the_weight_averaged_columns(tmp_path):
    folder = make_run(tmp_path / "wa" / "seed0", seed=0, objective="at", robust=[0.3, 0.7, 0.6], select="wa")
    run = read_run(folder)
    assert run.values["val robust (best)"] == pytest.approx(0.7) and run.values["val clean (best)"] == pytest.approx(
        0.9
    )


def test_summarize_groups_by_configuration_minus_seed_with_mean_and_sample_std(three_runs):
    groups = summarize_runs([three_runs]).groups
    assert [(group.label, len(group.runs)) for group in groups] == [("at", 2), ("trades", 1)]
    table = markdown_table(groups)
    at_row = next(line for line in table.splitlines() if line.startswith("| at |"))
    best = [0.60, 0.64]
    assert f"{100 * statistics.fmean(best):.1f} ± {100 * statistics.stdev(best):.1f}" in at_row  # 62.0 ± 2.8
    assert "52.0 ± 2.8" in at_row  # AutoAttack of the best checkpoints: 0.50, 0.54
    rows = list(csv.DictReader(io.StringIO(csv_table(groups))))
    assert float(rows[0]["test robust (last) mean"]) == pytest.approx((0.45 + 0.49) / 2)
    assert float(rows[0]["test robust (last) std"]) == pytest.approx(statistics.stdev([0.45, 0.49]))
    assert rows[1]["test robust (best) mean"] == "" and rows[1]["n"] == "1"


def test_a_metric_that_only_some_seeds_have_says_how_many(tmp_path):
    make_run(
        tmp_path / "at" / "seed0", seed=0, objective="at", robust=[0.6], eval_best=report(0.8, ("autoattack", 0.5))
    )
    make_run(tmp_path / "at" / "seed1", seed=1, objective="at", robust=[0.7])
    table = markdown_table(summarize_runs([tmp_path]).groups)
    row = next(line.split(" | ") for line in table.splitlines() if line.startswith("| at |"))
    header = table.splitlines()[0].split(" | ")
    assert row[header.index("val robust (best)")] == "65.0 ± 7.1"  # both seeds: no count
    assert row[header.index("test autoattack (best)")] == "50.0 (1 of 2)"
    (csv_row,) = csv.DictReader(io.StringIO(csv_table(summarize_runs([tmp_path]).groups)))
    assert (csv_row["n"], csv_row["test autoattack (best) n"], csv_row["val robust (best) n"]) == ("2", "1", "2")


def test_seeds_scored_with_different_attacks_are_not_averaged_into_one_robust_cell(tmp_path):
    make_run(
        tmp_path / "at" / "seed0",
        seed=0,
        objective="at",
        robust=[0.6],
        eval_best=report(0.8, ("autoattack", 0.50)),
        eval_last=report(0.8, ("apgd-ce", 0.50), ("apgd-t", 0.49)),
    )
    make_run(
        tmp_path / "at" / "seed1",
        seed=1,
        objective="at",
        robust=[0.7],
        eval_best=report(0.8, ("apgd-ce", 0.58), ("apgd-t", 0.56)),
        eval_last=report(0.8, ("apgd-ce", 0.52), ("apgd-t", 0.51)),
    )
    summary = summarize_runs([tmp_path])
    table = markdown_table(summary.groups)
    header = table.splitlines()[0].split(" | ")
    row = next(line.split(" | ") for line in table.splitlines() if line.startswith("| at |"))
    assert row[header.index("test robust (best)")] == "–"  # not (50 + 56) / 2 = 53.0, a mean of two attacks
    assert row[header.index("test autoattack (best)")] == "50.0 (1 of 2)"
    assert row[header.index("test apgd-t (best)")] == "56.0 (1 of 2)"
    assert row[header.index("test robust (last)")] == "50.0 ± 1.4"  # the last checkpoints agree: averaged
    assert row[header.index("test gap")] == "–"  # nor best minus last, where the best checkpoints mix attacks
    assert summary.note() == (
        "\nat: test robust (best) not averaged, its seeds were scored with different attacks "
        "(the per-attack columns hold each)\n"
    )
    assert headline_column(summary.groups) == "val robust (best)"  # the plot falls back to validation


def test_labels_fall_back_to_the_differing_settings(tmp_path):
    make_run(tmp_path / "a", seed=0, objective="at", robust=[0.5])
    make_run(tmp_path / "b", seed=0, objective="trades", robust=[0.4])
    labels = [group.label for group in group_runs([read_run(tmp_path / "a"), read_run(tmp_path / "b")])]
    assert labels == ["objective=at", "objective=trades"]


def test_a_run_written_before_a_setting_or_option_existed_groups_with_newer_runs(tmp_path):
    from advkit import TrainConfig

    config = TrainConfig(
        dataset="digits",
        model="small-cnn",
        eps=0.1,
        epochs=1,
        train_size=64,
        val_size=32,
        batch_size=32,
        device="cpu",
        seed=0,
    )
    config.options = {"attack": {"steps": 1}}
    newer = tmp_path / "newer"
    Trainer(config, newer, progress=False).fit()
    written = yaml.safe_load((newer / "config.yaml").read_text())
    assert written["norm"] == "Linf" and "bn_mode" in written["options"]["attack"]

    def copy(name, edit):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "metrics.jsonl").write_text((newer / "metrics.jsonl").read_text())
        (folder / "config.yaml").write_text(yaml.safe_dump(edit(json.loads(json.dumps(written)))))
        return read_run(folder)

    def as_older(values):  # what an advkit without --norm and the attack's bn_mode option wrote
        del values["norm"]
        del values["options"]["attack"]["bn_mode"]
        return {**values, "seed": 1}

    def other_steps(values):
        values["options"]["attack"]["steps"] = 2
        return values

    older, different = copy("older", as_older), copy("different", other_steps)
    groups = group_runs([read_run(newer), older, different])
    assert [[run.path.name for run in group.runs] for group in groups] == [["newer", "older"], ["different"]]


def test_an_unfinished_run_is_named_and_left_out_of_the_means_unless_asked_for(three_runs, tmp_path, run_cli):
    make_run(three_runs / "at" / "seed2", seed=2, objective="at", robust=[0.10], epochs=3)  # 1 of 3 epochs so far
    summary = summarize_runs([three_runs])
    assert [(group.label, len(group.runs)) for group in summary.groups] == [("at", 2), ("trades", 1)]
    assert summary.note() == f"\nNot counted, unfinished: {three_runs / 'at' / 'seed2'} (epoch 1 of 3).\n"
    everything = summarize_runs([three_runs], include_unfinished=True)
    assert [len(group.runs) for group in everything.groups] == [3, 1] and everything.note() == ""
    code, stdout, stderr = run_cli(["summarize", str(three_runs)])
    assert code == 0 and "| at | 2 |" in stdout and "Not counted, unfinished:" in stdout
    code, stdout, stderr = run_cli(["summarize", str(three_runs / "at" / "seed2"), "--csv", str(tmp_path / "s.csv")])
    assert code == 2 and "no run has trained every epoch yet" in stderr and "--include-unfinished" in stderr
    assert not (tmp_path / "s.csv").exists()


def test_summary_plot_is_a_png(three_runs, tmp_path):
    path = plot_summary(summarize_runs([three_runs]).groups, tmp_path / "summary.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_summary_dot_plot_draws_every_seed_and_the_mean_of_each_group(three_runs):
    groups = summarize_runs([three_runs]).groups  # at: val robust (best) 60 and 64; trades: 50 (no eval)
    dots = summary_figure(groups).axes[1]
    seeds = sorted(
        (round(x, 6), round(y, 6)) for line in dots.lines if line.get_marker() == "o" for x, y in line.get_xydata()
    )
    # each group's seeds sit just left of its diamond (at x = 0, 1), so a small std cannot hide them
    assert seeds == [(-0.2, 50.0), (0.8, 60.0), (0.8, 64.0)] or seeds == [(-0.2, 60.0), (-0.2, 64.0), (0.8, 50.0)]
    means = {text.get_text() for text in dots.texts}
    assert means == {"62.0", "50.0"}
    low, high = dots.get_ylim()
    assert 0 < low < 50 and 62 + 2.83 < high <= 100  # zoomed to the values; every seed and whisker (std 2.83) inside
    assert "val robust (best)" in dots.get_ylabel()


def test_summarize_cli_writes_csv_and_refuses_a_folder_without_runs(three_runs, tmp_path):
    from click.testing import CliRunner

    from advkit.cli import cli

    result = CliRunner().invoke(cli, ["summarize", str(three_runs), "--csv", str(tmp_path / "s.csv")])
    assert result.exit_code == 0, result.output
    assert "| at | 2 |" in result.output and (tmp_path / "s.csv").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    process = subprocess.run([sys.executable, "-m", "advkit", "summarize", str(empty)], capture_output=True, text=True)
    assert process.returncode == 2 and process.stderr.count("\n") == 1 and "holds no advkit run" in process.stderr


# --- grid files ------------------------------------------------------------------------------------------------

BASE = {
    "dataset": "digits",
    "model": "small-cnn",
    "eps": 0.1,
    "epochs": 1,
    "batch_size": 64,
    "lr": 0.05,
    "val_steps": 1,
    "device": "cpu",
    "options": {"attack": {"steps": 2}},
}


def write_grid(path: Path, runs: dict, **top) -> Path:
    grid = {
        "out": str(path.parent / "study"),
        "jobs": 2,
        "seeds": [0],
        "base": BASE,
        "evaluate": {"n_examples": 60, "best": ["clean", "fgsm"], "last": []},
        "runs": runs,
        **top,
    }
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return path


@pytest.mark.parametrize(
    "change, message",
    [
        ({"jbos": 2}, "unknown key 'jbos' in the grid; did you mean 'jobs'"),
        ({"seeds": [0, 0]}, "seeds lists a seed twice"),
        ({"seeds": "0"}, "seeds must be a non-empty list of integers"),
        ({"runs": {"at": {"epohcs": 3}}}, "run 'at': unknown setting 'epohcs'; did you mean 'epochs'"),
        ({"runs": {"at": {"epochs": 0}}}, "run 'at': --epochs must be at least 1"),
        ({"runs": {"at": {"seed": 1}}}, "run 'at' sets 'seed'"),
        ({"runs": {}}, "'runs' is empty"),
        ({"evaluate": {"best": "autoattack"}}, "evaluate.best must be a list of attack specs"),
        ({"runs": {"at": {"evaluate": {"bets": []}}}}, "unknown key 'bets' in run 'at': evaluate; did you mean 'best'"),
        ({"runs": {"at": {"evaluate": {"best": {3: ["pgd"]}}}}}, "best names seed 3, not one of the row's seeds [0]"),
        ({"runs": {"at": {"evaluate": {"last": {0: "pgd"}}}}}, "run 'at': evaluate.last must be a list of attack"),
    ],
)
def test_grid_mistakes_are_one_line_errors_naming_the_place(tmp_path, change, message):
    grid = write_grid(tmp_path / "grid.yaml", {"at": {}})
    data = yaml.safe_load(grid.read_text())
    data.update(change)
    grid.write_text(yaml.safe_dump(data))
    with pytest.raises(AdvkitError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_study(grid)


def test_grid_expands_rows_by_seed_and_puts_a_teacher_first(tmp_path):
    grid = write_grid(
        tmp_path / "grid.yaml",
        {"at": {}, "ard": {"objective": "ard", "teacher": "{out}/teacher/seed0"}, "teacher": {"seeds": [0]}},
        seeds=[0, 1],
    )
    study = load_study(grid)
    assert [run.name for run in study.runs] == ["at/seed0", "at/seed1", "ard/seed0", "ard/seed1", "teacher/seed0"]
    ard = study.runs[2]
    assert ard.config.teacher == str(tmp_path / "study" / "teacher" / "seed0") and ard.depends_on == ["teacher/seed0"]
    assert ard.config.seed == 0 and ard.directory == tmp_path / "study" / "ard" / "seed0"
    keys = [task.key for task in plan(study)]
    assert keys[0] == "train teacher/seed0"
    assert keys.index("eval-best at/seed0") == keys.index("train at/seed0") + 1  # rows complete early


def test_a_row_replaces_the_study_attack_lists_for_all_or_some_of_its_seeds(tmp_path, run_cli):
    grid = write_grid(
        tmp_path / "grid.yaml",
        {
            "at": {},
            "cheap": {"evaluate": {"best": ["clean"], "last": ["fgsm"]}},
            "mixed": {"evaluate": {"best": {1: ["clean", "pgd"]}}},
        },
        seeds=[0, 1],
    )
    attacks = {run.name: run.attacks for run in load_study(grid).runs}
    study_lists = {"best": ("clean", "fgsm"), "last": ()}
    assert attacks["at/seed0"] == attacks["at/seed1"] == attacks["mixed/seed0"] == study_lists
    assert attacks["cheap/seed0"] == attacks["cheap/seed1"] == {"best": ("clean",), "last": ("fgsm",)}
    assert attacks["mixed/seed1"] == {"best": ("clean", "pgd"), "last": ()}
    code, stdout, stderr = run_cli(["study", str(grid), "--dry-run", "--seeds", "1"])
    assert code == 0, stderr
    tasks = [line.split()[:2] for line in stdout.splitlines() if line.startswith(("train", "eval"))]
    assert ["eval-last", "cheap/seed1"] in tasks and ["eval-last", "at/seed1"] not in tasks  # at has no last list
    study = load_study(grid)
    mixed = next(run for run in study.runs if run.name == "mixed/seed1")
    command = commands(Task("eval-best", mixed, []), study)
    assert command[command.index("--attack") :] == ["--attack", "clean", "--attack", "pgd"]
    mixed.directory.mkdir(parents=True)  # an eval JSON with the study's list does not count for this run's
    (mixed.directory / "eval-best.json").write_text(
        json.dumps({"accuracy": {"clean": 0.9, "fgsm": 0.5}, "model": "model", "seed": 0, "n_examples": 60})
    )
    assert not evaluation_done(mixed, "best", study.evaluation)
    (mixed.directory / "eval-best.json").write_text(
        json.dumps({"accuracy": {"clean": 0.9, "pgd": 0.4}, "model": "model", "seed": 0, "n_examples": 60})
    )
    assert evaluation_done(mixed, "best", study.evaluation)


def test_a_selection_runs_part_of_the_grid_with_the_teachers_it_needs(tmp_path, run_cli):
    grid = write_grid(
        tmp_path / "grid.yaml",
        {"at": {}, "ard": {"objective": "ard", "teacher": "{out}/teacher/seed0"}, "teacher": {"seeds": [0]}},
        seeds=[0, 1],
    )
    study = load_study(grid)
    part = Selection(rows=frozenset({"ard"}), seeds=frozenset({1}))
    assert [task.key for task in plan(study, part)] == ["train teacher/seed0", "train ard/seed1", "eval-best ard/seed1"]
    no_eval = Selection(seeds=frozenset({0}), skip_eval=frozenset({"best"}))
    assert [task.key for task in plan(study, no_eval)] == ["train teacher/seed0", "train at/seed0", "train ard/seed0"]
    with pytest.raises(AdvkitError, match=r"--rows: no row 'ardd' in .*grid.yaml \(its rows: at, ard, teacher\)"):
        Selection(rows=frozenset({"ardd"})).check(study)
    with pytest.raises(AdvkitError, match=r"--seeds: seed 2 is not one of the grid's seeds \(0, 1\)"):
        Selection(seeds=frozenset({2})).check(study)
    code, stdout, stderr = run_cli(["study", str(grid), "--dry-run", "--rows", "at", "--seeds", "1"])
    assert code == 0, stderr
    assert [line.split()[:2] for line in stdout.splitlines()] == [["train", "at/seed1"], ["eval-best", "at/seed1"]]
    code, stdout, stderr = run_cli(["study", str(grid), "--rows", "atx"])
    assert code == 2 and "--rows: no row 'atx'" in stderr and not (tmp_path / "study").exists()


def test_an_evaluation_whose_checkpoint_is_gone_is_reported_and_not_started(tmp_path):
    study = load_study(write_grid(tmp_path / "grid.yaml", {"at": {}}))
    run = study.runs[0]
    run.directory.mkdir(parents=True)
    (run.directory / "metrics.jsonl").write_text(json.dumps({"epoch": run.config.epochs}) + "\n")
    lines: list[str] = []
    driver = Driver(study, lines.append)
    gone = f"cannot run: {run.directory / 'best.pt'} is gone; delete {run.directory} to train the run again"
    assert driver.describe() == [f"{'train at/seed0':40s} done", f"{'eval-best at/seed0':40s} {gone}"]
    driver.run(StopRequest())
    assert driver.failed == {"eval-best at/seed0": gone}
    assert lines[-1] == f"skip   eval-best at/seed0: {gone}"
    assert not (study.out / "logs").exists()  # no child was started for it
    (run.directory / "best.pt").write_bytes(b"")
    assert Driver(study, lines.append).describe()[1] == f"{'eval-best at/seed0':40s} to run"


# --- the driver, end to end on digits --------------------------------------------------------------------------


def test_study_runs_skips_resumes_evaluates_and_summarises(tmp_path):
    grid = write_grid(tmp_path / "grid.yaml", {"at": {}, "at-ls": {"rectifier": "label-smoothing", "epochs": 2}})
    study = load_study(grid)
    stopped = study.runs[1]
    trainer = Trainer(stopped.config, stopped.directory, progress=False)
    trainer.fit(stop_after_epoch=1)  # an interrupted run: the study must continue it, not restart it
    trainer.group.close()
    assert training_state(stopped) == "resume"
    first_epoch = (stopped.directory / "metrics.jsonl").read_text().splitlines()[0]

    lines: list[str] = []
    assert run_study(load_study(grid), lines.append) == 0
    output = "\n".join(lines)
    assert "start  train at/seed0" in output and "resume train at-ls/seed0" in output
    metrics = (stopped.directory / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) == 2 and metrics[0] == first_epoch
    for run in study.runs:
        evaluation = json.loads((run.directory / "eval-best.json").read_text())
        assert list(evaluation["accuracy"]) == ["clean", "fgsm"] and evaluation["n_examples"] == 60
        assert not (run.directory / "eval-last.json").exists()  # an empty list skips that checkpoint
    summary = (tmp_path / "study" / "summary.md").read_text()
    assert "| at | 1 |" in summary and "| at-ls | 1 |" in summary
    assert (tmp_path / "study" / "summary.png").read_bytes()[:4] == b"\x89PNG"

    weights_before = (stopped.directory / "last.pt").stat().st_mtime_ns
    again: list[str] = []
    assert run_study(load_study(grid), again.append) == 0
    assert "4 already done" in again[0] and not any(line.startswith(("start", "resume")) for line in again)
    assert (stopped.directory / "last.pt").stat().st_mtime_ns == weights_before

    data = yaml.safe_load(grid.read_text())
    data["runs"]["at-ls"]["epochs"] = 3
    grid.write_text(yaml.safe_dump(data))
    with pytest.raises(AdvkitError, match="holds run at-ls/seed0 with epochs=2, but the grid now asks for 3"):
        run_study(load_study(grid), again.append)


def test_a_failed_teacher_skips_its_students_and_the_study_exits_1(tmp_path):
    grid = write_grid(
        tmp_path / "grid.yaml",
        {
            "teacher": {"extra_data": str(tmp_path / "missing.npz")},  # fails as it starts
            "ard": {"objective": "ard", "teacher": "{out}/teacher/seed0"},
        },
    )
    process = subprocess.run(
        [sys.executable, "-m", "advkit", "study", str(grid)], capture_output=True, text=True, timeout=300
    )
    assert process.returncode == 1, process.stdout + process.stderr
    assert "FAILED train teacher/seed0" in process.stdout and "missing.npz" in process.stdout
    assert "skip   train ard/seed0: train teacher/seed0 failed" in process.stdout
    assert not (tmp_path / "study" / "ard" / "seed0" / "last.pt").exists()
