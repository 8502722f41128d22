"""keep_records.py keeps a finished run's records and the checkpoints an evaluation or a student still needs,
and a restored study evaluates from those slim checkpoints."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch
import yaml
from click.testing import CliRunner

from advkit.checkpoint import load_trained_model, safe_load
from advkit.cli import cli
from advkit.studies.driver import evaluation_done, prepare_run, training_state
from advkit.studies.grid import load_study
from advkit.train import Trainer

SCRIPT = Path(__file__).with_name("keep_records.py")
spec = importlib.util.spec_from_file_location("keep_records", SCRIPT)
assert spec is not None and spec.loader is not None
keep_records = importlib.util.module_from_spec(spec)
spec.loader.exec_module(keep_records)

BASE = {
    "dataset": "digits",
    "model": "small-cnn",
    "eps": 0.1,
    "epochs": 1,
    "batch_size": 64,
    "val_steps": 1,
    "device": "cpu",
    "options": {"attack": {"steps": 1}},
}


def evaluate(run_dir: Path, which: str, attacks: list[str]) -> None:
    arguments = ["eval", str(run_dir), "--checkpoint", which, "--n-examples", "40", "--quiet"]
    arguments += [part for attack in attacks for part in ("--attack", attack)]
    result = CliRunner().invoke(cli, arguments + ["--json", str(run_dir / f"eval-{which}.json")])
    assert result.exit_code == 0, result.output


def test_records_keep_what_is_still_needed_and_a_restored_study_evaluates_from_them(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        yaml.safe_dump(
            {
                "out": str(tmp_path / "study"),
                "base": BASE,
                "evaluate": {"n_examples": 40, "best": ["clean", "fgsm"], "last": ["clean"]},
                "runs": {
                    "teacher": {},
                    "ard": {"objective": "ard", "teacher": "{out}/teacher/seed0"},
                    "at": {"epochs": 2},
                },
            },
            sort_keys=False,
        )
    )
    study = load_study(grid)
    teacher = study.runs[0]
    prepare_run(teacher)  # as advkit study does: the folder and its study-config.yaml
    trainer = Trainer(teacher.config, teacher.directory, progress=False)
    trainer.fit()
    trainer.group.close()
    stopped = study.runs[2]
    prepare_run(stopped)
    trainer = Trainer(stopped.config, stopped.directory, progress=False)
    trainer.fit(stop_after_epoch=1)  # stopped part-way: kept whole, to resume
    trainer.group.close()
    records = tmp_path / "records"

    # the student never trained: only the teacher and the stopped run are kept
    result = CliRunner().invoke(keep_records.main, [str(grid), str(records)])
    assert result.exit_code == 0 and result.output.splitlines()[1:] == [
        "  teacher/seed0 (+ best.pt, last.pt)",
        "  at/seed0 (unfinished, + last.pt to resume)",
    ]
    assert (records / "at" / "seed0" / "last.pt").read_bytes() == (stopped.directory / "last.pt").read_bytes()
    kept = records / "teacher" / "seed0"
    assert sorted(path.name for path in kept.iterdir()) == [
        "best.pt",
        "config.yaml",
        "last.pt",
        "metrics.jsonl",
        "study-config.yaml",
    ]
    slim = safe_load(kept / "last.pt")
    assert set(slim) == {"model", "dataset_info", "config"}  # no optimiser, scheduler or RNG state
    assert (kept / "last.pt").stat().st_size < (teacher.directory / "last.pt").stat().st_size
    original, _, _ = load_trained_model(teacher.directory / "last.pt")
    restored, _, _ = load_trained_model(kept / "last.pt")
    for name, value in original.state_dict().items():
        assert torch.equal(value, restored.state_dict()[name]), name

    evaluate(teacher.directory, "best", ["clean", "fgsm"])
    evaluate(teacher.directory, "last", ["clean"])
    assert keep_records.keep(study, records)[0] == "teacher/seed0 (+ best.pt)"  # the student still learns from it
    assert not (kept / "last.pt").exists() and (kept / "eval-last.json").is_file()

    elsewhere = load_study(grid, out=tmp_path / "new-machine")
    assert keep_records.restore(elsewhere, records) == ["teacher/seed0", "at/seed0"]
    assert training_state(elsewhere.runs[2]) == "resume"  # advkit study continues it from the kept last.pt
    moved = elsewhere.runs[0]
    assert training_state(moved) == "done"  # advkit study would not train it again ...
    assert all(evaluation_done(moved, which, elsewhere.evaluation) for which in ("best", "last"))  # ... nor score it
    evaluate(moved.directory, "best", ["clean"])  # the slim best.pt is what advkit eval reads
    report = json.loads((moved.directory / "eval-best.json").read_text())
    assert report["accuracy"]["clean"] == json.loads((kept / "eval-best.json").read_text())["accuracy"]["clean"]

    (moved.directory / "metrics.jsonl").write_text("changed\n")
    assert keep_records.restore(elsewhere, records) == []  # a run already there is never overwritten
    assert (moved.directory / "metrics.jsonl").read_text() == "changed\n"


def test_a_broken_grid_is_one_line_and_exit_2(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text("runs: {}\n")
    result = CliRunner().invoke(keep_records.main, [str(grid), str(tmp_path / "records")])
    assert result.exit_code == 2 and "'runs' is empty" in result.output and not (tmp_path / "records").exists()
