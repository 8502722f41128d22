"""Loader throughput with generated data: a memory-mapped 1M-image .npz mixed into every batch, against the
in-memory loader alone, in 32×32 images per second on one CPU thread (goal: at least 20k/s, so that the
loader is never what a training step waits for).

The .npz (about 3 GB of random CIFAR-shaped images) is written to a temporary folder and deleted at the
end. Freshly written, it sits in the page cache; a colder file reads at the disk's speed instead.

    python benchmarks/extra_data_loader.py [--images 1000000] [--batch-size 512] [--fraction 0.7] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import torch

from advkit.data import CIFAR10_INFO, ArrayDataset, BatchLoader
from advkit.data.extra import load_extra_data

GOAL = 20_000
REAL_IMAGES = 50_000


def write_generated(path: Path, images: int, chunk: int = 100_000) -> None:
    """An uncompressed .npz of random uint8 N×32×32×3 images, written in chunks (never all in memory)."""
    rng = np.random.default_rng(0)
    folder = path.parent / "members"
    folder.mkdir()
    image = np.lib.format.open_memmap(folder / "image.npy", mode="w+", dtype=np.uint8, shape=(images, 32, 32, 3))
    for start in range(0, images, chunk):
        stop = min(start + chunk, images)
        image[start:stop] = rng.integers(0, 256, (stop - start, 32, 32, 3), dtype=np.uint8)
    image.flush()
    del image
    np.save(folder / "label.npy", rng.integers(0, 10, images))
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name in ("image.npy", "label.npy"):
            archive.write(folder / name, name)
            (folder / name).unlink()


def images_per_second(loader: BatchLoader, batches: int) -> float:
    loader.set_epoch(0)
    started, seen = time.perf_counter(), 0
    for index, (x, _) in enumerate(loader):
        seen += x.shape[0]
        if index + 1 == batches:
            break
    return seen / (time.perf_counter() - started)


def main() -> None:
    arguments = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    arguments.add_argument("--images", type=int, default=1_000_000)
    arguments.add_argument("--batch-size", type=int, default=512)
    arguments.add_argument("--fraction", type=float, default=0.7)
    arguments.add_argument("--batches", type=int, default=40, help="batches timed per repeat")
    arguments.add_argument("--repeats", type=int, default=3)
    args = arguments.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(1)
    real = ArrayDataset(
        torch.from_numpy(rng.integers(0, 256, (REAL_IMAGES, 3, 32, 32), dtype=np.uint8)),
        torch.from_numpy(rng.integers(0, 10, REAL_IMAGES)),
    )
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "generated.npz"
        started = time.perf_counter()
        write_generated(path, args.images)
        print(
            f"wrote {args.images:,} images ({path.stat().st_size / 2**30:.1f} GiB) "
            f"in {time.perf_counter() - started:.0f} s"
        )
        extra = load_extra_data(path, CIFAR10_INFO)
        per_batch = round(args.fraction * args.batch_size)
        loaders = {
            "in-memory only": BatchLoader(real, args.batch_size, shuffle=True, drop_last=True, augment=CIFAR10_INFO),
            f"mixed, {per_batch}/{args.batch_size} memory-mapped": BatchLoader(
                real,
                args.batch_size,
                shuffle=True,
                drop_last=True,
                augment=CIFAR10_INFO,
                extra=extra,
                extra_per_batch=per_batch,
            ),
        }
        rates: dict[str, list[float]] = {name: [] for name in loaders}
        for repeat in range(args.repeats):
            for name, loader in loaders.items() if repeat % 2 == 0 else reversed(list(loaders.items())):
                rates[name].append(images_per_second(loader, args.batches))
    print(
        f"32×32 CIFAR-shaped batches of {args.batch_size} with crop+flip, CPU, 1 thread, "
        f"{args.repeats} interleaved repeats"
    )
    for name, values in rates.items():
        print(f"  {name:<34} {statistics.median(values):>10,.0f} images/s median  (goal ≥ {GOAL:,})")


if __name__ == "__main__":
    main()
