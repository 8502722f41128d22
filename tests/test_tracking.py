"""Experiment tracking: TensorBoard, metrics.csv, steps.jsonl, W&B (offline) and MLflow (local store), read back.

Every test trains small-cnn on digits for a few dozen steps and compares what a tracker holds with
metrics.jsonl, the run's own record, or with a computation by hand.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from advkit import TrainConfig, Trainer
from advkit.config import LOGGERS
from advkit.registry import Registry
from advkit.studies.summary import RunResult, group_runs
from advkit.tracking import BACKENDS, metric_tag, step_tag
from advkit.train import learning_rate

STEPS_PER_EPOCH = 8  # 256 training examples in batches of 32

PROBE = '''
from advkit import LabelRectifier, one_hot


class LabelMean(LabelRectifier):
    """One-hot targets; logs the batch's mean label (a per-step metric a test can compute by hand)."""

    def targets(self, ctx):
        ctx.log_metric("probe_label_mean", ctx.y.float().mean())
        return one_hot(ctx.y, ctx.num_classes)
'''


@pytest.fixture
def registry(tmp_path, monkeypatch) -> Registry:
    """The built-ins plus a rectifier that logs a metric, installed as an outside distribution would be."""
    root = tmp_path / "site"
    info = root / "label_mean-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: label-mean\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[advkit.rectifiers]\nlabel-mean = label_mean_mod:LabelMean\n")
    (root / "label_mean_mod.py").write_text(PROBE)
    monkeypatch.syspath_prepend(str(root))
    return Registry()


def config(**overrides) -> TrainConfig:
    values = dict(
        dataset="digits",
        model="small-cnn",
        objective="at",
        eps=0.1,
        epochs=2,
        batch_size=32,
        lr=0.05,
        val_steps=1,
        val_size=64,
        train_size=256,
        seed=1,
        device="cpu",
        options={"attack": {"steps": 1}},
    )
    values.update(overrides)
    return TrainConfig(**values)


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def steps(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "steps.jsonl").read_text().splitlines()]


def scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    """Every TensorBoard scalar of the run as (step, value), after TensorBoard's own purging of resumed files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return {tag: [(event.step, event.value) for event in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


class Crash(Exception):
    pass


class CrashAtStep:
    """A logger that fails at one step: the process dies there, after the loggers before it logged that step."""

    def __init__(self, step: int) -> None:
        self.step = step

    def log_step(self, values, step):
        if step == self.step:
            raise Crash(step)

    def log_epoch(self, record, epoch):
        pass

    def log_hparams(self, hparams, metrics):
        pass

    def close(self):
        pass


class Recorder(CrashAtStep):
    """Keeps what the trainer sends."""

    def __init__(self) -> None:
        super().__init__(step=-1)
        self.steps: list[tuple[int, dict]] = []
        self.hparams: list[tuple[dict, dict]] = []

    def log_step(self, values, step):
        self.steps.append((step, dict(values)))

    def log_hparams(self, hparams, metrics):
        self.hparams.append((dict(hparams), dict(metrics)))


def test_every_logger_name_has_a_backend():
    assert set(LOGGERS) == set(BACKENDS)


def test_tensorboard_holds_every_metrics_jsonl_value_and_the_hyper_parameters(tmp_path, registry):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata

    run = tmp_path / "run"
    Trainer(
        config(rectifier="label-mean", logger=["tensorboard"], log_interval=4), run, registry=registry, progress=False
    ).fit()
    saved = records(run)
    assert {"train_loss", "train_acc", "val_clean_acc", "val_robust_acc", "lr", "time_s", "probe_label_mean"} <= saved[
        0
    ].keys()
    found = scalars(run)
    for record in saved:
        for key, value in record.items():
            if key != "epoch":  # TensorBoard stores float32
                assert found[metric_tag(key)][record["epoch"] - 1] == (
                    record["epoch"],
                    pytest.approx(value, rel=1e-6),
                ), key
    assert [step for step, _ in found[step_tag("loss")]] == [4, 8, 12, 16]
    assert {step_tag("probe_label_mean"), step_tag("lr"), step_tag("acc")} <= found.keys()
    best = max(record["val_robust_acc"] for record in saved)
    assert found["hparams/best_val_robust_acc"] == [(2, pytest.approx(best))]
    assert found["hparams/last_val_robust_acc"] == [(2, pytest.approx(saved[-1]["val_robust_acc"]))]

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    start = metadata.parse_session_start_info_plugin_data(
        events.PluginTagToContent(metadata.PLUGIN_NAME)[metadata.SESSION_START_INFO_TAG]
    )
    assert start.hparams["objective"].string_value == "at" and start.hparams["rectifier"].string_value == "label-mean"
    assert start.hparams["epochs"].number_value == 2 and start.hparams["options.attack.steps"].number_value == 1
    assert "logger" not in start.hparams and "threads" not in start.hparams  # where it ran, not what it is


def test_log_interval_sends_the_mean_of_each_window_of_steps_without_changing_the_run(tmp_path, registry):
    run, plain = tmp_path / "run", tmp_path / "plain"
    recorder = Recorder()
    trainer = Trainer(
        config(rectifier="label-mean", log_interval=3), run, registry=registry, progress=False, loggers=[recorder]
    )
    by_hand = []  # (loss, correct, batch, label mean) of every step, read on the host here (the test may sync)
    train_step = trainer.train_step

    def observed(x, y, progress, index=None):
        loss, correct = train_step(x, y, progress, index)
        by_hand.append((loss.item(), correct.item(), y.shape[0], y.float().mean().item()))
        return loss, correct

    trainer.train_step = observed
    trainer.fit()
    total = 2 * STEPS_PER_EPOCH
    assert [step for step, _ in recorder.steps] == [3, 6, 9, 12, 15]  # every 3rd step; 16 waits for step 18
    for step, values in recorder.steps:
        window = by_hand[step - 3 : step]
        assert values["loss"] == pytest.approx(sum(w[0] for w in window) / 3, rel=1e-6)  # equal batches: the mean
        assert values["acc"] == pytest.approx(sum(w[1] for w in window) / sum(w[2] for w in window))
        assert values["probe_label_mean"] == pytest.approx(sum(w[3] for w in window) / 3, rel=1e-6)
        assert values["lr"] == pytest.approx(
            learning_rate(trainer.config, step - 1, STEPS_PER_EPOCH)
        )  # its last step's
    assert len(by_hand) == total
    assert steps(run) == [{"step": step, **values} for step, values in recorder.steps]
    ((hparams, headline),) = recorder.hparams
    assert hparams["objective"] == "at" and "log_interval" not in hparams
    assert headline["best_val_robust_acc"] == max(r["val_robust_acc"] for r in records(run))

    Trainer(config(rectifier="label-mean"), plain, registry=registry, progress=False).fit()
    untimed = [[{k: v for k, v in row.items() if k != "time_s"} for row in records(folder)] for folder in (run, plain)]
    assert untimed[0] == untimed[1]  # logging reads the device, it does not change the run


def test_a_crash_and_resume_leaves_no_duplicate_in_csv_steps_or_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    settings = dict(epochs=3, logger=["csv", "tensorboard"], log_interval=3, checkpoint_every=5)
    straight, cut = tmp_path / "straight", tmp_path / "cut"
    Trainer(config(**settings), straight, progress=False).fit()
    # last.pt is saved at step 10; steps 11 and 12 are trained and step 12 logged before the process dies.
    with pytest.raises(Crash):
        Trainer(config(**settings), cut, progress=False, loggers=[CrashAtStep(12)]).fit()
    assert [row["step"] for row in steps(cut)] == [3, 6, 9, 12]
    assert [step for step, _ in scalars(cut)[step_tag("loss")]] == [3, 6, 9, 12]
    Trainer.resume_run(cut, progress=False).fit()

    assert steps(cut) == steps(straight)  # step 12 once, and its mean spans the checkpoint (saved in last.pt)
    with open(cut / "metrics.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    saved = records(cut)
    assert [int(row["epoch"]) for row in rows] == [1, 2, 3]
    assert [{key: float(value) for key, value in row.items()} for row in rows] == saved
    assert [r["val_robust_acc"] for r in saved] == [r["val_robust_acc"] for r in records(straight)]
    resumed, whole = scalars(cut), scalars(straight)
    for tag in (step_tag("loss"), metric_tag("train_loss"), metric_tag("val_robust_acc")):
        assert resumed[tag] == whole[tag], tag


def test_csv_takes_a_column_that_appears_later_without_shifting_the_rows(tmp_path):
    from advkit.tracking import CsvLogger, TrackedRun

    logger = CsvLogger(TrackedRun(tmp_path, [{"epoch": 1, "a": 0.5}], 8))
    logger.log_epoch({"epoch": 2, "a": 0.25, "b": float("nan")}, 2)
    logger.log_epoch({"epoch": 3, "b": 1.0}, 3)
    assert (tmp_path / "metrics.csv").read_text() == "epoch,a,b\n1,0.5,\n2,0.25,\n3,,1.0\n"
    assert not list(tmp_path.glob(".*.tmp"))


def test_loggers_added_on_resume_receive_the_epochs_already_trained(tmp_path, run_cli):
    pytest.importorskip("tensorboard")
    run = tmp_path / "run"
    Trainer(config(), run, progress=False).fit(stop_after_epoch=1)
    assert not (run / "tensorboard").exists()
    code, _, err = run_cli(["train", "--resume", str(run), "--lr", "0.5"])  # not a tracking setting
    assert code == 2 and "drop --lr" in err
    code, _, err = run_cli(
        ["train", "--resume", str(run), "--logger", "tensorboard,csv", "--log-interval", "4", "--quiet"]
    )
    assert code == 0, err
    saved = records(run)
    assert [row["epoch"] for row in csv.DictReader((run / "metrics.csv").open())] == ["1", "2"]
    assert [step for step, _ in scalars(run)[metric_tag("val_robust_acc")]] == [1, 2]
    assert scalars(run)[metric_tag("train_loss")][0][1] == pytest.approx(saved[0]["train_loss"], rel=1e-6)
    assert [row["step"] for row in steps(run)] == [12, 16]  # the resumed epoch's steps 9–16


def test_summarize_groups_runs_that_differ_only_in_where_they_log(tmp_path):
    base = config().to_dict()
    runs = [
        RunResult(tmp_path / f"seed{seed}", {**base, "seed": seed, **tracking}, {"x": 1.0}, [])
        for seed, tracking in enumerate(
            [
                {},
                {"logger": ["tensorboard"], "log_interval": 10},
                {"logger": ["mlflow"], "mlflow_uri": "http://localhost:5000"},
            ]
        )
    ]
    assert len(group_runs(runs)) == 1


@pytest.mark.parametrize(
    "logger, message",
    [
        ("wandb", "--logger wandb needs the wandb package: pip install 'advkit[wandb]'"),
        ("csv,mlflow", "--logger mlflow needs the mlflow package: pip install 'advkit[mlflow]'"),
        ("tensorboard", "--logger tensorboard needs the tensorboard package: pip install tensorboard"),
    ],
)
def test_a_missing_logger_package_is_one_line_before_any_file(logger, message, tmp_path, run_cli, monkeypatch):
    monkeypatch.setitem(sys.modules, logger.split(",")[-1], None)  # as if not installed: find_spec says None
    code, out, err = run_cli(
        [
            "train",
            "--dataset",
            "digits",
            "--model",
            "small-cnn",
            "--logger",
            logger,
            "--quiet",
            "--out",
            str(tmp_path / "runs" / "x"),
        ]
    )
    assert (code, out, err) == (2, "", f"advkit: error: {message}\n")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (
            ["--logger", "tensorbord"],
            "--logger takes tensorboard, csv, wandb, mlflow (comma-separated), got 'tensorbord'",
        ),
        (["--logger", "csv,csv"], "--logger names a logger twice: csv, csv"),
        (["--log-interval", "-1"], "--log-interval must be non-negative"),
    ],
)
def test_bad_tracking_flags_are_one_line(flags, message, tmp_path, run_cli):
    code, _, err = run_cli(["train", "--dataset", "digits", *flags, "--out", str(tmp_path / "x")])
    assert code == 2 and err.startswith("advkit: error: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "x").exists()


def test_the_cli_starts_without_importing_a_tracking_library():
    probe = (
        "import sys; from advkit.cli import cli\n"
        "try:\n    cli.main(['train', '--help'], prog_name='advkit')\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('torch', 'tensorboard', 'wandb', 'mlflow') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.splitlines()[-1] == "[]", done.stderr


def test_mlflow_keeps_one_run_per_run_directory_in_a_database_inside_it(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    pytest.importorskip("sqlalchemy")
    from mlflow import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)  # nothing may land in the working directory
    run = tmp_path / "run"
    Trainer(config(logger=["mlflow"], log_interval=4), run, progress=False).fit(stop_after_epoch=1)
    Trainer.resume_run(run, progress=False).fit()
    state = json.loads((run / "mlflow-run.json").read_text())
    assert state["tracking_uri"] == f"sqlite:///{run / 'mlflow.db'}"
    client = MlflowClient(state["tracking_uri"])
    (experiment,) = [e for e in client.search_experiments() if e.name == "advkit"]
    (found,) = client.search_runs([experiment.experiment_id])  # the resume continued the same run
    assert found.info.run_id == state["run_id"] and found.info.status == "FINISHED"
    assert found.data.params["objective"] == "at" and found.data.params["epochs"] == "2"
    for key in ("train_loss", "val_clean_acc", "val_robust_acc", "lr"):
        history = client.get_metric_history(found.info.run_id, metric_tag(key))
        assert [(m.step, m.value) for m in history] == [(r["epoch"], r[key]) for r in records(run)], key
    assert [m.step for m in client.get_metric_history(found.info.run_id, step_tag("loss"))] == [4, 8, 12, 16]
    assert found.data.metrics["best_val_robust_acc"] == max(r["val_robust_acc"] for r in records(run))
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_mlflow_uses_the_tracking_uri_it_is_given(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps its file store for those who ask
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "tracking-test")
    store = (tmp_path / "store").as_uri()
    run = tmp_path / "run"
    Trainer(config(epochs=1, logger=["mlflow"], mlflow_uri=store), run, progress=False).fit()
    assert not (run / "mlflow.db").exists()
    client = MlflowClient(store)
    (found,) = client.search_runs([client.get_experiment_by_name("tracking-test").experiment_id])
    assert found.data.metrics[metric_tag("val_robust_acc")] == records(run)[0]["val_robust_acc"]


def wandb_records(path: Path) -> list:
    """The records of a .wandb file: a LevelDB-style log (a 7-byte file header, then 32 KiB blocks of
    chunks, each with a 7-byte header: CRC, length, type 1 full / 2 first / 3 middle / 4 last) of
    wandb_internal_pb2.Record messages."""
    from wandb.proto import wandb_internal_pb2

    data, block = path.read_bytes(), 32768
    if len(data) < 7:  # not written yet
        return []
    assert data[:4] == b":W&B"
    found, pending, offset = [], b"", 7
    while offset + 7 <= len(data):
        if block - offset % block < 7:  # a block's tail too short for a header is padding
            offset += block - offset % block
            continue
        length, kind = int.from_bytes(data[offset + 4 : offset + 6], "little"), data[offset + 6]
        if kind == 0 or offset + 7 + length > len(data):  # the end, or a chunk still being written
            break
        pending += data[offset + 7 : offset + 7 + length]
        offset += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            found.append(record)
            pending = b""
    return found


def finished_wandb_records(path: Path, timeout_s: float = 60.0) -> list:
    """The records of an offline session once its writer has reached the closing ``exit`` record:
    ``run.finish()`` returns before W&B's service has written the file out (seen empty under load)."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = wandb_records(path) if path.is_file() else []
        if (found and found[-1].WhichOneof("record_type") == "exit") or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def wandb_contents(path: Path) -> tuple[list[dict], dict, dict]:
    """(the rows logged, the config, the summary) of one offline session."""
    rows, settings, summary = [], {}, {}
    for record in finished_wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            rows.append(
                {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            )
        elif kind in ("config", "summary"):
            (settings if kind == "config" else summary).update(
                {
                    item.key or "/".join(item.nested_key): json.loads(item.value_json)
                    for item in getattr(record, kind).update
                }
            )
    return rows, settings, summary


def test_wandb_offline_run_holds_the_metrics_and_continues_on_resume(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    Trainer(config(logger=["wandb"], log_interval=4), run, progress=False).fit(stop_after_epoch=1)
    Trainer.resume_run(run, progress=False).fit()
    run_id = (run / "wandb" / "advkit-run-id").read_text().strip()
    sessions = sorted((run / "wandb").glob("offline-run-*"))
    assert len(sessions) == 2 and all(session.name.endswith(f"-{run_id}") for session in sessions)
    rows, settings, summary = [], {}, {}
    for session in sessions:
        session_rows, session_settings, session_summary = wandb_contents(session / f"run-{run_id}.wandb")
        rows += session_rows
        settings.update(session_settings)
        summary.update(session_summary)
    epochs = [row for row in rows if "epoch" in row]
    assert [row["epoch"] for row in epochs] == [1, 2]
    for row, record in zip(epochs, records(run), strict=True):
        for key in ("train_loss", "train_acc", "val_clean_acc", "val_robust_acc", "lr"):
            assert row[metric_tag(key)] == pytest.approx(record[key]), key
    assert [row["step"] for row in rows if "step" in row] == [4, 8, 12, 16]
    assert settings["objective"] == "at" and settings["options.attack.steps"] == 1 and "logger" not in settings
    assert summary["best_val_robust_acc"] == max(r["val_robust_acc"] for r in records(run))
