"""What every benchmark here shares: a random CIFAR-10 folder, the common flags, and interleaved timing.

Interleaving (every measured thing runs once per round, the order reversed on odd rounds) makes drifting
load on a shared machine hit all measurements alike, so the printed ratios stay meaningful. On a CPU the
clock is this process's CPU time (other processes do not inflate it); on a GPU it is wall time between
synchronisations.
"""

from __future__ import annotations

import argparse
import pickle
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from advkit import TrainConfig, Trainer


def synthetic_cifar10(root: Path, images: int) -> None:
    """A CIFAR-10 folder in the python-pickle layout holding random images (timings do not care)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            "data": rng.integers(0, 256, (images, 3072), dtype=np.uint8),
            "labels": rng.integers(0, 10, images).tolist(),
        }
        (folder / name).write_bytes(pickle.dumps(batch))


def parser(description: str, batch_size: int) -> argparse.ArgumentParser:
    """The flags all benchmarks take; each script adds its own model flags."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds (after one warm-up round)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 resists other load best)")
    return parser


def parse_args(arguments: argparse.ArgumentParser) -> argparse.Namespace:
    """Parse the flags and apply ``--threads``."""
    args = arguments.parse_args()
    torch.set_num_threads(args.threads)
    return args


def synthetic_trainer(root: Path, name: str, args: argparse.Namespace, **settings: object) -> Trainer:
    """A one-epoch Trainer on a random CIFAR-10 folder under ``root`` (written on first use)."""
    data = root / "data"
    if not data.exists():
        synthetic_cifar10(data, images=2 * args.batch_size)
    config = TrainConfig(
        dataset="cifar10",
        data_dir=str(data),
        batch_size=args.batch_size,
        epochs=1,
        val_size=args.batch_size,
        device=args.device,
        seed=0,
        **settings,
    )
    return Trainer(config, root / name, progress=False)


def interleaved_times(work: dict[str, Callable[[], object]], repeats: int, device: str) -> dict[str, list[float]]:
    """Seconds per call of each callable over ``repeats`` interleaved rounds, after one untimed warm-up round."""
    cuda = device.startswith("cuda")
    clock = time.perf_counter if cuda else time.process_time
    times: dict[str, list[float]] = {name: [] for name in work}
    for repeat in range(repeats + 1):
        for name, run in list(work.items()) if repeat % 2 == 0 else list(reversed(work.items())):
            if cuda:
                torch.cuda.synchronize()
            started = clock()
            run()
            if cuda:
                torch.cuda.synchronize()
            if repeat > 0:
                times[name].append(clock() - started)
    return times


def step_times(
    variants: dict[str, dict[str, object]], args: argparse.Namespace, **common: object
) -> dict[str, list[float]]:
    """Interleaved ``Trainer.train_step`` times of one trainer per variant (settings over ``common``), all on
    the same first batch of a synthetic CIFAR-10 folder."""
    from advkit import Progress

    with tempfile.TemporaryDirectory() as tmp:
        trainers = {
            name: synthetic_trainer(Path(tmp), f"run{i}", args, **{**common, **variant})
            for i, (name, variant) in enumerate(variants.items())
        }
        x, y = next(iter(next(iter(trainers.values())).train_loader))
        progress = Progress(0, 0, 100, 10)
        # .item() waits for the step to finish (benchmark only; the trainer never syncs per step)
        return interleaved_times(
            {name: (lambda t=trainer: t.train_step(x, y, progress)[0].item()) for name, trainer in trainers.items()},
            args.repeats,
            args.device,
        )


def clock_name(device: str) -> str:
    return "wall time" if device.startswith("cuda") else "CPU time"
