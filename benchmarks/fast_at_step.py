"""N-FGSM's training step against PGD-10 AT's, measured side by side in one process.

Two trainers are built from the same seed on the same 32×32 batch (a synthetic CIFAR-10 folder, no
download): PGD-AT with its PGD-10 attack, and the same objective with ``--attack n-fgsm`` (plugin
advkit-nfgsm). Their ``Trainer.train_step`` calls are interleaved so drifting machine load hits both
alike. N-FGSM costs one forward and backward for its single step plus the training forward and backward,
against PGD-10's ten, so its step should take about 2/11 of PGD-10's (the fast-AT budget).

    python benchmarks/fast_at_step.py [--model resnet18] [--batch-size 16] [--repeats 7] [--device cpu]
"""

from __future__ import annotations

import statistics

from _harness import clock_name, parse_args, parser, step_times

VARIANTS = {"PGD-10 AT": {}, "N-FGSM AT": {"attack": "n-fgsm"}}


def main() -> None:
    arguments = parser(__doc__.splitlines()[0], batch_size=16)
    arguments.add_argument("--model", default="resnet18")
    args = parse_args(arguments)

    times = step_times(VARIANTS, args, model=args.model, objective="at")

    print(
        f"{args.model}, 32×32, batch {args.batch_size}, {args.device}, {args.threads} thread(s), "
        f"{args.repeats} interleaved steps each ({clock_name(args.device)}; the minimum resists interference)"
    )
    for statistic in (statistics.median, min):
        pgd, fast = statistic(times["PGD-10 AT"]), statistic(times["N-FGSM AT"])
        print(
            f"  {statistic.__name__}: PGD-10 {1000 * pgd:.1f} ms/step, N-FGSM {1000 * fast:.1f} ms/step, "
            f"N-FGSM ÷ PGD-10 = ×{fast / pgd:.3f} (forward-backward count: 2/11 = ×{2 / 11:.3f})"
        )


if __name__ == "__main__":
    main()
