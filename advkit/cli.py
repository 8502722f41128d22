"""The ``advkit`` command line: train, eval, sanity, plot, summarize, study, sweep, plugins.

User mistakes (unknown names, bad options, missing files) end with one line on stderr and exit status 2.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import click

from .errors import EXIT_INTERRUPTED, AdvkitError
from .interrupts import StoppedBySignal
from .options import parse_float


class _Number(click.ParamType):
    """A float that may be written as a fraction (``--eps 8/255``)."""

    name = "number"

    def convert(self, value: Any, param: Any, ctx: Any) -> float:
        try:
            number = parse_float(value)
        except ValueError:
            self.fail(f"{value!r} is not a number (fractions such as 8/255 are accepted)", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


NUMBER = _Number()


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="advkit")
def cli() -> None:
    """advkit: adversarial training composed from plugins.

    A run is a label rectifier (the targets), an attack (the inner maximisation) and an objective (the
    outer loss); each is a plugin, listed by `advkit plugins`.

    \b
    Example:
      advkit train --dataset digits --model small-cnn --objective trades --eps 0.1 --epochs 3 --out runs/x
      advkit eval runs/x --attack clean --attack pgd --json r.json
    """


_TRAIN_FLAGS = {
    # name: (click type, help)
    "dataset": (str, "dataset: cifar10, cifar100, svhn, tiny-imagenet, mnist, fashion-mnist, digits [cifar10]"),
    "data_dir": (click.Path(file_okay=False), "folder holding the datasets [data]"),
    "model": (
        str,
        "architecture: resnet18, preact-resnet18, wrn-D-W, mobilenetv2, small-cnn, small-cnn-gn, cnn3, cnn3-wide, "
        "timm:<name> [resnet18]",
    ),
    "objective": (str, "outer loss plugin, e.g. standard, at, trades [at]"),
    "rectifier": (str, "label rectifier plugin [the objective's default, usually onehot]"),
    "attack": (str, "training attack plugin or torchattacks:<Name> [the objective's default]"),
    "teacher": (str, "teacher: robustbench:NAME, timm:NAME, a run directory or a checkpoint file"),
    "teacher_arch": (str, "architecture of a plain state_dict teacher file"),
    "teacher_cache": (click.Path(file_okay=False), "folder of RobustBench teacher checkpoints [DATA_DIR/robustbench]"),
    "eps": (
        NUMBER,
        "radius of the training attack and validation in --norm's units: ℓ∞ e.g. 8/255 [8/255]; ℓ2 (required) e.g. 0.5",
    ),
    "norm": (
        click.Choice(["Linf", "L2"]),
        "threat model of the training attack, validation and advkit eval's default [Linf]",
    ),
    "epochs": (int, "number of epochs [10]"),
    "batch_size": (int, "global batch size: under torchrun each of N processes trains on batch/N [128]"),
    "lr": (NUMBER, "peak learning rate [0.1]"),
    "momentum": (NUMBER, "SGD momentum [0.9]"),
    "weight_decay": (NUMBER, "weight decay [5e-4]"),
    "lr_schedule": (
        click.Choice(["piecewise", "cosine", "constant"]),
        "LR schedule, stepped per iteration [piecewise]",
    ),
    "lr_gamma": (NUMBER, "piecewise LR factor at each milestone [0.1]"),
    "lr_warmup": (NUMBER, "epochs of linear LR warmup [0]"),
    "val_size": (
        NUMBER,
        "validation examples held out from the training set: a count or a fraction [1000, or 10% of small sets]",
    ),
    "train_size": (
        int,
        "train on a seeded subset of this many examples, drawn after the validation split is held out [all]",
    ),
    "split_seed": (
        int,
        "seed of the validation split and the --train-size subset, to share one split across seeds [--seed]",
    ),
    "val_steps": (int, "PGD steps of the per-epoch validation attack [10]"),
    "wa": (NUMBER, "keep a weight average (EMA) of the model with this decay, e.g. 0.995"),
    "select": (click.Choice(["model", "wa"]), "which model picks best.pt by validation robust accuracy [model]"),
    "awp": (
        NUMBER,
        "adversarial weight perturbation of this relative size: γ of official AWP (0.01 AT, 0.005 TRADES) "
        "or ρ of --awp-variant adr-sam (0.005) [off]",
    ),
    "awp_variant": (
        click.Choice(["official", "adr-sam"]),
        "official: Wu et al. 2020 (proxy model, conv/linear weights); "
        "adr-sam: ADR's SAM-style two-pass step [official]",
    ),
    "awp_warmup": (int, "epochs trained without AWP before it starts [0]"),
    "seed": (int, "random seed [0]"),
    "device": (str, "auto, cpu, cuda or cuda:N [auto]"),
    "threads": (
        int,
        "CPU threads of torch (intra-op); one per process is fastest on a busy machine [torch's default: every core]",
    ),
    "amp": (click.Choice(["off", "bf16", "fp16"]), "automatic mixed precision [off]"),
    "extra_data": (
        click.Path(),
        "generated training data: a .npz (image uint8 N×H×W×C, label N) or a folder of them, memory-mapped",
    ),
    "extra_fraction": (
        NUMBER,
        "generated share of every batch with --extra-data [0.7]; an epoch is one pass over the real data",
    ),
    "checkpoint_every": (int, "also save last.pt every N optimizer steps, for long epochs [epoch ends only]"),
    "log_interval": (
        int,
        "also log the training loss, accuracy and LR, averaged over every N optimizer steps, to "
        "RUN_DIR/steps.jsonl and the loggers [0: off]",
    ),
    "mlflow_uri": (
        str,
        "MLflow tracking URI of --logger mlflow [MLFLOW_TRACKING_URI, else sqlite:///RUN_DIR/mlflow.db]",
    ),
}


def _train_options(function: Any) -> Any:
    for name, (kind, help_text) in reversed(list(_TRAIN_FLAGS.items())):
        function = click.option(f"--{name.replace('_', '-')}", name, type=kind, default=None, help=help_text)(function)
    return function


@cli.command()
@_train_options
@click.option(
    "--lr-milestones",
    "lr_milestones",
    default=None,
    help="comma-separated epochs where the LR is multiplied by --lr-gamma [50%,75% of --epochs]",
)
@click.option(
    "--logger",
    "logger",
    default=None,
    metavar="NAMES",
    help="also send the metrics to: tensorboard, csv, wandb, mlflow "
    "(comma-separated; may be given with --resume) [none]",
)
@click.option("--nesterov/--no-nesterov", default=None, help="Nesterov momentum [off]")
@click.option(
    "--download/--no-download",
    default=None,
    help="let torchvision download a missing dataset, RobustBench a missing teacher [off]",
)
@click.option("--channels-last/--no-channels-last", default=None, help="channels_last memory format [off]")
@click.option(
    "--compile/--no-compile",
    "compile",
    default=None,
    help="torch.compile the model that attack, loss and validation call (pays off on GPUs) [off]",
)
@click.option(
    "--sync-bn/--no-sync-bn",
    default=None,
    help="under torchrun, BatchNorm statistics over the global batch (CUDA only) [off]",
)
@click.option(
    "-o",
    "--option",
    "options",
    multiple=True,
    metavar="COMPONENT.KEY=VALUE",
    help="component option, e.g. -o trades.beta=6 or -o attack.steps=5 (see advkit plugins show NAME)",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="YAML file of settings (keys as the flags above); flags given here override it",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="run directory to create [runs/<objective>-<dataset>-<model>]",
)
@click.option(
    "--resume",
    type=click.Path(file_okay=False),
    default=None,
    help="continue the run in this directory where it stopped; with a larger --epochs, extend it (where "
    "its LR schedule and components' schedules do not depend on the total)",
)
@click.option("--quiet", is_flag=True, help="no progress bars")
def train(
    config_file: str | None,
    out: str | None,
    resume: str | None,
    quiet: bool,
    options: tuple[str, ...],
    lr_milestones: str | None,
    logger: str | None,
    **flags: Any,
) -> None:
    """Train a model; writes config.yaml, metrics.jsonl, last.pt and best.pt into the run directory.

    \b
    SIGTERM, SIGUSR1 (SLURM's warning before preemption) and Ctrl-C finish the current step, save
    last.pt with the position in the epoch, and exit 75 (SIGTERM/SIGUSR1) or 130 (Ctrl-C); --resume
    then continues exactly. Exit 3: the loss or weights became NaN/inf (checkpoints keep the last finite
    state). Exit 74: a file could not be written. Exit 2: a setting or file to fix.
    """
    from .interrupts import StopRequest, stop_on_signals

    request = StopRequest()
    with stop_on_signals(request):
        if logger is not None:
            flags["logger"] = _logger_names(logger)
        trainer = _build_trainer(config_file, out, resume, quiet, options, lr_milestones, flags)
        trainer.stop_request = request
        try:
            history = trainer.fit()
        finally:
            trainer.group.close()
    if not trainer.world.is_main:
        sys.exit(request.exit_status if request else 0)  # rank 0 reports for the run
    finished = bool(history) and history[-1]["epoch"] == trainer.config.epochs
    if request and not finished:
        run = trainer.out_dir
        launch = f"torchrun --nproc-per-node {trainer.world.size} -m advkit" if trainer.world.distributed else "advkit"
        then = (
            f"continue with: {launch} train --resume {run}"
            if (run / "last.pt").is_file()
            else f"nothing to resume yet; start again with: {launch} train --config {run / 'config.yaml'} --out {run}"
        )
        click.echo(f"advkit: {request.signal_name}: stopped; {trainer.last_saved} ({then})", err=True)
        sys.exit(request.exit_status)
    if history:
        best = trainer.best
        by_average = trainer.config.select == "wa"  # best.pt was picked by the weight-averaged model
        prefix, which = ("val_wa", " (weight-averaged model)") if by_average else ("val", "")
        click.echo(
            f"done: {trainer.out_dir}{which}  best val robust {100 * best['val_robust_acc']:.2f}% "
            f"(epoch {best['epoch']}), last val robust {100 * history[-1][f'{prefix}_robust_acc']:.2f}%, "
            f"clean {100 * history[-1][f'{prefix}_clean_acc']:.2f}%"
        )


def _build_trainer(
    config_file: str | None,
    out: str | None,
    resume: str | None,
    quiet: bool,
    options: tuple[str, ...],
    lr_milestones: str | None,
    flags: dict[str, Any],
) -> Any:
    from .config import TRACKING_SETTINGS, TrainConfig, load_config_file, merge_options, parse_option_flags
    from .train import Trainer

    given = {key: value for key, value in flags.items() if value is not None}
    if resume:  # a larger --epochs, and where the metrics go, leave the steps already trained as they were
        others = {"option": options, "config": config_file, "lr_milestones": lr_milestones, "out": out}
        extra = sorted(
            (set(given) - {"epochs"} - TRACKING_SETTINGS) | {name for name, value in others.items() if value}
        )
        if extra:
            raise AdvkitError(
                f"--resume takes the settings from {resume}/config.yaml (only a larger --epochs may "
                f"extend the run); drop --{extra[0].replace('_', '-')}"
            )
        tracking = {key: value for key, value in given.items() if key in TRACKING_SETTINGS}
        return Trainer.resume_run(resume, epochs=given.get("epochs"), progress=not quiet, tracking=tracking)
    config = load_config_file(config_file) if config_file else TrainConfig()
    for key, value in given.items():
        setattr(config, key, value)
    if lr_milestones is not None:
        config.lr_milestones = _milestones(lr_milestones)
    if config.val_size is not None and float(config.val_size).is_integer() and config.val_size >= 1:
        config.val_size = int(config.val_size)
    config.options = merge_options(config.options, parse_option_flags(options))
    late = [m for m in config.lr_milestones or [] if m >= config.epochs]
    if config.lr_schedule == "piecewise" and late:
        click.echo(
            f"advkit: warning: --lr-milestones {late} lie at or beyond --epochs {config.epochs}, so the LR "
            "does not decay there (a config's milestones keep their epochs when --epochs shrinks); pass "
            "--lr-milestones to move them",
            err=True,
        )
    out_dir = Path(out or f"runs/{config.objective}-{config.dataset}-{config.model.replace(':', '-')}")
    return Trainer(config, out_dir, progress=not quiet)


def _logger_names(text: str) -> list[str]:
    """``tensorboard,csv`` → ["tensorboard", "csv"]; ``none`` (or nothing) turns off a config file's loggers."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    return [] if names == ["none"] else names


def _milestones(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise AdvkitError(
            f"--lr-milestones expects comma-separated epoch numbers such as 100,150, got {text!r}"
        ) from None


_ATTACKS_HELP = """\b
Attacks: --attack NAME or NAME:KEY=VALUE,KEY=VALUE (defaults shown), repeatable:
  clean                      no attack
  fgsm                       one signed step of size ε (L2: one normalised-gradient step)
  pgd:steps=20,alpha=ε/4,restarts=1
                             PGD on cross-entropy from a uniform random start
  cw:steps=30,alpha=ε/4,restarts=1
                             CW∞: PGD on the Carlini-Wagner margin (Linf only)
  cw2:c=0.1,kappa=0.01,steps=1000,lr=0.01,rounds=9,max_norm=none
                             torchattacks' CW-L2, c ×10 per round (minimum norm; unbounded unless max_norm)
  apgd-ce:iters=100,restarts=1              official AutoAttack APGD-CE
  apgd-t:iters=100,restarts=1,targets=9     official APGD-T (targeted DLR)
  square:queries=5000,restarts=1,p_init=0.8 official Square (query-based black box)
  autoattack:version=standard               official AutoAttack (pyautoattack)
  transfer:steps=20,alpha=ε/4,restarts=1    PGD crafted on --surrogate
  plugin:<name>[:KEY=VALUE,...]             an installed advkit attack (advkit plugins), e.g. plugin:n-fgsm
  torchattacks:<Name>[:KEY=VALUE,...]       any torchattacks attack
--list-attacks prints every option; docs/evaluation.md explains each attack."""


def _list_attacks(ctx: click.Context, param: Any, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from .evaluate import EVAL_ATTACKS

    for spec in EVAL_ATTACKS.values():
        click.echo(f"{spec.name}  [{spec.implementation}; norms {', '.join(spec.norms)}]  — {spec.help}")
        for option in spec.options:
            bounds = f" {option.range_text()}" if option.range_text() else ""
            click.echo(f"    {option.name}  {option.type_name()}{bounds}  default {option.default!s}  — {option.help}")
    _list_plugin_attacks()
    click.echo(
        "torchattacks:<Name>  [torchattacks]  — options as in its constructor "
        "(see advkit plugins show torchattacks:<Name>)"
    )
    ctx.exit()


def _list_plugin_attacks() -> None:
    """Installed advkit attacks as ``plugin:<name>``; one that fails to import is listed with its error."""
    from .attacks import supported_norms
    from .errors import PluginError
    from .registry import component_options, default_registry

    registry = default_registry()
    for entry in registry.entries("attack"):
        if entry.entry_point is None:
            continue
        where = f"plugin:{entry.name}  [{entry.distribution} {entry.version}"
        try:
            cls = registry.load("attack", entry.name)
        except PluginError as exc:
            click.echo(f"{where}]  — failed to load: {exc}")
            continue
        summary = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        click.echo(
            f"{where}; norms {', '.join(supported_norms(cls))}]  — {summary} "
            "(run in eval mode, --eps and --norm as given)"
        )
        for option in component_options(cls):
            if option.name not in ("eps", "norm"):
                bounds = f" {option.range_text()}" if option.range_text() else ""
                click.echo(
                    f"    {option.name}  {option.type_name()}{bounds}  default {option.default!s}  — {option.help}"
                )


def _set_threads(ctx: click.Context, param: Any, value: int | None) -> None:
    if value is None or ctx.resilient_parsing:
        return
    if value < 1:
        raise click.BadParameter(f"must be at least 1, got {value}")
    import torch

    torch.set_num_threads(value)


def _model_options(n_examples: int | None) -> Any:
    """Options every command that evaluates a trained model shares: which model, which examples, which threat."""
    decorators = [
        click.argument("target", type=click.Path()),
        click.option(
            "--n-examples",
            type=int,
            default=n_examples,
            show_default=n_examples is not None,
            help="seeded random subset of the test split" + ("" if n_examples else " [all]"),
        ),
        click.option("--batch-size", type=int, default=256, show_default=True),
        click.option(
            "--eps",
            type=NUMBER,
            default=None,
            help="attack radius, e.g. 8/255 [the run's --eps; needed with --norm L2]",
        ),
        click.option("--norm", type=click.Choice(["Linf", "L2"]), default=None, help="threat model [the run's --norm]"),
        click.option("--seed", type=int, default=0, show_default=True, help="seed of the subset and of the attacks"),
        click.option(
            "--wa", "averaged", is_flag=True, help="use the weight-averaged (EMA) model of a run trained with --wa"
        ),
        click.option(
            "--checkpoint",
            "which",
            type=click.Choice(["best", "last"]),
            default="best",
            show_default=True,
            help="which checkpoint of a run directory",
        ),
        click.option("--data-dir", type=click.Path(file_okay=False), default=None, help="dataset folder [the run's]"),
        click.option("--device", default="auto", show_default=True),
        click.option(
            "--threads",
            type=int,
            default=None,
            callback=_set_threads,
            expose_value=False,
            help="CPU threads of torch (intra-op) [torch's default: every core]",
        ),
    ]

    def decorate(function: Any) -> Any:
        for decorator in reversed(decorators):
            function = decorator(function)
        return function

    return decorate


def _check_model_options(n_examples: int | None, batch_size: int, eps: float | None, norm: str | None) -> None:
    if n_examples is not None and n_examples < 1:
        raise AdvkitError(f"--n-examples must be at least 1, got {n_examples}")
    if batch_size < 1:
        raise AdvkitError(f"--batch-size must be at least 1, got {batch_size}")
    if eps is not None and (eps < 0 or (norm == "Linf" and eps > 1)):
        raise AdvkitError(f"--eps must lie in [0, 1] for Linf (non-negative for L2), got {eps:g}")


def _check_outputs(**paths: str | None) -> None:
    """Output files are writable, checked before the work that fills them (not after an hour of attacks)."""
    from .rundir import check_output_file

    for flag, path in paths.items():
        if path:
            check_output_file(path, f"--{flag.replace('_', '-')}")


def _write_outputs(json_path: str | None, data: Any, markdown_path: str | None = None, markdown: str = "") -> None:
    from .checkpoint import atomic_write_text

    if json_path:
        atomic_write_text(json.dumps(data, indent=2) + "\n", json_path)
    if markdown_path:
        atomic_write_text(markdown, markdown_path)


_SURROGATE = click.option(
    "--surrogate",
    type=click.Path(),
    default=None,
    help="run directory or checkpoint to craft the transfer attack on (its best.pt)",
)
_JSON = click.option(
    "--json", "json_path", type=click.Path(dir_okay=False), default=None, help="write the results as JSON"
)
_MARKDOWN = click.option(
    "--markdown",
    "markdown_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="write the results as a Markdown table",
)
_QUIET = click.option("--quiet", is_flag=True, help="no progress bars")


@cli.command("eval", epilog=_ATTACKS_HELP)
@_model_options(n_examples=None)
@click.option(
    "--attack",
    "attacks",
    multiple=True,
    default=("clean", "pgd"),
    show_default=True,
    help="attack spec, repeatable (list below)",
)
@_SURROGATE
@_JSON
@_MARKDOWN
@_QUIET
@click.option(
    "--list-attacks",
    is_flag=True,
    is_eager=True,
    expose_value=False,
    callback=_list_attacks,
    help="list the evaluation attacks with all their options, and exit",
)
def evaluate(
    target: str,
    attacks: tuple[str, ...],
    n_examples: int | None,
    batch_size: int,
    eps: float | None,
    norm: str | None,
    seed: int,
    averaged: bool,
    which: str,
    data_dir: str | None,
    device: str,
    surrogate: str | None,
    json_path: str | None,
    markdown_path: str | None,
    quiet: bool,
) -> None:
    """Accuracy of TARGET (a run directory's best.pt, or a checkpoint file) under each attack, on the test split.

    Prints one row per attack and the worst case per example (an example counts as robust only if it
    survives every attack). AutoAttack, APGD and Square run through the official implementation.
    """
    from .evaluate import evaluate_checkpoint, format_markdown, format_table

    _check_model_options(n_examples, batch_size, eps, norm)
    _check_outputs(json=json_path, markdown=markdown_path)
    report = evaluate_checkpoint(
        target,
        list(attacks),
        n_examples=n_examples,
        batch_size=batch_size,
        eps=eps,
        norm=norm,
        seed=seed,
        averaged=averaged,
        which=which,
        data_dir=data_dir,
        device=device,
        surrogate=surrogate,
        progress=not quiet,
    )
    click.echo(format_table(report))
    _write_outputs(json_path, report, markdown_path, format_markdown(report) if markdown_path else "")


@cli.command()
@_model_options(n_examples=200)
@_SURROGATE
@click.option("--queries", type=int, default=1000, show_default=True, help="Square attack query budget")
@click.option(
    "--tolerance",
    type=NUMBER,
    default=0.02,
    show_default=True,
    help="accuracy slack (a fraction) allowed by the monotonicity and black-box checks",
)
@_JSON
@_MARKDOWN
@_QUIET
def sanity(
    target: str,
    n_examples: int | None,
    batch_size: int,
    eps: float | None,
    norm: str | None,
    seed: int,
    averaged: bool,
    which: str,
    data_dir: str | None,
    device: str,
    surrogate: str | None,
    queries: int,
    tolerance: float,
    json_path: str | None,
    markdown_path: str | None,
    quiet: bool,
) -> None:
    """Gradient-masking checks on TARGET; exit status 1 if any check fails.

    \b
    PASS/FAIL, with the numbers, for:
      input gradients         CE and CW-margin input gradients neither zero nor NaN/Inf
      unbounded attack        PGD with ε covering the whole image box drives accuracy to ~0
      accuracy vs ε           PGD accuracy non-increasing in ε (0.25ε … 4ε)
      accuracy vs PGD steps   non-increasing in the steps (1, 5, 20, 50)
      black box vs white box  Square (and transfer with --surrogate) not stronger than PGD
    A failure means gradient attacks under-report what the model can be fooled by (docs/evaluation.md).
    """
    from .sanity import SanitySettings, format_checks, format_checks_markdown, sanity_for_checkpoint

    _check_model_options(n_examples, batch_size, eps, norm)
    if queries < 1:
        raise AdvkitError(f"--queries must be at least 1, got {queries}")
    if not 0.0 <= tolerance < 1.0:
        raise AdvkitError(f"--tolerance must lie in [0, 1) (a fraction of accuracy), got {tolerance:g}")
    _check_outputs(json=json_path, markdown=markdown_path)
    report = sanity_for_checkpoint(
        target,
        SanitySettings(queries=queries, tolerance=tolerance),
        n_examples=n_examples,
        batch_size=batch_size,
        eps=eps,
        norm=norm,
        seed=seed,
        averaged=averaged,
        which=which,
        data_dir=data_dir,
        device=device,
        surrogate=surrogate,
        progress=not quiet,
    )
    click.echo(format_checks(report["checks"], report["header"]))
    data = {**report, "checks": [check.to_dict() for check in report["checks"]]}
    _write_outputs(
        json_path,
        data,
        markdown_path,
        format_checks_markdown(report["checks"], report["header"]) if markdown_path else "",
    )
    if not report["passed"]:
        sys.exit(1)


@cli.group()
def plot() -> None:
    """PNG figures: training curves of runs, calibration and entropy of a model."""


@plot.command("curves")
@click.argument("runs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option(
    "--out", type=click.Path(dir_okay=False), default="curves.png", show_default=True, help="PNG file to write"
)
@_JSON
def plot_curves(runs: tuple[str, ...], out: str, json_path: str | None) -> None:
    """Training curves of one or several RUNS (their metrics.jsonl).

    Panels: validation clean and robust accuracy per epoch (○ marks the best epoch; WA curves when the
    run kept a weight average), best-so-far minus current robust accuracy (robust overfitting), the
    training loss, and the learning rate as steps on a log axis. Prints best versus last validation
    robust accuracy per run.
    """
    from .plots import training_curves

    _check_outputs(out=out, json=json_path)
    summaries = training_curves(list(runs), out)
    for label, summary in summaries.items():
        click.echo(
            f"{label}: best val robust {100 * summary['best']:.2f}% (epoch {summary['best_epoch']}), "
            f"last {100 * summary['last']:.2f}% (epoch {summary['last_epoch']}), gap {100 * summary['gap']:.2f} points"
        )
    click.echo(f"wrote {out}")
    _write_outputs(json_path, summaries)


@plot.command("calibration")
@_model_options(n_examples=1000)
@click.option(
    "--attack",
    default="pgd",
    show_default=True,
    help="attack spec for the adversarial examples (see advkit eval --help)",
)
@click.option(
    "--ood",
    default=None,
    help="out-of-distribution dataset by name (e.g. fashion-mnist for a digits model); "
    "its images are resized and grey/RGB-converted to the model's input",
)
@click.option(
    "--bins", type=int, default=15, show_default=True, help="confidence bins of the ECE and reliability diagram"
)
@click.option(
    "--out-dir",
    type=click.Path(file_okay=False),
    default="calibration",
    show_default=True,
    help="folder for reliability.png and entropy.png",
)
@_JSON
@_QUIET
def plot_calibration(
    target: str,
    n_examples: int | None,
    batch_size: int,
    eps: float | None,
    norm: str | None,
    seed: int,
    averaged: bool,
    which: str,
    data_dir: str | None,
    device: str,
    attack: str,
    ood: str | None,
    bins: int,
    out_dir: str,
    json_path: str | None,
    quiet: bool,
) -> None:
    """Calibration and output entropy of TARGET on clean and adversarial test examples (ADR §3.2).

    Writes OUT_DIR/reliability.png (accuracy vs confidence, ECE) and OUT_DIR/entropy.png (entropy of
    correct vs wrong predictions; clean vs adversarial vs OOD), and prints ECE, mean confidence and
    entropy, and the mean Jensen-Shannon divergence between clean and adversarial outputs (nats).
    """
    from .analysis import analyse_checkpoint, format_analysis
    from .plots import entropy_histograms, reliability_diagram
    from .rundir import check_output_dir

    _check_model_options(n_examples, batch_size, eps, norm)
    if bins < 1:
        raise AdvkitError(f"--bins must be at least 1, got {bins}")
    _check_outputs(json=json_path)
    check_output_dir(out_dir, "--out-dir")
    analysis, report = analyse_checkpoint(
        target,
        attack,
        ood=ood,
        n_bins=bins,
        n_examples=n_examples,
        batch_size=batch_size,
        eps=eps,
        norm=norm,
        seed=seed,
        averaged=averaged,
        which=which,
        data_dir=data_dir,
        device=device,
        progress=not quiet,
    )
    report["figures"] = [
        str(reliability_diagram(analysis, Path(out_dir) / "reliability.png")),
        str(entropy_histograms(analysis, Path(out_dir) / "entropy.png")),
    ]
    click.echo(format_analysis(report))
    _write_outputs(json_path, report)


@cli.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path())
@click.option(
    "--csv",
    "csv_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="also write the table as CSV (mean, std, n per metric)",
)
@click.option(
    "--markdown",
    "markdown_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="also write the Markdown table to a file",
)
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="PNG: validation robust-accuracy curves with ±std bands, and a bar chart with error bars",
)
@click.option(
    "--include-unfinished",
    is_flag=True,
    help="also count runs that have not trained every epoch (still training, stopped, pruned), as they stand",
)
def summarize(
    runs: tuple[str, ...],
    csv_path: str | None,
    markdown_path: str | None,
    plot_path: str | None,
    include_unfinished: bool,
) -> None:
    """Mean ± std over seeds of RUNS (run directories, or folders searched for them), as a Markdown table.

    Runs are grouped by their config.yaml minus the seed (and data_dir, device, download, teacher_cache,
    checkpoint_every, threads, logger, log_interval, mlflow_uri). Columns: validation clean and robust accuracy at
    the best epoch, robust accuracy at the last epoch, their gap (robust overfitting), and the test results of each
    eval-best.json / eval-last.json that `advkit eval --json` wrote into a run; "test robust" is the worst case over
    the attacks evaluated, "test gap" best minus last. Accuracies in %, ± the sample std over seeds.
    Runs that have not trained every epoch are named under the table and not counted, unless
    --include-unfinished.
    """
    from .studies.summary import csv_table, markdown_table, plot_summary, summarize_runs

    _check_outputs(csv=csv_path, markdown=markdown_path, plot=plot_path)
    summary = summarize_runs(runs, include_unfinished=include_unfinished)
    if not summary.groups:
        raise AdvkitError(
            f"no run has trained every epoch yet ({', '.join(run.progress() for run in summary.unfinished)}); "
            "pass --include-unfinished to summarise them as they stand"
        )
    groups = summary.groups
    table = markdown_table(groups) + summary.note()
    click.echo(table, nl=False)
    if csv_path:
        _write_text(csv_table(groups), csv_path)
    if markdown_path:
        _write_text(table, markdown_path)
    if plot_path:
        click.echo(f"wrote {plot_summary(groups, plot_path)}")


def _write_text(text: str, path: str) -> None:
    from .checkpoint import atomic_write_text

    atomic_write_text(text, path)


@cli.command()
@click.argument("grid", type=click.Path(dir_okay=False))
@click.option("--out", type=click.Path(file_okay=False), default=None, help="study folder [the grid's out: setting]")
@click.option("--jobs", type=int, default=None, help="runs or evaluations at a time [the grid's jobs: setting, else 1]")
@click.option("--dry-run", is_flag=True, help="print every task and its state (done, resume, start) and exit")
@click.option(
    "--rows",
    default=None,
    help="comma-separated rows to run now, e.g. at,at-adr (their teachers train too) [every row]",
)
@click.option("--seeds", default=None, help="comma-separated seeds to run now, e.g. 0 [the grid's seeds]")
@click.option(
    "--skip-eval",
    type=click.Choice(["best", "last"]),
    multiple=True,
    help="leave this checkpoint's evaluation for a later call, e.g. a long AutoAttack (repeatable)",
)
def study(
    grid: str,
    out: str | None,
    jobs: int | None,
    dry_run: bool,
    rows: str | None,
    seeds: str | None,
    skip_eval: tuple[str, ...],
) -> None:
    """Train, evaluate and summarise every run of the GRID file; run it again to continue where it stopped.

    \b
    Each row of the grid trains at each seed into OUT/<row>/seed<k>, then `advkit eval` scores its best and
    last checkpoints into eval-best.json / eval-last.json, and OUT/summary.md, .csv and .png summarise
    the whole study. Finished runs are skipped, stopped ones resumed, a run whose teacher is another run
    waits for it. SIGTERM or Ctrl-C stops every child cleanly (each saves its last.pt).
    --rows, --seeds and --skip-eval run a part of the grid now and the rest later, in the same folders;
    the summary always covers every run of the grid that has finished an epoch.
    Logs: OUT/logs/. Grid format: docs/studies.md; example: examples/studies/fashion-mnist.yaml.
    """
    from .studies.driver import Selection, run_study
    from .studies.grid import load_study

    if jobs is not None and jobs < 1:
        raise AdvkitError(f"--jobs must be at least 1, got {jobs}")
    loaded = load_study(grid, out=out, jobs=jobs)
    selection = Selection(
        frozenset(_row_list(rows)) if rows is not None else None,
        frozenset(_seed_list(seeds)) if seeds is not None else None,
        frozenset(skip_eval),
    )
    status = run_study(loaded, click.echo, dry_run=dry_run, selection=selection)
    if status:
        sys.exit(status)


@cli.command()
@click.argument("space", type=click.Path(dir_okay=False))
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="sweep folder: trials/, logs/, study.db, summary.md/.csv, best.yaml, plots [runs/sweep-<SPACE's name>]",
)
@click.option(
    "--trials",
    type=int,
    default=20,
    show_default=True,
    help="trials of the study in all, over every worker and every run of the command",
)
@click.option("--timeout", type=NUMBER, default=None, help="seconds after which this command starts no new trial")
@click.option(
    "--storage",
    default=None,
    help="study database URL [sqlite:///OUT/study.db]; "
    "postgresql://USER:PASSWORD@HOST/DB lets workers on several machines share one study",
)
@click.option("--study-name", default=None, help="study in the storage [SPACE's file name without .yaml]")
@click.option("--workers", type=int, default=1, show_default=True, help="trials at a time on this machine")
@click.option("--threads", type=int, default=None, help="torch threads of each trial [cores / --workers]")
@click.option(
    "--pruner",
    default="median",
    show_default=True,
    help="median[:startup=5,warmup=0], hyperband[:min=1,reduction=3] or none",
)
@click.option(
    "--seeds",
    default=None,
    help="comma-separated seeds, e.g. 0,1,2: each trial trains at every seed and scores their mean [one run at seed 0]",
)
@click.option(
    "--heartbeat",
    type=int,
    default=60,
    show_default=True,
    help="seconds between a worker's signs of life; a trial silent for twice this is failed and re-queued",
)
def sweep(
    space: str,
    out: str | None,
    trials: int,
    timeout: float | None,
    storage: str | None,
    study_name: str | None,
    workers: int,
    threads: int | None,
    pruner: str,
    seeds: str | None,
    heartbeat: int,
) -> None:
    """Search the parameters of the SPACE file with Optuna; run it again to continue the study.

    \b
    Each trial trains the sampled configuration as an ordinary run directory, OUT/trials/<n> (or
    OUT/trials/<n>/seed<k> with --seeds), resumable with advkit train --resume. Its validation robust
    accuracy is reported to the pruner after every epoch; a pruned trial is stopped and saved. The
    sweep ends with OUT/summary.md and .csv (every trial), best.yaml (advkit train --config best.yaml
    reproduces the best trial) and Optuna's plots. Workers on other machines join with the same
    --storage and --study-name. A trial whose worker died (killed, machine lost) is marked failed and
    re-queued once its heartbeat is 2×--heartbeat old; the copy continues its run folder.
    Format and examples: docs/sweeps.md, examples/sweeps/.
    """
    import os

    from .rundir import check_output_dir
    from .sweeps.driver import SweepSettings, parse_pruner, run_sweep
    from .sweeps.space import load_sweep
    from .sweeps.storage import check_storage, check_study, default_storage, resolve_storage

    for flag, value, least in (
        ("--trials", trials, 1),
        ("--workers", workers, 1),
        ("--threads", threads, 1),
        ("--heartbeat", heartbeat, 1),
    ):
        if value is not None and value < least:
            raise AdvkitError(f"{flag} must be at least {least}, got {value}")
    if timeout is not None and timeout <= 0:
        raise AdvkitError(f"--timeout must be a positive number of seconds, got {timeout:g}")
    parse_pruner(pruner)
    seed_list = _seed_list(seeds) if seeds is not None else None
    loaded = load_sweep(space)
    out_dir = Path(out or f"runs/sweep-{Path(space).stem}")
    check_output_dir(out_dir, "--out")
    url = resolve_storage(storage or default_storage(out_dir))
    name = study_name or Path(space).stem
    if check_storage(url, out_dir):
        check_study(url, name, loaded.definition(seed_list))
    settings = SweepSettings(
        out_dir,
        url,
        name,
        trials,
        timeout,
        workers,
        threads or max(1, (os.cpu_count() or 1) // workers),
        pruner,
        seed_list,
        heartbeat,
    )
    status = run_sweep(loaded, settings, click.echo)
    if status:
        sys.exit(status)


def _seed_list(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise AdvkitError(f"--seeds expects comma-separated integers such as 0,1,2, got {text!r}") from None
    if not seeds or any(seed < 0 for seed in seeds) or len(set(seeds)) != len(seeds):
        raise AdvkitError(f"--seeds must list distinct non-negative integers such as 0,1,2, got {text!r}")
    return seeds


def _row_list(text: str) -> list[str]:
    rows = [part.strip() for part in text.split(",") if part.strip()]
    if not rows:
        raise AdvkitError(f"--rows expects comma-separated row names such as at,at-adr, got {text!r}")
    return rows


@cli.group(invoke_without_command=True)
@click.option("--check", is_flag=True, help="import every plugin to report broken ones; exit status 1 if any is")
@click.pass_context
def plugins(ctx: click.Context, check: bool) -> None:
    """List installed components (kind, name, distribution, version, status)."""
    if ctx.invoked_subcommand is not None:
        return
    from .registry import default_registry

    registry = default_registry()
    rows = []
    for entry in registry.entries():
        claimants = [e for e in registry.entries(entry.kind) if e.name == entry.name]
        status = "duplicate" if len(claimants) > 1 else ("installed" if not check else _load_status(registry, entry))
        rows.append((entry.kind, entry.name, entry.distribution, entry.version, status))
    headers = ("kind", "name", "distribution", "version", "status")
    widths = [max(len(str(row[i])) for row in rows + [headers]) for i in range(len(headers))]
    for row in [headers] + rows:
        click.echo("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    click.echo("torchattacks attacks are available as attack torchattacks:<Name> (e.g. torchattacks:APGD)")
    if not check:
        click.echo("status read from package metadata, nothing imported; advkit plugins --check imports each one")
    failing = [row for row in rows if row[4] == "duplicate" or row[4].startswith("broken")]
    if check and failing:
        click.echo(f"advkit: {len(failing)} of {len(rows)} components are broken or claimed twice", err=True)
        sys.exit(1)


def _load_status(registry: Any, entry: Any) -> str:
    try:
        registry.load(entry.kind, entry.name)
    except AdvkitError as exc:
        return f"broken: {str(exc).split(': ', 1)[-1]}"
    return "ok"


@plugins.command("show")
@click.argument("name")
def plugins_show(name: str) -> None:
    """Options of the component NAME (types, defaults, ranges, help)."""
    from .registry import GROUPS, component_options, default_registry

    registry = default_registry()
    kinds = [kind for kind in GROUPS if name in registry.names(kind)]
    if name.startswith("torchattacks:"):
        kinds = ["attack"]
    if not kinds:
        import difflib

        every = sorted({entry.name for entry in registry.entries()})
        close = difflib.get_close_matches(name, every, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise AdvkitError(f"no component named '{name}'{hint} (see advkit plugins)")
    for kind in kinds:
        entry = registry.find(kind, name)
        cls = registry.load(kind, name)
        click.echo(f"{kind} {name}  ({entry.distribution} {entry.version}, {entry.target})")
        doc = (cls.__doc__ or "").strip()
        if doc:
            click.echo("  " + doc.replace("\n", "\n  "))
        for attribute in ("needs_teacher", "default_attack", "default_rectifier"):
            if getattr(cls, attribute, None):
                click.echo(f"  {attribute.replace('_', ' ')}: {getattr(cls, attribute)}")
        options = component_options(cls)
        if not options:
            click.echo("  no options")
        for option in options:
            bounds = f" {option.range_text()}" if option.range_text() else ""
            click.echo(
                f"  -o {name}.{option.name}  {option.type_name()}{bounds}  default {option.default!s}  — {option.help}"
            )


def _lost_a_peer(exc: RuntimeError) -> bool:
    """A collective failed because another torchrun worker is gone (gloo and nccl word it differently)."""
    text = str(exc)
    return (
        type(exc).__name__ == "DistBackendError"
        or "Connection closed by peer" in text
        or "Connection reset by peer" in text
    )


def main() -> None:
    """Entry point: run the CLI, turning user errors into one line and exit status 2."""
    try:
        cli.main(prog_name="advkit", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.UsageError as exc:  # one line, like advkit's own errors, pointing at the right --help
        command = exc.ctx.command_path if exc.ctx is not None else "advkit"
        click.echo(f"advkit: error: {exc.format_message().rstrip('.')} (see {command} --help)", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):  # click turns Ctrl-C into Abort
        click.echo("advkit: interrupted; every file written so far is complete (writes are atomic)", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except AdvkitError as exc:
        click.echo(f"advkit: error: {exc}", err=True)
        sys.exit(exc.exit_status)
    except StoppedBySignal as exc:
        click.echo(f"advkit: {exc}", err=True)
        sys.exit(exc.exit_status)
    except RuntimeError as exc:
        if not _lost_a_peer(exc):
            raise
        click.echo(
            "advkit: error: another process of this run stopped or failed (its own message says why); "
            "this one ends too",
            err=True,
        )
        sys.exit(1)
