"""The speed matrix: a PGD-10 AT step for each model × batch × variant (fp32, bf16 autocast, channels_last,
torch.compile, alone and combined), as step time ÷ its model-work floor, images/s and peak memory.

The floor is the bare model work of the step under the same variant (the same compiled module, the same
autocast): 10 × forward + input backward for the attack, then forward + backward + SGD step. Each cell
interleaves step and floor. Made for a GPU; ``--quick`` runs a small-cnn cell set on the CPU so that CI
keeps the script working.

    python benchmarks/gpu_matrix.py --device cuda                        # ResNet-18, WRN-34-10 × 128, 512
    python benchmarks/gpu_matrix.py --quick                              # CPU smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
from pathlib import Path

import torch
from _harness import interleaved_times, synthetic_trainer
from pgd_at_step import floor

from advkit import Progress

VARIANTS = {
    "fp32": {},
    "bf16": {"amp": "bf16"},
    "channels_last": {"channels_last": True},
    "compile": {"compile": True},
    "bf16+channels_last": {"amp": "bf16", "channels_last": True},
    "bf16+compile": {"amp": "bf16", "compile": True},
    "bf16+channels_last+compile": {"amp": "bf16", "channels_last": True, "compile": True},
}


def cell(root: Path, model: str, batch: int, variant: str, device: str, repeats: int) -> dict[str, float]:
    settings = VARIANTS[variant]
    args = argparse.Namespace(batch_size=batch, device=device)
    trainer = synthetic_trainer(root / f"{model}-{batch}", variant, args, model=model, objective="at", **settings)
    x, y = next(iter(trainer.train_loader))
    if settings.get("channels_last"):
        x = x.contiguous(memory_format=torch.channels_last)
    steps, progress = trainer.attack.steps, Progress(0, 0, 100, 10)
    autocast = (
        (lambda: torch.autocast(torch.device(device).type, dtype=torch.bfloat16))
        if settings.get("amp")
        else contextlib.nullcontext
    )
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()

    def bare() -> None:
        with autocast():
            floor(trainer, x, y, steps)

    times = interleaved_times(
        {"step": lambda: trainer.train_step(x, y, progress)[0].item(), "floor": bare}, repeats, device
    )
    step, work = statistics.median(times["step"]), statistics.median(times["floor"])
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else float("nan")
    return {"ratio": step / work, "images_per_s": batch / step, "peak_gib": peak}


def main() -> None:
    arguments = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    arguments.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    arguments.add_argument("--models", default="resnet18,wrn-34-10")
    arguments.add_argument("--batches", default="128,512")
    arguments.add_argument("--variants", default=",".join(VARIANTS))
    arguments.add_argument("--repeats", type=int, default=5)
    arguments.add_argument(
        "--quick",
        action="store_true",
        help="CPU smoke run: small-cnn, batch 8, 1 repeat (variants fp32 and bf16 unless --variants)",
    )
    args = arguments.parse_args()
    if not args.device.startswith("cuda") and not args.quick and args.models == arguments.get_default("models"):
        print("no GPU: running the --quick CPU cells (pass --models/--batches to time others on the CPU)")
        args.quick = True
    if args.quick:
        args.device, args.models, args.batches, args.repeats = "cpu", "small-cnn", "8", 1
        if args.variants == arguments.get_default("variants"):
            args.variants = "fp32,bf16"
        torch.set_num_threads(1)
    unknown = sorted(set(args.variants.split(",")) - set(VARIANTS))
    if unknown:
        arguments.error(f"unknown variant {unknown[0]}; choose from {', '.join(VARIANTS)}")
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(f"PGD-10 AT step ÷ model-work floor on {name}, 32×32, {args.repeats} interleaved repeats (median)")
    print(f"{'model':<11} {'batch':>5}  {'variant':<27} {'step/floor':>10} {'images/s':>10} {'peak GiB':>9}")
    with tempfile.TemporaryDirectory() as root:
        for model in args.models.split(","):
            for batch in (int(b) for b in args.batches.split(",")):
                for variant in args.variants.split(","):
                    result = cell(Path(root), model, batch, variant, args.device, args.repeats)
                    print(
                        f"{model:<11} {batch:>5}  {variant:<27} ×{result['ratio']:>9.3f} "
                        f"{result['images_per_s']:>10.1f} {result['peak_gib']:>9.2f}",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
