"""Accuracy under attack, for per-epoch validation and for ``advkit eval``.

Every attack sees images in [0, 1] and the model in eval mode with frozen parameters. An evaluation
attack is written ``name`` or ``name:key=value,key=value`` (``pgd:steps=50,restarts=5``); its options
are typed and checked like a component's. Results are kept per example, so the worst case over attacks
counts an example as robust only if it survives every attack. Numbers labelled AutoAttack, APGD or
Square come from the official implementation (``pyautoattack``, fra31's code), never a re-implementation.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from .attacks import Attack, frozen_for_attack, supported_norms
from .builtin.attacks import FGSM, PGD
from .errors import AdvkitError
from .options import NORMS, Option, resolve_options
from .registry import TORCHATTACKS_PREFIX, Registry, build_attack, component_options, default_registry
from .software import software_versions

PLUGIN_PREFIX = "plugin:"  # an installed advkit attack (advkit plugins), evaluated as a torchattacks one
NEEDS_SURROGATE = "attack 'transfer' needs --surrogate CHECKPOINT_OR_RUN (the model it is crafted on)"


# ------------------------------------------------------------------------------------- validation
def validation_attack(model: nn.Module, eps: float, steps: int, norm: str = "Linf") -> Attack | None:
    """PGD-k in the run's norm with α = ε/4 and a uniform start, in eval mode: the per-epoch model-selection attack."""
    if steps == 0 or eps == 0:
        return None
    return PGD(model, eps=eps, steps=steps, start="uniform", bn_mode="eval", norm=norm)


def correct_count(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    attack: Any = None,
    *,
    progress: str | None = None,
) -> torch.Tensor:
    """Number of examples classified correctly (a float device tensor, not yet read), after ``attack`` if given.

    Counts rather than fractions, so that shards of a split scored by several processes add up.
    """
    was_training = model.training
    model.eval()
    correct = torch.zeros((), device=next(model.parameters()).device)
    for x, y in tqdm(
        batches, desc=progress, leave=False, disable=progress is None or not sys.stderr.isatty(), dynamic_ncols=True
    ):
        if attack is not None:
            with frozen_for_attack(model, "eval"):
                x = attack(x, y)
        with torch.no_grad():
            correct += (model(x).argmax(dim=1) == y).sum()
    model.train(was_training)
    return correct


# ------------------------------------------------------------------------------------- runners
class AttackRunner(Protocol):
    """A built evaluation attack: adversarial inputs and per-example correctness of ``model`` on them."""

    implementation: str  # the package whose code crafts the examples: advkit, torchattacks or pyautoattack

    def run(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, progress: str | None
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


def predict(model: nn.Module, x: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    """Predicted classes of ``model`` on host tensor ``x`` (batched, no grad); returned on the host."""
    parts = []
    with torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            parts.append(model(x[start : start + batch_size].to(device)).argmax(dim=1).cpu())
    return torch.cat(parts) if parts else torch.empty(0, dtype=torch.long)


def device_of(model: nn.Module) -> torch.device:
    """The device of a model's parameters (CPU for a parameter-free module)."""
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


class PerBatch:
    """Runs an ``(x, y) -> x_adv`` attack batch by batch on the examples still classified correctly.

    Misclassified clean examples are not attacked (x_adv = x), and each restart attacks only what
    survived the previous ones: an example counts as broken if any restart fools the model
    (AutoAttack's convention), which is stronger than keeping the restart with the highest loss.
    """

    def __init__(self, attack: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None, restarts: int = 1) -> None:
        self.attack = attack
        self.restarts = restarts
        self.implementation = getattr(attack, "implementation", None) or (
            "advkit" if attack is None or isinstance(attack, Attack) else type(attack).__module__.split(".")[0]
        )

    def run(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, progress: str | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        device = device_of(model)
        x_adv = x.clone()
        correct = predict(model, x, batch_size, device) == y
        if self.attack is None:
            return x_adv, correct
        for restart in range(self.restarts):
            todo = correct.nonzero().flatten()
            desc = progress if progress is None or self.restarts == 1 else f"{progress} (restart {restart + 1})"
            chunks = list(todo.split(batch_size))
            for index in tqdm(
                chunks, desc=desc, leave=False, disable=desc is None or not sys.stderr.isatty(), dynamic_ncols=True
            ):
                xb, yb = x[index].to(device), y[index].to(device)
                with frozen_for_attack(model, "eval"):
                    adv = self.attack(xb, yb).detach()
                with torch.no_grad():
                    hit = (model(adv).argmax(dim=1) == yb).cpu()
                fooled = index[~hit]
                x_adv[fooled] = adv[~hit].cpu().to(x_adv.dtype)
                correct[index] &= hit
        return x_adv, correct


class OfficialAutoAttack:
    """fra31's AutoAttack (``pyautoattack``) on the whole subset at once, as a user would call it directly.

    ``configure(module, aa)`` adjusts the official object (iterations, targets, queries) the way
    AutoAttack's own ``_set_version`` does, replacing sub-attacks with instances of the module's classes.
    """

    def __init__(
        self,
        eps: float,
        norm: str,
        seed: int,
        version: str,
        attacks: list[str] | None = None,
        configure: Callable[[Any, Any], None] | None = None,
    ) -> None:
        self.eps, self.norm, self.seed = eps, norm, seed
        self.version, self.attacks, self.configure = version, attacks, configure
        self.implementation = "pyautoattack"
        self.stages: dict[str, float] = {}  # robust accuracy after each sub-attack of the last run
        self.warnings: list[str] = []  # the official package's warnings during the last run, each once

    def build(self, model: nn.Module, device: torch.device) -> Any:
        from .compat import import_autoattack

        module = import_autoattack()
        aa = module.AutoAttack(
            model,
            attacks=self.attacks,
            device=device,
            eps=self.eps,
            norm=self.norm,
            seed=self.seed,
            version=self.version,
        )
        if self.configure is not None:
            self.configure(module, aa)
        return aa

    def run(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, progress: str | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        aa = self.build(model, device_of(model))
        with frozen_for_attack(model, "eval"), _autoattack_log(progress is not None) as log:
            x_adv, y_adv = aa.run_standard_evaluation(x, y, batch_size=batch_size)
        self.stages = log.stages if self.attacks is None or len(self.attacks) > 1 else {}
        self.warnings = list(dict.fromkeys(log.warnings))
        return x_adv.cpu(), (y_adv.cpu() == y)


class AutoAttackRecord(logging.Handler):
    """What the official AutoAttack reports only in its log: the robust accuracy after each sub-attack (its
    own running worst case, so the stages say which attack found what) and its reliability warnings
    (zero gradients, Square beating the gradient attacks: signs of gradient masking)."""

    STAGE = re.compile(r"robust accuracy after (\S+): ([0-9.]+)%")

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.stages: dict[str, float] = {}
        self.warnings: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.levelno >= logging.WARNING:
            self.warnings.append(message)
        elif match := self.STAGE.match(message):
            # logged as a percentage with 2 decimals: exact for up to 10,000 examples
            self.stages[match[1].lower()] = round(float(match[2]) / 100, 6)


@contextmanager
def _autoattack_log(show_progress: bool) -> Iterator[AutoAttackRecord]:
    """Record AutoAttack's log (its logger speaks at DEBUG level) while it runs; print its warnings, and its
    progress lines when asked."""
    logger = logging.getLogger("auto-attack")
    record = AutoAttackRecord()
    shown = logging.StreamHandler(sys.stderr)
    shown.setFormatter(logging.Formatter("  autoattack: %(message)s"))
    shown.setLevel(logging.DEBUG if show_progress else logging.WARNING)
    level, propagate = logger.level, logger.propagate
    logger.addHandler(record)
    logger.addHandler(shown)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False  # its DEBUG lines are ours to show, not the application's root handlers'
    try:
        yield record
    finally:
        logger.removeHandler(record)
        logger.removeHandler(shown)
        logger.setLevel(level)
        logger.propagate = propagate


class CarliniWagnerL2:
    """torchattacks' CW-L2, retried with c ×10 on the examples no earlier round has broken.

    advertorch's ``CarliniWagnerL2Attack`` (AdaAD's CW-L2) searches c the same way upwards while no
    adversarial example is found; its bisection downwards after a success, which only shortens
    perturbations, is not done. With ``max_norm``, perturbations longer than it do not count (x is kept).
    """

    implementation = "torchattacks"

    def __init__(
        self, model: nn.Module, *, c: float, kappa: float, steps: int, lr: float, rounds: int, max_norm: float | None
    ) -> None:
        self.model, self.c, self.kappa, self.steps, self.lr = model, c, kappa, steps, lr
        self.rounds, self.max_norm = rounds, max_norm

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        import torchattacks

        x_adv = x.clone()
        todo = torch.arange(x.shape[0], device=x.device)
        for round_index in range(self.rounds):
            if todo.numel() == 0:
                break
            c = self.c * 10**round_index
            cw = torchattacks.CW(self.model, c=c, kappa=self.kappa, steps=self.steps, lr=self.lr)
            adv = cw(x[todo], y[todo])
            with torch.no_grad():
                broken = self.model(adv).argmax(dim=1) != y[todo]
            if self.max_norm is not None:
                broken &= (adv - x[todo]).flatten(1).norm(dim=1) <= self.max_norm
            x_adv[todo[broken]] = adv[broken]
            todo = todo[~broken]
        return x_adv


# ------------------------------------------------------------------------------------- attack table
@dataclass(frozen=True)
class AttackContext:
    """What building an evaluation attack may read."""

    model: nn.Module
    eps: float
    norm: str
    num_classes: int
    seed: int
    surrogate: nn.Module | None = None


@dataclass(frozen=True)
class EvalAttack:
    """A named evaluation attack: its typed options, the norms it supports and how to build it."""

    name: str
    help: str
    options: tuple[Option, ...]
    build: Callable[[AttackContext, dict[str, Any]], AttackRunner]
    norms: tuple[str, ...] = NORMS
    implementation: str = "advkit (L2: torchattacks PGDL2)"
    describe: Callable[[AttackContext, dict[str, Any]], str] | None = None


def _alpha(ctx: AttackContext, options: dict[str, Any]) -> float:
    return ctx.eps / 4 if options["alpha"] is None else options["alpha"]


def _pgd_attack(
    model: nn.Module, eps: float, norm: str, *, steps: int, alpha: float, loss: str = "ce"
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """ℓ∞: advkit's PGD (uniform start, eval-mode BN); ℓ2: torchattacks' PGDL2 (random start in the ball)."""
    if norm == "Linf":
        return PGD(model, eps=eps, alpha=alpha, steps=steps, start="uniform", bn_mode="eval", loss=loss)
    import torchattacks

    return torchattacks.PGDL2(model, eps=eps, alpha=alpha, steps=steps, random_start=True)


def _pgd(loss: str, on_surrogate: bool = False) -> Callable[[AttackContext, dict[str, Any]], AttackRunner]:
    def build(ctx: AttackContext, options: dict[str, Any]) -> AttackRunner:
        model = ctx.surrogate if on_surrogate else ctx.model
        if model is None:
            raise AdvkitError(NEEDS_SURROGATE)
        attack = _pgd_attack(model, ctx.eps, ctx.norm, steps=options["steps"], alpha=_alpha(ctx, options), loss=loss)
        return PerBatch(attack, options["restarts"])

    return build


def _fgsm(ctx: AttackContext, options: dict[str, Any]) -> AttackRunner:
    if ctx.norm == "Linf":
        return PerBatch(FGSM(ctx.model, eps=ctx.eps))
    import torchattacks

    return PerBatch(torchattacks.PGDL2(ctx.model, eps=ctx.eps, alpha=ctx.eps, steps=1, random_start=False))


def _cw2(ctx: AttackContext, options: dict[str, Any]) -> AttackRunner:
    return PerBatch(CarliniWagnerL2(ctx.model, **options))


def _official(
    attack: str | None, configure: Callable[[AttackContext, dict[str, Any], Any, Any], None] | None = None
) -> Callable[[AttackContext, dict[str, Any]], AttackRunner]:
    """Build an ``OfficialAutoAttack``: one sub-attack (``version='custom'``) or a whole version."""

    def build(ctx: AttackContext, options: dict[str, Any]) -> AttackRunner:
        version = options.get("version", "custom")
        hook = None if configure is None else (lambda module, aa: configure(ctx, options, module, aa))
        return OfficialAutoAttack(ctx.eps, ctx.norm, ctx.seed, version, None if attack is None else [attack], hook)

    return build


def _configure_apgd(ctx: AttackContext, options: dict[str, Any], module: Any, aa: Any) -> None:
    aa.apgd = module.autopgd_base.APGDAttack(
        aa.model,
        n_iter=options["iters"],
        n_restarts=options["restarts"],
        eps=ctx.eps,
        norm=ctx.norm,
        seed=ctx.seed,
        device=aa.device,
        logger=aa.logger,
    )


def _configure_apgd_t(ctx: AttackContext, options: dict[str, Any], module: Any, aa: Any) -> None:
    aa.apgd_targeted = module.autopgd_base.APGDAttack_targeted(
        aa.model,
        n_iter=options["iters"],
        n_restarts=options["restarts"],
        eps=ctx.eps,
        norm=ctx.norm,
        seed=ctx.seed,
        n_target_classes=min(options["targets"], ctx.num_classes - 1),
        device=aa.device,
        logger=aa.logger,
    )


def _configure_square(ctx: AttackContext, options: dict[str, Any], module: Any, aa: Any) -> None:
    aa.square = module.square.SquareAttack(
        aa.model,
        p_init=options["p_init"],
        n_queries=options["queries"],
        eps=ctx.eps,
        norm=ctx.norm,
        n_restarts=options["restarts"],
        seed=ctx.seed,
        verbose=False,
        device=aa.device,
        resc_schedule=False,
    )


def _configure_autoattack(ctx: AttackContext, options: dict[str, Any], module: Any, aa: Any) -> None:
    """Fewer than 10 classes: target every other class (the official default of 9 targets would fail)."""
    if ctx.num_classes - 1 < 9:
        aa.apgd_targeted.n_target_classes = ctx.num_classes - 1
        aa.fab.n_target_classes = ctx.num_classes - 1


def _steps_and_alpha(steps: int) -> tuple[Option, ...]:
    return (
        Option("steps", int, steps, "iterations", low=1),
        Option("alpha", float, None, "step size [ε/4]", low=0.0, low_open=True, optional=True),
        Option("restarts", int, 1, "random restarts; an example is broken if any restart fools the model", low=1),
    )


def _describe_pgd(kind: str) -> Callable[[AttackContext, dict[str, Any]], str]:
    def describe(ctx: AttackContext, options: dict[str, Any]) -> str:
        restarts = f", {options['restarts']} restarts" if options["restarts"] > 1 else ""
        return f"{kind}-{options['steps']} ({ctx.norm}, α={_alpha(ctx, options):.4g}{restarts})"

    return describe


_RESTARTS_1 = Option("restarts", int, 1, "restarts (AutoAttack standard: 1)", low=1)

EVAL_ATTACKS: dict[str, EvalAttack] = {
    spec.name: spec
    for spec in (
        EvalAttack(
            "clean",
            "no attack",
            (),
            lambda ctx, options: PerBatch(None),
            implementation="advkit",
            describe=lambda ctx, options: "clean",
        ),
        EvalAttack(
            "fgsm",
            "FGSM: one signed step of size ε (ℓ2: one normalised-gradient step, FGM)",
            (),
            _fgsm,
            describe=lambda ctx, options: f"FGSM ({ctx.norm})",
        ),
        EvalAttack(
            "pgd",
            "PGD on cross-entropy, uniform random start",
            _steps_and_alpha(20),
            _pgd("ce"),
            describe=_describe_pgd("PGD"),
        ),
        EvalAttack(
            "cw",
            "CW∞: PGD on the Carlini-Wagner margin loss",
            _steps_and_alpha(30),
            _pgd("cw"),
            norms=("Linf",),
            implementation="advkit",
            describe=_describe_pgd("CW∞ PGD"),
        ),
        EvalAttack(
            "cw2",
            "CW₂: torchattacks' Carlini-Wagner ℓ2 optimisation (minimum norm), c raised ×10 per round",
            (
                Option("c", float, 0.1, "weight of the misclassification term", low=0.0, low_open=True),
                Option("kappa", float, 0.01, "confidence margin κ", low=0.0),
                Option("steps", int, 1000, "Adam iterations", low=1),
                Option("lr", float, 0.01, "Adam learning rate", low=0.0, low_open=True),
                Option(
                    "rounds",
                    int,
                    9,
                    "rounds; each retries the unbroken examples with c ×10 (advertorch's 9 search steps)",
                    low=1,
                ),
                Option(
                    "max_norm",
                    float,
                    None,
                    "count a perturbation only if its ℓ2 norm is at most this [unbounded]",
                    low=0.0,
                    optional=True,
                ),
            ),
            _cw2,
            implementation="torchattacks",
            describe=lambda ctx, options: (
                f"CW₂ (c={options['c']:g}, {options['rounds']} round(s) of ×10, "
                f"κ={options['kappa']:g}, {options['steps']} steps, "
                + ("unbounded)" if options["max_norm"] is None else f"‖δ‖₂ ≤ {options['max_norm']:g})")
            ),
        ),
        EvalAttack(
            "apgd-ce",
            "APGD on cross-entropy (official AutoAttack code)",
            (Option("iters", int, 100, "iterations", low=1), _RESTARTS_1),
            _official("apgd-ce", _configure_apgd),
            implementation="pyautoattack",
            describe=lambda ctx, options: (
                f"APGD-CE ({ctx.norm}, {options['iters']} iters, {options['restarts']} restart(s))"
            ),
        ),
        EvalAttack(
            "apgd-t",
            "targeted APGD on the DLR loss (official AutoAttack code)",
            (
                Option("iters", int, 100, "iterations", low=1),
                _RESTARTS_1,
                Option("targets", int, 9, "target classes, at most classes − 1", low=1),
            ),
            _official("apgd-t", _configure_apgd_t),
            implementation="pyautoattack",
            describe=lambda ctx, options: (
                f"APGD-T ({ctx.norm}, {options['iters']} iters, {min(options['targets'], ctx.num_classes - 1)} targets)"
            ),
        ),
        EvalAttack(
            "square",
            "Square: query-based black-box attack (official AutoAttack code)",
            (
                Option("queries", int, 5000, "query budget per example", low=1),
                _RESTARTS_1,
                Option("p_init", float, 0.8, "initial fraction of pixels changed", low=0.0, high=1.0, low_open=True),
            ),
            _official("square", _configure_square),
            implementation="pyautoattack",
            describe=lambda ctx, options: f"Square ({ctx.norm}, {options['queries']} queries)",
        ),
        EvalAttack(
            "autoattack",
            "AutoAttack: APGD-CE, APGD-T, FAB-T, Square (official pyautoattack)",
            (Option("version", str, "standard", "AutoAttack version", choices=("standard", "plus", "rand")),),
            _official(None, _configure_autoattack),
            implementation="pyautoattack",
            describe=lambda ctx, options: f"AutoAttack {options['version']} ({ctx.norm})",
        ),
        EvalAttack(
            "transfer",
            "transfer: PGD crafted on --surrogate, evaluated on the target",
            _steps_and_alpha(20),
            _pgd("ce", on_surrogate=True),
            describe=_describe_pgd("transfer PGD"),
        ),
    )
}


@dataclass(frozen=True)
class AttackSpec:
    """One ``--attack`` value, parsed and checked: the attack's name and its resolved options."""

    text: str
    name: str
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def needs_surrogate(self) -> bool:
        return self.name == "transfer"

    def build(self, ctx: AttackContext, registry: Registry | None = None) -> AttackRunner:
        if self.name in EVAL_ATTACKS:
            return EVAL_ATTACKS[self.name].build(ctx, self.options)
        cls = _registered_attack(self.name, registry)
        values = dict(self.options)
        keys = {option.name for option in component_options(cls)}
        if "eps" in keys:
            values.setdefault("eps", ctx.eps)
        if self.name.startswith(PLUGIN_PREFIX):  # the evaluation's threat model; BatchNorm statistics untouched
            if "norm" in keys:
                values.setdefault("norm", ctx.norm)
            if "bn_mode" in keys:
                values.setdefault("bn_mode", "eval")
        return PerBatch(build_attack(cls, ctx.model, values))

    def describe(self, ctx: AttackContext) -> str:
        spec = EVAL_ATTACKS.get(self.name)
        if spec is None or spec.describe is None:
            extra = ", ".join(f"{key}={value}" for key, value in self.options.items())
            return f"{self.name}({extra})" if extra else self.name
        return spec.describe(ctx, self.options)


def split_attack_text(text: str) -> tuple[str, dict[str, str]]:
    """``pgd:steps=50,restarts=5`` → ("pgd", {"steps": "50", "restarts": "5"}); a torchattacks name keeps its prefix."""
    name, sep, rest = text.strip().rpartition(":")
    if not sep or "=" not in rest:
        return text.strip(), {}
    values: dict[str, str] = {}
    for item in rest.split(","):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise AdvkitError(
                f"--attack {text!r}: options are written name:key=value,key=value (e.g. pgd:steps=50,restarts=5)"
            )
        values[key.strip()] = value.strip()
    return name, values


def parse_attack(text: str, norm: str = "Linf", registry: Registry | None = None) -> AttackSpec:
    """Parse and validate one ``--attack`` value before any model or data is loaded."""
    name, raw = split_attack_text(text)
    if name in EVAL_ATTACKS:
        spec = EVAL_ATTACKS[name]
        if norm not in spec.norms:
            raise AdvkitError(f"attack '{name}' supports --norm {' or '.join(spec.norms)}, not {norm}")
        return AttackSpec(text, name, resolve_options(spec.options, raw, f"attack '{name}'"))
    if name.startswith((TORCHATTACKS_PREFIX, PLUGIN_PREFIX)):
        cls = _registered_attack(name, registry)
        if name.startswith(PLUGIN_PREFIX) and norm not in supported_norms(cls):
            raise AdvkitError(f"attack '{name}' supports --norm {' or '.join(supported_norms(cls))}, not {norm}")
        resolve_options(component_options(cls), raw, f"attack '{name}'")  # fail early on a bad key or value
        return AttackSpec(text, name, dict(raw))
    raise AdvkitError(
        f"unknown evaluation attack '{name}' (available: {', '.join(EVAL_ATTACKS)}, "
        "plugin:<name>, torchattacks:<Name>; options as name:key=value, e.g. pgd:steps=50)"
    )


def _registered_attack(name: str, registry: Registry | None) -> type:
    """The class behind ``torchattacks:<Name>`` or ``plugin:<name>`` (an installed training attack)."""
    key = name[len(PLUGIN_PREFIX) :] if name.startswith(PLUGIN_PREFIX) else name
    return (registry or default_registry()).load("attack", key)


# ------------------------------------------------------------------------------------- evaluation
@dataclass
class AttackResult:
    """Per-example outcome of one attack."""

    spec: AttackSpec
    description: str
    implementation: str
    x_adv: torch.Tensor | None  # None when run_attacks was asked not to keep the examples
    correct: torch.Tensor
    seconds: float
    stages: dict[str, float] = field(default_factory=dict)  # AutoAttack: robust accuracy after each sub-attack
    warnings: list[str] = field(default_factory=list)  # the official package's reliability warnings

    @property
    def accuracy(self) -> float:
        return float(self.correct.double().mean()) if self.correct.numel() else 0.0


def run_attacks(
    ctx: AttackContext,
    x: torch.Tensor,
    y: torch.Tensor,
    specs: list[AttackSpec],
    *,
    batch_size: int,
    progress: bool = False,
    keep_adversarial: bool = True,
    registry: Registry | None = None,
) -> dict[str, AttackResult]:
    """Run each attack on host tensors (x, y); every attack starts from the same seed, whatever the order.

    ``keep_adversarial=False`` drops each attack's examples once scored (a full test set per attack adds up).
    """
    results = {}
    for spec in specs:
        torch.manual_seed(ctx.seed)
        started = time.perf_counter()
        runner = spec.build(ctx, registry)
        x_adv, correct = runner.run(ctx.model, x, y, batch_size, spec.text if progress else None)
        stages, warnings = (runner.stages, runner.warnings) if isinstance(runner, OfficialAutoAttack) else ({}, [])
        results[spec.text] = AttackResult(
            spec,
            spec.describe(ctx),
            runner.implementation,
            x_adv if keep_adversarial else None,
            correct,
            time.perf_counter() - started,
            stages=stages,
            warnings=warnings,
        )
    return results


def worst_case(results: dict[str, AttackResult]) -> torch.Tensor | None:
    """Per-example robustness over all attacks: robust only if every attack left it correctly classified."""
    flags = [result.correct for result in results.values()]
    if not flags:
        return None
    return torch.stack(flags).all(dim=0)


def checkpoint_path(target: str | Path, which: str = "best") -> Path:
    """A run directory resolves to its best.pt (or last.pt); a file is taken as it is."""
    target = Path(target)
    if target.is_dir():
        path = target / f"{which}.pt"
        if not path.is_file():
            raise AdvkitError(
                f"{target} holds no {which}.pt: is it an advkit run directory whose first epoch finished?"
            )
        return path
    if not target.exists():
        raise AdvkitError(f"no such run directory or checkpoint: {target}")
    return target


@dataclass
class EvalSetup:
    """A trained model and a seeded subset of its dataset's test split, as host tensors."""

    path: Path
    model: nn.Module
    config: dict[str, Any]
    info: Any
    x: torch.Tensor
    y: torch.Tensor
    device: torch.device
    averaged: bool

    def context(
        self, eps: float | None, norm: str | None, seed: int, surrogate: nn.Module | None = None
    ) -> AttackContext:
        """The attack context; the threat model and ε default to the run's (``--norm``, ``--eps`` of training)."""
        run_norm = str(self.config.get("norm", "Linf"))
        norm = run_norm if norm is None else norm
        if eps is None:
            if norm != run_norm:
                raise AdvkitError(f"--norm {norm} needs --eps: the run's eps is an {run_norm} radius")
            eps = float(self.config.get("eps") or 8 / 255)
        if norm == "Linf" and eps > 1:
            raise AdvkitError(f"--eps must lie in [0, 1] for Linf (pixel units, e.g. 8/255), got {eps:g}")
        return AttackContext(
            model=self.model, eps=eps, norm=norm, num_classes=self.info.num_classes, seed=seed, surrogate=surrogate
        )

    def header(self, ctx: AttackContext) -> str:
        return (
            f"{self.path} ({'weight-averaged' if self.averaged else 'model'}), {self.info.name} test, "
            f"n={self.y.shape[0]}, {ctx.norm} eps={ctx.eps:.5g}, seed={ctx.seed}"
        )


def load_eval_setup(
    target: str | Path,
    *,
    which: str = "best",
    averaged: bool = False,
    device: str = "auto",
    data_dir: str | None = None,
    n_examples: int | None = None,
    seed: int = 0,
) -> EvalSetup:
    """Load a checkpoint and the seeded subset of examples every command of one evaluation shares."""
    from .checkpoint import load_trained_model
    from .distributed import resolve_device

    path = checkpoint_path(target, which)
    torch_device = resolve_device(device)
    model, config, info = load_trained_model(path, torch_device, averaged=averaged)
    x, y = load_test_tensors(info.name, data_dir or config.get("data_dir", "data"), n_examples=n_examples, seed=seed)
    return EvalSetup(path, model, config, info, x, y, torch_device, averaged)


def load_test_tensors(
    name: str, data_dir: str, *, n_examples: int | None = None, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random subset of a dataset's test split as host tensors (float images in [0, 1], labels)."""
    from .data import load_dataset, to_float

    part = load_dataset(name, data_dir).test
    if n_examples is not None and n_examples < len(part):
        part = part.subset(torch.randperm(len(part), generator=torch.Generator().manual_seed(seed))[:n_examples])
    return to_float(part.x), part.y.long()


def load_surrogate(target: str | Path, info: Any, device: torch.device, which: str = "best") -> nn.Module:
    """The model a transfer attack is crafted on; it must have been trained on the target's dataset."""
    from .checkpoint import load_trained_model

    model, _, surrogate_info = load_trained_model(checkpoint_path(target, which), device)
    if surrogate_info.name != info.name:
        raise AdvkitError(
            f"--surrogate {target} was trained on {surrogate_info.name}, the evaluated model on {info.name}"
        )
    return model


def prepare_evaluation(
    target: str | Path,
    *,
    eps: float | None = None,
    norm: str | None = None,
    seed: int = 0,
    surrogate: str | Path | None = None,
    which: str = "best",
    averaged: bool = False,
    device: str = "auto",
    data_dir: str | None = None,
    n_examples: int | None = None,
) -> tuple[EvalSetup, AttackContext]:
    """Model, examples and attack context shared by ``advkit eval``, ``sanity`` and ``plot calibration``."""
    if norm is not None and norm not in NORMS:
        raise AdvkitError(f"--norm must be one of {', '.join(NORMS)}, got {norm!r}")
    setup = load_eval_setup(
        target, which=which, averaged=averaged, device=device, data_dir=data_dir, n_examples=n_examples, seed=seed
    )
    surrogate_model = None if surrogate is None else load_surrogate(surrogate, setup.info, setup.device)
    return setup, setup.context(eps, norm, seed, surrogate_model)


def evaluate_checkpoint(
    target: str | Path,
    attacks: list[str],
    *,
    n_examples: int | None = None,
    batch_size: int = 256,
    eps: float | None = None,
    norm: str | None = None,
    seed: int = 0,
    averaged: bool = False,
    which: str = "best",
    data_dir: str | None = None,
    device: str = "auto",
    surrogate: str | Path | None = None,
    progress: bool = False,
    registry: Registry | None = None,
) -> dict[str, Any]:
    """Accuracy of a checkpoint on a seeded subset of its test split under each attack, plus the worst case.

    ``attacks`` are specs such as ``"pgd:steps=50"`` (docs/evaluation.md); the report is JSON-ready.
    """
    texts = list(dict.fromkeys(attacks))
    for text in texts:  # a mistake in the attack list is reported before anything loads
        parse_attack(text, norm or "Linf", registry)
    loaded, ctx = prepare_evaluation(
        target,
        eps=eps,
        norm=norm,
        seed=seed,
        surrogate=surrogate,
        which=which,
        averaged=averaged,
        device=device,
        data_dir=data_dir,
        n_examples=n_examples,
    )
    specs = [parse_attack(text, ctx.norm, registry) for text in texts]  # the run's norm when none was given
    if any(spec.needs_surrogate for spec in specs) and surrogate is None:
        raise AdvkitError(NEEDS_SURROGATE)
    results = run_attacks(
        ctx,
        loaded.x,
        loaded.y,
        specs,
        batch_size=batch_size,
        progress=progress,
        keep_adversarial=False,
        registry=registry,
    )
    worst = worst_case(results)
    return {
        "header": loaded.header(ctx),
        "checkpoint": str(loaded.path),
        "model": "weight-averaged" if loaded.averaged else "model",
        "dataset": loaded.info.name,
        "split": "test",
        "n_examples": int(loaded.y.shape[0]),
        "seed": ctx.seed,
        "eps": ctx.eps,
        "norm": ctx.norm,
        "surrogate": None if surrogate is None else str(surrogate),
        "attacks": [
            {
                "attack": name,
                "description": result.description,
                "implementation": result.implementation,
                "accuracy": result.accuracy,
                "seconds": round(result.seconds, 3),
                **({"stages": result.stages} if result.stages else {}),
                **({"warnings": result.warnings} if result.warnings else {}),
            }
            for name, result in results.items()
        ],
        "accuracy": {name: result.accuracy for name, result in results.items()},
        "worst_case": None if worst is None else float(worst.double().mean()),
        "software": software_versions(loaded.device),
    }


def _rows(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    rows = []
    for item in report["attacks"]:
        rows.append((item["attack"], item["description"], f"{100 * item['accuracy']:.2f}%"))
        for stage, accuracy in item.get("stages", {}).items():
            rows.append((f"  after {stage}", "robust so far (AutoAttack's own tally)", f"{100 * accuracy:.2f}%"))
    if report["worst_case"] is not None and len(report["attacks"]) > 1:
        rows.append(("worst case", "per example, over all attacks above", f"{100 * report['worst_case']:.2f}%"))
    return rows


def format_table(report: dict[str, Any]) -> str:
    """A fixed-width table for the terminal."""
    rows = [("attack", "description", "accuracy")] + _rows(report)
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [report["header"]]
    for index, row in enumerate(rows):
        lines.append(f"{row[0].ljust(widths[0])}  {row[1].ljust(widths[1])}  {row[2].rjust(widths[2])}")
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)


def format_markdown(report: dict[str, Any]) -> str:
    """The same table as Markdown, for papers' appendices and READMEs."""
    lines = [f"**{report['header']}**", "", "| attack | description | accuracy |", "|---|---|---:|"]
    lines += [
        f"| {name.strip() if name.startswith(' ') else f'`{name}`'} | {description} | {value} |"  # a stage: no code
        for name, description, value in _rows(report)
    ]
    return "\n".join(lines) + "\n"
