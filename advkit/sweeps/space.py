"""A sweep's SPACE.yaml: the base run, the parameters to search and the objective, checked before anything runs.

```yaml
base:                        # a run configuration: the keys of `advkit train --config` (no seed: --seeds)
  dataset: digits
  model: small-cnn
  rectifier: adr
  eps: 0.1
  epochs: 2
space:                       # parameter: how Optuna samples it
  lr: {type: float, low: 0.01, high: 0.2, log: true}
  epochs: {type: int, low: 2, high: 6}
  awp: {type: categorical, choices: [null, 0.005]}
  adr.temperature: {type: schedule, start: {low: 1.5, high: 4}, end: {low: 1, high: 2.5}}
  adr.interpolation: {type: schedule, start: 0.7, end: {low: 0.8, high: 1.0}, shape: linear}
objective: {metric: best_val_robust}      # last_val_robust, or {metric: mix, clean_weight: 0.3}
enqueue:                     # configurations tried first when the study is created (e.g. a paper's)
  - {adr.temperature: "2.5:2", adr.interpolation: "0.7:0.95"}
```

A parameter is a run setting (``lr``, ``awp``, ``rectifier``...) or a component option written
``component.option`` as in a config's ``options`` (``adr.temperature``, ``trades.beta``, ``attack.steps``).
A schedule parameter searches the two ends of a :class:`~advkit.options.Schedule` (either may be fixed).
Each parameter is tried at both ends of its range (every choice of a categorical one) through the same
checks a run makes, the run settings' and the components' declared options, so that a range the run
would reject is refused here rather than trials later.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import TrainConfig, config_from_mapping, normalise_options, select_components
from ..errors import AdvkitError
from ..options import Schedule, parse_float
from ..registry import default_registry
from ..studies.grid import check_keys, file_error, mapping_of, read_yaml
from ..studies.summary import NOT_CONFIGURATION
from .objective import Objective, parse_objective

if TYPE_CHECKING:
    from optuna.trial import Trial

SPACE_KEYS = ("base", "space", "objective", "enqueue")
RANGE_KEYS = ("low", "high", "log", "step")
KINDS = ("float", "int", "categorical", "schedule")
SETTINGS = tuple(item.name for item in dataclasses.fields(TrainConfig))
NOT_SEARCHED = {
    "seed": "seeds are given with --seeds, and a trial's value is their mean",
    "options": "name component options one by one, e.g. trades.beta or attack.steps",
}


def _number(source: Path, where: str, value: Any, integer: bool) -> float:
    if integer:
        if isinstance(value, bool) or not isinstance(value, int):
            raise file_error(source, f"{where} must be an integer, got {value!r}")
        return value
    try:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError
        number = parse_float(value)
    except ValueError:
        raise file_error(
            source, f"{where} must be a number (fractions such as 8/255 are accepted), got {value!r}"
        ) from None
    if number != number or number in (float("inf"), float("-inf")):
        raise file_error(source, f"{where} must be finite, got {value!r}")
    return number


@dataclass(frozen=True)
class Range:
    """Numbers from ``low`` to ``high``, both included: uniform, log-uniform, or on a grid of ``step``."""

    low: float
    high: float
    log: bool = False
    step: float | None = None
    integer: bool = False

    @classmethod
    def parse(cls, source: Path, where: str, spec: dict[str, Any], integer: bool) -> Range:
        if "low" not in spec or "high" not in spec:
            raise file_error(source, f"{where} needs low and high")
        low, high = (_number(source, f"{where}.{key}", spec[key], integer) for key in ("low", "high"))
        log = spec.get("log", False)
        if not isinstance(log, bool):
            raise file_error(source, f"{where}.log must be true or false, got {log!r}")
        if low >= high:
            raise file_error(
                source, f"{where}: low ({low:g}) must be below high ({high:g}); a fixed value belongs in base"
            )
        if log and low <= 0:
            raise file_error(source, f"{where}: a log range needs low > 0, got {low:g}")
        step = spec.get("step")
        if step is not None:
            step = _number(source, f"{where}.step", step, integer)
            if step <= 0 or log:
                raise file_error(source, f"{where}.step must be positive, and cannot be combined with log")
        return cls(low, high, log, step, integer)

    def suggest(self, trial: Trial, axis: str) -> float:
        if self.integer:
            return trial.suggest_int(axis, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(axis, self.low, self.high, step=self.step, log=self.log)

    def contains(self, value: Any) -> bool:
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or (self.integer and not isinstance(value, int))
        ):
            return False
        return self.low <= value <= self.high

    def to_dict(self) -> dict[str, Any]:
        return {"low": self.low, "high": self.high, "log": self.log, "step": self.step}


@dataclass(frozen=True)
class Parameter:
    """One searched setting: its Optuna parameters (``axes``) and how their values become the setting's value.

    ``kind`` float and int have one axis, the parameter's own name; categorical has ``choices``; a schedule
    has the axes ``NAME.start`` and ``NAME.end``, or one of them when the other end is ``fixed``.
    """

    name: str
    kind: str
    axes: dict[str, Range] = field(default_factory=dict)
    choices: tuple[Any, ...] = ()
    fixed: dict[str, float] = field(default_factory=dict)
    shape: str = "cosine"

    def axis_names(self) -> list[str]:
        """The names of its Optuna parameters."""
        return [self.name] if self.kind == "categorical" else list(self.axes)

    def value(self, params: Mapping[str, Any]) -> Any:
        """The setting's value from the Optuna parameters of a trial."""
        if self.kind != "schedule":
            return params[self.name]
        ends = [params.get(f"{self.name}.{end}", self.fixed.get(end)) for end in ("start", "end")]
        return ":".join(repr(float(end)) for end in ends) + ("" if self.shape == "cosine" else f":{self.shape}")

    def extremes(self) -> list[Any]:
        """The values a run must accept for every trial to be valid: both ends of each range, each choice."""
        if self.kind == "categorical":
            return list(self.choices)
        corners = [
            {axis: getattr(axis_range, end) for axis, axis_range in self.axes.items()} for end in ("low", "high")
        ]
        return [self.value(corner) for corner in corners]

    def params_of(self, source: Path, value: Any) -> dict[str, Any]:
        """The Optuna parameters that give the setting ``value`` (an ``enqueue`` entry), checked against the space."""
        where = f"enqueue: {self.name}"
        if self.kind == "categorical":
            if value not in self.choices:
                raise file_error(source, f"{where}: {value!r} is not one of the choices {list(self.choices)}")
            return {self.name: value}
        if self.kind != "schedule":
            if not self.axes[self.name].contains(value):
                raise file_error(source, f"{where}: {value!r} lies outside the range {self.axes[self.name].to_dict()}")
            return {self.name: value}
        try:
            schedule = Schedule.parse(value)
        except ValueError as exc:
            raise file_error(source, f"{where}: {value!r} is not a schedule such as 2.5:2 ({exc})") from None
        params = {}
        for end, number in (("start", schedule.start), ("end", schedule.end)):
            axis = f"{self.name}.{end}"
            if axis in self.axes:
                if not self.axes[axis].contains(number):
                    raise file_error(source, f"{where}: its {end} {number:g} lies outside {self.axes[axis].to_dict()}")
                params[axis] = number
            elif number != self.fixed[end]:
                raise file_error(source, f"{where}: its {end} {number:g} differs from the fixed {self.fixed[end]:g}")
        if schedule.shape != self.shape and schedule.start != schedule.end:
            raise file_error(source, f"{where}: shape {schedule.shape} differs from the space's {self.shape}")
        return params

    def to_dict(self) -> dict[str, Any]:
        """The parameter as a study records it, to tell a changed space from the same one."""
        if self.kind == "categorical":
            return {"name": self.name, "type": self.kind, "choices": list(self.choices)}
        return {
            "name": self.name,
            "type": self.kind,
            "shape": self.shape if self.kind == "schedule" else None,
            "axes": {axis: value.to_dict() for axis, value in self.axes.items()},
            "fixed": self.fixed,
        }


def _check_name(source: Path, name: Any) -> str:
    if not isinstance(name, str) or not name.strip():
        raise file_error(source, f"parameter name {name!r} must be a run setting or component.option")
    if "." in name:
        prefix, _, option = name.partition(".")
        if not prefix or not option:
            raise file_error(source, f"parameter '{name}' must be written component.option, e.g. trades.beta")
        return name
    if name in NOT_SEARCHED:
        raise file_error(source, f"parameter '{name}' cannot be searched: {NOT_SEARCHED[name]}")
    if name not in SETTINGS:
        close = difflib.get_close_matches(name, SETTINGS, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise file_error(
            source,
            f"unknown parameter '{name}'{hint} (a run setting such as lr or awp, or a component "
            "option written component.option such as adr.temperature)",
        )
    return name


def parse_parameter(source: Path, name: Any, spec: Any) -> Parameter:
    """One entry of ``space:``; its shape is checked here, its values against the run in :meth:`Sweep.check`."""
    name = _check_name(source, name)
    where = f"space.{name}"
    spec = mapping_of(source, where, spec)
    kind = spec.get("type")
    if kind not in KINDS:
        raise file_error(source, f"{where}.type must be one of {', '.join(KINDS)}, got {kind!r}")
    if kind in ("float", "int"):
        check_keys(source, where, spec, ("type", *RANGE_KEYS))
        return Parameter(name, kind, axes={name: Range.parse(source, where, spec, kind == "int")})
    if kind == "categorical":
        check_keys(source, where, spec, ("type", "choices"))
        choices = spec.get("choices")
        scalars = (str, int, float, bool, type(None))
        if not isinstance(choices, list) or not choices or not all(isinstance(item, scalars) for item in choices):
            raise file_error(source, f"{where}.choices must be a non-empty list of numbers, strings, booleans or null")
        if len({json.dumps(item) for item in choices}) != len(choices):
            raise file_error(source, f"{where}.choices lists a value twice: {choices}")
        return Parameter(name, kind, choices=tuple(choices))
    check_keys(source, where, spec, ("type", "start", "end", "shape"))
    shape = spec.get("shape", "cosine")
    if shape not in Schedule.SHAPES:
        raise file_error(source, f"{where}.shape must be one of {', '.join(Schedule.SHAPES)}, got {shape!r}")
    axes, fixed = {}, {}
    for end in ("start", "end"):
        if end not in spec:
            raise file_error(source, f"{where} needs {end}: a number, or a range such as {{low: 1, high: 3}}")
        if isinstance(spec[end], dict):
            check_keys(source, f"{where}.{end}", spec[end], RANGE_KEYS)
            axes[f"{name}.{end}"] = Range.parse(source, f"{where}.{end}", spec[end], integer=False)
        else:
            fixed[end] = _number(source, f"{where}.{end}", spec[end], integer=False)
    if not axes:
        raise file_error(source, f"{where}: both ends are fixed; a fixed schedule belongs in base")
    return Parameter(name, kind, axes=axes, fixed=fixed, shape=shape)


@dataclass
class Sweep:
    """A parsed space file: the base run, the parameters, the objective and the configurations to try first."""

    source: Path
    base: dict[str, Any]
    parameters: list[Parameter]
    objective: Objective
    enqueue: list[dict[str, Any]] = field(default_factory=list)

    def values(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """``{parameter: setting value}`` from a trial's Optuna parameters."""
        return {parameter.name: parameter.value(params) for parameter in self.parameters}

    def sample(self, trial: Trial) -> dict[str, Any]:
        """Ask Optuna for every parameter of ``trial`` (a re-queued or enqueued trial gets its stored values)."""
        params = {}
        for parameter in self.parameters:
            if parameter.kind == "categorical":
                params[parameter.name] = trial.suggest_categorical(parameter.name, parameter.choices)
            for axis, axis_range in parameter.axes.items():
                params[axis] = axis_range.suggest(trial, axis)
        return self.values(params)

    def settings(self, values: Mapping[str, Any], seed: int | None = None) -> dict[str, Any]:
        """The settings mapping of one run: the base, each parameter's value (component options merged into
        ``options``) and the seed."""
        settings = {key: value for key, value in self.base.items() if key != "options"}
        options = normalise_options(self.base.get("options") or {}, str(self.source))
        for name, value in values.items():
            if "." in name:
                prefix, _, option = name.partition(".")
                options.setdefault(prefix, {})[option] = value
            else:
                settings[name] = value
        settings["options"] = options
        if seed is not None:
            settings["seed"] = seed
        return settings

    def config(self, values: Mapping[str, Any], seed: int | None = None) -> TrainConfig:
        """The validated run configuration of one trial at one seed."""
        config = config_from_mapping(self.settings(values, seed), str(self.source))
        config.validate()
        return config

    def check(self) -> None:
        """Build the run of every extreme value through the checks a run makes (settings, selected components,
        option declarations and bounds); one line naming the parameter and value that fails."""
        from torch import nn

        registry = default_registry()

        def attempt(values: dict[str, Any], what: str) -> None:
            try:
                select_components(self.config(values), registry).build(nn.Linear(2, 2))
            except AdvkitError as exc:
                message = str(exc).removeprefix(f"{self.source}: ")
                raise file_error(self.source, f"{what}: {message}") from None

        attempt({}, "base")
        for parameter in self.parameters:
            for value in parameter.extremes():
                attempt({parameter.name: value}, f"parameter '{parameter.name}' at {value!r}")
        reference = {parameter.name: parameter.extremes()[0] for parameter in self.parameters}
        for parameter in [item for item in self.parameters if item.kind == "categorical"] or self.parameters[:1]:
            for value in parameter.extremes():  # every choice with the others' values: a rectifier with its options
                together = {**reference, parameter.name: value}
                attempt(together, "parameters " + ", ".join(f"{name}={item!r}" for name, item in together.items()))

    def definition(self, seeds: Sequence[int] | None) -> dict[str, Any]:
        """What a study records of its sweep, to refuse a changed one under the same name: the base (less the
        settings that do not change a run), the parameters, the objective and the seeds."""
        base = {key: value for key, value in self.config({}).to_dict().items() if key not in NOT_CONFIGURATION}
        definition = {
            "base": base,
            "space": [parameter.to_dict() for parameter in self.parameters],
            "objective": self.objective.to_dict(),
            "seeds": list(seeds) if seeds is not None else None,
        }
        return json.loads(json.dumps(definition))


def load_sweep(path: str | Path) -> Sweep:
    """Read and check a space file; every mistake is one line naming the file and the place."""
    source = Path(path)
    data = mapping_of(source, "the space file", read_yaml(source, "sweep space file"))
    check_keys(source, "the space file", data, SPACE_KEYS)
    base = mapping_of(source, "base", data.get("base"))
    if "seed" in base:
        raise file_error(source, "base sets 'seed'; give the seeds with --seeds (default 0)")
    space = mapping_of(source, "space", data.get("space"))
    if not space:
        raise file_error(
            source, "'space' is empty: name a parameter, e.g. space: {lr: {type: float, low: 0.01, high: 0.2}}"
        )
    parameters = [parse_parameter(source, name, spec) for name, spec in space.items()]
    sweep = Sweep(
        source, base, parameters, parse_objective(source, mapping_of(source, "objective", data.get("objective")))
    )
    sweep.check()
    entries = data.get("enqueue") or []
    if not isinstance(entries, list):
        raise file_error(source, "enqueue must be a list of {parameter: value} mappings")
    by_name = {parameter.name: parameter for parameter in parameters}
    for index, entry in enumerate(entries):
        entry = mapping_of(source, f"enqueue[{index}]", entry)
        params: dict[str, Any] = {}
        for name, value in entry.items():
            if name not in by_name:
                raise file_error(source, f"enqueue[{index}] names '{name}', which is not a parameter of the space")
            params.update(by_name[name].params_of(source, value))
        sweep.enqueue.append(params)
    return sweep
