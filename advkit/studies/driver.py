"""Run a study: train every run of the grid, evaluate its checkpoints, summarise — resumably.

Every piece of work is an ``advkit train`` or ``advkit eval`` child process with its own thread count and
log file, so a study is exactly the runs a user could have launched by hand. What is already on disk
decides what is left: a finished run is skipped, a stopped one resumed from its last.pt, an evaluation
whose JSON is there with the same attacks is not redone. Running the same command again therefore
continues a study after an interruption, a crash or the end of a job allocation.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..checkpoint import atomic_write_text
from ..config import SETTING_DEFAULTS, load_config_file
from ..errors import AdvkitError, RunDirectoryBusy
from ..interrupts import StoppedBySignal, StopRequest, stop_on_signals
from ..rundir import check_not_busy
from .grid import Evaluation, Study, StudyRun
from .summary import NOT_CONFIGURATION, csv_table, markdown_table, plot_summary, summarize_runs

STUDY_CONFIG = "study-config.yaml"
POLL_S = 1.0
INTERRUPTED = (75, 130)
ADVKIT = [sys.executable, "-m", "advkit"]  # children run through this Python, so the same install does the work


@dataclass
class Task:
    """One child process of the study: a run's training, or the evaluation of one of its checkpoints."""

    kind: str  # "train", or "eval-best" / "eval-last"
    run: StudyRun
    needs: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.kind} {self.run.name}"

    @property
    def log(self) -> Path:
        return self.run.directory.parent.parent / "logs" / f"{self.run.row}-seed{self.run.seed}-{self.kind}.log"


def training_state(run: StudyRun) -> str:
    """``done`` (every epoch finished), ``resume`` (a last.pt to continue) or ``start``."""
    metrics = run.directory / "metrics.jsonl"
    if metrics.is_file():
        lines = [line for line in metrics.read_text(encoding="utf-8").splitlines() if line.strip()]
        if lines and json.loads(lines[-1]).get("epoch", 0) >= run.config.epochs:
            return "done"
    return "resume" if (run.directory / "last.pt").is_file() else "start"


def evaluation_done(run: StudyRun, checkpoint: str, evaluation: Evaluation) -> bool:
    """The eval JSON exists, lists the requested attacks and scored the requested model and examples."""
    path = eval_path(run, checkpoint)
    if not path.is_file():
        return False
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    wanted_model = "weight-averaged" if run.config.select == "wa" else "model"
    return (
        list(report.get("accuracy", {})) == list(dict.fromkeys(run.attacks[checkpoint]))
        and report.get("model") == wanted_model
        and report.get("seed") == evaluation.seed
        and 0 < report.get("n_examples", 0) <= evaluation.n_examples
    )


def eval_path(run: StudyRun, checkpoint: str) -> Path:
    return run.directory / f"eval-{checkpoint}.json"


def missing_checkpoint(task: Task) -> str | None:
    """Why an evaluation can never run although its run trained every epoch: its checkpoint is gone (records
    restored without it, or deleted by hand). ``None`` when nothing is missing."""
    if task.kind == "train" or training_state(task.run) != "done":
        return None
    checkpoint = task.run.directory / f"{task.kind.removeprefix('eval-')}.pt"
    if checkpoint.is_file():
        return None
    return f"cannot run: {checkpoint} is gone; delete {task.run.directory} to train the run again"


def check_settings_unchanged(run: StudyRun) -> None:
    """An existing run directory must hold the run the grid asks for; a changed grid is not silently mixed in."""
    wanted = {key: value for key, value in run.config.to_dict().items() if key not in NOT_CONFIGURATION}
    stored_path = run.directory / STUDY_CONFIG
    if stored_path.is_file():
        stored = yaml.safe_load(stored_path.read_text(encoding="utf-8")) or {}
        compared = {key: stored.get(key, SETTING_DEFAULTS.get(key)) for key in wanted}
    elif (run.directory / "config.yaml").is_file():  # started by hand: compare the settings both name
        saved = load_config_file(run.directory / "config.yaml").to_dict()
        wanted = {key: value for key, value in wanted.items() if value is not None and key != "options"}
        compared = {key: saved.get(key, SETTING_DEFAULTS.get(key)) for key in wanted}
    else:
        return
    for key in sorted(wanted):
        if wanted[key] != compared[key]:
            raise AdvkitError(
                f"{run.directory} holds run {run.name} with {key}={compared[key]!r}, but the grid now "
                f"asks for {wanted[key]!r}; restore the grid, or delete that folder to train it again"
            )


def train_command(run: StudyRun) -> list[str]:
    """``advkit train`` of a run: resumed from its last.pt, else started from its STUDY_CONFIG."""
    if training_state(run) == "resume":
        return ADVKIT + ["train", "--resume", str(run.directory), "--quiet"]
    return ADVKIT + ["train", "--config", str(run.directory / STUDY_CONFIG), "--out", str(run.directory), "--quiet"]


def prepare_run(run: StudyRun) -> None:
    """Create the run folder and write the settings it is trained with, once (a changed grid is refused)."""
    check_settings_unchanged(run)
    run.directory.mkdir(parents=True, exist_ok=True)
    if not (run.directory / STUDY_CONFIG).is_file():
        atomic_write_text(yaml.safe_dump(run.config.to_dict(), sort_keys=False), run.directory / STUDY_CONFIG)


def start_child(command: list[str], log: Path, threads: int, stop_with_parent: bool = False) -> subprocess.Popen[bytes]:
    """Start ``command`` in its own session (a Ctrl-C reaches the parent only, which stops it cleanly), with
    ``threads`` torch threads and its output appended to ``log``.

    ``stop_with_parent``: the child gets SIGTERM when this process dies, however it dies (see
    :mod:`advkit.studies.tethered`), so it saves its last.pt instead of training on unsupervised.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    environment = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "PYTHONUNBUFFERED": "1",
    }  # the log shows each epoch as it ends
    if stop_with_parent:
        command = [sys.executable, "-m", "advkit.studies.tethered", str(os.getpid()), *command]
    with open(log, "ab") as handle:
        return subprocess.Popen(
            command, stdout=handle, stderr=subprocess.STDOUT, env=environment, start_new_session=True
        )


def commands(task: Task, study: Study) -> list[str]:
    """The advkit command line of a task."""
    run = task.run
    if task.kind == "train":
        return train_command(run)
    checkpoint = task.kind.removeprefix("eval-")
    evaluation = study.evaluation
    command = ADVKIT + [
        "eval",
        str(run.directory),
        "--checkpoint",
        checkpoint,
        "--n-examples",
        str(evaluation.n_examples),
        "--batch-size",
        str(evaluation.batch_size),
        "--seed",
        str(evaluation.seed),
        "--json",
        str(eval_path(run, checkpoint)),
        "--quiet",
    ]
    for attack in run.attacks[checkpoint]:
        command += ["--attack", attack]
    return command + (["--wa"] if run.config.select == "wa" else [])


@dataclass(frozen=True)
class Selection:
    """The part of a study to run now (``advkit study --rows/--seeds/--skip-eval``): ``None`` keeps every
    row or seed. The summary still covers every run of the grid."""

    rows: frozenset[str] | None = None
    seeds: frozenset[int] | None = None
    skip_eval: frozenset[str] = frozenset()

    def check(self, study: Study) -> None:
        """Names that are not in the grid are a one-line error before anything starts."""
        rows = list(dict.fromkeys(run.row for run in study.runs))
        for row in sorted(self.rows or ()):
            if row not in rows:
                raise AdvkitError(f"--rows: no row {row!r} in {study.source} (its rows: {', '.join(rows)})")
        seeds = sorted({run.seed for run in study.runs})
        for seed in sorted(self.seeds or ()):
            if seed not in seeds:
                raise AdvkitError(f"--seeds: seed {seed} is not one of the grid's seeds ({', '.join(map(str, seeds))})")

    def keeps(self, task: Task) -> bool:
        return (
            (self.rows is None or task.run.row in self.rows)
            and (self.seeds is None or task.run.seed in self.seeds)
            and task.kind.removeprefix("eval-") not in self.skip_eval
        )


def plan(study: Study, selection: Selection | None = None) -> list[Task]:
    """Every task in the order it is started: the grid's rows seed by seed, each run's evaluations right
    after its training (so rows complete early), a teacher before the runs that learn from it. With a
    ``selection``, only its tasks and the teachers' training that they need."""
    tasks: list[Task] = []
    seeds = sorted({run.seed for run in study.runs})
    for seed in seeds:
        for run in (item for item in study.runs if item.seed == seed):
            tasks.append(Task("train", run, [f"train {name}" for name in run.depends_on]))
            for checkpoint, attacks in run.attacks.items():
                if attacks:
                    tasks.append(Task(f"eval-{checkpoint}", run, [f"train {run.name}"]))
    if selection is not None:
        teachers = {need for task in tasks if selection.keeps(task) for need in task.needs if task.kind == "train"}
        tasks = [task for task in tasks if selection.keeps(task) or task.key in teachers]
    order = {task.key: index for index, task in enumerate(tasks)}
    needed = {need for task in tasks if task.kind == "train" for need in task.needs}
    return sorted(tasks, key=lambda task: (task.key not in needed, order[task.key]))


def is_done(task: Task, study: Study) -> bool:
    if task.kind == "train":
        return training_state(task.run) == "done"
    return evaluation_done(task.run, task.kind.removeprefix("eval-"), study.evaluation)


def _busy(run: StudyRun) -> bool:
    try:
        check_not_busy(run.directory)
    except RunDirectoryBusy:
        return True
    return False


def last_line(path: Path) -> str:
    try:
        lines = [
            line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()
        ]
    except OSError:
        return "(no log)"
    return lines[-1] if lines else "(empty log)"


def duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


class Driver:
    """Starts ready tasks up to ``study.jobs`` at a time and reports each start and end on one line."""

    def __init__(self, study: Study, echo: Callable[[str], None], selection: Selection | None = None) -> None:
        self.study = study
        self.echo = echo
        self.tasks = plan(study, selection)
        self.done = {task.key for task in self.tasks if is_done(task, study)}
        self.failed: dict[str, str] = {}
        self.running: dict[str, tuple[Task, subprocess.Popen[bytes], float]] = {}
        self.waiting_elsewhere: set[str] = set()

    def describe(self) -> list[str]:
        """One line per task: what a run of the study would do with it now."""
        lines = []
        for task in self.tasks:
            if task.key in self.done:
                state = "done"
            elif task.kind == "train":
                state = training_state(task.run) + (", in use by another process" if _busy(task.run) else "")
            else:
                state = missing_checkpoint(task) or "to run"
            lines.append(f"{task.key:40s} {state}")
        return lines

    def run(self, request: StopRequest) -> None:
        pending = [task for task in self.tasks if task.key not in self.done]
        total = len(self.tasks)
        self.echo(
            f"study {self.study.source}: {total} tasks, {len(self.done)} already done, "
            f"{self.study.jobs} at a time, {self.study.threads} thread(s) each; logs in {self.study.out / 'logs'}"
        )
        while (pending or self.running) and not request:
            pending = self._start_ready(pending)
            time.sleep(POLL_S)
            self._collect()
        if request:
            stopped = len(self.running)
            self._stop_children()
            raise StoppedBySignal(
                request.signal_name or "SIGTERM",
                request.exit_status,
                f"study stopped ({stopped} running task(s) saved and stopped, {len(self.done)} of "
                f"{len(self.tasks)} done); run the same command again to continue",
            )

    def _start_ready(self, pending: list[Task]) -> list[Task]:
        left = []
        for task in pending:
            blocked = [need for need in task.needs if need in self.failed]
            if blocked:
                self.failed[task.key] = f"not run: {blocked[0]} failed"
                self.echo(f"skip   {task.key}: {blocked[0]} failed")
                continue
            if len(self.running) >= self.study.jobs or any(need not in self.done for need in task.needs):
                left.append(task)
                continue
            if task.kind == "train" and _busy(task.run):  # trained by a process outside this study command
                if task.key not in self.waiting_elsewhere:
                    self.echo(f"wait   {task.key}: its folder is in use by another process")
                    self.waiting_elsewhere.add(task.key)
                left.append(task)
                continue
            if is_done(task, self.study):  # finished elsewhere meanwhile
                self._finish(task, "done (elsewhere)")
                continue
            missing = missing_checkpoint(task)
            if missing:
                self.failed[task.key] = missing
                self.echo(f"skip   {task.key}: {missing}")
                continue
            self._launch(task)
        return left

    def _launch(self, task: Task) -> None:
        if task.kind == "train":
            prepare_run(task.run)
        verb = "resume" if task.kind == "train" and training_state(task.run) == "resume" else "start "
        process = start_child(commands(task, self.study), task.log, self.study.threads)
        self.running[task.key] = (task, process, time.monotonic())
        self.echo(f"{verb} {task.key}")

    def _collect(self) -> None:
        for key, (task, process, started) in list(self.running.items()):
            status = process.poll()
            if status is None:
                continue
            del self.running[key]
            elapsed = duration(time.monotonic() - started)
            if status == 0 and is_done(task, self.study):
                self._finish(task, f"done in {elapsed}")
            elif status in INTERRUPTED:
                self.failed[key] = f"stopped by a signal (exit {status})"
                self.echo(f"stopped {key} after {elapsed} (exit {status}); run the study again to resume it")
            else:
                self.failed[key] = last_line(task.log)
                self.echo(f"FAILED {key} after {elapsed} (exit {status}): {self.failed[key]}  [log: {task.log}]")

    def _finish(self, task: Task, how: str) -> None:
        self.done.add(task.key)
        self.echo(f"[{len(self.done)}/{len(self.tasks)}] {task.key}: {how}")

    def _stop_children(self) -> None:
        """Ask each child to save and stop (SIGTERM: advkit train writes a mid-epoch last.pt), then wait."""
        for _, process, _ in self.running.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for key, (_, process, _) in self.running.items():
            process.wait()
            self.echo(f"stopped {key} (exit {process.returncode}); run the study again to continue")
        self.running.clear()


def write_summary(study: Study) -> str:
    """summary.md, summary.csv and summary.png in the study folder, over every run that trained all its epochs
    (the others are named under the table)."""
    with_metrics = [run.directory for run in study.runs if (run.directory / "metrics.jsonl").is_file()]
    if not with_metrics:
        return "no run has finished an epoch yet: nothing to summarise\n"
    summary = summarize_runs(with_metrics)
    if not summary.groups:
        return f"no run has finished every epoch yet: nothing to summarise{summary.note()}"
    table = markdown_table(summary.groups) + summary.note()
    atomic_write_text(table, study.out / "summary.md")
    atomic_write_text(csv_table(summary.groups), study.out / "summary.csv")
    plot_summary(summary.groups, study.out / "summary.png")
    return table


def run_study(
    study: Study, echo: Callable[[str], None], dry_run: bool = False, selection: Selection | None = None
) -> int:
    """Run what is left of ``study`` (or of its ``selection``); 0 when every task is done, 1 when some failed
    (the others still ran)."""
    if selection is not None:
        selection.check(study)
    driver = Driver(study, echo, selection)
    if dry_run:
        for line in driver.describe():
            echo(line)
        return 0
    for run in study.runs:  # a changed grid is refused before anything starts, not hours in
        check_settings_unchanged(run)
    request = StopRequest()
    request.deferring = True
    with stop_on_signals(request):
        driver.run(request)
    echo(write_summary(study))
    echo(f"summary: {study.out / 'summary.md'}, {study.out / 'summary.csv'}, {study.out / 'summary.png'}")
    if driver.failed:
        echo(f"{len(driver.failed)} of {len(driver.tasks)} tasks did not finish: {', '.join(sorted(driver.failed))}")
        return 1
    return 0
