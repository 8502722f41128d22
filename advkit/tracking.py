"""Experiment tracking: the trainer's records sent on to TensorBoard, a CSV file, W&B or MLflow.

metrics.jsonl stays the run's own record (the trainer writes it); a logger mirrors it into a tool
people already use. Each backend imports its library only when it is opened, so ``advkit --help`` and
runs without that logger never pay for it.

Resume: a backend continues where the run's ``last.pt`` stands. metrics.csv is rewritten from the run's
history; TensorBoard purges what was logged after the checkpoint (``purge_step``); W&B and MLflow keep
one run per run directory (its id in the run directory); a backend that has not seen the run before
(added on ``--resume``) first receives the epochs already trained.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from .checkpoint import atomic_write_text
from .errors import AdvkitError

STEPS_FILE = "steps.jsonl"


class Logger(Protocol):
    """Where a run's records go. Called on the process that writes files (rank 0) only."""

    def log_epoch(self, record: Mapping[str, Any], epoch: int) -> None:
        """One metrics.jsonl record (``epoch`` is 1-based)."""

    def log_step(self, values: Mapping[str, float], step: int) -> None:
        """Means over the last ``--log-interval`` optimizer steps; ``step`` counts optimizer steps from 1."""

    def log_hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
        """The settings that define the run, with its headline results so far (end of each session)."""

    def close(self) -> None:
        """Flush and release files, threads and processes."""


@dataclass(frozen=True)
class TrackedRun:
    """What a backend needs to know when it opens: where the run lives and how far it got."""

    directory: Path
    history: Sequence[Mapping[str, Any]]  # the epochs already trained (from last.pt on --resume)
    steps_done: int  # optimizer steps already trained; the next step logged is steps_done + 1
    mlflow_uri: str | None = None  # --mlflow-uri; None: MLFLOW_TRACKING_URI, else a database in the run directory


def metric_tag(key: str) -> str:
    """metrics.jsonl key → tracker name: train_loss → train/loss, val_robust_acc → val/robust_acc, lr → train/lr.

    The group before '/' is what TensorBoard and W&B arrange their charts by; a component's metric is a
    training-step mean, so it joins train/.
    """
    group, _, rest = key.partition("_")
    return f"{group}/{rest}" if group in ("train", "val") and rest else f"train/{key}"


def step_tag(key: str) -> str:
    """A per-step value's name: loss → train/loss_step (beside the epoch's train/loss)."""
    return f"train/{key}_step"


def flat_hparams(settings: Mapping[str, Any], prefix: str = "") -> dict[str, bool | int | float | str]:
    """Nested settings as ``{"options.objective.beta": 6.0, ...}`` of scalars (what hparams tables take)."""
    flat: dict[str, bool | int | float | str] = {}
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flat_hparams(value, f"{name}."))
        else:
            flat[name] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return flat


def _scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """The numeric, finite values of a record except its epoch (the x axis)."""
    return {
        key: float(value)
        for key, value in record.items()
        if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    }


def _last_epoch(run: TrackedRun) -> int:
    """The epoch the headline results of ``log_hparams`` belong to until this session trains one."""
    return int(run.history[-1]["epoch"]) if run.history else 0


def _replay(logger: Logger, history: Sequence[Mapping[str, Any]]) -> None:
    for record in history:
        logger.log_epoch(record, int(record["epoch"]))


class CsvLogger:
    """RUN_DIR/metrics.csv, one row per epoch; rewritten whole and atomically, so it always equals metrics.jsonl.

    The header is the union of the records' keys in first-seen order: a metric that appears later (a
    component's, a resumed run's) adds a column instead of shifting the rows.
    """

    def __init__(self, run: TrackedRun) -> None:
        self.path = run.directory / "metrics.csv"
        self.rows = [dict(record) for record in run.history]
        if self.rows:
            self._write()

    def log_epoch(self, record: Mapping[str, Any], epoch: int) -> None:
        self.rows.append(dict(record))
        self._write()

    def _write(self) -> None:
        columns = list(dict.fromkeys(key for row in self.rows for key in row))
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for row in self.rows:  # a non-finite value is an empty cell, as it is null in metrics.jsonl
            writer.writerow(
                {
                    key: None if isinstance(value, float) and not math.isfinite(value) else value
                    for key, value in row.items()
                }
            )
        atomic_write_text(text.getvalue(), self.path)

    def log_step(self, values: Mapping[str, float], step: int) -> None:
        pass  # per-step values go to steps.jsonl

    def log_hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
        pass  # config.yaml holds the settings

    def close(self) -> None:
        pass


class StepsLogger:
    """RUN_DIR/steps.jsonl: one line per ``--log-interval`` record, appended as it comes.

    Appending keeps a record cheap however long the run; on resume the lines past ``last.pt`` (and a
    line cut short by a kill) are dropped once, so the file never holds a step twice.
    """

    def __init__(self, run: TrackedRun) -> None:
        self.path = run.directory / STEPS_FILE
        if self.path.exists():
            kept = [
                line
                for line in self.path.read_text(encoding="utf-8").splitlines()
                if (step := _step_of(line)) is not None and step <= run.steps_done
            ]
            atomic_write_text("".join(line + "\n" for line in kept), self.path)
        self.file = self.path.open("a", encoding="utf-8")

    def log_step(self, values: Mapping[str, float], step: int) -> None:
        self.file.write(json.dumps({"step": step, **values}) + "\n")
        self.file.flush()

    def log_epoch(self, record: Mapping[str, Any], epoch: int) -> None:
        pass  # the trainer writes metrics.jsonl

    def log_hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
        pass

    def close(self) -> None:
        self.file.close()


def _step_of(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


class TensorBoardLogger:
    """Event files in RUN_DIR/tensorboard/: epoch scalars at step = epoch, per-step scalars at step =
    optimizer step, and the hyper-parameters for TensorBoard's HParams tab.

    On resume the writer's ``purge_step`` is the first optimizer step still to train: TensorBoard then
    drops the step scalars logged after the checkpoint (they are trained and logged again). Epoch
    numbers never reach that step, so no epoch is lost.
    """

    def __init__(self, run: TrackedRun) -> None:
        from torch.utils.tensorboard import SummaryWriter

        folder = run.directory / "tensorboard"
        fresh = not any(folder.glob("events.out.tfevents.*"))
        self.writer = SummaryWriter(str(folder), purge_step=None if fresh else run.steps_done + 1)
        self.last_epoch = _last_epoch(run)
        if fresh:
            _replay(self, run.history)

    def log_epoch(self, record: Mapping[str, Any], epoch: int) -> None:
        for key, value in _scalars(record).items():
            self.writer.add_scalar(metric_tag(key), value, epoch)
        self.last_epoch = epoch
        self.writer.flush()  # an epoch is long: show it now rather than at the writer's next timed flush

    def log_step(self, values: Mapping[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(step_tag(key), value, step)

    def log_hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
        from torch.utils.tensorboard.summary import hparams as hparams_summaries

        tags = {f"hparams/{key}": value for key, value in metrics.items()}
        file_writer = self.writer.file_writer
        assert file_writer is not None, "SummaryWriter opens its file writer on construction"
        for summary in hparams_summaries(flat_hparams(hparams), tags):  # the HParams tab reads the tags' scalars
            file_writer.add_summary(summary)
        for tag, value in tags.items():
            self.writer.add_scalar(tag, value, self.last_epoch)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbLogger:
    """A Weights & Biases run with its files in RUN_DIR/wandb/; mode, project and entity as W&B's own
    settings say (``WANDB_MODE=offline``, ``WANDB_PROJECT``, ``wandb login``), project ``advkit`` by default.

    The run's id is kept in RUN_DIR/wandb/advkit-run-id, so a resumed advkit run continues the same W&B
    run. Epoch values are charted against ``epoch``, per-step values against ``step``.
    """

    ID_FILE = "advkit-run-id"

    def __init__(self, run: TrackedRun) -> None:
        import wandb

        id_path = run.directory / "wandb" / self.ID_FILE
        fresh = not id_path.is_file()
        self.run = wandb.init(
            dir=str(run.directory),
            id=None if fresh else id_path.read_text(encoding="utf-8").strip(),
            resume=None if fresh else "allow",
            name=run.directory.name,
            project=os.environ.get("WANDB_PROJECT") or "advkit",
            settings=wandb.Settings(console="off"),
        )  # leave advkit's stdout and stderr alone
        if fresh:
            atomic_write_text(self.run.id + "\n", id_path)
        self.run.define_metric("epoch")
        self.run.define_metric("step")
        self.defined: set[str] = set()
        if fresh:
            _replay(self, run.history)

    def _log(self, values: Mapping[str, float], axis: str, position: int) -> None:
        for name in values.keys() - self.defined:
            self.run.define_metric(name, step_metric=axis)
        self.defined |= values.keys()
        self.run.log({axis: position, **values})

    def log_epoch(self, record: Mapping[str, Any], epoch: int) -> None:
        self._log({metric_tag(key): value for key, value in _scalars(record).items()}, "epoch", epoch)

    def log_step(self, values: Mapping[str, float], step: int) -> None:
        self._log({step_tag(key): value for key, value in values.items()}, "step", step)

    def log_hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
        self.run.config.update(flat_hparams(hparams), allow_val_change=True)
        self.run.summary.update(dict(metrics))

    def close(self) -> None:
        self.run.finish()


class MlflowLogger:
    """An MLflow run in the experiment ``MLFLOW_EXPERIMENT_NAME`` (default ``advkit``).

    Tracking URI: ``--mlflow-uri``, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///RUN_DIR/mlflow.db`` (a
    database of this run alone; MLflow's own default store is a SQLite file too). The run's id and URI
    are kept in RUN_DIR/mlflow-run.json, so a resumed advkit run continues the same MLflow run.
    """

    STATE_FILE = "mlflow-run.json"

    def __init__(self, run: TrackedRun) -> None:
        import mlflow

        self.uri = mlflow_tracking_uri(run.mlflow_uri, run.directory)
        stray = Path("mlruns")
        stray_existed = stray.exists()
        self.client = mlflow.MlflowClient(tracking_uri=self.uri)
        self.client.search_experiments(max_results=1)  # opens the store now
        if not stray_existed and stray.is_dir() and not any(stray.iterdir()):
            stray.rmdir()  # MLflow 2 creates an empty ./mlruns for its Default experiment's artifacts even unused
        state_path = run.directory / self.STATE_FILE
        saved = json.loads(state_path.read_text(encoding="utf-8")) if state_path.is_file() else {}
        fresh = saved.get("tracking_uri") != self.uri
        if fresh:
            self.run_id = self.client.create_run(
                self._experiment_id(run.directory),
                run_name=run.directory.name,
                tags={"advkit.run_dir": str(run.directory.resolve())},
            ).info.run_id
            atomic_write_text(json.dumps({"tracking_uri": self.uri, "run_id": self.run_id}) + "\n", state_path)
        else:
            self.run_id = saved["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
        self.last_epoch = _last_epoch(run)
        if fresh:
            _replay(self, run.history)

    def _experiment_id(self, run_dir: Path) -> str:
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or "advkit"
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        # In the run's own database the artifacts belong beside it, not in the working directory's ./mlruns.
        location = (
            (run_dir / "mlflow-artifacts").resolve().as_uri() if self.uri == default_mlflow_uri(run_dir) else None
        )
        return self.client.create_experiment(name, artifact_location=location)

    def _log(self, values: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(name, value, now, step) for name, value in values.items()])

    def log_epoch(self, record: Mapping[str, Any], epoch: int) -> None:
        self._log({metric_tag(key): value for key, value in _scalars(record).items()}, epoch)
        self.last_epoch = epoch

    def log_step(self, values: Mapping[str, float], step: int) -> None:
        self._log({step_tag(key): value for key, value in values.items()}, step)

    def log_hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
        from mlflow.entities import Param

        # Logging a parameter again with the same value is allowed; the settings here cannot change on resume.
        self.client.log_batch(
            self.run_id, params=[Param(key, str(value)) for key, value in flat_hparams(hparams).items()]
        )
        self._log(dict(metrics), self.last_epoch)

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


def default_mlflow_uri(run_dir: Path) -> str:
    return f"sqlite:///{(run_dir / 'mlflow.db').resolve()}"


def mlflow_tracking_uri(explicit: str | None, run_dir: Path) -> str:
    """--mlflow-uri, else MLFLOW_TRACKING_URI, else a SQLite database inside the run directory."""
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or default_mlflow_uri(run_dir)


# name: (class, the modules it imports, what to install)
BACKENDS: dict[str, tuple[Callable[[TrackedRun], Logger], tuple[str, ...], str]] = {
    "csv": (CsvLogger, (), ""),
    "tensorboard": (TensorBoardLogger, ("tensorboard",), "pip install tensorboard"),
    "wandb": (WandbLogger, ("wandb",), "pip install 'advkit[wandb]'"),
    "mlflow": (MlflowLogger, ("mlflow",), "pip install 'advkit[mlflow]'"),
}
SQL_MODULES = ("sqlalchemy", "alembic")  # what MLflow's SQLite store needs beyond mlflow-skinny


def check_packages(names: Sequence[str], mlflow_uri: str | None, run_dir: Path) -> None:
    """Fail before any work or file when a chosen logger's library is not installed (nothing is imported)."""
    for name in names:
        modules = BACKENDS[name][1]
        if name == "mlflow" and mlflow_tracking_uri(mlflow_uri, run_dir).startswith("sqlite:"):
            modules += SQL_MODULES
        for module in modules:
            if importlib.util.find_spec(module) is None:
                raise AdvkitError(f"--logger {name} needs the {module} package: {BACKENDS[name][2]}")


def open_loggers(names: Sequence[str], run: TrackedRun, *, log_interval: int) -> list[Logger]:
    """The backends named by --logger, plus steps.jsonl when --log-interval is set."""
    factories = [BACKENDS[name][0] for name in names] + ([StepsLogger] if log_interval > 0 else [])
    opened: list[Logger] = []
    try:
        for factory in factories:
            opened.append(factory(run))
    except BaseException:
        LoggerGroup(opened).close()
        raise
    return opened


class LoggerGroup:
    """Several loggers as one: each call goes to every logger in turn."""

    def __init__(self, loggers: Sequence[Logger]) -> None:
        self.loggers = list(loggers)

    def log_epoch(self, record: Mapping[str, Any], epoch: int) -> None:
        for logger in self.loggers:
            logger.log_epoch(record, epoch)

    def log_step(self, values: Mapping[str, float], step: int) -> None:
        for logger in self.loggers:
            logger.log_step(values, step)

    def log_hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
        for logger in self.loggers:
            logger.log_hparams(hparams, metrics)

    def close(self) -> None:
        """Close every logger even if one fails; the first failure is raised afterwards."""
        failure: BaseException | None = None
        for logger in self.loggers:
            try:
                logger.close()
            except BaseException as exc:  # the others must still be closed
                failure = failure or exc
        if failure is not None:
            raise failure


class StepWindow:
    """Per-step scalars summed on the device since the last --log-interval record.

    The trainer adds each step's sums without reading them; ``take`` reads them (one host sync and, under
    torchrun, one all-reduce) once every ``interval`` steps. Entry ``train`` is the trainer's
    [loss × batch, correct, batch]; every other entry is a component metric's [sum, count].
    """

    def __init__(self, interval: int) -> None:
        self.interval = interval
        self.sums: dict[str, torch.Tensor] = {}

    def add(self, name: str, value: torch.Tensor) -> None:
        self.sums[name] = self.sums[name] + value if name in self.sums else value

    def summed(self, sum_over_ranks: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, torch.Tensor]:
        """The window summed over processes, for a checkpoint (every process must call it)."""
        return {name: sum_over_ranks(self.sums[name]).cpu() for name in sorted(self.sums)}

    def load(self, saved: Mapping[str, torch.Tensor], device: torch.device, *, holds_totals: bool) -> None:
        """Continue a checkpoint's window: one process holds the totals, the others start from zeros."""
        self.sums = {
            name: (value if holds_totals else torch.zeros_like(value)).to(device) for name, value in saved.items()
        }

    def take(self, sum_in_place: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, float]:
        """The window's means (loss and accuracy per example, metrics per step), and a fresh window."""
        names = sorted(self.sums)
        parts = [self.sums[name] for name in names]
        flat = sum_in_place(torch.cat(parts)).tolist()
        self.sums = {}
        sums, start = {}, 0
        for name, part in zip(names, parts, strict=True):
            sums[name], start = flat[start : start + part.numel()], start + part.numel()
        loss, correct, count = sums.pop("train")
        values = {"loss": loss / count, "acc": correct / count}
        values.update({name: total / steps for name, (total, steps) in sums.items() if steps})
        return values
