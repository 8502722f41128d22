"""Data-parallel overhead: a 2-rank gloo step at global batch B ÷ a 1-process step at batch B/2.

Both do the same model work per process, so the ratio is what data parallelism adds: the gradient
all-reduce, the BatchNorm buffer broadcast, the stop-flag agreement and the sharding. Two processes are
started with gloo; each round times one DDP step (both ranks) and then one plain single-process step
of rank 0 at B/2 while rank 1 waits, interleaved so that machine load hits both alike. Wall time, since
waiting for a peer is part of the cost.

    python benchmarks/ddp_overhead.py [--model resnet18] [--batch-size 32] [--repeats 5]
"""

from __future__ import annotations

import contextlib
import os
import socket
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from _harness import parse_args, parser, synthetic_trainer

from advkit import Progress


@contextlib.contextmanager
def single_process_environment() -> Iterator[None]:
    """Build a Trainer that sees no torchrun variables (a plain 1-process run inside this job)."""
    saved = {name: os.environ.pop(name) for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK") if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def rank_main(rank: int, args, port: int, root: str, results: dict) -> None:
    os.environ.update(
        {
            "RANK": str(rank),
            "WORLD_SIZE": "2",
            "LOCAL_RANK": str(rank),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
    )
    torch.set_num_threads(1)
    half = type(args)(**{**vars(args), "batch_size": args.batch_size // 2})
    data_parallel = synthetic_trainer(Path(root), f"ddp{rank}", args, model=args.model, objective="at")
    with single_process_environment():
        single = synthetic_trainer(Path(root), f"single{rank}", half, model=args.model, objective="at")
    loader = iter(data_parallel.train_loader)
    x, y = next(loader)
    xs, ys = next(iter(single.train_loader))
    progress = Progress(0, 0, 100, 10)
    ddp_times, single_times = [], []
    for repeat in range(args.repeats + 1):
        dist.barrier()
        started = time.perf_counter()
        data_parallel.train_step(x, y, progress)[0].item()
        dist.barrier()
        if repeat:
            ddp_times.append(time.perf_counter() - started)
        if rank == 0:
            started = time.perf_counter()
            single.train_step(xs, ys, progress)[0].item()
            if repeat:
                single_times.append(time.perf_counter() - started)
        dist.barrier()
    if rank == 0:
        results.update(ddp=ddp_times, single=single_times)
    dist.destroy_process_group()


def main() -> None:
    arguments = parser(__doc__.splitlines()[0], batch_size=32)
    arguments.add_argument("--model", default="resnet18")
    args = parse_args(arguments)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with tempfile.TemporaryDirectory() as root, mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(rank_main, args=(args, port, root, results), nprocs=2, join=True)
        ddp, single = list(results["ddp"]), list(results["single"])
    print(
        f"{args.model}, 32×32, PGD-10 AT, CPU gloo, 1 thread per process, "
        f"{args.repeats} interleaved repeats (wall time)"
    )
    for statistic in (statistics.median, min):
        a, b = statistic(ddp), statistic(single)
        print(
            f"  {statistic.__name__:<6} 2 ranks × {args.batch_size // 2} {1000 * a:8.1f} ms   1 process × "
            f"{args.batch_size // 2} {1000 * b:8.1f} ms   overhead ×{a / b:.3f}"
        )


if __name__ == "__main__":
    main()
