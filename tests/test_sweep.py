"""`advkit sweep` on SQLite, end to end on digits: trials as real `advkit train` children, continuation after
the sweep is killed, two local workers with seeds, pruning, best.yaml, and every bad input refused before
anything is written.

Each trial trains a small CNN for a few epochs on a few hundred digits with a 2-step attack, on one thread.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

optuna = pytest.importorskip("optuna", reason="advkit sweep needs optuna (pip install optuna)")

from advkit.errors import RunDirectoryBusy  # noqa: E402
from advkit.rundir import check_not_busy  # noqa: E402
from advkit.sweeps.space import load_sweep  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BASE = {
    "dataset": "digits",
    "model": "small-cnn",
    "rectifier": "adr",
    "eps": 0.1,
    "epochs": 2,
    "batch_size": 64,
    "train_size": 256,
    "val_size": 64,
    "val_steps": 1,
    "device": "cpu",
    "options": {"attack.steps": 2},
}
SPACE = {
    "lr": {"type": "float", "low": 0.02, "high": 0.2, "log": True},
    "adr.temperature": {"type": "schedule", "start": {"low": 1.5, "high": 4.0}, "end": {"low": 1.0, "high": 2.5}},
}


def write_space(path: Path, base: dict | None = None, space: dict | None = None, **more) -> Path:
    path.write_text(
        yaml.safe_dump({"base": {**BASE, **(base or {})}, "space": space or SPACE, **more}, sort_keys=False)
    )
    return path


def sweep_command(space: Path, out: Path, *flags: str) -> list[str]:
    return [sys.executable, "-m", "advkit", "sweep", str(space), "--out", str(out), "--threads", "1", *flags]


def environment() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def run(command: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=environment(), cwd=ROOT)


def load_study(out: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'study.db'}")


def states(study: optuna.Study) -> list[str]:
    return [trial.state.name for trial in study.get_trials()]


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def best_robust(run_dir: Path) -> float:
    return max(record["val_robust_acc"] for record in records(run_dir))


# --- three trials, then the same command again ----------------------------------------------------------------


def sweep_args(space: Path, out: Path, *flags: str) -> list[str]:
    return sweep_command(space, out, *flags)[3:]  # in-process (run_cli): no second start-up of torch


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    from click.testing import CliRunner

    from advkit.cli import cli

    folder = tmp_path_factory.mktemp("sweep")
    space = write_space(folder / "digits.yaml")
    out = folder / "out"
    result = CliRunner().invoke(cli, sweep_args(space, out, "--trials", "3"))
    assert result.exit_code == 0, result.output
    return space, out, result.output


def test_three_trials_are_advkit_runs_scored_by_their_validation_metrics(finished):
    space, out, output = finished
    study = load_study(out, "digits")
    assert states(study) == ["COMPLETE"] * 3
    for trial in study.get_trials():
        run_dir = out / "trials" / str(trial.number)
        assert len(records(run_dir)) == 2 and (run_dir / "last.pt").is_file()
        assert trial.value == pytest.approx(best_robust(run_dir))  # the objective: best-epoch val robust accuracy
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert config["lr"] == pytest.approx(trial.params["lr"])
        start, end = trial.params["adr.temperature.start"], trial.params["adr.temperature.end"]
        assert config["options"]["rectifier"]["temperature"] == f"{start:g}:{end:g}"  # the run used the sampled τ
        assert sorted(trial.intermediate_values) == [1, 2]  # reported to the pruner after each epoch
    summary = (out / "summary.md").read_text()
    rows = [line for line in summary.splitlines() if line.startswith("| ") and "COMPLETE" in line]
    assert len(rows) == 3 and "| trial | state | objective (%) | lr | adr.temperature | n |" in summary
    best = study.best_trial
    assert f"best: trial {best.number}, {100 * best.value:.2f}%" in summary
    assert len((out / "summary.csv").read_text().splitlines()) == 4
    for plot in ("history.png", "parallel-coordinates.png", "importances.png"):
        assert (out / plot).read_bytes()[:4] == b"\x89PNG", plot
    assert "start  trial 2" in output and "trial 2: complete" in output


def test_the_same_command_again_runs_nothing(run_cli, finished):
    space, out, _ = finished
    before = sorted(path.name for path in (out / "trials").iterdir())
    code, stdout, stderr = run_cli(sweep_args(space, out, "--trials", "3"))
    assert code == 0, stderr
    assert "3 of 3 trials ended" in stdout and "start  trial" not in stdout
    assert sorted(path.name for path in (out / "trials").iterdir()) == before
    assert states(load_study(out, "digits")) == ["COMPLETE"] * 3


def test_best_yaml_reproduces_the_best_trial(finished, tmp_path):
    _, out, _ = finished
    best = load_study(out, "digits").best_trial
    process = run(
        [
            sys.executable,
            "-m",
            "advkit",
            "train",
            "--config",
            str(out / "best.yaml"),
            "--out",
            str(tmp_path / "again"),
            "--quiet",
        ]
    )
    assert process.returncode == 0, process.stderr

    def without_time(run_dir: Path) -> list[dict]:
        return [{key: value for key, value in record.items() if key != "time_s"} for record in records(run_dir)]

    assert without_time(tmp_path / "again") == without_time(out / "trials" / str(best.number))


# --- a sweep killed outright -----------------------------------------------------------------------------------


def test_a_killed_sweep_continues_and_its_trial_is_failed_and_requeued_into_the_same_folder(run_cli, tmp_path):
    space = write_space(tmp_path / "killed.yaml", base={"epochs": 4, "train_size": 512})
    out = tmp_path / "out"
    command = sweep_command(space, out, "--trials", "1", "--heartbeat", "1")
    sweep = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=environment(), cwd=ROOT)
    first = out / "trials" / "0"
    deadline = time.monotonic() + 300
    while not ((first / "metrics.jsonl").is_file() and records(first)):
        assert sweep.poll() is None and time.monotonic() < deadline, "trial 0 never finished an epoch"
        time.sleep(0.2)
    sweep.kill()  # SIGKILL: no handler runs, the study keeps trial 0 RUNNING
    sweep.wait()
    epoch_one = records(first)[0]
    deadline = time.monotonic() + 120
    while True:  # its trainer got SIGTERM from the kernel, saves last.pt and lets go of the folder
        try:
            check_not_busy(first)
            break
        except RunDirectoryBusy:
            assert time.monotonic() < deadline, "the orphaned trainer did not stop"
            time.sleep(0.2)
    assert (first / "last.pt").is_file()
    assert load_study(out, "killed").trials[0].state.name == "RUNNING"

    code, stdout, stderr = run_cli(command[3:])  # finds trial 0 abandoned once its heartbeat is 2 × 1 s old
    assert code == 0, stdout + stderr
    trials = load_study(out, "killed").get_trials()
    assert [trial.state.name for trial in trials] == ["FAIL", "COMPLETE"]  # the requested 1 complete trial
    retry = trials[1]
    assert retry.system_attrs["failed_trial"] == 0 and retry.user_attrs["run_folder"] == 0
    assert retry.params == trials[0].params
    assert records(first)[0] == epoch_one and len(records(first)) == 4  # continued, not started again
    assert "start  trial 1" in stdout and "continuing trial 0" in stdout
    assert [path.name for path in (out / "trials").iterdir()] == ["0"]
    assert "| 0 | FAIL (re-queued as 1) |" in (out / "summary.md").read_text()


# --- two local workers, two seeds per trial ----------------------------------------------------------------------


def test_two_local_workers_run_at_once_and_a_trial_scores_the_mean_over_its_seeds(run_cli, tmp_path):
    space = write_space(tmp_path / "seeds.yaml")
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(sweep_args(space, out, "--trials", "2", "--workers", "2", "--seeds", "0,1"))
    assert code == 0, stdout + stderr
    trials = load_study(out, "seeds").get_trials()
    assert [trial.state.name for trial in trials] == ["COMPLETE"] * 2
    first, second = trials
    assert first.datetime_start < second.datetime_complete and second.datetime_start < first.datetime_complete
    for trial in trials:
        seed_runs = [out / "trials" / str(trial.number) / f"seed{seed}" for seed in (0, 1)]
        assert [yaml.safe_load((run_dir / "config.yaml").read_text())["seed"] for run_dir in seed_runs] == [0, 1]
        assert trial.value == pytest.approx(statistics.fmean(best_robust(run_dir) for run_dir in seed_runs))
        assert sorted(trial.intermediate_values) == [1, 2, 3, 4]  # seed 0's epochs, then seed 1's
    assert "mean over seeds 0, 1" in (out / "summary.md").read_text()
    assert "set seed: to train the trial's other seeds" in (out / "best.yaml").read_text()


# --- pruning ---------------------------------------------------------------------------------------------------


def test_the_median_pruner_stops_a_lagging_trial_whose_child_saves_and_exits(run_cli, tmp_path):
    # Trial 0 validates at ε = 0 (robust = clean accuracy, high after one epoch) for 3 epochs; trial 1 at ε = 0.5
    # (near zero) for 500, far more than it can train before the sweep's first look at its metrics. The pruner
    # judges it at step 1 against trial 0's step 1, however many epochs ended by then.
    space = write_space(
        tmp_path / "prune.yaml",
        base={"train_size": 512, "batch_size": 32, "lr": 0.1, "rectifier": None},
        space={
            "eps": {"type": "categorical", "choices": [0.0, 0.5]},
            "epochs": {"type": "categorical", "choices": [3, 500]},
        },
        enqueue=[{"eps": 0.0, "epochs": 3}, {"eps": 0.5, "epochs": 500}],
    )
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(sweep_args(space, out, "--trials", "2", "--pruner", "median:startup=1"))
    assert code == 0, stdout + stderr
    trials = load_study(out, "prune").get_trials()
    assert [trial.params["eps"] for trial in trials] == [0.0, 0.5]
    assert [trial.state.name for trial in trials] == ["COMPLETE", "PRUNED"]
    assert sorted(trials[1].intermediate_values) == [1]  # stopped at its first step
    pruned = out / "trials" / "1"
    assert len(records(pruned)) < 500 and (pruned / "last.pt").is_file()  # stopped early, saved: resumable
    check_not_busy(pruned)  # its trainer has exited
    assert "trial 1: pruned after epoch" in stdout


# --- bad input: one line, exit 2, nothing written ----------------------------------------------------------------


@pytest.mark.parametrize(
    "space, flags, message",
    [
        ({"lrr": {"type": "float", "low": 0.01, "high": 0.1}}, [], "unknown parameter 'lrr'; did you mean 'lr'?"),
        (
            {"adr.tau": {"type": "float", "low": 1, "high": 2}},
            [],
            "parameter 'adr.tau' at 1.0: rectifier 'adr': unknown option 'tau'",
        ),
        (
            {"adr.decay": {"type": "float", "low": 0.9, "high": 1.0}},
            [],
            "parameter 'adr.decay' at 1.0: rectifier 'adr': option 'decay' must lie in (0, 1)",
        ),
        (
            {"adr.interpolation": {"type": "schedule", "start": 0.7, "end": {"low": 0.9, "high": 1.5}}},
            [],
            "option 'interpolation' must lie in [0, 1], got 0.7:1.5",
        ),
        (
            {"momentum": {"type": "float", "low": 0.5, "high": 1.0}},
            [],
            "parameter 'momentum' at 1.0: --momentum must lie in [0, 1)",
        ),
        (
            {"trades.beta": {"type": "float", "low": 1, "high": 6}},
            [],
            "option prefix 'trades' matches no selected component",
        ),
        ({"lr": {"type": "float", "low": 0.0, "high": 0.1, "log": True}}, [], "space.lr: a log range needs low > 0"),
        (None, ["--storage", "sqlite:////nonexistent-folder/x.db"], "folder /nonexistent-folder does not exist"),
        (None, ["--storage", "postgresql://nobody@127.0.0.1:1/none"], "@127.0.0.1:1/none: cannot open the database"),
        (None, ["--storage", "nosuchdb://x"], "no database driver for it"),
        (None, ["--pruner", "median:startup=x"], "--pruner median:startup=x: startup must be an integer"),
        (None, ["--seeds", "0,0"], "--seeds must list distinct non-negative integers"),
        (None, ["--trials", "0"], "--trials must be at least 1"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(run_cli, tmp_path, space, flags, message):
    if "postgresql" in " ".join(flags):
        pytest.importorskip("psycopg2", reason="the PostgreSQL driver (pip install psycopg2-binary)")
    path = write_space(tmp_path / "bad.yaml", space=space)
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(["sweep", str(path), "--out", str(out), *flags])
    assert code == 2, stdout + stderr
    assert stderr.count("\n") == 1 and message in stderr, stderr
    assert not out.exists()


def test_a_changed_space_under_an_existing_study_is_refused_and_nothing_is_written(run_cli, finished, tmp_path):
    _, out, _ = finished
    changed = write_space(tmp_path / "digits.yaml", space={**SPACE, "lr": {**SPACE["lr"], "high": 0.3}})
    before = {path: path.stat().st_mtime_ns for path in out.rglob("*")}
    code, _, stderr = run_cli(["sweep", str(changed), "--out", str(out), "--trials", "4"])
    assert code == 2 and stderr.count("\n") == 1
    assert (
        "study 'digits'" in stderr
        and "was made from another sweep (space.lr.axes.lr.high: 0.2 there, 0.3 now)" in stderr
    )
    code, _, stderr = run_cli(["sweep", str(changed.with_name("x.yaml")), "--out", str(out)])
    assert code == 2 and "sweep space file not found" in stderr
    code, _, stderr = run_cli(["sweep", str(write_space(changed)), "--out", str(out), "--seeds", "0,1"])
    assert code == 2 and "seeds: null there, [0, 1] now" in stderr
    assert {path: path.stat().st_mtime_ns for path in out.rglob("*")} == before


# --- the shipped spaces ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["digits-adr.yaml", "cifar10-trades.yaml"])
def test_example_spaces_validate(name):
    sweep = load_sweep(ROOT / "examples" / "sweeps" / name)
    assert sweep.parameters and sweep.definition(None)["space"]
