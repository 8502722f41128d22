"""Data parallelism under torchrun, on CPU with gloo and 2 processes.

A 2-rank run at global batch B must equal a 1-process run at batch B (batch-independent model, a
deterministic attack start); the ranks must agree on every weight and average; only rank 0 writes; a
kill -9 and ``--resume`` under torchrun must give the uninterrupted result.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from advkit import AdvkitError, TrainConfig, Trainer
from advkit.data import ArrayDataset, BatchLoader

WORKER = Path(__file__).parent / "distributed" / "worker.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "ADVKIT_DIST_TIMEOUT_S": "120"}
BASE = dict(dataset="digits", model="small-cnn-gn", epochs=1, batch_size=64, eps=0.1, val_steps=1, seed=1)


def launcher() -> list[str]:
    """torchrun with 2 processes on a port that is free now (each launch its own: no rendezvous leftovers)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(port),
    ]


def torchrun(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*launcher(), *args], env=ENV, capture_output=True, text=True, timeout=timeout)


def run_worker(settings: dict, run_dir: Path, out: Path, steps: int) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    done = torchrun(str(WORKER), json.dumps(settings), str(run_dir), str(out), str(steps))
    assert done.returncode == 0, done.stderr[-3000:]
    return [torch.load(out / f"rank{rank}.pt", weights_only=True) for rank in (0, 1)]


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[key].double() - b[key].double()).abs().max().item() for key in a)


def test_each_rank_takes_its_slice_of_the_same_global_batch():
    data = ArrayDataset(torch.arange(40, dtype=torch.float32).reshape(40, 1, 1, 1), torch.arange(40) % 3)
    single = BatchLoader(data, 8, shuffle=True, drop_last=True, seed=3)
    shards = [BatchLoader(data, 8, shuffle=True, drop_last=True, seed=3, rank=r, world_size=2) for r in (0, 1)]
    for loader in (single, *shards):
        loader.set_epoch(2)
    for whole, *parts in zip(single, *shards, strict=True):
        assert torch.equal(torch.cat([x for x, _ in parts]), whole[0])
        assert torch.equal(torch.cat([y for _, y in parts]), whole[1])
    with pytest.raises(
        AdvkitError, match="--batch-size 9 is the global batch and must divide by the number of processes"
    ):
        BatchLoader(data, 9, shuffle=True, drop_last=True, rank=0, world_size=2)


# The SAM-style step divides by per-layer gradient norms, which amplifies rounding differences (a
# different all-reduce order) step after step: 1e-7 after two steps, 3e-4 after four. Two steps suffice.
@pytest.mark.parametrize(
    "extra, steps",
    [({}, 4), ({"awp": 0.01}, 4), ({"awp": 0.005, "awp_variant": "adr-sam"}, 2)],
    ids=["plain", "awp", "adr-sam"],
)
def test_two_ranks_equal_one_process_at_the_same_global_batch(tmp_path, extra, steps):
    settings = {**BASE, **extra, "options": {"attack": {"start": "none"}}}
    rank0, rank1 = run_worker(settings, tmp_path / "ddp", tmp_path / "out", steps=steps)
    assert max_difference(rank0["model"], rank1["model"]) == 0.0  # the ranks never drift apart
    assert rank0["attack_on_bare_module"] and rank0["loss_through_ddp"]  # no DDP hook fires inside the attack
    single = Trainer(TrainConfig(**settings), tmp_path / "single", progress=False)
    single.fit(stop_after_steps=steps)
    assert max_difference(rank0["model"], single.model.state_dict()) < 1e-5


def test_adr_and_weight_average_stay_identical_on_every_rank(tmp_path):
    settings = {**BASE, "model": "small-cnn", "rectifier": "adr", "wa": 0.9}
    rank0, rank1 = run_worker(settings, tmp_path / "ddp", tmp_path / "out", steps=6)
    assert max_difference(rank0["model"], rank1["model"]) == 0.0
    assert rank0["averages"].keys() == {"0.9", "0.995"}  # --wa's and ADR's teacher (decay 0.995)
    for decay in rank0["averages"]:  # BatchNorm running statistics included
        assert max_difference(rank0["averages"][decay], rank1["averages"][decay]) == 0.0, decay


def test_per_example_memory_and_summed_state_agree_with_one_process(tmp_path):
    """TE's memory gathers every rank's examples (equal everywhere, as in one process); GKL's running
    class sums are per rank and add up to the single process's (they are summed at the epoch end)."""
    te = {**BASE, "objective": "te", "options": {"te": {"start": 0.0, "end": 0.5}, "attack": {"start": "none"}}}
    rank0, rank1 = run_worker(te, tmp_path / "te", tmp_path / "te-out", steps=4)
    assert torch.equal(rank0["rectifier"]["memory"], rank1["rectifier"]["memory"])
    single = Trainer(TrainConfig(**te), tmp_path / "te-single", progress=False)
    single.fit(stop_after_steps=4)
    assert torch.count_nonzero(single.rectifier.memory.sum(dim=1)) == 4 * 64  # 4 steps of 64 examples
    assert torch.allclose(rank0["rectifier"]["memory"], single.rectifier.memory, atol=1e-5)
    # x′ = x: TRADES-KL's gradient at x′ = x is rounding noise, whose sign differs between batch 32 and 64.
    gkl = {**BASE, "objective": "gkl", "options": {"attack": {"start": "none", "steps": 0}}}
    rank0, rank1 = run_worker(gkl, tmp_path / "gkl", tmp_path / "gkl-out", steps=3)
    single = Trainer(TrainConfig(**gkl), tmp_path / "gkl-single", progress=False)
    single.fit(stop_after_steps=3)
    summed = rank0["objective"]["accumulated"] + rank1["objective"]["accumulated"]
    assert torch.allclose(summed, single.objective.accumulated, atol=1e-4)


ARGS = [
    "train",
    "--dataset",
    "digits",
    "--model",
    "small-cnn-gn",
    "--eps",
    "0.1",
    "--val-steps",
    "1",
    "--quiet",
    "--batch-size",
    "16",
    "--seed",
    "2",
    "-o",
    "attack.steps=2",
]


def test_torchrun_writes_one_run_directory_from_rank_0(tmp_path):
    done = torchrun("-m", "advkit", *ARGS, "--epochs", "2", "--out", str(tmp_path / "run"))
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir()) == [
        ".advkit.lock",
        "best.pt",
        "config.yaml",
        "last.pt",
        "metrics.jsonl",
    ]
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert done.stdout.count("done: ") == 1 and done.stdout.count("epoch 2/2") == 1  # rank 0 alone reports
    assert torch.load(run / "last.pt", weights_only=True)["world_size"] == 2
    single = subprocess.run(
        [sys.executable, "-m", "advkit", "train", "--resume", str(run)],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert single.returncode == 2 and "written by a run of 2 process(es), this one has 1" in single.stderr


def test_kill_9_and_resume_under_torchrun_gives_the_uninterrupted_result(tmp_path):
    args = [*ARGS, "--epochs", "2", "--checkpoint-every", "5"]
    straight = torchrun("-m", "advkit", *args, "--out", str(tmp_path / "straight"))
    assert straight.returncode == 0, straight.stderr[-3000:]
    launch = [*launcher(), "-m", "advkit", *args, "--out", str(tmp_path / "cut")]
    process = subprocess.Popen(
        launch, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + 120
    while not (tmp_path / "cut" / "last.pt").exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    time.sleep(0.5)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    assert (tmp_path / "cut" / "last.pt").exists()
    resumed = torchrun("-m", "advkit", "train", "--resume", str(tmp_path / "cut"), "--quiet")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    first = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)["model"]
    second = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["model"]
    assert max_difference(first, second) == 0.0


def test_sync_bn_on_cpu_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(AdvkitError, match="--sync-bn needs CUDA"):
        Trainer(TrainConfig(**BASE, sync_bn=True, device="cpu"), tmp_path / "run", progress=False)


def test_a_setup_failure_on_rank_0_ends_every_rank_with_one_line(tmp_path):
    run = tmp_path / "run"
    Trainer(TrainConfig(**BASE), run, progress=False).fit()
    done = torchrun("-m", "advkit", *ARGS, "--epochs", "1", "--out", str(run))
    assert done.returncode != 0
    assert f"advkit: error: run directory {run} already holds a run" in done.stderr
    assert "advkit: error: process 0 of this run could not set up the run directory" in done.stderr
    assert "[rank1]: Traceback" not in done.stderr and "[rank0]: Traceback" not in done.stderr


def test_under_torchrun_rank_0_alone_logs_and_the_step_means_cover_every_rank(tmp_path):
    pytest.importorskip("tensorboard")
    run = tmp_path / "run"  # 320 examples in global batches of 16: 20 steps, 5 windows of 4
    done = torchrun(
        "-m",
        "advkit",
        *ARGS,
        "--epochs",
        "1",
        "--train-size",
        "320",
        "--logger",
        "csv,tensorboard",
        "--log-interval",
        "4",
        "--out",
        str(run),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 1
    (record,) = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    windows = [json.loads(line) for line in (run / "steps.jsonl").read_text().splitlines()]
    assert [window["step"] for window in windows] == [4, 8, 12, 16, 20]
    # Equal windows that tile the epoch average to its record, which is summed over both ranks.
    assert sum(window["loss"] for window in windows) / 5 == pytest.approx(record["train_loss"], rel=1e-5)
    assert sum(window["acc"] for window in windows) / 5 == pytest.approx(record["train_acc"], rel=1e-5)
