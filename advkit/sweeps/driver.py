"""Run a sweep: Optuna samples configurations, each trial trains them as ordinary advkit runs.

A trial is one ``advkit train`` child process per seed, one after another, in ``OUT/trials/<n>[/seed<k>]``,
started as the study driver starts its runs (own session and thread budget, log in ``OUT/logs/``). The
parent reads the run's metrics.jsonl as epochs end, reports the objective so far to Optuna's pruner, and
stops a pruned child with SIGTERM (the trainer saves last.pt and exits 75). ``study.optimize(n_jobs=K)``
runs K trials at a time; workers on other machines share the study through its database, where Optuna
hands each trial to one worker.

What keeps a study whole when things die:

- every worker records a heartbeat per running trial; a trial silent for twice the interval (its sweep was
  killed, its machine lost) is marked FAIL by the next worker that looks and re-queued as a WAITING copy
  with the same parameters (Optuna's ``RetryHeartbeatStaleTrialCallback``; at most ``MAX_RETRIES`` times);
- a trial stopped by a signal (the sweep's SIGTERM or Ctrl-C, or one sent to its child) is marked FAIL and
  re-queued the same way;
- the copy keeps the original's run folder, so it continues from the saved last.pt (``advkit train --resume``);
- the children of a sweep killed outright get SIGTERM from the kernel (:mod:`advkit.studies.tethered`).

``--trials N`` counts the whole study: trials that ended (complete, pruned, or failed on their own), less the
failures that were re-queued. Running the same command again therefore continues to N, then stops.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import AdvkitError, RunDirectoryBusy
from ..interrupts import StoppedBySignal, StopRequest, stop_on_signals
from ..rundir import check_not_busy
from ..studies.driver import INTERRUPTED, duration, last_line, prepare_run, start_child, train_command, training_state
from ..studies.grid import StudyRun
from ..studies.summary import read_run
from .space import Sweep
from .storage import DEFINITION_KEY, open_storage, shown

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

POLL_S = 1.0
MAX_RETRIES = 3
TRIALS = "trials"
LOGS = "logs"
# Trial user attributes: the run folder a re-queued copy continues, the configuration of its first run (best.yaml),
# whether a FAIL is to be re-queued, what happened (for the terminal and the summary), an over-claimed trial.
RUN_FOLDER, CONFIG, REQUEUE, OUTCOME, SURPLUS = "run_folder", "config", "requeue", "outcome", "surplus"
PRUNERS: dict[str, dict[str, int]] = {
    "median": {"startup": 5, "warmup": 0},
    "hyperband": {"min": 1, "reduction": 3},
    "none": {},
}


@dataclass
class SweepSettings:
    """How to run a sweep: the command line of ``advkit sweep``."""

    out: Path
    storage: str
    study_name: str
    trials: int
    timeout: float | None = None
    workers: int = 1
    threads: int = 1
    pruner: str = "median"
    seeds: list[int] | None = None
    heartbeat: int = 60


class TrialEnded(Exception):
    """A trial that ends as FAIL while the sweep goes on: its training failed or was stopped, or it is surplus."""


def parse_pruner(spec: str) -> tuple[str, dict[str, int]]:
    """``median:startup=5,warmup=1`` → ("median", {...}); unknown names and options are one-line errors."""
    name, _, rest = spec.partition(":")
    if name not in PRUNERS:
        raise AdvkitError(
            f"--pruner must be median, hyperband or none (options as in median:startup=5,warmup=1), got {spec!r}"
        )
    values = dict(PRUNERS[name])
    for item in filter(None, rest.split(",")):
        key, equals, text = item.partition("=")
        if key not in values or not equals:
            known = ", ".join(PRUNERS[name]) or "none"
            raise AdvkitError(f"--pruner {spec}: unknown option {key!r} (options of {name}: {known})")
        least = 2 if key == "reduction" else 1 if key == "min" else 0
        if not text.strip().isdigit() or int(text) < least:
            raise AdvkitError(f"--pruner {spec}: {key} must be an integer of at least {least}, got {text!r}")
        values[key] = int(text)
    return name, values


def make_pruner(spec: str, steps: int) -> optuna.pruners.BasePruner:
    """The Optuna pruner of ``--pruner``; a step is one epoch of one seed's run (``steps`` in a whole trial)."""
    import optuna

    name, values = parse_pruner(spec)
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=values["startup"], n_warmup_steps=values["warmup"])
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=values["min"], max_resource=max(steps, values["min"]), reduction_factor=values["reduction"]
        )
    return optuna.pruners.NopPruner()


@dataclass(frozen=True)
class Tally:
    """Where the study stands against ``--trials``."""

    ended: int
    running: int
    waiting: int

    @property
    def total(self) -> int:
        return self.ended + self.running + self.waiting


def counted(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """The trials ``--trials`` counts: all but re-queued failures (their copy counts) and surplus claims."""
    requeued = {number for trial in trials for number in trial.system_attrs.get("retry_history", [])}
    return [trial for trial in trials if trial.number not in requeued and not trial.user_attrs.get(SURPLUS)]


def tally(trials: list[FrozenTrial]) -> Tally:
    from optuna.trial import TrialState

    states = [trial.state for trial in counted(trials)]
    return Tally(
        sum(state.is_finished() for state in states), states.count(TrialState.RUNNING), states.count(TrialState.WAITING)
    )


def run_folder(out: Path, folder: int) -> Path:
    return out / TRIALS / str(folder)


def steps_per_trial(sweep: Sweep, seeds: int) -> int:
    """The most pruner steps a trial can have: epochs (the largest a searched ``epochs`` can take) × seeds."""
    searched = next((parameter for parameter in sweep.parameters if parameter.name == "epochs"), None)
    if searched is None:
        epochs = sweep.config({}).epochs
    elif searched.kind == "categorical":
        epochs = max(searched.choices)
    else:
        epochs = int(searched.axes["epochs"].high)
    return epochs * seeds


class SweepDriver:
    """Opens the study and runs trials until the study has ``settings.trials`` of them (or the timeout)."""

    def __init__(self, sweep: Sweep, settings: SweepSettings, echo: Callable[[str], None]) -> None:
        self.sweep = sweep
        self.settings = settings
        self.echo = echo
        self.request = StopRequest()
        self.seeds = settings.seeds if settings.seeds is not None else [0]

    # ------------------------------------------------------------------------------------------ the study
    def open_study(self) -> optuna.Study:
        """Create the study (recording its sweep, queueing the space's ``enqueue`` entries) or load it."""
        import optuna
        from optuna.storages import RetryHeartbeatStaleTrialCallback

        self.settings.out.mkdir(parents=True, exist_ok=True)
        # A stopped trial is re-queued however often a sweep is stopped; one whose worker died, MAX_RETRIES times
        # at most (a configuration that kills its worker each time must not do so for ever).
        self.requeue = RetryHeartbeatStaleTrialCallback()
        storage = open_storage(
            self.settings.storage, self.settings.heartbeat, RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)
        )
        # TPE models the trials once a few random ones exist: 10 by default, the whole of a small sweep.
        sampler = optuna.samplers.TPESampler(
            n_startup_trials=max(2, min(10, self.settings.trials // 3)), constant_liar=True
        )  # parallel workers spread out
        pruner = make_pruner(self.settings.pruner, steps_per_trial(self.sweep, len(self.seeds)))
        name = self.settings.study_name
        try:
            study = optuna.create_study(
                storage=storage, study_name=name, direction="maximize", sampler=sampler, pruner=pruner
            )
            created = True
        except optuna.exceptions.DuplicatedStudyError:  # made earlier, or by another worker just now
            study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
            created = False
        if DEFINITION_KEY not in study.user_attrs:
            study.set_user_attr(DEFINITION_KEY, self.sweep.definition(self.settings.seeds))
        if created:
            for params in self.sweep.enqueue[: self.settings.trials]:
                study.enqueue_trial(params, skip_if_exists=True)
        self.study = study
        return study

    def run(self) -> None:
        """Start trials while the study lacks some, wait for those of other workers, stop on SIGTERM/Ctrl-C."""
        import optuna

        settings, study = self.settings, self.study
        deadline = None if settings.timeout is None else time.monotonic() + settings.timeout
        told_waiting = False
        self.request.deferring = True
        with stop_on_signals(self.request):
            while not self.request:
                now = tally(study.get_trials(deepcopy=False))
                if now.ended >= settings.trials:
                    break
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    self.echo(
                        f"--timeout reached: {now.ended} of {settings.trials} trials ended; "
                        "run the command again to continue"
                    )
                    break
                to_start = now.waiting + max(0, settings.trials - now.total)
                if to_start:
                    study.optimize(
                        self.objective,
                        n_trials=to_start,
                        timeout=left,
                        n_jobs=min(settings.workers, to_start),
                        catch=(TrialEnded,),
                        callbacks=[self.after_trial],
                        gc_after_trial=False,
                    )
                    told_waiting = False
                    continue
                if not told_waiting:
                    self.echo(
                        f"waiting for {now.running} trial(s) running elsewhere (a worker silent for "
                        f"{2 * settings.heartbeat}s loses its trial to this one)"
                    )
                    told_waiting = True
                time.sleep(min(settings.heartbeat, 5))
                optuna.storages.fail_stale_trials(study)
        if self.request:
            ended = tally(study.get_trials(deepcopy=False)).ended
            raise StoppedBySignal(
                self.request.signal_name or "SIGTERM",
                self.request.exit_status,
                f"sweep stopped ({ended} of {settings.trials} trials ended; running ones saved and "
                "re-queued); run the same command again to continue",
            )

    # ------------------------------------------------------------------------------------------ one trial
    def objective(self, trial: optuna.Trial) -> float:
        """Train the sampled configuration at every seed and return the mean objective; pruning and failures
        end it early (``optuna.TrialPruned``, ``TrialEnded``)."""

        trial.set_user_attr(REQUEUE, False)
        if self.request:
            raise self._end(trial, "the sweep is stopping before it started", requeue=True)
        self._claim(trial)
        values = self.sweep.sample(trial)
        folder = trial.user_attrs.get(RUN_FOLDER, trial.number)  # a re-queued copy continues the original's runs
        runs = self.runs_of(folder, values)
        trial.set_user_attr(RUN_FOLDER, folder)
        trial.set_user_attr(CONFIG, runs[0].config.to_dict())
        trial.set_user_attr("host", socket.gethostname())
        where = run_folder(self.settings.out, folder)
        self.echo(
            f"start  trial {trial.number} ({describe(values)}) in {where}"
            + (f", continuing trial {folder}" if folder != trial.number else "")
        )
        reported: dict[int, int] = {}
        for index, run in enumerate(runs):
            if training_state(run) != "done":
                self._train(trial, run, index, reported)
            if self._report(trial, run, index, reported):  # the last epochs of a finished run, then the next seed
                raise self._pruned(trial, run, index, reported)
        value = self.sweep.objective.of_runs([read_run(run.directory) for run in runs])
        trial.set_user_attr(OUTCOME, f"complete: {100 * value:.2f}%")
        return value

    def runs_of(self, folder: int, values: dict[str, Any]) -> list[StudyRun]:
        """The trial's runs: the folder itself, or one subfolder per seed with --seeds."""
        root = run_folder(self.settings.out, folder)
        return [
            StudyRun(
                f"trial {folder}",
                seed,
                root / f"seed{seed}" if self.settings.seeds is not None else root,
                self.sweep.config(values, seed),
            )
            for seed in self.seeds
        ]

    def log_of(self, run: StudyRun) -> Path:
        """OUT/logs/trial-<folder>[-seed<k>].log: appended to when a re-queued copy continues the run."""
        parts = run.directory.relative_to(self.settings.out / TRIALS).parts
        return self.settings.out / LOGS / f"trial-{'-'.join(parts)}.log"

    def _claim(self, trial: optuna.Trial) -> None:
        """A fresh trial beyond ``--trials`` (two workers asked at once for the last one) is not run."""
        trials = trial.study.get_trials(deepcopy=False)
        mine = next(item for item in trials if item.number == trial.number)
        if {"fixed_params", "failed_trial"} & set(mine.system_attrs):  # queued for this study: always run
            return
        if len([item for item in counted(trials) if item.number < trial.number]) >= self.settings.trials:
            trial.set_user_attr(SURPLUS, True)
            trial.study.stop()
            raise TrialEnded("surplus: another worker claimed the study's last trial first")

    def _train(self, trial: optuna.Trial, run: StudyRun, index: int, reported: dict[int, int]) -> None:
        """One seed's ``advkit train``, watched until it ends, is pruned, or the sweep stops."""
        prepare_run(run)
        self._wait_until_free(trial, run)
        log = self.log_of(run)
        process = start_child(train_command(run), log, self.settings.threads, stop_with_parent=True)
        while True:
            status = process.poll()
            pruned = self._report(trial, run, index, reported)  # after poll: a finished run's last epoch counts too
            if pruned or self.request:
                _stop(process)
                if pruned:
                    raise self._pruned(trial, run, index, reported)
                raise self._end(trial, "stopped with the sweep", requeue=True)
            if status is not None:
                break
            time.sleep(POLL_S)
        if status == 0 and training_state(run) == "done":
            return
        if status in INTERRUPTED:
            raise self._end(trial, f"its training was stopped by a signal (exit {status})", requeue=True)
        raise self._end(trial, f"training failed (exit {status}): {last_line(log)}  [log: {log}]", requeue=False)

    def _wait_until_free(self, trial: optuna.Trial, run: StudyRun) -> None:
        """A killed sweep's child may still be saving in the folder a re-queued copy continues: wait for it."""
        told = False
        while True:
            try:
                check_not_busy(run.directory)
                return
            except RunDirectoryBusy as exc:
                if self.request:
                    raise self._end(trial, "stopped with the sweep", requeue=True) from None
                if not told:
                    self.echo(f"wait   trial {trial.number}: {exc}")
                    told = True
                time.sleep(POLL_S)

    def _report(self, trial: optuna.Trial, run: StudyRun, index: int, reported: dict[int, int]) -> bool:
        """Report the epochs that ended since the last look, asking the pruner after each one, so that its
        decision does not depend on how many epochs ended between two looks; whether it stops the trial (never
        after its last step: then there is nothing left to save)."""
        from ..plots import read_metrics

        if not (run.directory / "metrics.jsonl").is_file():
            return False
        records = read_metrics(run.directory)
        config = run.config.to_dict()
        for count in range(reported.get(index, 0) + 1, len(records) + 1):
            trial.report(self.sweep.objective.so_far(config, records[:count]), index * run.config.epochs + count)
            reported[index] = count
            last_step = count >= run.config.epochs and index == len(self.seeds) - 1
            if not last_step and trial.should_prune():
                return True
        return False

    def _pruned(self, trial: optuna.Trial, run: StudyRun, index: int, reported: dict[int, int]) -> Exception:
        import optuna

        seed = f" of seed {run.seed}" if self.settings.seeds is not None else ""
        trial.set_user_attr(OUTCOME, f"pruned after epoch {reported[index]}{seed}")
        return optuna.TrialPruned(f"pruned after epoch {reported[index]}{seed}")

    def _end(self, trial: optuna.Trial, why: str, requeue: bool) -> TrialEnded:
        trial.set_user_attr(REQUEUE, requeue)
        trial.set_user_attr(OUTCOME, f"failed, re-queued: {why}" if requeue else f"failed: {why}")
        return TrialEnded(why)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Re-queue a stopped trial, say how the trial ended, and stop asking once the study is full."""
        from optuna.trial import TrialState

        if trial.user_attrs.get(SURPLUS):
            return
        if trial.state == TrialState.FAIL and trial.user_attrs.get(REQUEUE):
            self.requeue(study, trial)
        elapsed = (
            duration((trial.datetime_complete - trial.datetime_start).total_seconds())
            if trial.datetime_complete and trial.datetime_start
            else "?"
        )
        self.echo(f"trial {trial.number}: {trial.user_attrs.get(OUTCOME, trial.state.name.lower())} ({elapsed})")
        now = tally(study.get_trials(deepcopy=False))
        if self.request or (now.total >= self.settings.trials and not now.waiting):
            study.stop()


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM: the trainer finishes its step, saves last.pt and exits 75."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    process.wait()


def describe(values: dict[str, Any]) -> str:
    """``lr=0.0123, adr.temperature=2.31:1.5``: parameter values at 4 significant digits."""
    return ", ".join(f"{name}={short(value)}" for name, value in values.items())


def short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, str) and ":" in value:  # a schedule: start:end[:shape]
        parts = value.split(":")
        return ":".join(f"{float(part):.4g}" if index < 2 else part for index, part in enumerate(parts))
    return str(value)


def run_sweep(sweep: Sweep, settings: SweepSettings, echo: Callable[[str], None]) -> int:
    """Open or continue the study, run it, write its outputs; 0 when a trial completed, 1 when none did."""
    import optuna

    from .outputs import write_outputs

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the sweep prints its own line per trial
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats, matplotlib plots
        driver = SweepDriver(sweep, settings, echo)
        study = driver.open_study()
        now = tally(study.get_trials(deepcopy=False))
        echo(
            f"sweep {settings.study_name}: {now.ended} of {settings.trials} trials ended, {settings.workers} at a "
            f"time here with {settings.threads} thread(s) each; study in {shown(settings.storage)}, logs in "
            f"{settings.out / LOGS}"
        )
        driver.run()
        for line in write_outputs(study, sweep, settings):
            echo(line)
    return 0 if any(trial.state.name == "COMPLETE" for trial in study.get_trials(deepcopy=False)) else 1
