"""Per-step time of RSLAD and AdaAD against their model-work floors, and what a frozen teacher saves.

Both trainers run the real ``Trainer.train_step`` on the same 32×32 batch (a synthetic CIFAR-10 folder,
so no download) with the same student and teacher (random weights; timings do not care). Next to them
the script times the bare model work each step cannot avoid, built from the same networks:

- RSLAD floor: one no-grad T(x) + K × [S forward + input backward] + the update (S(x′), S(x), backward, SGD).
- AdaAD floor: K × [S and T forward + input backward through both] + one no-grad T(x′) + the update
  (S(x′), backward, SGD). At α = 1 neither S(x) nor T(x) is needed, and advkit skips them.

and two ways of running the teacher that official codes use and advkit avoids:

- the attack with trainable teacher parameters (autograd then keeps what a weight gradient would need),
- the AdaIAD update with the teacher run with gradients, so backward also computes teacher weight grads.

Everything is interleaved, so drifting machine load hits all measurements alike; medians are printed
with their ratios.

    python benchmarks/distillation.py [--student mobilenetv2] [--teacher resnet18] [--batch-size 8] [--repeats 7]
"""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from _harness import clock_name, interleaved_times, parse_args, parser, synthetic_trainer

from advkit import Progress, Trainer


def floors(trainer: Trainer, x: torch.Tensor, y: torch.Tensor, steps: int) -> dict[str, Callable[[], object]]:
    """The bare model work of each step (and the two teacher variants advkit avoids), as callables."""
    student, teacher, optimizer = trainer.model, trainer.teacher, trainer.optimizer

    def input_grads(*nets: torch.nn.Module, trainable_teacher: bool = False) -> None:
        teacher.requires_grad_(trainable_teacher)
        student.eval().requires_grad_(False)
        z = x.clone().requires_grad_(True)
        for _ in range(steps):
            torch.autograd.grad(sum(net(z).sum() for net in nets), z)
        student.train().requires_grad_(True)
        teacher.requires_grad_(False)

    def update(inputs: list[torch.Tensor], teacher_with_grad: bool = False) -> None:
        student.train()
        loss = sum(student(batch).logsumexp(1).sum() for batch in inputs)
        if teacher_with_grad:  # the official AdaIAD: teacher weight gradients computed and thrown away
            teacher.requires_grad_(True)
            loss = loss + teacher(x).logsumexp(1).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        teacher.requires_grad_(False).zero_grad(set_to_none=True)

    def no_grad_teacher() -> None:
        with torch.no_grad():
            teacher(x)

    return {
        "RSLAD floor": lambda: (no_grad_teacher(), input_grads(student), update([x, x])),
        "AdaAD floor": lambda: (input_grads(student, teacher), no_grad_teacher(), update([x])),
        "attack, teacher frozen": lambda: input_grads(student, teacher),
        "attack, teacher trainable": lambda: input_grads(student, teacher, trainable_teacher=True),
        "update, T(x') no-grad": lambda: (no_grad_teacher(), update([x])),
        "update, T(x') with weight grads": lambda: update([x], teacher_with_grad=True),
    }


def main() -> None:
    arguments = parser(__doc__.splitlines()[0], batch_size=8)
    arguments.add_argument("--student", default="mobilenetv2")
    arguments.add_argument("--teacher", default="resnet18", help="teacher architecture (random weights)")
    args = parse_args(arguments)
    from advkit.data import CIFAR10_INFO
    from advkit.models import build_model

    with tempfile.TemporaryDirectory() as tmp:
        teacher_file = Path(tmp) / "teacher.pt"
        torch.save(build_model(args.teacher, CIFAR10_INFO).state_dict(), teacher_file)
        trainers = {
            name: synthetic_trainer(
                Path(tmp),
                name,
                args,
                model=args.student,
                objective=name.lower(),
                teacher=str(teacher_file),
                teacher_arch=args.teacher,
            )
            for name in ("RSLAD", "AdaAD")
        }
        x, y = next(iter(trainers["RSLAD"].train_loader))
        steps = trainers["RSLAD"].attack.steps
        progress = Progress(0, 0, 100, 10)
        work: dict[str, Callable[[], object]] = {
            f"{name} step": (lambda t=trainer: t.train_step(x, y, progress)[0].item())
            for name, trainer in trainers.items()
        }
        work.update(floors(trainers["AdaAD"], x, y, steps))
        times = interleaved_times(work, args.repeats, args.device)

    median = {name: statistics.median(samples) for name, samples in times.items()}
    print(
        f"student {args.student}, teacher {args.teacher}, 32×32, batch {args.batch_size}, K = {steps}, "
        f"{args.device}, {args.threads} thread(s), "
        f"median {clock_name(args.device)} of {args.repeats} interleaved repeats"
    )
    for method in ("RSLAD", "AdaAD"):
        step, floor = median[f"{method} step"], median[f"{method} floor"]
        print(f"  {method} step {1000 * step:9.1f} ms   floor {1000 * floor:9.1f} ms   step/floor ×{step / floor:.3f}")
    print(f"  AdaAD / RSLAD step time: ×{median['AdaAD step'] / median['RSLAD step']:.2f}")
    for frozen, trainable in (
        ("attack, teacher frozen", "attack, teacher trainable"),
        ("update, T(x') no-grad", "update, T(x') with weight grads"),
    ):
        saving = 1 - median[frozen] / median[trainable]
        print(
            f"  {frozen:<24} {1000 * median[frozen]:9.1f} ms   vs {trainable.split(', ')[1]:<17} "
            f"{1000 * median[trainable]:9.1f} ms   saving {100 * saving:.1f}%"
        )


if __name__ == "__main__":
    main()
