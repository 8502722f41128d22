"""The training loop: rectifier → attack → objective → optimizer step → hooks, per iteration.

The hot loop never synchronises with the host: metrics and a "loss is finite" flag accumulate on the
device and are read at the epoch end, at checkpoints and every ``FINITE_CHECK_EVERY`` steps. Randomness
depends only on (seed, epoch) plus the RNG state a mid-epoch checkpoint stores, so ``--resume``
continues a run exactly, from an epoch end or from the middle of an epoch.

Run-directory rules: one writer at a time (``rundir.RunLock``); a non-finite loss or non-finite weights
stop the run without touching last.pt and best.pt; last.pt is written before best.pt, and a resume
repairs best.pt when a kill fell between the two.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from tqdm.auto import tqdm

from .attacks import run_attack
from .averaging import WeightAverage
from .checkpoint import (
    atomic_duplicate,
    atomic_save,
    atomic_write_text,
    load_state_dict_or_explain,
    remove_stale_temporaries,
    safe_load,
    write_failed,
)
from .components import Configurable, Progress, RunSetup, StepContext
from .config import SETTING_DEFAULTS, TRACKING_SETTINGS, Components, TrainConfig, load_config_file, select_components
from .data import BatchLoader, load_dataset
from .data.extra import load_extra_data
from .distributed import ProcessGroup, World, resolve_device
from .errors import EXIT_PREEMPTED, AdvkitError, PluginError, TrainingDiverged
from .evaluate import correct_count, validation_attack
from .interrupts import StopRequest
from .models import build_model
from .options import plain
from .registry import Registry, component_options, default_registry
from .rundir import LOCK_NAME, RunLock, check_not_busy, check_output_dir
from .software import RECORD_KEY, software_versions
from .tracking import Logger, LoggerGroup, StepWindow, TrackedRun, check_packages, open_loggers
from .weight_perturbation import weight_update

CHECKPOINT_FORMAT = "advkit-checkpoint-1"
FINITE_CHECK_EVERY = 100  # steps between reads of the device-side finite flag (one host sync each)
RUNTIME_KEY = "registered_at_run_time"  # components the script registered itself (checkpoints, config.yaml's record)
RESERVED_METRICS = frozenset({"epoch", "train_loss", "train_acc", "lr", "time_s"})  # and val_*: the trainer's keys
# Settings that say where or how often a run works, not what it computes: they may change on --resume.
RELOCATABLE_SETTINGS = (
    frozenset({"data_dir", "device", "download", "teacher_cache", "checkpoint_every", "extra_data", "threads"})
    | TRACKING_SETTINGS
)
DEFAULT_EXTRA_FRACTION = 0.7  # generated share of every batch with --extra-data (Wang et al. 2023 use 0.7–0.8)


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
    """One training run writing into ``out_dir`` (config.yaml, metrics.jsonl, last.pt, best.pt).

    ``loggers`` receive the records too, besides the backends that ``config.logger`` names (on rank 0).
    """

    def __init__(
        self,
        config: TrainConfig,
        out_dir: str | Path,
        *,
        registry: Registry | None = None,
        resume: bool = False,
        progress: bool = True,
        loggers: Sequence[Logger] = (),
    ) -> None:
        config.validate()
        check_packages(config.logger, config.mlflow_uri, Path(out_dir))  # before any file is written
        if config.threads is not None:  # torch's default is every core, which a busy machine shares badly
            torch.set_num_threads(config.threads)
        self.config = config
        self.out_dir = Path(out_dir)
        self.world = World.from_environment()
        self.device = resolve_device(config.device, self.world.local_rank)
        if config.sync_bn and self.world.distributed and self.device.type != "cuda":
            raise AdvkitError(
                "--sync-bn needs CUDA (PyTorch's SyncBatchNorm runs on GPUs only); on CPU use a model "
                "without BatchNorm, such as small-cnn-gn, for batch-size-independent results"
            )
        # Bars only on a terminal: redirected to a log, carriage-return updates would fill it (the per-epoch
        # line is written either way).
        self.progress_bars = progress and self.world.is_main and sys.stderr.isatty()
        self.stop_request = StopRequest()
        self.lock = RunLock(self.out_dir)
        registry = registry or default_registry()
        if self.world.is_main:
            check_not_busy(self.out_dir)  # fail fast, before data and models load; acquired for real below
        resume_state = self._read_resume_state() if resume else None
        if not resume and self.world.is_main:
            check_output_dir(self.out_dir, "--out")
        self.group = ProcessGroup(self.world, self.device)

        if resume_state is not None:
            _check_registered_again(resume_state.get(RUNTIME_KEY, {}), registry, self.out_dir)
        self.components: Components = select_components(config, registry)
        # role -> {name, class} of the components no distribution provides: a new process must register them again
        self.registered_at_run_time = {
            role: {"name": name, "class": entry.target}
            for role, name in self.components.names.items()
            if (entry := registry.find(role, name)).component is not None
        }
        split_seed = config.seed if config.split_seed is None else config.split_seed
        splits = load_dataset(
            config.dataset,
            config.data_dir,
            val_size=config.val_size,
            seed=split_seed,
            download=config.download,
            train_size=config.train_size,
        )
        self.info = splits.info
        extra = load_extra_data(config.extra_data, splits.info) if config.extra_data else None
        self.train_loader = BatchLoader(
            splits.train,
            config.batch_size,
            shuffle=True,
            drop_last=True,
            augment=splits.info,
            device=self.device,
            seed=config.seed,
            rank=self.world.rank,
            world_size=self.world.size,
            extra=extra,
            extra_per_batch=self._extra_per_batch() if extra is not None else 0,
        )
        if len(self.train_loader) == 0:
            raise AdvkitError(
                f"--batch-size {config.batch_size} is larger than the training split "
                f"({len(splits.train)} examples); use a smaller batch"
            )
        val_share = splits.val.subset(torch.arange(self.world.rank, len(splits.val), self.world.size))
        self.val_loader = BatchLoader(
            val_share, max(config.batch_size, 256), shuffle=False, drop_last=False, device=self.device
        )

        torch.manual_seed(config.seed)
        self.model = build_model(config.model, splits.info).to(self.device)
        if config.sync_bn and self.world.distributed:
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        if config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        # The outer loss runs through DDP (its backward all-reduces the gradients); attacks, validation and
        # averages use the bare module, so an attack triggers no gradient hook and no synchronisation.
        self.trained_model: torch.nn.Module = self.model
        if self.world.distributed:
            self.trained_model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self._rank_local_buffers = (
            [
                buffer
                for module in self.model.modules()
                for buffer in module.buffers(recurse=False)
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm)
                and not isinstance(module, torch.nn.SyncBatchNorm)
            ]
            if self.world.distributed
            else []
        )
        built = self.components.build(self.model)
        self.rectifier, self.attack, self.objective = built["rectifier"], built["attack"], built["objective"]
        self.teacher = self._load_teacher()
        self.optimizer = torch.optim.SGD(
            self.model.parameters(),
            lr=config.lr,
            momentum=config.momentum,
            nesterov=config.nesterov and config.momentum > 0,
            weight_decay=config.weight_decay,
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.amp == "fp16")
        self.update = weight_update(
            PlainUpdate(self.model, self.optimizer, self.scaler),
            config.awp,
            config.awp_variant,
            config.awp_warmup,
            self.group.mean_gradients_,
        )
        self.averages: dict[float, WeightAverage] = {}
        if config.wa is not None:
            self.weight_average(config.wa)
        setup = RunSetup(
            model=self.model,
            num_classes=self.info.num_classes,
            device=self.device,
            epochs=config.epochs,
            iterations_per_epoch=len(self.train_loader),
            teacher=self.teacher,
            weight_average=self.weight_average,
            dataset=config.dataset,
            num_examples=len(splits.train) + (len(extra) if extra is not None else 0),
            rank=self.world.rank,
            world_size=self.world.size,
            sum_over_ranks=self.group.summed,
            gather_from_ranks=self.group.concat,
        )
        for _, component in self._stateful():
            component.setup(setup)
        if config.compile:  # last: the EMA copies and AWP's proxy above must be plain modules, not compiled ones
            self.model.compile()

        self.start_epoch = 0
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {"epoch": None, "val_robust_acc": -1.0}
        self._position: dict[str, Any] | None = None  # where in an epoch a mid-epoch checkpoint stopped
        self._fitted = False  # a later fit() call continues from last.pt instead of starting epoch 1 again
        self.metric_totals: dict[str, torch.Tensor] = {}  # the components' logged metrics: [sum, count] this epoch
        self.step_window = StepWindow(config.log_interval) if config.log_interval > 0 else None
        self.extra_loggers = list(loggers)
        self.loggers = LoggerGroup([])  # opened by fit() on rank 0
        self.last_saved = "no checkpoint had been written"  # where last.pt stands, in words (for stop messages)
        self.resolved_config = self._resolve_config()
        failure = None
        try:
            if resume_state is not None:
                self._resume_from(resume_state)
            elif self.world.is_main:
                self._prepare_out_dir()
        except AdvkitError as exc:
            failure = exc
        # Rank 0 alone sets up the run directory: every process learns whether that worked, so that all of
        # them end with one line instead of waiting for a peer that is gone.
        if not self.group.all_true(torch.tensor(failure is None, device=self.device)):
            self.lock.release()
            raise failure or AdvkitError(
                "process 0 of this run could not set up the run directory (its own message says why)"
            )

    def _resume_from(self, state: dict[str, Any]) -> None:
        saved_epochs = int(state["config"]["epochs"])
        extending = self.config.epochs > saved_epochs
        # an extension is checked below; every other setting must be as the run started
        self._check_unedited({**state["config"], "epochs": self.config.epochs} if extending else state["config"])
        self._check_world_size(state)
        if extending:
            self._check_extension(state, saved_epochs)
        if self.world.is_main:
            self.lock.acquire()
        try:
            if self.world.is_main:
                remove_stale_temporaries(self.out_dir)
            self._restore(state)
            if extending:
                self.resolved_config = {**self.resolved_config, "epochs": self.config.epochs}  # for the checkpoints
                if self.world.is_main:
                    self._record_epochs()
            if self.world.is_main:
                self._repair_checkpoint_pair(state)
        except BaseException:
            self.lock.release()
            raise

    def _extra_per_batch(self) -> int:
        """round(F·B) generated examples per batch (rounded per process under torchrun), at least one real."""
        fraction = DEFAULT_EXTRA_FRACTION if self.config.extra_fraction is None else self.config.extra_fraction
        per_rank = self.config.batch_size // self.world.size
        count = min(max(round(fraction * per_rank), 1), per_rank - 1)
        if per_rank < 2:
            raise AdvkitError(
                f"--extra-data needs at least 2 examples per process and batch, got --batch-size "
                f"{self.config.batch_size} over {self.world.size} process(es)"
            )
        return count * self.world.size

    @classmethod
    def resume_run(
        cls,
        run_dir: str | Path,
        *,
        epochs: int | None = None,
        registry: Registry | None = None,
        progress: bool = True,
        tracking: Mapping[str, Any] | None = None,
        loggers: Sequence[Logger] = (),
    ) -> Trainer:
        """The stopped run in ``run_dir``, ready to ``fit()`` on from its ``last.pt`` with its ``config.yaml``.

        ``epochs`` above the run's extends it (a finished run trains on), where that leaves every step
        already trained as a fresh run of ``epochs`` would have taken it (see ``_check_extension``); the
        run's config.yaml then records the new number. A run cannot be shortened. ``tracking`` replaces
        tracking settings (logger, log_interval, mlflow_uri) for this session only: they say where metrics
        go, not what the run computes.
        """
        config = config_of_run(run_dir)
        if epochs is not None and epochs < config.epochs:
            raise AdvkitError(
                f"--epochs {epochs} would shorten {run_dir}, a run of {config.epochs} epochs; --resume "
                f"only extends runs. For a shorter run, start a new one: advkit train --config "
                f"{Path(run_dir) / 'config.yaml'} --epochs {epochs} --out NEW_DIR"
            )
        if epochs is not None:
            config.epochs = epochs
        for key, value in (tracking or {}).items():
            if key not in TRACKING_SETTINGS:
                raise AdvkitError(
                    f"--resume takes the settings from {run_dir}/config.yaml; drop --{key.replace('_', '-')}"
                )
            setattr(config, key, value)
        return cls(config, run_dir, registry=registry, resume=True, progress=progress, loggers=loggers)

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
                raise AdvkitError(
                    f"{' and '.join(needs)} needs a teacher: pass --teacher "
                    "(robustbench:NAME, timm:NAME, a run directory or a checkpoint file)"
                )
            return None
        from .teachers import load_teacher

        return load_teacher(
            self.config.teacher,
            self.info,
            self.device,
            arch=self.config.teacher_arch,
            data_dir=self.config.data_dir,
            cache_dir=self.config.teacher_cache,
            download=self.config.download,
        )

    def _resolve_config(self) -> dict[str, Any]:
        """The settings with component names and every option value in force (config.yaml's content)."""
        resolved = self.config.to_dict()
        resolved.update({role: self.components.names[role] for role in ("objective", "rectifier", "attack")})
        resolved["options"] = self.components.resolved_options(self._by_role())
        return resolved

    def _prepare_out_dir(self) -> None:
        """Create and lock the run directory and write config.yaml; on failure leave no new folder behind."""
        if (self.out_dir / "last.pt").exists():
            raise AdvkitError(
                f"run directory {self.out_dir} already holds a run; pass --resume {self.out_dir} "
                "to continue it, or choose another --out"
            )
        created = [folder for folder in (self.out_dir, *self.out_dir.parents) if not folder.exists()]
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self.lock.acquire()
            if (self.out_dir / "last.pt").exists():  # another process finished a run here meanwhile
                raise AdvkitError(
                    f"run directory {self.out_dir} already holds a run; pass --resume "
                    f"{self.out_dir} to continue it, or choose another --out"
                )
            remove_stale_temporaries(self.out_dir)
            software = software_versions(self.device)  # who started the run
            if self.registered_at_run_time:
                software[RUNTIME_KEY] = self.registered_at_run_time
            record = {**self.resolved_config, RECORD_KEY: software}
            atomic_write_text(yaml.safe_dump(record, sort_keys=False), self.out_dir / "config.yaml")
        except OSError as exc:
            self._undo_out_dir(created)
            raise write_failed(self.out_dir, exc) from None
        except BaseException:
            self._undo_out_dir(created)
            raise

    def _undo_out_dir(self, created: list[Path]) -> None:
        held = self.lock.held
        self.lock.release()
        if created and held:
            (self.out_dir / LOCK_NAME).unlink(missing_ok=True)
        for folder in created:  # innermost first; rmdir leaves a folder alone that holds anything else
            with contextlib.suppress(OSError):
                folder.rmdir()

    def _read_resume_state(self) -> dict[str, Any]:
        path = self.out_dir / "last.pt"
        if not path.is_file():
            raise AdvkitError(
                f"cannot resume {self.out_dir}: it holds no last.pt, so no epoch or checkpoint "
                f"finished and there is nothing to continue; start the run again with "
                f"advkit train --config {self.out_dir / 'config.yaml'} --out {self.out_dir}"
            )
        state = safe_load(path, "checkpoint to resume")
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise AdvkitError(f"{path} is not an advkit training checkpoint")
        return state

    def _check_world_size(self, state: dict[str, Any]) -> None:
        """Each rank's attack noise is its own random stream: another world size would be another run."""
        saved = int(state.get("world_size", 1))
        if saved != self.world.size:
            launch = f"torchrun --nproc-per-node {saved} -m advkit" if saved > 1 else "advkit (without torchrun)"
            raise AdvkitError(
                f"{self.out_dir / 'last.pt'} was written by a run of {saved} process(es), this one has "
                f"{self.world.size}; resume it with the same number: {launch} train --resume {self.out_dir}"
            )

    def _check_unedited(self, saved: dict[str, Any]) -> None:
        """Resume only what was started: a setting changed since then would make a different run.

        A setting or component option that a checkpoint of an older advkit lacks counts as its default.
        """
        saved = {**saved, "options": self._with_option_defaults(saved.get("options", {}))}
        current = {
            **self.resolved_config,
            "options": self._with_option_defaults(self.resolved_config.get("options", {})),
        }
        for key in sorted((set(saved) | set(current)) - RELOCATABLE_SETTINGS):
            if saved.get(key, SETTING_DEFAULTS.get(key)) != current.get(key, SETTING_DEFAULTS.get(key)):
                raise AdvkitError(
                    f"{self.out_dir / 'config.yaml'} was changed since the run started: {key} is "
                    f"{self.resolved_config.get(key)!r} there but {saved.get(key)!r} in last.pt; "
                    "restore it, or start a new run with --config"
                )

    def _check_extension(self, state: dict[str, Any], saved_epochs: int) -> None:
        """Allow more epochs only where the steps already trained stay exactly those of a fresh run of as many.

        Whatever depends on the total length of training must not change over those steps: the LR (compared
        step by step under both lengths) and any component option tied to the length (a schedule over
        training, a fraction of the epochs), which each component reports itself.
        """
        per_epoch = len(self.train_loader)
        trained = int(state["epoch"]) * per_epoch + int((state.get("position") or {}).get("step", 0))
        before = dataclasses.replace(self.config, epochs=saved_epochs)
        where = f"cannot extend {self.out_dir} from {saved_epochs} to {self.config.epochs} epochs"
        new_run = (
            f"start a new run instead: advkit train --config {self.out_dir / 'config.yaml'} --epochs "
            f"{self.config.epochs} --out NEW_DIR"
        )
        for step in range(trained):
            old, new = learning_rate(before, step, per_epoch), learning_rate(self.config, step, per_epoch)
            if old != new:
                raise AdvkitError(
                    f"{where}: the learning rate of step {step + 1} (epoch {step // per_epoch + 1}), "
                    f"already trained at {old:g}, would be {new:g} in a run of {self.config.epochs} "
                    f"epochs, because {_length_dependence(self.config)}; {new_run}"
                )
        for role, component in self._stateful():
            tied = component.length_dependent_options()
            if tied:
                values = ", ".join(
                    f"{role}.{name}"
                    + (f"={plain(component.option_values[name])}" if name in component.option_values else "")
                    for name in tied
                )
                raise AdvkitError(
                    f"{where}: {component.describe()} follows the length of training through "
                    f"{values} (a schedule over the whole run, or a fraction of its epochs), so the "
                    f"steps already trained would change; {new_run}"
                )

    def _record_epochs(self) -> None:
        """config.yaml with the extended number of epochs, everything else (the software record too) kept."""
        path = self.out_dir / "config.yaml"
        record = yaml.safe_load(path.read_text(encoding="utf-8"))
        if record.get("epochs") != self.config.epochs:
            record["epochs"] = self.config.epochs
            atomic_write_text(yaml.safe_dump(record, sort_keys=False), path)

    def _with_option_defaults(self, options: dict[str, Any]) -> dict[str, Any]:
        filled = {role: dict(values) for role, values in options.items()}
        for role, cls in self.components.classes.items():
            for option in component_options(cls):
                filled.setdefault(role, {}).setdefault(option.name, plain(option.default))
        return filled

    # ----------------------------------------------------------------------------------------- loop
    @contextlib.contextmanager
    def _autocast(self) -> Iterator[None]:
        if self.config.amp == "off":
            yield
            return
        dtype = torch.bfloat16 if self.config.amp == "bf16" else torch.float16
        with torch.autocast(self.device.type, dtype=dtype):
            yield

    def train_step(
        self, x: torch.Tensor, y: torch.Tensor, progress: Progress, index: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One iteration; returns (loss, number correct) as device tensors (no host sync).

        The components' ``ctx.log_metric`` values are added to ``self.metric_totals`` (on the device).
        """
        if self.config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        ctx = StepContext(
            model=self.model,
            x=x,
            y=y,
            num_classes=self.info.num_classes,
            progress=progress,
            teacher=self.teacher,
            index=index,
        )
        with self._autocast():
            ctx.targets = self.rectifier.targets(ctx)
            ctx.attack_targets = self.rectifier.attack_targets(ctx, ctx.targets)
            ctx.x_adv = run_attack(self.attack, ctx) if self.objective.uses_adversarial else None

        def compute_loss() -> torch.Tensor:
            with self._autocast():
                self.model.train()
                return self.objective.loss(ctx)

        ctx.model = self.trained_model
        loss = self.update.step(ctx, compute_loss)
        ctx.model = self.model
        # Each rank's loss forward updated BatchNorm statistics from its own slice; rank 0's are the model's
        # (as DDP's own buffer broadcast has it), so the EMA and ADR's teacher stay identical on every rank.
        self.group.broadcast_(self._rank_local_buffers)
        for _, component in self._stateful():
            component.after_step(ctx)
        for average in self.averages.values():
            average.update(self.model)
        self._add_metrics(ctx.metrics)
        logits = ctx.logits_for_accuracy
        correct = (logits.argmax(dim=1) == y).sum() if logits is not None else torch.zeros((), device=y.device)
        return loss.detach(), correct

    def _add_metrics(self, logged: dict[str, torch.Tensor]) -> None:
        """Running [sum, count] per component metric, kept on the device (read once per epoch)."""
        for name, value in logged.items():
            if name not in self.metric_totals:
                if name in RESERVED_METRICS or name.startswith("val_"):
                    raise AdvkitError(
                        f"a component logged a metric named '{name}', which is the trainer's own; "
                        "choose another name (e.g. prefix it with the component's name)"
                    )
                self.metric_totals[name] = torch.zeros(2, device=self.device)
            pair = torch.stack([value.to(self.device), torch.ones((), device=self.device)])
            self.metric_totals[name] += pair
            if self.step_window is not None:
                self.step_window.add(name, pair)

    def _metric_means(self) -> dict[str, float]:
        """The epoch's mean of each component metric over steps and processes (one collective for all)."""
        if not self.metric_totals:
            return {}
        names = sorted(self.metric_totals)
        totals = self.group.sum_(torch.stack([self.metric_totals[name] for name in names])).tolist()
        return {name: total / count for name, (total, count) in zip(names, totals, strict=True) if count}

    def _epoch_end_hooks(self, epoch: int, record: dict[str, Any]) -> None:
        for _, component in self._stateful():
            extra = component.on_epoch_end(epoch, dict(record))
            for name, value in (extra or {}).items():
                if name in record:
                    raise AdvkitError(
                        f"{component.describe()} returned metric '{name}' from on_epoch_end, which the "
                        "record already holds; choose another name"
                    )
                record[name] = float(value)

    def fit(self, stop_after_epoch: int | None = None, stop_after_steps: int | None = None) -> list[dict[str, Any]]:
        """Train to the configured number of epochs; returns the per-epoch records.

        Stops early after epoch ``stop_after_epoch`` (1-based), after ``stop_after_steps`` optimizer steps
        in all, or once ``stop_request`` is set (by a signal, see ``interrupts.stop_on_signals``); a stop in
        the middle of an epoch saves a checkpoint there that ``resume_run`` continues exactly. Calling
        ``fit()`` again on the same trainer continues from that last.pt in the same way.
        """
        if self.world.is_main:
            self.lock.acquire()
        self.stop_request.deferring = True
        try:
            if self._fitted and (self.out_dir / "last.pt").is_file():
                self._restore(safe_load(self.out_dir / "last.pt"))  # continue where it stopped, as a resume does
            self._fitted = True
            self.loggers = self._open_loggers()
            self._fit(stop_after_epoch, stop_after_steps)
            if self.history:
                self.loggers.log_hparams(self._hparams(), self._headline())
        finally:
            self.stop_request.deferring = False
            try:
                self.loggers.close()
            finally:
                self.loggers = LoggerGroup([])
                self.lock.release()
        return self.history

    def _open_loggers(self) -> LoggerGroup:
        """This session's loggers (none but on rank 0), told where the run stands: they continue from there."""
        if not self.world.is_main:
            return LoggerGroup([])
        steps_done = self.start_epoch * len(self.train_loader) + (int(self._position["step"]) if self._position else 0)
        run = TrackedRun(self.out_dir, list(self.history), steps_done, self.config.mlflow_uri)
        return LoggerGroup(
            open_loggers(self.config.logger, run, log_interval=self.config.log_interval) + self.extra_loggers
        )

    def _hparams(self) -> dict[str, Any]:
        """The settings that define the run (config.yaml's, less where and how it runs)."""
        return {key: value for key, value in self.resolved_config.items() if key not in RELOCATABLE_SETTINGS}

    def _headline(self) -> dict[str, float]:
        """Best and last validation robust accuracy (of the model that selects best.pt), and the best epoch."""
        key = "val_wa_robust_acc" if self.config.select == "wa" else "val_robust_acc"
        return {
            "best_val_robust_acc": self.best["val_robust_acc"],
            "best_epoch": float(self.best["epoch"]),
            "last_val_robust_acc": self.history[-1][key],
        }

    def _fit(self, stop_after_epoch: int | None, stop_after_steps: int | None) -> None:
        config = self.config
        per_epoch = len(self.train_loader)
        total = config.epochs * per_epoch
        last_epoch = config.epochs if stop_after_epoch is None else min(stop_after_epoch, config.epochs)
        epochs = tqdm(
            range(self.start_epoch, last_epoch),
            desc="epochs",
            initial=self.start_epoch,
            total=config.epochs,
            disable=not self.progress_bars,
            dynamic_ncols=True,
        )
        for epoch in epochs:
            if self._agree_to_stop(self.group.start_flag_sum(bool(self.stop_request))):
                return
            first_step, totals = self._begin_epoch(epoch)
            if first_step == 0:
                for _, component in self._stateful():
                    component.on_epoch_start(epoch + 1)
            pending: Any = None  # the stop flags of the previous step, summed over ranks in the background
            started = time.perf_counter() - totals["elapsed"]
            batches = tqdm(
                self.train_loader.indexed(),
                desc=f"epoch {epoch + 1}",
                leave=False,
                initial=first_step,
                total=per_epoch,
                disable=not self.progress_bars,
                dynamic_ncols=True,
            )
            for index, (x, y, examples) in enumerate(batches, start=first_step):
                iteration = epoch * per_epoch + index
                for group in self.optimizer.param_groups:
                    group["lr"] = learning_rate(config, iteration, per_epoch)
                loss, correct = self.train_step(x, y, Progress(epoch, iteration, total, per_epoch), examples)
                step_sums = torch.stack(
                    [loss.float() * y.shape[0], correct.float(), torch.tensor(float(y.shape[0]), device=self.device)]
                )
                totals["sums"] += step_sums
                totals["finite"] &= torch.isfinite(loss)
                steps_done, in_epoch = iteration + 1, index + 1
                if in_epoch % FINITE_CHECK_EVERY == 0:
                    self._check_finite(totals, epoch, in_epoch)
                if self.step_window is not None:  # before this step's checkpoint: a resume neither repeats nor loses it
                    self.step_window.add("train", step_sums)
                    if steps_done % self.step_window.interval == 0:
                        self._log_steps(self.step_window, steps_done)
                if self.world.distributed:  # every rank stops after the same step: decide on last step's flags
                    previous, pending = pending, self.group.start_flag_sum(bool(self.stop_request))
                    signalled = previous is not None and self._agree_to_stop(previous)
                else:
                    signalled = bool(self.stop_request)
                stopping = signalled or (stop_after_steps is not None and steps_done >= stop_after_steps)
                checkpoint_due = config.checkpoint_every is not None and steps_done % config.checkpoint_every == 0
                if in_epoch < per_epoch and (stopping or checkpoint_due):
                    self._check_finite(totals, epoch, in_epoch)
                    totals["elapsed"] = time.perf_counter() - started
                    self._save_position(epoch, in_epoch, totals)
                    if stopping:
                        if pending is not None:  # no collective left in flight: the group is destroyed next
                            self.group.finish_flag_sum(pending)
                        return
            if pending is not None:
                self.group.finish_flag_sum(pending)  # the epoch-start agreement decides on these
            self._check_finite(totals, epoch, per_epoch)
            loss_sum, correct_sum, count = self.group.sum_(totals["sums"]).tolist()
            record = {
                "epoch": epoch + 1,
                "train_loss": loss_sum / count,
                "train_acc": correct_sum / count,
                "lr": self.optimizer.param_groups[0]["lr"],
            }
            record.update(self._metric_means())
            record.update(self.validate())
            self._epoch_end_hooks(epoch + 1, record)
            record["time_s"] = time.perf_counter() - started
            self.history.append(record)
            self._save(epoch + 1, record)
            self.loggers.log_epoch(record, epoch + 1)
            if self.world.is_main:
                tqdm.write(_format_record(record, config.epochs), file=None)
            if stop_after_steps is not None and (epoch + 1) * per_epoch >= stop_after_steps:
                return

    def _log_steps(self, window: StepWindow, step: int) -> None:
        """Send the last --log-interval steps' means to the loggers (every rank takes part in the sum)."""
        values = window.take(self.group.sum_)
        values["lr"] = self.optimizer.param_groups[0]["lr"]
        self.loggers.log_step(values, step)

    def _agree_to_stop(self, pending: Any) -> bool:
        """Whether any rank was asked to stop (by the flags ``pending`` sums); a rank that was not adopts it."""
        if self.group.finish_flag_sum(pending) == 0:
            return False
        if not self.stop_request:
            self.stop_request.set("SIGTERM (of another process of the run)", EXIT_PREEMPTED)
        return True

    def _begin_epoch(self, epoch: int) -> tuple[int, dict[str, Any]]:
        """(first step, running totals) of ``epoch``: fresh, or where a mid-epoch checkpoint left off."""
        position, self._position = self._position, None
        if position is None:
            torch.manual_seed(epoch_seed(self.config.seed, epoch, self.world.rank))
            first_step = 0
            totals = {
                "sums": torch.zeros(3, device=self.device),
                "finite": torch.ones((), dtype=torch.bool, device=self.device),
                "elapsed": 0.0,
            }
        else:
            torch.set_rng_state(position["rng"][self.world.rank])
            if self.device.type == "cuda" and position.get("cuda_rng") is not None:
                torch.cuda.set_rng_state(position["cuda_rng"][self.world.rank], self.device)
            first_step = int(position["step"])
            sums = position["sums"] if self.world.is_main else torch.zeros(3)  # rank 0 holds the global totals
            totals = {
                "sums": sums.to(self.device),
                "finite": position["finite"].to(self.device),
                "elapsed": float(position["elapsed"]),
            }
        saved_metrics = position.get("metrics", {}) if position is not None else {}
        self.metric_totals = {
            name: (total if self.world.is_main else torch.zeros_like(total)).to(self.device)
            for name, total in saved_metrics.items()
        }
        self.train_loader.set_epoch(epoch, first_step)
        return first_step, totals

    def _check_finite(self, totals: dict[str, Any], epoch: int, step: int) -> None:
        """Read the device-side flag (one host sync) and stop the run if a loss was NaN or infinite."""
        if not self.group.all_true(totals["finite"]):
            raise self._diverged(
                f"the training loss became NaN or infinite in epoch {epoch + 1} "
                f"(within its first {step} of {len(self.train_loader)} steps)"
            )

    def _diverged(self, what: str) -> TrainingDiverged:
        return TrainingDiverged(
            f"training diverged: {what}; no checkpoint was overwritten ({self.last_saved}). "
            f"Lower --lr (it is {self.config.lr:g}) or check the data"
        )

    def _weights_finite(self) -> bool:
        floating = [t for t in self.model.state_dict().values() if t.is_floating_point()]
        return bool(torch.stack([torch.isfinite(t).all() for t in floating]).all()) if floating else True

    def validate(self) -> dict[str, float]:
        """Clean and PGD accuracy on the held-out validation split (never the test set)."""
        results: dict[str, float] = {}
        models: dict[str, torch.nn.Module] = {"": self.model}
        eps = self.config.eps
        assert eps is not None, "TrainConfig sets the norm's default"

        if self.config.wa is not None:
            models["wa_"] = self.averages[self.config.wa].model
        for prefix, model in models.items():  # each rank scores its share; the counts are summed
            attack = validation_attack(model, eps, self.config.val_steps, self.config.norm)
            clean, robust = correct_count(model, self.val_loader), correct_count(model, self.val_loader, attack)
            counts = self.group.sum_(
                torch.stack([clean, robust, torch.tensor(float(len(self.val_loader.y)), device=self.device)])
            ).tolist()
            results[f"val_{prefix}clean_acc"] = counts[0] / counts[2] if counts[2] else 0.0
            results[f"val_{prefix}robust_acc"] = counts[1] / counts[2] if counts[2] else 0.0
        return results

    # ----------------------------------------------------------------------------------------- state
    def _state(self, epoch: int, step_window: dict[str, torch.Tensor] | None) -> dict[str, Any]:
        state = {
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
            "world_size": self.world.size,
            RUNTIME_KEY: self.registered_at_run_time,
        }
        if step_window is not None:  # --log-interval's sums since its last record
            state["step_window"] = step_window
        return state

    def _save(self, epoch: int, record: dict[str, Any]) -> None:
        """Epoch-end checkpoint: last.pt, then best.pt (a link to it) when the epoch is the best so far."""
        if not self._weights_finite():
            self.history.pop()
            raise self._diverged(f"the weights became NaN or infinite in epoch {epoch}")
        key = "val_wa_robust_acc" if self.config.select == "wa" else "val_robust_acc"
        improved = record[key] > self.best["val_robust_acc"]
        if improved:
            self.best = {"epoch": epoch, "val_robust_acc": record[key]}
        self.last_saved = f"{self.out_dir / 'last.pt'} holds epoch {epoch}"
        step_window = self._summed_window()
        if not self.world.is_main:
            return
        atomic_save(self._state(epoch, step_window), self.out_dir / "last.pt")
        if improved:
            atomic_duplicate(self.out_dir / "last.pt", self.out_dir / "best.pt")
        self._write_metrics()

    def _save_position(self, epoch: int, step: int, totals: dict[str, Any]) -> None:
        """Mid-epoch checkpoint (last.pt only): the epoch-end state plus the loader position, RNG and totals."""
        if not self._weights_finite():
            raise self._diverged(f"the weights became NaN or infinite in epoch {epoch + 1}")
        rng = self.group.gather(torch.get_rng_state())
        cuda_rng = self.group.gather(torch.cuda.get_rng_state(self.device)) if self.device.type == "cuda" else None
        sums = self.group.sum_(totals["sums"].clone())
        metrics = {name: self.group.summed(self.metric_totals[name]) for name in sorted(self.metric_totals)}
        step_window = self._summed_window()
        if self.world.is_main:
            state = self._state(epoch, step_window)
            state["position"] = {
                "step": step,
                "sums": sums,
                "finite": totals["finite"],
                "elapsed": totals["elapsed"],
                "rng": rng,
                "cuda_rng": cuda_rng,
                "metrics": metrics,
            }
            atomic_save(state, self.out_dir / "last.pt")
        self.last_saved = f"{self.out_dir / 'last.pt'} holds step {step} of epoch {epoch + 1}"

    def _summed_window(self) -> dict[str, torch.Tensor] | None:
        """The --log-interval sums in progress, for last.pt (a collective under torchrun: every rank calls it)."""
        return self.step_window.summed(self.group.summed) if self.step_window is not None else None

    def _write_metrics(self) -> None:
        lines = "".join(json.dumps(_json_safe(item), allow_nan=False) + "\n" for item in self.history)
        atomic_write_text(lines, self.out_dir / "metrics.jsonl")

    def _restore(self, state: dict[str, Any]) -> None:
        self.resolved_config = state["config"]
        load_state_dict_or_explain(
            self.model,
            state["model"],
            f"{self.out_dir / 'last.pt'}: its weights do not fit model '{self.config.model}'",
        )
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        for role, component in self._stateful():
            component.load_state_dict(state["components"][role])
        for decay, average_state in state["averages"].items():
            self.weight_average(float(decay)).load_state_dict(average_state)
        self.history = list(state["history"])
        self.best = dict(state["best"])
        self.start_epoch = int(state["epoch"])
        self._position = state.get("position")
        if self.step_window is not None and "step_window" in state:
            self.step_window.load(state["step_window"], self.device, holds_totals=self.world.is_main)
        where = (
            f"step {self._position['step']} of epoch {self.start_epoch + 1}"
            if self._position
            else f"epoch {self.start_epoch}"
        )
        self.last_saved = f"{self.out_dir / 'last.pt'} holds {where}"

    def _repair_checkpoint_pair(self, state: dict[str, Any]) -> None:
        """Make best.pt and metrics.jsonl agree with last.pt after a kill between their writes.

        last.pt is written first; if it names its own epoch as the best, best.pt must hold that epoch too.
        """
        best_epoch = self.best.get("epoch")
        if (
            "position" not in state
            and best_epoch == state["epoch"]
            and _epoch_of(self.out_dir / "best.pt") != best_epoch
        ):
            atomic_duplicate(self.out_dir / "last.pt", self.out_dir / "best.pt")
        self._write_metrics()


def _length_dependence(config: TrainConfig) -> str:
    """Why ``config``'s LR schedule follows --epochs, and what a run that may be extended passes instead."""
    if config.lr_schedule == "cosine":
        return (
            "a cosine schedule spans --epochs (a run to be extended needs an LR fixed in epochs: "
            "--lr-schedule piecewise with explicit --lr-milestones, or constant)"
        )
    if config.lr_schedule == "piecewise" and config.lr_milestones is None:
        return (
            "--lr-milestones defaults to 50% and 75% of --epochs (pass explicit --lr-milestones, in epochs, "
            "when you start a run you may extend)"
        )
    return "the LR schedule follows --epochs"


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """The global-RNG seed of one epoch on one rank (attack starts, dropout); rank 0 keeps the 1-process seed."""
    if rank == 0:
        return seed * 1_000_003 + epoch
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1, np.uint64)[0] >> 1)


def _epoch_of(path: Path) -> int | None:
    """The epoch a checkpoint file holds, or None when it is missing or unreadable (memory-mapped: cheap)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("epoch")
    except Exception:  # a missing, truncated or foreign file is simply not the right best.pt
        return None


def _json_safe(record: dict[str, Any]) -> dict[str, Any]:
    """Non-finite floats as null: metrics.jsonl stays valid JSON whatever a metric did."""
    return {
        key: None if isinstance(value, float) and not math.isfinite(value) else value for key, value in record.items()
    }


def _check_registered_again(registered: dict[str, dict[str, str]], registry: Registry, run_dir: Path) -> None:
    """A class the starting script registered exists in no distribution: a resume needs it registered again."""
    for role, component in sorted(registered.items()):
        name, target = component["name"], component["class"]
        if name not in registry.names(role):
            class_name = target.rpartition(".")[2].rpartition(":")[2]
            raise PluginError(
                f"cannot resume {run_dir}: its {role} '{name}' ({target}) was registered at run time by the script "
                f"that started the run, and this process has not registered it. Register the same class again, then "
                f"resume from Python: advkit.register_component('{role}', '{name}', {class_name}); "
                f"advkit.Trainer.resume_run('{run_dir}').fit()"
            )


def config_of_run(run_dir: str | Path) -> TrainConfig:
    """The configuration a run directory was started with (for ``--resume``)."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise AdvkitError(f"cannot resume: {path} not found (is {run_dir} an advkit run directory?)")
    return load_config_file(path)


def _format_record(record: dict[str, Any], epochs: int) -> str:
    parts = [
        f"epoch {record['epoch']}/{epochs}",
        f"loss {record['train_loss']:.4f}",
        f"train {100 * record['train_acc']:.1f}%",
        f"val clean {100 * record['val_clean_acc']:.1f}%",
        f"val robust {100 * record['val_robust_acc']:.1f}%",
    ]
    if "val_wa_robust_acc" in record:
        parts.append(
            f"wa clean {100 * record['val_wa_clean_acc']:.1f}% wa robust {100 * record['val_wa_robust_acc']:.1f}%"
        )
    parts += [f"lr {record['lr']:.4g}", f"{record['time_s']:.1f}s"]
    return "  ".join(parts)
