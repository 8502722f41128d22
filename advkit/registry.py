"""Plugin discovery through entry points: one group per interface, built-ins included.

Listing reads distribution metadata only; a plugin's module is imported when a command selects it, so a
broken plugin that nobody asked for cannot break a run. Any ``torchattacks`` attack is available as
``torchattacks:<ClassName>``.
"""

from __future__ import annotations

import difflib
import importlib.metadata as metadata
import inspect
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from .errors import PluginError
from .options import Option, resolve_options

GROUPS: dict[str, str] = {
    "rectifier": "advkit.rectifiers",
    "attack": "advkit.attacks",
    "objective": "advkit.objectives",
}
TORCHATTACKS_PREFIX = "torchattacks:"


@dataclass(frozen=True)
class PluginEntry:
    """One registered component as the metadata describes it (nothing imported yet)."""

    kind: str
    name: str
    distribution: str
    version: str
    entry_point: metadata.EntryPoint | None

    @property
    def target(self) -> str:
        return self.entry_point.value if self.entry_point is not None else f"torchattacks.{self.name.split(':', 1)[1]}"


class Registry:
    """Components found in the installed distributions (or in ``paths``, for tests)."""

    def __init__(self, paths: Iterable[str] | None = None) -> None:
        self._paths = list(paths) if paths is not None else None
        self._entries: list[PluginEntry] | None = None

    def entries(self, kind: str | None = None) -> list[PluginEntry]:
        if self._entries is None:
            self._entries = self._scan()
        return [entry for entry in self._entries if kind is None or entry.kind == kind]

    def _scan(self) -> list[PluginEntry]:
        groups = {group: kind for kind, group in GROUPS.items()}
        found: dict[tuple[str, str, str], PluginEntry] = {}
        dists = metadata.distributions(path=self._paths) if self._paths is not None else metadata.distributions()
        for dist in dists:
            dist_name = dist.metadata["Name"] or "?"
            for entry_point in dist.entry_points:
                kind = groups.get(entry_point.group)
                if kind is None:
                    continue
                key = (kind, entry_point.name, _normalise(dist_name))
                found.setdefault(key, PluginEntry(kind, entry_point.name, dist_name, dist.version, entry_point))
        return sorted(found.values(), key=lambda e: (e.kind, e.name, e.distribution))

    def names(self, kind: str) -> list[str]:
        return sorted({entry.name for entry in self.entries(kind)})

    def find(self, kind: str, name: str) -> PluginEntry:
        """The one entry called ``name``; unknown or doubly claimed names are errors."""
        if kind == "attack" and name.startswith(TORCHATTACKS_PREFIX):
            return self._torchattacks_entry(name)
        matches = [entry for entry in self.entries(kind) if entry.name == name]
        if not matches:
            known = self.names(kind)
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            extra = " or torchattacks:<Name>" if kind == "attack" else ""
            raise PluginError(
                f"unknown {kind} '{name}'{hint} (available: {', '.join(known) or 'none'}{extra})"
            )
        if len(matches) > 1:
            claimants = " and ".join(f"{m.distribution} {m.version} ({m.target})" for m in matches)
            raise PluginError(f"{kind} '{name}' is registered by two distributions: {claimants}; uninstall one")
        return matches[0]

    def _torchattacks_entry(self, name: str) -> PluginEntry:
        import torchattacks
        from torchattacks.attack import Attack as TorchAttack

        class_name = name[len(TORCHATTACKS_PREFIX):]
        attack_names = sorted(
            attr for attr in dir(torchattacks)
            if isinstance(getattr(torchattacks, attr), type)
            and issubclass(getattr(torchattacks, attr), TorchAttack)
            and attr not in ("Attack", "MultiAttack")
        )
        if class_name not in attack_names:
            close = difflib.get_close_matches(class_name, attack_names, n=1)
            hint = f"; did you mean 'torchattacks:{close[0]}'?" if close else ""
            raise PluginError(f"torchattacks has no attack '{class_name}'{hint}")
        return PluginEntry("attack", name, "torchattacks", metadata.version("torchattacks"), None)

    def load(self, kind: str, name: str) -> type:
        """Import the selected component's class, checking it implements the interface."""
        entry = self.find(kind, name)
        if entry.entry_point is None:
            import torchattacks

            return getattr(torchattacks, name[len(TORCHATTACKS_PREFIX):])
        try:
            loaded = entry.entry_point.load()
        except Exception as exc:  # any failure inside a third-party module is reported, not raised raw
            raise PluginError(
                f"{kind} '{name}' from distribution {entry.distribution} {entry.version} failed to load "
                f"({entry.target}): {type(exc).__name__}: {exc}"
            ) from exc
        base = _interface(kind)
        if not (isinstance(loaded, type) and issubclass(loaded, base)):
            raise PluginError(
                f"{kind} '{name}' from distribution {entry.distribution} points at {entry.target}, "
                f"which is not a subclass of advkit.{base.__name__}"
            )
        loaded.name = name
        return loaded


def _interface(kind: str) -> type:
    """The base class a component of ``kind`` must subclass (imported here: listing needs no torch)."""
    from .attacks import Attack
    from .components import LabelRectifier, Objective

    return {"rectifier": LabelRectifier, "attack": Attack, "objective": Objective}[kind]


def _is_advkit_component(cls: type) -> bool:
    from .components import Configurable

    return issubclass(cls, Configurable)


def component_options(cls: type) -> tuple[Option, ...]:
    """Declared options of an advkit component, or options read off a torchattacks constructor."""
    if _is_advkit_component(cls):
        return tuple(cls.options)
    options = []
    for param in list(inspect.signature(cls.__init__).parameters.values())[2:]:
        default = param.default
        if isinstance(default, (bool, int, float, str)):
            options.append(Option(param.name, type(default), default, f"torchattacks {cls.__name__} argument"))
    return tuple(options)


def build_attack(cls: type, model: Any, values: Mapping[str, Any]) -> Any:
    """Construct an attack: advkit attacks validate their own options; torchattacks ones are checked here."""
    if _is_advkit_component(cls):
        return cls(model, **values)
    return cls(model, **foreign_attack_options(cls, values))


def foreign_attack_options(cls: type, values: Mapping[str, Any]) -> dict[str, Any]:
    """A torchattacks attack's keyword arguments: its signature's defaults overlaid with ``values``, checked."""
    return resolve_options(component_options(cls), values, f"attack 'torchattacks:{cls.__name__}'")


def _normalise(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


_DEFAULT: Registry | None = None


def default_registry() -> Registry:
    """The registry of the running interpreter's installed distributions (scanned once)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = Registry()
    return _DEFAULT
