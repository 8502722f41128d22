"""config.yaml and eval JSON record the software in use; the record never acts as a setting."""

from __future__ import annotations

import importlib.metadata as metadata
import json

import yaml

from advkit.config import load_config_file
from advkit.evaluate import evaluate_checkpoint
from advkit.studies.summary import summarize_runs
from advkit.testing import train_digits


def test_runs_and_evaluations_record_their_software_and_configs_ignore_it(tmp_path):
    run = train_digits(tmp_path / "study" / "at" / "seed0", objective="at", options={"attack": {"steps": 1}})
    record = yaml.safe_load((run / "config.yaml").read_text())["software"]
    assert record["torch"] == metadata.version("torch") and record["advkit"] == metadata.version("advkit")
    assert record["torchattacks"] == "3.5.1" and record["plugins"]["advkit-adr"] == metadata.version("advkit-adr")
    assert record["device"].startswith("cpu")
    assert load_config_file(run / "config.yaml").epochs == 1  # the record is skipped, not an unknown setting
    report = evaluate_checkpoint(run, ["clean"], n_examples=20)
    assert report["software"]["torch"] == record["torch"]
    json.dumps(report)  # still JSON-ready

    other = train_digits(tmp_path / "study" / "at" / "seed1", objective="at", seed=1, options={"attack": {"steps": 1}})
    config = yaml.safe_load((other / "config.yaml").read_text())
    config["software"]["advkit_git_commit"] = "another"
    (other / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    groups = summarize_runs([tmp_path / "study"]).groups
    assert [(group.label, len(group.runs)) for group in groups] == [("at", 2)]  # versions do not split seeds
