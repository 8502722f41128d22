"""at_a_glance.py keeps each seed's test numbers apart, names their attack, and says where unfinished runs stand."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import yaml
from click.testing import CliRunner

SCRIPT = Path(__file__).with_name("at_a_glance.py")
spec = importlib.util.spec_from_file_location("at_a_glance", SCRIPT)
assert spec is not None and spec.loader is not None
at_a_glance = importlib.util.module_from_spec(spec)
spec.loader.exec_module(at_a_glance)

BASE = {"dataset": "digits", "model": "small-cnn", "eps": 0.1, "epochs": 2, "device": "cpu"}


def write_run(folder: Path, robust: list[float], reports: dict[str, dict[str, Any]] | None = None) -> None:
    """A run folder as training and ``advkit eval --json`` leave it: one metrics line per finished epoch."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(BASE))
    lines = [
        {"epoch": epoch, "val_clean_acc": value + 0.1, "val_robust_acc": value, "time_s": 10.0}
        for epoch, value in enumerate(robust, start=1)
    ]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    for checkpoint, report in (reports or {}).items():
        (folder / f"eval-{checkpoint}.json").write_text(json.dumps(report))


def report(worst: float, clean: float, attacks: tuple[str, ...], **extra: Any) -> dict[str, Any]:
    accuracy = {"clean": clean, **{name: worst for name in attacks}}
    return {"accuracy": accuracy, "worst_case": worst, **extra}


def test_each_seed_keeps_its_own_attack_and_unfinished_runs_say_where_they_stand(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"base": BASE, "seeds": [0, 1], "runs": {"at": {}, "ard": {}}}, sort_keys=False))
    records = tmp_path / "records"
    stages = {"apgd-ce": 0.70, "apgd-t": 0.68, "fab-t": 0.675, "square": 0.67}
    write_run(
        records / "at" / "seed0",
        [0.60, 0.70],
        {"best": report(0.67, 0.78, ("autoattack",), stages=stages), "last": report(0.64, 0.79, ("apgd-ce", "apgd-t"))},
    )
    write_run(
        records / "at" / "seed1",
        [0.72, 0.71],
        {"best": report(0.65, 0.80, ("apgd-ce", "apgd-t")), "last": report(0.66, 0.79, ("apgd-ce", "apgd-t"))},
    )
    write_run(records / "ard" / "seed0", [0.50])  # stopped after epoch 1 of 2

    result = CliRunner().invoke(at_a_glance.main, [str(grid), "--out", str(records), "--stages"])

    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    # best val robust 0.70 and 0.72: mean 71.0, sample std 0.01414 -> 1.4; last worst cases 64 and 66: 65.0 ± 1.4
    assert lines[2] == (
        "| at | 0, 1 | 71.0 ± 1.4 | s0 AA 67.0 (clean 78.0); s1 APGD-CE/T 65.0 (clean 80.0) | 65.0 ± 1.4 |"
    )
    assert lines[3] == "| ard | – | – | s0 training, epoch 1 of 2; s1 not started | – |"
    # AutoAttack's stages: Square ends 1 point below APGD-T's 68.0
    assert lines[-1] == "| at/seed0 | 78.0 | 70.0 | 68.0 | 67.5 | 67.0 | 1.0 |"
    assert len([line for line in lines if line.startswith("| at/seed1")]) == 0  # no stages recorded: no line


def test_an_unreadable_eval_report_is_one_line_and_exit_2(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"base": BASE, "seeds": [0], "runs": {"at": {}}}))
    write_run(tmp_path / "records" / "at" / "seed0", [0.6, 0.7])
    (tmp_path / "records" / "at" / "seed0" / "eval-best.json").write_text("{not json")

    result = CliRunner().invoke(at_a_glance.main, [str(grid), "--out", str(tmp_path / "records")])

    assert result.exit_code == 2
    assert result.output.startswith("Error: ") and "eval-best.json is not a readable advkit eval JSON" in result.output
