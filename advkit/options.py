"""Typed component options: one declaration drives the CLI, YAML configs, validation and the docs.

A component lists its options as ``Option`` objects; values arrive as strings (CLI ``-o name.key=value``)
or YAML scalars and are converted and checked here, so every plugin gets the same syntax and the same
error messages for free.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import OptionError

_FRACTION = re.compile(r"^\s*([-+]?[0-9.eE+-]+)\s*/\s*([0-9.eE+-]+)\s*$")

NORMS = ("Linf", "L2")  # the threat models: attacks, training, validation and evaluation share these names


def parse_float(text: Any) -> float:
    """Parse a float, accepting fractions such as ``8/255`` (the usual way to write ε)."""
    if isinstance(text, bool):
        raise ValueError("expected a number, got a boolean")
    if isinstance(text, (int, float)):
        return float(text)
    match = _FRACTION.match(str(text))
    if match:
        denominator = float(match.group(2))
        if denominator == 0:
            raise ValueError(f"{str(text).strip()!r} divides by zero")
        return float(match.group(1)) / denominator
    return float(str(text).strip())


@dataclass(frozen=True)
class Schedule:
    """A value annealed from ``start`` to ``end`` over training, stepped per iteration.

    Written ``start:end`` (cosine, the default) or ``start:end:linear``; a single number is constant.
    ``at(t)`` with t = iteration / total iterations in [0, 1] gives start at t = 0 and end at t = 1.
    """

    start: float
    end: float
    shape: str = "cosine"

    SHAPES = ("cosine", "linear")

    @classmethod
    def parse(cls, text: Any) -> Schedule:
        if isinstance(text, Schedule):
            return text
        if isinstance(text, (int, float)) and not isinstance(text, bool):
            return cls(float(text), float(text))
        parts = str(text).split(":")
        if len(parts) == 1:
            value = parse_float(parts[0])
            return cls(value, value)
        if len(parts) not in (2, 3):
            raise ValueError("expected 'start:end' or 'start:end:cosine|linear'")
        shape = parts[2].strip() if len(parts) == 3 else "cosine"
        if shape not in cls.SHAPES:
            raise ValueError(f"unknown schedule shape '{shape}', expected one of {', '.join(cls.SHAPES)}")
        return cls(parse_float(parts[0]), parse_float(parts[1]), shape)

    def at(self, fraction: float) -> float:
        """Value at training progress ``fraction`` (clamped to [0, 1])."""
        t = min(max(fraction, 0.0), 1.0)
        if self.shape == "linear":
            weight = t
        else:
            weight = 0.5 * (1.0 - math.cos(math.pi * t))
        return self.start + (self.end - self.start) * weight

    def bounds(self) -> tuple[float, float]:
        return min(self.start, self.end), max(self.start, self.end)

    def __str__(self) -> str:
        if self.start == self.end:
            return f"{self.start:g}"
        suffix = "" if self.shape == "cosine" else f":{self.shape}"
        return f"{self.start:g}:{self.end:g}{suffix}"


def _parse_bool(text: Any) -> bool:
    if isinstance(text, bool):
        return text
    lowered = str(text).strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _parse_int(text: Any) -> int:
    if isinstance(text, bool):
        raise ValueError("expected an integer, got a boolean")
    if isinstance(text, int):
        return text
    if isinstance(text, float) and text.is_integer():
        return int(text)
    return int(str(text).strip())


_PARSERS: dict[type, Callable[[Any], Any]] = {
    float: parse_float,
    int: _parse_int,
    bool: _parse_bool,
    str: lambda text: str(text),
    Schedule: Schedule.parse,
}

_TYPE_NAMES = {float: "float", int: "int", bool: "bool", str: "str", Schedule: "schedule"}


@dataclass(frozen=True)
class Option:
    """One typed option of a component.

    ``low``/``high`` bound numbers (and both ends of a schedule); ``low_open``/``high_open`` make
    the bound strict. ``choices`` restricts strings. ``default=None`` with ``optional=True`` means
    "decided at run time" (for example an attack step size that follows ε). ``fraction_of_training``
    marks a value given as a share of training's length (TE's "start after 45% of the epochs"): it
    moves when ``--epochs`` changes, so a run using it cannot be extended (a ``Schedule`` that is not
    constant is such a value by its definition and needs no mark).
    """

    name: str
    type: type
    default: Any
    help: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: Sequence[str] | None = None
    optional: bool = False
    fraction_of_training: bool = False

    def type_name(self) -> str:
        if self.choices:
            return "{" + "|".join(self.choices) + "}"
        return _TYPE_NAMES.get(self.type, self.type.__name__)

    def range_text(self) -> str:
        if self.low is None and self.high is None:
            return ""
        left = "(" if self.low_open else "["
        right = ")" if self.high_open else "]"
        low = "-inf" if self.low is None else f"{self.low:g}"
        high = "inf" if self.high is None else f"{self.high:g}"
        return f"{left}{low}, {high}{right}"

    def convert(self, value: Any, owner: str) -> Any:
        """Parse and check one value; raise OptionError naming the component and option."""
        if value is None and self.optional:
            return None
        try:
            parsed = _PARSERS[self.type](value)
        except (TypeError, ValueError) as exc:
            raise OptionError(
                f"{owner}: option '{self.name}' expects {self.type_name()}, got {value!r} ({exc})"
            ) from None
        if self.choices and parsed not in self.choices:
            raise OptionError(f"{owner}: option '{self.name}' must be one of {', '.join(self.choices)}, got {parsed!r}")
        for number in _numbers(parsed):
            if not math.isfinite(number):
                raise OptionError(f"{owner}: option '{self.name}' must be a finite number, got {value}")
            if not self._in_range(number):
                raise OptionError(f"{owner}: option '{self.name}' must lie in {self.range_text()}, got {value}")
        return parsed

    def _in_range(self, number: float) -> bool:
        if self.low is not None and (number < self.low or (self.low_open and number == self.low)):
            return False
        if self.high is not None and (number > self.high or (self.high_open and number == self.high)):
            return False
        return True


def depends_on_training_length(option: Option, value: Any) -> bool:
    """Whether ``value`` of ``option`` has an effect that moves when the total length of training changes."""
    return option.fraction_of_training or (isinstance(value, Schedule) and value.start != value.end)


def _numbers(value: Any) -> tuple[float, ...]:
    if isinstance(value, Schedule):
        return (value.start, value.end)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (float(value),)
    return ()


def resolve_options(options: Sequence[Option], given: Mapping[str, Any], owner: str) -> dict[str, Any]:
    """Defaults overlaid with ``given``; unknown keys and bad values raise OptionError."""
    known = {option.name: option for option in options}
    unknown = sorted(set(given) - set(known))
    if unknown:
        valid = ", ".join(sorted(known)) or "none"
        raise OptionError(f"{owner}: unknown option '{unknown[0]}' (valid options: {valid})")
    resolved: dict[str, Any] = {}
    for option in options:
        raw = given.get(option.name, option.default)
        resolved[option.name] = option.convert(raw, owner)
    return resolved


def plain(value: Any) -> Any:
    """A YAML/JSON-friendly form of an option value (schedules become their 'start:end' text)."""
    if isinstance(value, Schedule):
        return str(value)
    return value
