"""Run configuration: CLI flags and YAML files become one validated ``TrainConfig``.

``config.yaml`` in a run directory is this object with every component option resolved, so a run can
be repeated from it alone (``advkit train --config runs/x/config.yaml``).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import pydantic
import yaml

from .components import Configurable
from .errors import AdvkitError, OptionError
from .options import NORMS, parse_float, plain
from .registry import Registry, build_attack, component_options, foreign_attack_options
from .weight_perturbation import AWP_VARIANTS

ROLES = ("rectifier", "attack", "objective")
SEED_LIMIT = 2**32
DEFAULT_LINF_EPS = 8 / 255
SOFTWARE_RECORD_KEY = "software"  # advkit.software.RECORD_KEY (kept here too: config must not import torch)


@dataclass(frozen=True)
class Expects:
    """What a setting's value must be, in words, for error messages (metadata of the types below)."""

    text: str


def _number(value: Any) -> Any:
    """Numbers as YAML gives them, and strings such as ``8/255``; booleans are not numbers."""
    if isinstance(value, bool):
        raise ValueError("a boolean is not a number")
    return parse_float(value) if isinstance(value, str) else value


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("must be finite")
    return value


# Setting types: strict (no "64" for an integer, no 2.5 for epochs, no "maybe" for a flag) and finite.
Integer = Annotated[pydantic.StrictInt, Expects("an integer")]
Number = Annotated[
    float,
    pydantic.BeforeValidator(_number),
    pydantic.AfterValidator(_finite),
    Expects("a finite number (fractions such as 8/255 are accepted)"),
]
Flag = Annotated[pydantic.StrictBool, Expects("true or false")]
Text = Annotated[pydantic.StrictStr, Expects("a string")]
CountOrFraction = Annotated[pydantic.StrictInt | Number, Expects("a count (integer) or a fraction in [0, 1)")]
Epochs = Annotated[list[Number], Expects("a list of epoch numbers, e.g. [100, 150]")]
ComponentOptions = Annotated[
    dict[pydantic.StrictStr, dict[pydantic.StrictStr, Any]], Expects("a mapping such as {trades: {beta: 6}}")
]
LoggerNames = Annotated[list[pydantic.StrictStr], Expects("a list of logger names, e.g. [tensorboard, csv]")]
LR_SCHEDULES = ("piecewise", "cosine", "constant")
AMP_MODES = ("off", "bf16", "fp16")
LOGGERS = ("tensorboard", "csv", "wandb", "mlflow")  # advkit.tracking.BACKENDS
# Where a run's metrics are sent, not what the run computes: they may change on --resume, and runs that
# differ only in them are one configuration (advkit summarize, advkit study).
TRACKING_SETTINGS = frozenset({"logger", "log_interval", "mlflow_uri"})


@dataclass
class TrainConfig:
    """Everything a training run depends on. Field names are the CLI flags with '-' → '_'."""

    dataset: Text = "cifar10"
    data_dir: Text = "data"
    download: Flag = False
    model: Text = "resnet18"
    objective: Text = "at"
    rectifier: Text | None = None
    attack: Text | None = None
    teacher: Text | None = None
    teacher_arch: Text | None = None
    teacher_cache: Text | None = None
    eps: Number | None = None
    norm: Text = "Linf"
    epochs: Integer = 10
    batch_size: Integer = 128
    lr: Number = 0.1
    momentum: Number = 0.9
    nesterov: Flag = False
    weight_decay: Number = 5e-4
    lr_schedule: Text = "piecewise"
    lr_milestones: Epochs | None = None
    lr_gamma: Number = 0.1
    lr_warmup: Number = 0.0
    val_size: CountOrFraction | None = None
    train_size: Integer | None = None
    split_seed: Integer | None = None
    val_steps: Integer = 10
    wa: Number | None = None
    select: Text = "model"
    awp: Number | None = None
    awp_variant: Text = "official"
    awp_warmup: Integer = 0
    seed: Integer = 0
    device: Text = "auto"
    threads: Integer | None = None
    amp: Text = "off"
    channels_last: Flag = False
    checkpoint_every: Integer | None = None
    sync_bn: Flag = False
    compile: Flag = False
    extra_data: Text | None = None
    extra_fraction: Number | None = None
    logger: LoggerNames = field(default_factory=list)
    log_interval: Integer = 0
    mlflow_uri: Text | None = None
    options: ComponentOptions = field(default_factory=dict)

    def validate(self) -> None:
        """Types (the schema) and ranges of the run-level settings; component options are the components' job.

        An unset ``eps`` becomes the ℓ∞ default 8/255; under ℓ2 it must be given (its scale differs).
        """
        check_types(dataclasses.asdict(self), None)
        if self.norm not in NORMS:
            raise AdvkitError(f"--norm must be one of {', '.join(NORMS)}, got {self.norm!r}")
        if self.eps is None:
            if self.norm != "Linf":
                raise AdvkitError(
                    f"--norm {self.norm} needs --eps: an ℓ2 radius in pixel units of images in [0, 1], e.g. 0.5 on "
                    "CIFAR-10 (the default 8/255 is an ℓ∞ radius)"
                )
            self.eps = DEFAULT_LINF_EPS
        checks = [
            (
                self.eps >= 0.0 and (self.norm != "Linf" or self.eps <= 1.0),
                "--eps must lie in [0, 1] for Linf (pixel units, e.g. 8/255) and be non-negative for L2, "
                f"got {self.eps:g}",
            ),
            (self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}"),
            (0 <= self.seed < SEED_LIMIT, f"--seed must lie in [0, 2^32), got {self.seed}"),
            (self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}"),
            (self.lr > 0, f"--lr must be positive, got {self.lr:g}"),
            (0.0 <= self.momentum < 1.0, f"--momentum must lie in [0, 1), got {self.momentum:g}"),
            (self.weight_decay >= 0, f"--weight-decay must be non-negative, got {self.weight_decay:g}"),
            (
                self.lr_schedule in LR_SCHEDULES,
                f"--lr-schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}",
            ),
            (0.0 < self.lr_gamma <= 1.0, f"--lr-gamma must lie in (0, 1], got {self.lr_gamma:g}"),
            (self.lr_warmup >= 0, f"--lr-warmup must be non-negative (epochs), got {self.lr_warmup:g}"),
            (self.threads is None or self.threads >= 1, f"--threads must be at least 1, got {self.threads}"),
            (
                self.checkpoint_every is None or self.checkpoint_every >= 1,
                f"--checkpoint-every must be at least 1 (optimizer steps), got {self.checkpoint_every}",
            ),
            (
                self.extra_fraction is None or 0.0 < self.extra_fraction < 1.0,
                "--extra-fraction must lie in (0, 1) (the generated share of every batch, e.g. 0.7), "
                f"got {self.extra_fraction}",
            ),
            (self.extra_fraction is None or self.extra_data is not None, "--extra-fraction needs --extra-data PATH"),
            (
                self.train_size is None or self.train_size >= 1,
                f"--train-size must be at least 1, got {self.train_size}",
            ),
            (
                self.split_seed is None or 0 <= self.split_seed < SEED_LIMIT,
                f"--split-seed must lie in [0, 2^32), got {self.split_seed}",
            ),
            (self.val_steps >= 0, f"--val-steps must be non-negative, got {self.val_steps}"),
            (
                self.wa is None or 0.0 < self.wa < 1.0,
                f"--wa must lie in (0, 1) (an EMA decay such as 0.995), got {self.wa}",
            ),
            (self.select in ("model", "wa"), f"--select must be 'model' or 'wa', got {self.select!r}"),
            (self.select == "model" or self.wa is not None, "--select wa needs --wa DECAY"),
            (
                self.awp is None or self.awp > 0,
                f"--awp must be positive (a relative weight-perturbation size such as 0.01), got {self.awp}",
            ),
            (
                self.awp_variant in AWP_VARIANTS,
                f"--awp-variant must be one of {', '.join(AWP_VARIANTS)}, got {self.awp_variant!r}",
            ),
            (self.awp_warmup >= 0, f"--awp-warmup must be non-negative (epochs without AWP), got {self.awp_warmup}"),
            (
                self.awp is None or self.amp != "fp16",
                "--awp cannot be combined with --amp fp16 (loss-scaled gradients would set the perturbation); "
                "use --amp bf16 or off",
            ),
            (self.amp in AMP_MODES, f"--amp must be one of {', '.join(AMP_MODES)}, got {self.amp!r}"),
            (
                self.device in ("auto", "cpu") or self.device.startswith("cuda"),
                f"--device must be auto, cpu or cuda[:N], got {self.device!r}",
            ),
            (
                all(name in LOGGERS for name in self.logger),
                f"--logger takes {', '.join(LOGGERS)} (comma-separated), got {', '.join(map(repr, self.logger))}",
            ),
            (len(set(self.logger)) == len(self.logger), f"--logger names a logger twice: {', '.join(self.logger)}"),
            (
                self.log_interval >= 0,
                f"--log-interval must be non-negative (optimizer steps; 0 is off), got {self.log_interval}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise AdvkitError(message)
        if self.lr_milestones is not None and any(m <= 0 for m in self.lr_milestones):
            raise AdvkitError(f"--lr-milestones must be positive epoch numbers, got {self.lr_milestones}")

    def to_dict(self) -> dict[str, Any]:
        return {key: _plain_tree(value) for key, value in dataclasses.asdict(self).items()}


def _plain_tree(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _plain_tree(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain_tree(item) for item in value]
    return plain(value)


_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
# A setting's default is also the value it had before it existed: configs written by older versions lack it.
SETTING_DEFAULTS = {f.name: f.default for f in _FIELDS.values() if f.default is not dataclasses.MISSING}
_SCHEMA = pydantic.TypeAdapter(TrainConfig)


def check_types(values: Mapping[str, Any], source: str | None) -> TrainConfig:
    """Validate ``values`` against TrainConfig's field types; one-line AdvkitError naming the first bad one.

    ``source`` names a file ("FILE: setting 'epochs' …"); ``None`` names command-line flags ("--epochs …").
    """
    try:
        return _SCHEMA.validate_python(dict(values))
    except pydantic.ValidationError as exc:
        error = exc.errors()[0]
        name = str(error["loc"][0]) if error["loc"] else "?"
        where = f"--{name.replace('_', '-')}" if source is None else f"{source}: setting '{name}'"
        got = _describe_input(values.get(name, error.get("input")))
        if error["type"] == "value_error" and "finite" in error["msg"]:
            raise AdvkitError(f"{where} must be a finite number, got {got}") from None
        raise AdvkitError(f"{where} expects {_EXPECTS.get(name, 'another value')}, got {got}") from None


def _describe_input(value: Any) -> str:
    kind = "" if isinstance(value, (str, int, float)) and not isinstance(value, bool) else f" ({type(value).__name__})"
    return f"{value!r}{kind}"


def _expects_of(hint: Any) -> str | None:
    """The ``Expects`` text of a field type, looking through ``X | None``."""
    for item in getattr(hint, "__metadata__", ()):
        if isinstance(item, Expects):
            return item.text
    for arg in typing.get_args(hint):
        found = _expects_of(arg) if arg is not type(None) else None
        if found:
            return found
    return None


_EXPECTS = {
    name: text
    for name, hint in typing.get_type_hints(TrainConfig, include_extras=True).items()
    if (text := _expects_of(hint)) is not None
}


def config_from_mapping(data: Mapping[str, Any], source: str) -> TrainConfig:
    """Build a config from a YAML mapping: unknown keys get a suggestion, values are checked by the schema."""
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key == SOFTWARE_RECORD_KEY:  # what wrote the file (config.yaml of a run), not a setting
            continue
        name = str(key).replace("-", "_")
        if name not in _FIELDS:
            close = difflib.get_close_matches(name, list(_FIELDS), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise AdvkitError(f"{source}: unknown setting '{key}'{hint}")
        values[name] = value
    if "options" in values:
        values["options"] = normalise_options(values["options"] or {}, source)
    return check_types(values, source)


def load_config_file(path: str | Path) -> TrainConfig:
    """A ``--config`` YAML file (or a run's ``config.yaml``) as a TrainConfig, with one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise AdvkitError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (UnicodeDecodeError, OSError) as exc:
        raise AdvkitError(f"config file {path} is not readable UTF-8 text: {exc}") from None
    except yaml.YAMLError as exc:
        raise AdvkitError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise AdvkitError(f"config file {path} must hold a mapping of settings, got {type(data).__name__}")
    return config_from_mapping(data, str(path))


def normalise_options(raw: Mapping[str, Any], source: str) -> dict[str, dict[str, Any]]:
    """Accept ``{"trades.beta": 6}`` and ``{"trades": {"beta": 6}}`` alike → ``{"trades": {"beta": 6}}``."""
    result: dict[str, dict[str, Any]] = {}
    if not isinstance(raw, Mapping):
        raise AdvkitError(f"{source}: 'options' must be a mapping such as {{trades.beta: 6}}")
    for key, value in raw.items():
        if isinstance(value, Mapping):
            result.setdefault(str(key), {}).update({str(k): v for k, v in value.items()})
        elif "." in str(key):
            prefix, option = str(key).split(".", 1)
            result.setdefault(prefix, {})[option] = value
        else:
            raise AdvkitError(f"{source}: option '{key}' must be written component.key (e.g. trades.beta)")
    return result


def parse_option_flags(flags: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """``-o trades.beta=6 -o attack.steps=5`` → ``{"trades": {"beta": "6"}, "attack": {"steps": "5"}}``."""
    result: dict[str, dict[str, Any]] = {}
    for flag in flags:
        key, sep, value = flag.partition("=")
        prefix, dot, option = key.strip().partition(".")
        if not sep or not dot or not prefix or not option:
            raise AdvkitError(f"-o {flag!r}: expected component.option=value, e.g. -o trades.beta=6")
        result.setdefault(prefix, {})[option] = value.strip()
    return result


def merge_options(
    base: Mapping[str, Mapping[str, Any]], override: Mapping[str, Mapping[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Option values of ``override`` win key by key (``-o`` flags over a YAML file's ``options``)."""
    merged = {prefix: dict(values) for prefix, values in base.items()}
    for prefix, values in override.items():
        merged.setdefault(prefix, {}).update(values)
    return merged


@dataclass
class Components:
    """The selected component classes and the raw option values routed to each role."""

    names: dict[str, str]
    classes: dict[str, type]
    options: dict[str, dict[str, Any]]

    def build(self, model: Any) -> dict[str, Any]:
        """Instantiate the three components (options are validated here)."""
        return {
            "rectifier": self.classes["rectifier"](**self.options["rectifier"]),
            "objective": self.classes["objective"](**self.options["objective"]),
            "attack": build_attack(self.classes["attack"], model, self.options["attack"]),
        }

    def resolved_options(self, built: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        """The option values in force per role, defaults included, for config.yaml (enough to re-run)."""
        resolved = {}
        for role, component in built.items():
            if isinstance(component, Configurable):
                resolved[role] = component.resolved_options()
            else:  # a torchattacks attack: its keyword arguments
                values = foreign_attack_options(self.classes[role], self.options[role])
                resolved[role] = {key: plain(value) for key, value in values.items()}
        return resolved


def select_components(config: TrainConfig, registry: Registry) -> Components:
    """Load the chosen plugins and route ``options`` prefixes (role or component name) to roles."""
    objective_cls = registry.load("objective", config.objective)
    names = {
        "objective": config.objective,
        "rectifier": config.rectifier or objective_cls.default_rectifier,
        "attack": config.attack or objective_cls.default_attack,
    }
    classes = {
        "objective": objective_cls,
        "rectifier": registry.load("rectifier", names["rectifier"]),
        "attack": registry.load("attack", names["attack"]),
    }
    options: dict[str, dict[str, Any]] = {role: {} for role in ROLES}
    if config.attack is None:
        options["attack"].update(objective_cls.default_attack_options)
    attack_keys = {option.name for option in component_options(classes["attack"])}
    _check_norm_support(names["attack"], classes["attack"], config.norm)
    if "eps" in attack_keys:  # in the units of --norm, which the attack supports (checked above)
        options["attack"]["eps"] = config.eps
    if "norm" in attack_keys:
        options["attack"]["norm"] = config.norm
    if "bn_mode" in attack_keys:  # the official code's mode in training; eval is the default outside it
        options["attack"].setdefault("bn_mode", getattr(classes["attack"], "training_bn_mode", "eval"))
    for prefix, values in config.options.items():
        _route(prefix, values, names, classes, options)
    if "norm" in attack_keys and options["attack"]["norm"] != config.norm:
        raise AdvkitError(
            f"attack option norm={options['attack']['norm']} differs from the run's --norm {config.norm}: "
            "set the threat model with --norm (it also drives validation and advkit eval)"
        )
    return Components(names, classes, options)


def _check_norm_support(name: str, attack_class: type, norm: str) -> None:
    """An advkit attack declares its norms (its ``norm`` option); a torchattacks attack keeps its own."""
    from .attacks import Attack, supported_norms

    if (
        isinstance(attack_class, type)
        and issubclass(attack_class, Attack)
        and norm not in supported_norms(attack_class)
    ):
        raise AdvkitError(
            f"attack '{name}' supports --norm {' and '.join(supported_norms(attack_class))} only, not "
            f"{norm}; choose an attack that does (pgd, fgsm, trades-kl) or --norm Linf"
        )


def _route(
    prefix: str,
    values: Mapping[str, Any],
    names: dict[str, str],
    classes: dict[str, type],
    options: dict[str, dict[str, Any]],
) -> None:
    if prefix in ROLES:
        options[prefix].update(values)
        return
    roles = [role for role in ROLES if names[role] == prefix]
    if not roles:
        selected = ", ".join(f"{role} {names[role]}" for role in ROLES)
        raise OptionError(
            f"option prefix '{prefix}' matches no selected component (selected: {selected}; "
            "prefixes may also be rectifier, attack or objective)"
        )
    for key, value in values.items():
        owners = [role for role in roles if key in {o.name for o in component_options(classes[role])}]
        if not owners:
            owners = roles[:1]  # let that component report the unknown key with its valid options
        for role in owners:
            options[role][key] = value
