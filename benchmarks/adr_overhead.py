"""ADR's step-time overhead over plain PGD-AT, measured side by side in one process.

Three trainers are built from the same seed on the same 32×32 batch (a synthetic CIFAR-10 folder, so no
download): PGD-10 AT with one-hot labels, the same with ``--wa 0.995``, and with ``--rectifier adr``
(whose EMA teacher is the run's weight average). Their ``Trainer.train_step`` calls are interleaved, so
drifting machine load hits all of them alike; the medians and their ratios are printed. On a CPU the
clock is this process's CPU time (other processes on a shared machine do not inflate it); on a GPU it
is wall time after a synchronisation. ADR adds one
no-grad teacher forward and the fused EMA update to the ~23 forward-equivalents of a PGD-10 AT step, so
its overhead should stay near 5% (the paper reports 2.5% on a GPU).

    python benchmarks/adr_overhead.py [--model resnet18] [--batch-size 16] [--repeats 7] [--device cpu]
"""

from __future__ import annotations

import argparse
import pickle
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from advkit import Progress, TrainConfig, Trainer

VARIANTS = {
    "AT (onehot)": {"rectifier": "onehot"},
    "AT + WA 0.995": {"rectifier": "onehot", "wa": 0.995},
    "AT + ADR": {"rectifier": "adr"},
}


def synthetic_cifar10(root: Path, images: int) -> None:
    """A CIFAR-10 folder in the python-pickle layout holding random images (timings do not care)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (images, 3072), dtype=np.uint8),
                 "labels": rng.integers(0, 10, images).tolist()}
        (folder / name).write_bytes(pickle.dumps(batch))


def build(variant: dict[str, object], args: argparse.Namespace, data_dir: Path, out_dir: Path) -> Trainer:
    config = TrainConfig(dataset="cifar10", data_dir=str(data_dir), model=args.model, objective="at",
                         batch_size=args.batch_size, epochs=1, val_size=args.batch_size, device=args.device,
                         seed=0, **variant)
    return Trainer(config, out_dir, progress=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=7, help="timed steps per variant (after one warm-up step)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 resists other load best)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        synthetic_cifar10(root / "data", images=2 * args.batch_size)
        trainers = {name: build(variant, args, root / "data", root / f"run{i}")
                    for i, (name, variant) in enumerate(VARIANTS.items())}
        x, y = next(iter(next(iter(trainers.values())).train_loader))
        progress = Progress(0, 0, 100, 10)
        times: dict[str, list[float]] = {name: [] for name in trainers}
        cuda = args.device.startswith("cuda")
        clock = time.perf_counter if cuda else time.process_time
        for repeat in range(args.repeats + 1):
            order = list(trainers.items())
            order = order if repeat % 2 == 0 else order[::-1]  # alternate who goes first
            for name, trainer in order:
                if cuda:
                    torch.cuda.synchronize()
                started = clock()
                loss, _ = trainer.train_step(x, y, progress)
                loss.item()  # wait for the step to finish (benchmark only; the trainer never syncs per step)
                if repeat > 0:
                    times[name].append(clock() - started)

    print(f"{args.model}, 32×32, batch {args.batch_size}, PGD-10 AT step, {args.device}, {args.threads} thread(s), "
          f"{args.repeats} interleaved steps each ({'wall' if cuda else 'CPU'} time; the minimum resists interference)")
    for statistic in (statistics.median, min):
        base = statistic(times["AT (onehot)"])
        print(f"  {statistic.__name__}:")
        for name, samples in times.items():
            value = statistic(samples)
            print(f"    {name:<15} {1000 * value:9.1f} ms/step   ×{value / base:.3f}  ({100 * (value / base - 1):+.1f}%)")
        adr, wa = statistic(times["AT + ADR"]), statistic(times["AT + WA 0.995"])
        print(f"    ADR over AT + WA (the teacher forward alone): {100 * (adr / wa - 1):+.1f}%")


if __name__ == "__main__":
    main()
