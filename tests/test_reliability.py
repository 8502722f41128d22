"""Long-run reliability: divergence, mid-epoch checkpoints, signals, the run lock, the checkpoint pair, I/O errors.

Signal and lock tests drive real ``advkit`` processes; each is bounded by a timeout.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from advkit import TrainConfig, Trainer
from advkit.errors import EXIT_DIVERGED, EXIT_INTERRUPTED, EXIT_IO, EXIT_PREEMPTED, RunDirectoryBusy, TrainingDiverged

DIGITS = ["--dataset", "digits", "--model", "small-cnn", "--eps", "0.1", "--val-steps", "2", "--quiet"]


def digits_config(**overrides) -> TrainConfig:
    settings = dict(
        dataset="digits",
        model="small-cnn",
        objective="at",
        eps=0.1,
        epochs=2,
        batch_size=64,
        lr=0.05,
        val_steps=2,
        seed=5,
        options={"attack": {"steps": "3"}},
    )
    settings.update(overrides)
    return TrainConfig(**settings)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model"]


def assert_same_weights(a: Path, b: Path) -> None:
    first, second = weights(a), weights(b)
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def advkit_process(args: list[str], **kwargs) -> subprocess.Popen:
    """``python -m advkit ARGS`` on one thread, with Ctrl-C delivered as in a terminal."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "advkit", *args],
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        **kwargs,
    )


# ---------------------------------------------------------------------------------------------- divergence
def test_huge_learning_rate_stops_with_exit_3_and_writes_no_nan(run_cli, tmp_path):
    out = tmp_path / "run"
    code, _, err = run_cli(["train", *DIGITS, "--epochs", "3", "--lr", "1e6", "--out", str(out)])
    assert code == EXIT_DIVERGED, err
    assert err.startswith("advkit: error: training diverged:") and len(err.strip().splitlines()) == 1
    for checkpoint in out.glob("*.pt"):  # whatever was written before the divergence is finite
        assert all(torch.isfinite(t).all() for t in weights(checkpoint).values() if t.is_floating_point())
    if (out / "metrics.jsonl").exists():
        for line in (out / "metrics.jsonl").read_text().splitlines():
            json.loads(line, parse_constant=lambda name: pytest.fail(f"bare {name} in metrics.jsonl"))


def test_infinite_learning_rate_is_rejected(run_cli, tmp_path):
    code, _, err = run_cli(["train", *DIGITS, "--lr", "inf", "--out", str(tmp_path / "run")])
    assert code == 2 and "not a finite number" in err
    assert not (tmp_path / "run").exists()


def test_divergence_keeps_the_last_good_checkpoints_and_is_caught_within_the_check_interval(tmp_path, monkeypatch):
    run = tmp_path / "run"
    Trainer(digits_config(epochs=3), run, progress=False).fit(stop_after_epoch=1)
    before = {name: digest(run / name) for name in ("last.pt", "best.pt", "metrics.jsonl")}
    monkeypatch.setattr("advkit.train.FINITE_CHECK_EVERY", 1)
    resumed = Trainer.resume_run(run, progress=False)
    with torch.no_grad():
        next(resumed.model.parameters()).fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match=r"epoch 2 \(within its first 1 of \d+ steps\).*holds epoch 1"):
        resumed.fit()
    assert {name: digest(run / name) for name in before} == before
    assert not resumed.lock.held


# ---------------------------------------------------------------------------------------------- mid-epoch
def test_mid_epoch_checkpoint_resumes_to_the_same_weights(tmp_path):
    Trainer(digits_config(wa=0.9), tmp_path / "straight", progress=False).fit()
    stopped = Trainer(digits_config(wa=0.9, checkpoint_every=4), tmp_path / "stopped", progress=False)
    per_epoch = len(stopped.train_loader)
    stopped.fit(stop_after_steps=per_epoch + 7)  # 7 steps into the second epoch
    state = torch.load(tmp_path / "stopped" / "last.pt", weights_only=True)
    assert state["epoch"] == 1 and state["position"]["step"] == 7
    resumed = Trainer.resume_run(tmp_path / "stopped", progress=False)
    resumed.fit()
    assert_same_weights(tmp_path / "straight" / "last.pt", tmp_path / "stopped" / "last.pt")
    straight = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    again = torch.load(tmp_path / "stopped" / "last.pt", weights_only=True)
    for key in ("train_loss", "train_acc", "val_robust_acc", "val_wa_robust_acc"):
        assert [r[key] for r in straight["history"]] == [r[key] for r in again["history"]], key
    assert "position" not in again


@pytest.mark.parametrize("stop", [{"stop_after_epoch": 1}, {"stop_after_steps": 7}], ids=["epoch end", "mid-epoch"])
def test_a_second_fit_of_the_same_trainer_continues_where_the_first_stopped(tmp_path, stop):
    Trainer(digits_config(wa=0.9), tmp_path / "straight", progress=False).fit()
    trainer = Trainer(digits_config(wa=0.9, checkpoint_every=4), tmp_path / "twice", progress=False)
    trainer.fit(**stop)
    history = trainer.fit()
    straight = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    assert [record["epoch"] for record in history] == [record["epoch"] for record in straight["history"]]
    assert_same_weights(tmp_path / "straight" / "last.pt", tmp_path / "twice" / "last.pt")
    assert [r["train_loss"] for r in history] == [r["train_loss"] for r in straight["history"]]


def test_checkpoint_every_writes_mid_epoch_checkpoints_without_changing_the_run(tmp_path, monkeypatch):
    saved = []
    original = Trainer._save_position
    monkeypatch.setattr(
        Trainer,
        "_save_position",
        lambda self, epoch, step, totals: (saved.append((epoch, step)), original(self, epoch, step, totals))[-1],
    )
    Trainer(digits_config(epochs=1), tmp_path / "plain", progress=False).fit()
    every = Trainer(digits_config(epochs=1, checkpoint_every=5), tmp_path / "every", progress=False)
    every.fit()
    per_epoch = len(every.train_loader)
    assert saved == [(0, step) for step in range(5, per_epoch, 5)]
    assert_same_weights(tmp_path / "plain" / "last.pt", tmp_path / "every" / "last.pt")


# ---------------------------------------------------------------------------------------------- signals
def _wait_for_line(process: subprocess.Popen, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if text in line:
            return
        if not line and process.poll() is not None:
            break
    process.kill()
    pytest.fail(f"never saw {text!r}: {process.stderr.read()}")


@pytest.mark.parametrize(
    "signum, status",
    [(signal.SIGTERM, EXIT_PREEMPTED), (signal.SIGUSR1, EXIT_PREEMPTED), (signal.SIGINT, EXIT_INTERRUPTED)],
)
def test_signal_saves_a_checkpoint_and_resume_matches_an_uninterrupted_run(tmp_path, signum, status):
    args = [*DIGITS, "--epochs", "3", "--batch-size", "16", "--seed", "2", "-o", "attack.steps=3"]
    process = advkit_process(["train", *args, "--out", str(tmp_path / "cut")])
    _wait_for_line(process, "epoch 1/3", timeout=120)
    time.sleep(0.3)
    process.send_signal(signum)
    _, err = process.communicate(timeout=120)
    assert process.returncode == status, err
    assert f"advkit: {signal.Signals(signum).name}: stopped;" in err
    assert f"continue with: advkit train --resume {tmp_path / 'cut'}" in err and "Traceback" not in err
    state = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    assert state["epoch"] >= 1
    if signum != signal.SIGTERM:
        return
    resumed = subprocess.run(
        [sys.executable, "-m", "advkit", "train", "--resume", str(tmp_path / "cut"), "--quiet"],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    straight = subprocess.run(
        [sys.executable, "-m", "advkit", "train", *args, "--out", str(tmp_path / "straight")],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert straight.returncode == 0, straight.stderr
    assert_same_weights(tmp_path / "straight" / "last.pt", tmp_path / "cut" / "last.pt")


# ---------------------------------------------------------------------------------------------- lock
HOLD_LOCK = (
    "import sys, time; from advkit.rundir import RunLock; lock = RunLock(sys.argv[1]); lock.acquire(); "
    "print('held', flush=True); time.sleep(120)"
)


def test_a_second_writer_is_refused_with_the_holder_named_and_a_dead_holders_lock_is_taken_over(tmp_path, run_cli):
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunDirectoryBusy, match=f"in use by process {holder.pid} on host "):
            Trainer(digits_config(epochs=1), run, progress=False)
        code, _, err = run_cli(["train", *DIGITS, "--epochs", "1", "--out", str(run)])
        assert code == 2 and f"process {holder.pid}" in err
        assert not (run / "config.yaml").exists()
    finally:
        holder.kill()
        holder.wait(timeout=30)
    Trainer(digits_config(epochs=1), run, progress=False).fit()  # kill -9 released the lock
    assert (run / "last.pt").is_file()


def test_resume_is_refused_while_the_run_is_still_training(tmp_path):
    run = tmp_path / "run"
    Trainer(digits_config(epochs=2), run, progress=False).fit(stop_after_epoch=1)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunDirectoryBusy):
            Trainer.resume_run(run, progress=False)
    finally:
        holder.kill()
        holder.wait(timeout=30)


def test_two_runs_started_together_into_one_directory(tmp_path):
    args = ["train", *DIGITS, "--epochs", "2", "--out", str(tmp_path / "c")]
    processes = [advkit_process([*args, "--seed", str(seed)]) for seed in (0, 1)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in processes]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    assert "in use by process" in refused or "already holds a run" in refused
    winner = next(seed for (code, _), seed in zip(results, (0, 1), strict=True) if code == 0)
    saved = torch.load(tmp_path / "c" / "last.pt", weights_only=True)["config"]
    assert saved["seed"] == winner and f"seed: {winner}" in (tmp_path / "c" / "config.yaml").read_text()


# ---------------------------------------------------------------------------------------------- the pair
def test_resume_repairs_best_after_a_kill_between_the_two_writes_and_removes_stray_temporaries(tmp_path):
    run = tmp_path / "run"
    Trainer(digits_config(epochs=3), run, progress=False).fit(stop_after_epoch=1)
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["best"]["epoch"] == 1
    assert os.path.samefile(run / "last.pt", run / "best.pt")  # one file, two names: no second write
    (run / "best.pt").unlink()  # as an atomic write does: a new file, and last.pt stays as it is
    torch.save(dict(state, epoch=0), run / "best.pt")  # what best.pt held before the new best: an older epoch
    (run / ".last.pt.x1y2.tmp").write_bytes(b"half a checkpoint")
    Trainer.resume_run(run, progress=False)
    assert torch.load(run / "best.pt", weights_only=True)["epoch"] == 1
    assert_same_weights(run / "last.pt", run / "best.pt")
    assert not list(run.glob(".*.tmp"))


def test_resume_without_last_pt_says_to_start_again(tmp_path, run_cli):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("dataset: digits\nmodel: small-cnn\n")
    code, _, err = run_cli(["train", "--resume", str(run)])
    assert code == 2 and "holds no last.pt" in err and f"--config {run / 'config.yaml'} --out {run}" in err


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda text: text.replace("model: small-cnn", "model: resnet18"), "model is 'resnet18' there but 'small-cnn'"),
        (lambda text: text.replace("epochs: 2", "epochs: two"), "setting 'epochs' expects an integer"),
        (lambda text: text + "\n  - [unclosed", "is not valid YAML"),
    ],
)
def test_resume_of_an_edited_config_is_refused(tmp_path, run_cli, edit, expected):
    run = tmp_path / "run"
    Trainer(digits_config(epochs=2), run, progress=False).fit(stop_after_epoch=1)
    (run / "config.yaml").write_text(edit((run / "config.yaml").read_text()))
    code, _, err = run_cli(["train", "--resume", str(run)])
    assert code == 2 and expected in err and len(err.strip().splitlines()) == 1, err


# ---------------------------------------------------------------------------------------------- I/O errors
def test_a_failed_checkpoint_write_exits_74_and_keeps_the_previous_checkpoint(tmp_path, run_cli, monkeypatch):
    run = tmp_path / "run"
    Trainer(digits_config(epochs=2), run, progress=False).fit(stop_after_epoch=1)
    before = digest(run / "last.pt")

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", disk_full)
    code, _, err = run_cli(["train", "--resume", str(run), "--quiet"])
    assert code == EXIT_IO, err
    assert (
        err.strip()
        == f"advkit: error: cannot write {run / 'last.pt'}: No space left on device; the previous file is unchanged"
    )
    assert digest(run / "last.pt") == before and not list(run.glob(".*.tmp"))


def test_output_paths_are_checked_before_any_work(tmp_path, run_cli):
    blocker = tmp_path / "some_file"
    blocker.write_text("x")
    code, _, err = run_cli(["train", *DIGITS, "--out", str(blocker / "sub")])
    assert code == 2 and "is a file, not a folder" in err
    code, _, err = run_cli(["eval", str(tmp_path / "missing-run"), "--json", str(blocker / "r.json")])
    assert code == 2 and "--json" in err and "is a file, not a folder" in err


@pytest.fixture
def tmpfs(tmp_path):
    """A 3 MB tmpfs (root only; skipped where mounts are not allowed)."""
    mount = tmp_path / "mnt"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(folder: Path, leave: int) -> None:
    """Fill the filesystem of ``folder`` until about ``leave`` bytes are free."""
    stats = os.statvfs(folder)
    free = stats.f_bavail * stats.f_frsize
    with open(folder / "filler", "wb") as handle:
        handle.write(b"\0" * max(free - leave, 0))


def test_full_disk_at_start_and_mid_run(tmpfs, run_cli):
    _fill(tmpfs, leave=0)
    code, _, err = run_cli(["train", *DIGITS, "--epochs", "1", "--out", str(tmpfs / "run")])
    assert code in (2, EXIT_IO) and "No space left on device" in err and len(err.strip().splitlines()) == 1
    assert not (tmpfs / "run").exists()
    (tmpfs / "filler").unlink()
    _fill(tmpfs, leave=64 * 1024)  # room for config.yaml, not for a 180 kB checkpoint
    code, _, err = run_cli(["train", *DIGITS, "--epochs", "1", "--out", str(tmpfs / "run")])
    assert code == EXIT_IO and "cannot write" in err and "No space left on device" in err, err
    assert not (tmpfs / "run" / "last.pt").exists() and not list((tmpfs / "run").glob(".*.tmp"))


def test_read_only_filesystem(tmpfs, run_cli, tmp_path):
    (tmpfs / "old").mkdir()
    if subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], capture_output=True).returncode != 0:
        pytest.skip("cannot remount read-only")
    code, _, err = run_cli(["train", *DIGITS, "--epochs", "1", "--out", str(tmpfs / "run")])
    assert code == 2 and "Read-only file system" in err and not (tmpfs / "run").exists()
    code, _, err = run_cli(["eval", str(tmp_path / "no-run"), "--json", str(tmpfs / "r.json")])
    assert code == 2 and "--json" in err and "Read-only file system" in err


def test_signal_handling_defers_only_while_training():
    from advkit.interrupts import StoppedBySignal, StopRequest, stop_on_signals

    # as in a terminal: CI may start the suite with SIGINT ignored, which advkit rightly leaves ignored
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        request = StopRequest()
        with stop_on_signals(request):
            with pytest.raises(StoppedBySignal, match="SIGTERM: stopped before training began") as stopped:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(1)
        assert stopped.value.exit_status == EXIT_PREEMPTED
        request = StopRequest()
        request.deferring = True
        with stop_on_signals(request):
            os.kill(os.getpid(), signal.SIGUSR1)
            time.sleep(0.1)
            assert request.signal_name == "SIGUSR1" and request.exit_status == EXIT_PREEMPTED
            os.kill(os.getpid(), signal.SIGTERM)  # the first stop request is the one reported
            time.sleep(0.1)
            with pytest.raises(KeyboardInterrupt):  # a Ctrl-C once a stop is pending does not wait for the save
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(1)
        assert request.signal_name == "SIGUSR1"
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the previous handlers are back
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)


def test_an_ignored_sigint_stays_ignored():
    from advkit.interrupts import StopRequest, stop_on_signals

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with stop_on_signals(StopRequest()):
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


KILL_ARGS = [
    *DIGITS,
    "--epochs",
    "2",
    "--batch-size",
    "16",
    "--seed",
    "4",
    "-o",
    "attack.steps=2",
    "--checkpoint-every",
    "7",
]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("straight") / "run"
    done = subprocess.run(
        [sys.executable, "-m", "advkit", "train", *KILL_ARGS, "--out", str(out)],
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    return out


@pytest.mark.parametrize("delay", [2.9, 4.1, 5.3, 6.6])  # seconds after launch: start-up, epoch 1, epoch 2
def test_kill_9_at_any_moment_leaves_loadable_files_and_an_exact_resume(tmp_path, uninterrupted, delay):
    cut = tmp_path / "cut"
    process = advkit_process(["train", *KILL_ARGS, "--out", str(cut)])
    time.sleep(delay)
    process.kill()
    process.wait(timeout=60)
    for checkpoint in cut.glob("*.pt"):
        assert torch.load(checkpoint, weights_only=True)["format"] == "advkit-checkpoint-1"
    for line in (cut / "metrics.jsonl").read_text().splitlines() if (cut / "metrics.jsonl").exists() else []:
        json.loads(line)
    if not (cut / "last.pt").exists():
        return  # killed before the first checkpoint: nothing to resume, and nothing half-written either
    resumed = subprocess.run(
        [sys.executable, "-m", "advkit", "train", "--resume", str(cut), "--quiet"],
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert_same_weights(uninterrupted / "last.pt", cut / "last.pt")
    assert not list(cut.glob(".*.tmp"))


def test_immutable_run_directory(tmp_path, run_cli):
    run = tmp_path / "run"
    Trainer(digits_config(epochs=2), run, progress=False).fit(stop_after_epoch=1)
    before = digest(run / "last.pt")
    if subprocess.run(["chattr", "+i", str(run)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available on this filesystem")
    try:
        code, _, err = run_cli(["train", "--resume", str(run), "--quiet"])
        assert code == EXIT_IO and "Operation not permitted; the previous file is unchanged" in err, err
        assert len(err.strip().splitlines()) == 1
        code, _, err = run_cli(["train", *DIGITS, "--out", str(run / "sub")])
        assert code == 2 and "cannot write in" in err
    finally:
        subprocess.run(["chattr", "-i", str(run)], check=False)
    assert digest(run / "last.pt") == before


def test_a_trainer_that_is_dropped_releases_its_directory(tmp_path):
    run = tmp_path / "run"
    Trainer(digits_config(epochs=2), run, progress=False).fit(stop_after_epoch=1)
    Trainer.resume_run(run, progress=False)  # built, never fitted, dropped
    Trainer.resume_run(run, progress=False).fit()
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 2
