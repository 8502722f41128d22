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

import statistics

from _harness import clock_name, parse_args, parser, step_times

VARIANTS = {
    "AT (onehot)": {"rectifier": "onehot"},
    "AT + WA 0.995": {"rectifier": "onehot", "wa": 0.995},
    "AT + ADR": {"rectifier": "adr"},
}


def main() -> None:
    arguments = parser(__doc__.splitlines()[0], batch_size=16)
    arguments.add_argument("--model", default="resnet18")
    args = parse_args(arguments)

    times = step_times(VARIANTS, args, model=args.model, objective="at")

    print(
        f"{args.model}, 32×32, batch {args.batch_size}, PGD-10 AT step, {args.device}, {args.threads} thread(s), "
        f"{args.repeats} interleaved steps each ({clock_name(args.device)}; the minimum resists interference)"
    )
    for statistic in (statistics.median, min):
        base = statistic(times["AT (onehot)"])
        print(f"  {statistic.__name__}:")
        for name, samples in times.items():
            value = statistic(samples)
            print(
                f"    {name:<15} {1000 * value:9.1f} ms/step   ×{value / base:.3f}  ({100 * (value / base - 1):+.1f}%)"
            )
        adr, wa = statistic(times["AT + ADR"]), statistic(times["AT + WA 0.995"])
        print(f"    ADR over AT + WA (the teacher forward alone): {100 * (adr / wa - 1):+.1f}%")


if __name__ == "__main__":
    main()
