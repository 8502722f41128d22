"""The training loop: rectifier → attack → objective → optimizer step → hooks, per iteration.

The hot loop never synchronises with the host: metrics accumulate on the device and are read once per
epoch. Randomness depends only on (seed, epoch), so ``--resume`` continues a run exactly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import yaml
from tqdm.auto import tqdm

from .attacks import run_attack
from .averaging import WeightAverage
from .checkpoint import atomic_save, atomic_write_text, safe_load
from .components import Configurable, Progress, RunSetup, StepContext
from .config import Components, TrainConfig, config_from_mapping, select_components
from .data import BatchLoader, load_dataset
from .errors import AdvkitError
from .evaluate import accuracy, validation_attack
from .models import build_model
from .registry import Registry, default_registry
from .weight_perturbation import weight_update

CHECKPOINT_FORMAT = "advkit-checkpoint-1"


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when present; asking for CUDA where there is none is a user error, not a crash."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise AdvkitError(f"--device {name} was asked for, but CUDA is not available here (use --device cpu)")
    return torch.device(name)


def learning_rate(config: TrainConfig, iteration: int, iterations_per_epoch: int) -> float:
    """LR at a global iteration: linear warmup, then piecewise (×gamma at milestone epochs) or cosine."""
    epoch = iteration / iterations_per_epoch
    if config.lr_warmup > 0 and epoch < config.lr_warmup:
        return config.lr * (epoch / config.lr_warmup)
    if config.lr_schedule == "cosine":
        span = max(config.epochs - config.lr_warmup, 1e-12)
        return config.lr * 0.5 * (1.0 + math.cos(math.pi * min((epoch - config.lr_warmup) / span, 1.0)))
    if config.lr_schedule == "piecewise":
        milestones = config.lr_milestones or [0.5 * config.epochs, 0.75 * config.epochs]
        return config.lr * config.lr_gamma ** sum(epoch >= m for m in milestones)
    return config.lr


class PlainUpdate:
    """The weight update of one step: backward of the objective's loss, then an optimizer step.

    Update rules that need the loss more than once (AWP, SAM-style perturbations) implement the same
    ``step(ctx, compute_loss)``: ``compute_loss`` re-runs the objective at the current weights.
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
        self.model = model
        self.optimizer = optimizer
        self.scaler = scaler

    def step(self, ctx: StepContext, compute_loss: Callable[[], torch.Tensor]) -> torch.Tensor:
        loss = compute_loss()
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss


class Trainer:
    """One training run writing into ``out_dir`` (config.yaml, metrics.jsonl, last.pt, best.pt)."""

    def __init__(self, config: TrainConfig, out_dir: str | Path, *, registry: Registry | None = None,
                 resume: bool = False, progress: bool = True) -> None:
        config.validate()
        self.config = config
        self.out_dir = Path(out_dir)
        self.progress_bars = progress
        self.device = resolve_device(config.device)
        registry = registry or default_registry()

        self.components: Components = select_components(config, registry)
        splits = load_dataset(config.dataset, config.data_dir, val_size=config.val_size, seed=config.seed,
                              download=config.download)
        self.info = splits.info
        self.train_loader = BatchLoader(splits.train, config.batch_size, shuffle=True, drop_last=True,
                                        augment=splits.info, device=self.device, seed=config.seed)
        if len(self.train_loader) == 0:
            raise AdvkitError(f"--batch-size {config.batch_size} is larger than the training split "
                              f"({len(splits.train)} examples); use a smaller batch")
        self.val_loader = BatchLoader(splits.val, max(config.batch_size, 256), shuffle=False, drop_last=False,
                                      device=self.device)

        torch.manual_seed(config.seed)
        self.model = build_model(config.model, splits.info).to(self.device)
        if config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        built = self.components.build(self.model)
        self.rectifier, self.attack, self.objective = built["rectifier"], built["attack"], built["objective"]
        self.teacher = self._load_teacher()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=config.lr, momentum=config.momentum,
                                         nesterov=config.nesterov and config.momentum > 0,
                                         weight_decay=config.weight_decay)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.amp == "fp16")
        self.update = weight_update(PlainUpdate(self.model, self.optimizer, self.scaler), config.awp,
                                    config.awp_variant, config.awp_warmup)
        self.averages: dict[float, WeightAverage] = {}
        if config.wa is not None:
            self.weight_average(config.wa)
        setup = RunSetup(model=self.model, num_classes=self.info.num_classes, device=self.device,
                         epochs=config.epochs, iterations_per_epoch=len(self.train_loader), teacher=self.teacher,
                         weight_average=self.weight_average, dataset=config.dataset)
        for _, component in self._stateful():
            component.setup(setup)

        self.start_epoch = 0
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {"epoch": None, "val_robust_acc": -1.0}
        if resume:
            self._restore(safe_load(self.out_dir / "last.pt", "checkpoint to resume"))
        else:
            self._prepare_out_dir()

    @classmethod
    def resume_run(cls, run_dir: str | Path, *, registry: Registry | None = None, progress: bool = True) -> "Trainer":
        """The stopped run in ``run_dir``, ready to ``fit()`` on from its ``last.pt`` with its ``config.yaml``."""
        return cls(config_of_run(run_dir), run_dir, registry=registry, resume=True, progress=progress)

    # ----------------------------------------------------------------------------------------- set-up
    def weight_average(self, decay: float) -> WeightAverage:
        """The run's EMA copy of the model with this decay, created on first request and shared."""
        if decay not in self.averages:
            self.averages[decay] = WeightAverage(self.model, decay)
        return self.averages[decay]

    def _by_role(self) -> dict[str, Any]:
        return {"rectifier": self.rectifier, "attack": self.attack, "objective": self.objective}

    def _stateful(self) -> list[tuple[str, Configurable]]:
        """Components whose state goes into checkpoints (a plain torchattacks attack has none)."""
        return [(role, component) for role, component in self._by_role().items() if isinstance(component, Configurable)]

    def _load_teacher(self) -> torch.nn.Module | None:
        needs = [c.describe() for _, c in self._stateful() if c.needs_teacher]
        if self.config.teacher is None:
            if needs:
                raise AdvkitError(f"{' and '.join(needs)} needs a teacher: pass --teacher "
                                  "(robustbench:NAME, timm:NAME, a run directory or a checkpoint file)")
            return None
        from .teachers import load_teacher

        return load_teacher(self.config.teacher, self.info, self.device, arch=self.config.teacher_arch,
                            data_dir=self.config.data_dir, cache_dir=self.config.teacher_cache,
                            download=self.config.download)

    def _prepare_out_dir(self) -> None:
        if (self.out_dir / "last.pt").exists():
            raise AdvkitError(f"run directory {self.out_dir} already holds a run; pass --resume {self.out_dir} "
                              "to continue it, or choose another --out")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        resolved = self.config.to_dict()
        resolved.update({role: self.components.names[role] for role in ("objective", "rectifier", "attack")})
        resolved["options"] = self.components.resolved_options(self._by_role())
        self.resolved_config = resolved
        atomic_write_text(yaml.safe_dump(resolved, sort_keys=False), self.out_dir / "config.yaml")

    # ----------------------------------------------------------------------------------------- loop
    @contextlib.contextmanager
    def _autocast(self) -> Iterator[None]:
        if self.config.amp == "off":
            yield
            return
        dtype = torch.bfloat16 if self.config.amp == "bf16" else torch.float16
        with torch.autocast(self.device.type, dtype=dtype):
            yield

    def train_step(self, x: torch.Tensor, y: torch.Tensor, progress: Progress) -> tuple[torch.Tensor, torch.Tensor]:
        """One iteration; returns (loss, number correct) as device tensors (no host sync)."""
        if self.config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        ctx = StepContext(model=self.model, x=x, y=y, num_classes=self.info.num_classes, progress=progress,
                          teacher=self.teacher)
        with self._autocast():
            ctx.targets = self.rectifier.targets(ctx)
            ctx.attack_targets = self.rectifier.attack_targets(ctx, ctx.targets)
            ctx.x_adv = run_attack(self.attack, ctx) if self.objective.uses_adversarial else None

        def compute_loss() -> torch.Tensor:
            with self._autocast():
                self.model.train()
                return self.objective.loss(ctx)

        loss = self.update.step(ctx, compute_loss)
        for _, component in self._stateful():
            component.after_step(ctx)
        for average in self.averages.values():
            average.update(self.model)
        logits = ctx.logits_for_accuracy
        correct = (logits.argmax(dim=1) == y).sum() if logits is not None else torch.zeros((), device=y.device)
        return loss.detach(), correct

    def fit(self, stop_after_epoch: int | None = None) -> list[dict[str, Any]]:
        """Train to the configured number of epochs (or stop after ``stop_after_epoch``, 1-based)."""
        config = self.config
        per_epoch = len(self.train_loader)
        total = config.epochs * per_epoch
        last_epoch = config.epochs if stop_after_epoch is None else min(stop_after_epoch, config.epochs)
        epochs = tqdm(range(self.start_epoch, last_epoch), desc="epochs", initial=self.start_epoch,
                      total=config.epochs, disable=not self.progress_bars, dynamic_ncols=True)
        for epoch in epochs:
            started = time.perf_counter()
            torch.manual_seed(config.seed * 1_000_003 + epoch)
            self.train_loader.set_epoch(epoch)
            sums = torch.zeros(3, device=self.device)
            batches = tqdm(self.train_loader, desc=f"epoch {epoch + 1}", leave=False,
                           disable=not self.progress_bars, dynamic_ncols=True)
            for index, (x, y) in enumerate(batches):
                iteration = epoch * per_epoch + index
                for group in self.optimizer.param_groups:
                    group["lr"] = learning_rate(config, iteration, per_epoch)
                loss, correct = self.train_step(x, y, Progress(epoch, iteration, total, per_epoch))
                sums += torch.stack([loss.float() * y.shape[0], correct.float(), torch.tensor(float(y.shape[0]), device=self.device)])
            loss_sum, correct_sum, count = sums.tolist()
            record = {"epoch": epoch + 1, "train_loss": loss_sum / count, "train_acc": correct_sum / count,
                      "lr": self.optimizer.param_groups[0]["lr"]}
            record.update(self.validate())
            record["time_s"] = time.perf_counter() - started
            self.history.append(record)
            self._save(epoch + 1, record)
            tqdm.write(_format_record(record, config.epochs), file=None)
        return self.history

    def validate(self) -> dict[str, float]:
        """Clean and PGD accuracy on the held-out validation split (never the test set)."""
        results: dict[str, float] = {}
        models = {"": self.model}
        if self.config.wa is not None:
            models["wa_"] = self.averages[self.config.wa].model
        for prefix, model in models.items():
            attack = validation_attack(model, self.config.eps, self.config.val_steps)
            results[f"val_{prefix}clean_acc"] = accuracy(model, self.val_loader)
            results[f"val_{prefix}robust_acc"] = accuracy(model, self.val_loader, attack)
        return results

    # ----------------------------------------------------------------------------------------- state
    def _state(self, epoch: int) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "epoch": epoch,
            "config": self.resolved_config,
            "dataset_info": dataclasses.asdict(self.info),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "components": {role: component.state_dict() for role, component in self._stateful()},
            "averages": {str(decay): average.state_dict() for decay, average in self.averages.items()},
            "history": self.history,
            "best": self.best,
        }

    def _save(self, epoch: int, record: dict[str, Any]) -> None:
        key = "val_wa_robust_acc" if self.config.select == "wa" else "val_robust_acc"
        improved = record[key] > self.best["val_robust_acc"]
        if improved:
            self.best = {"epoch": epoch, "val_robust_acc": record[key]}
        state = self._state(epoch)
        atomic_save(state, self.out_dir / "last.pt")
        if improved:
            atomic_save(state, self.out_dir / "best.pt")
        lines = "".join(json.dumps(item) + "\n" for item in self.history)
        atomic_write_text(lines, self.out_dir / "metrics.jsonl")

    def _restore(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise AdvkitError(f"{self.out_dir / 'last.pt'} is not an advkit training checkpoint")
        self.resolved_config = state["config"]
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        for role, component in self._stateful():
            component.load_state_dict(state["components"][role])
        for decay, average_state in state["averages"].items():
            self.weight_average(float(decay)).load_state_dict(average_state)
        self.history = list(state["history"])
        self.best = dict(state["best"])
        self.start_epoch = int(state["epoch"])


def config_of_run(run_dir: str | Path) -> TrainConfig:
    """The configuration a run directory was started with (for ``--resume``)."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise AdvkitError(f"cannot resume: {path} not found (is {run_dir} an advkit run directory?)")
    data = yaml.safe_load(path.read_text()) or {}
    return config_from_mapping(data, str(path))


def _format_record(record: dict[str, Any], epochs: int) -> str:
    parts = [f"epoch {record['epoch']}/{epochs}", f"loss {record['train_loss']:.4f}",
             f"train {100 * record['train_acc']:.1f}%", f"val clean {100 * record['val_clean_acc']:.1f}%",
             f"val robust {100 * record['val_robust_acc']:.1f}%"]
    if "val_wa_robust_acc" in record:
        parts.append(f"wa clean {100 * record['val_wa_clean_acc']:.1f}% wa robust {100 * record['val_wa_robust_acc']:.1f}%")
    parts += [f"lr {record['lr']:.4g}", f"{record['time_s']:.1f}s"]
    return "  ".join(parts)
