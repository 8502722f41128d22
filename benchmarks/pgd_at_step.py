"""One advkit PGD-10 AT step against the bare model work it cannot avoid, measured side by side.

The floor is built from the same network, batch and optimizer: 10 × (forward + input backward, no weight
gradients, BatchNorm in the attack's mode: train, batch statistics, for PGD-AT) for the attack, then
forward + full backward + SGD step for the update. advkit's step (``Trainer.train_step`` with
``--objective at``) adds the attack's bookkeeping (random start, sign step, projection, clamping, model
state saved and restored), the rectifier's targets and the loss; the goal is a ratio of at most 1.05.
Both run interleaved on a synthetic CIFAR-10 batch (no download).

    python benchmarks/pgd_at_step.py [--model resnet18] [--batch-size 16] [--repeats 7] [--device cpu]
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

import torch
from _harness import clock_name, interleaved_times, parse_args, parser, synthetic_trainer

from advkit import Progress, Trainer

GOAL = 1.05


def floor(trainer: Trainer, x: torch.Tensor, y: torch.Tensor, steps: int) -> None:
    """The model work of one PGD-K AT step and nothing else."""
    model, optimizer = trainer.model, trainer.optimizer
    model.train(trainer.attack.bn_mode == "train").requires_grad_(False)
    z = x.clone().requires_grad_(True)
    for _ in range(steps):
        torch.autograd.grad(model(z).logsumexp(1).sum(), z)
    model.train().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    loss.item()


def main() -> None:
    arguments = parser(__doc__.splitlines()[0], batch_size=16)
    arguments.add_argument("--model", default="resnet18")
    args = parse_args(arguments)

    with tempfile.TemporaryDirectory() as tmp:
        trainer = synthetic_trainer(Path(tmp), "run", args, model=args.model, objective="at")
        x, y = (tensor.to(trainer.device) for tensor in next(iter(trainer.train_loader)))
        steps = trainer.attack.steps
        progress = Progress(0, 0, 100, 10)
        times = interleaved_times(
            {
                "advkit step": lambda: trainer.train_step(x, y, progress)[0].item(),
                "model-work floor": lambda: floor(trainer, x, y, steps),
            },
            args.repeats,
            args.device,
        )

    print(
        f"{args.model}, 32×32, batch {args.batch_size}, PGD-{steps} AT, {args.device}, {args.threads} thread(s), "
        f"{args.repeats} interleaved repeats ({clock_name(args.device)})"
    )
    for statistic in (statistics.median, min):
        step, work = statistic(times["advkit step"]), statistic(times["model-work floor"])
        print(
            f"  {statistic.__name__:<6} advkit step {1000 * step:9.1f} ms   floor {1000 * work:9.1f} ms   "
            f"step/floor ×{step / work:.3f}  (goal ≤ {GOAL})"
        )


if __name__ == "__main__":
    main()
