"""Plugin discovery through entry points: one group per interface, built-ins included.

Listing reads distribution metadata only; a plugin's module is imported when a command selects it, so a
broken plugin that nobody asked for cannot break a run. Any ``torchattacks`` attack is available as
``torchattacks:<ClassName>``.

A script or notebook may also register a class it defines itself (``register_component``): an explicit
call by the code that uses the component, for that process only. Installed plugins still come from entry
points alone; importing a module never registers anything.
"""

from __future__ import annotations

import difflib
import importlib.metadata as metadata
import inspect
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from .errors import PluginError
from .options import Option, resolve_options

GROUPS: dict[str, str] = {
    "rectifier": "advkit.rectifiers",
    "attack": "advkit.attacks",
    "objective": "advkit.objectives",
}
TORCHATTACKS_PREFIX = "torchattacks:"
RUNTIME_DISTRIBUTION = "(registered at run time)"  # the "distribution" of a class a script registered itself
# ':' starts the torchattacks:/plugin: prefixes and eval options, '.' separates -o COMPONENT.KEY: neither fits a name.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


@dataclass(frozen=True)
class PluginEntry:
    """One registered component as the metadata describes it (nothing imported yet).

    ``component`` is set for a class registered at run time, which has no entry point and no distribution.
    """

    kind: str
    name: str
    distribution: str
    version: str
    entry_point: metadata.EntryPoint | None
    component: type[Any] | None = None

    @property
    def target(self) -> str:
        if self.component is not None:
            return _qualified(self.component)
        return self.entry_point.value if self.entry_point is not None else f"torchattacks.{self.name.split(':', 1)[1]}"


class Registry:
    """Components found in the installed distributions (or in ``paths``, for tests), plus the classes a
    script registered at run time (``register``)."""

    def __init__(self, paths: Iterable[str] | None = None) -> None:
        self._paths = list(paths) if paths is not None else None
        self._entries: list[PluginEntry] | None = None
        self._registered: dict[tuple[str, str], PluginEntry] = {}

    def entries(self, kind: str | None = None) -> list[PluginEntry]:
        if self._entries is None:
            self._entries = self._scan()
        every = sorted([*self._entries, *self._registered.values()], key=lambda e: (e.kind, e.name, e.distribution))
        return [entry for entry in every if kind is None or entry.kind == kind]

    def register(self, kind: str, name: str, cls: type) -> Registration:
        """Make ``cls``, a class the running script or notebook defines, selectable as ``name`` of ``kind``.

        For components that are not worth a distribution (an experiment in a notebook): it lasts until the
        returned handle's ``remove()`` (or the end of its ``with`` block) or the end of the process. A run
        records the class's import path, not the class: a new process must register it again. A name an
        installed distribution already provides is refused, naming both; so is a class that does not
        subclass the kind's interface. Registering a class of the same module and qualified name again
        replaces it (a re-run notebook cell).
        """
        described = _qualified(cls)
        if kind not in GROUPS:
            raise PluginError(
                f"cannot register {described}: unknown component kind '{kind}' (kinds: {', '.join(GROUPS)})"
            )
        if not _NAME.fullmatch(name):
            raise PluginError(
                f"cannot register {kind} {described} as {name!r}: a name is letters, digits, '-' and '_' "
                "(no ':' or '.', which the torchattacks:/plugin: prefixes and -o NAME.KEY use)"
            )
        base = _interface(kind)
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise PluginError(
                f"cannot register {described} as {kind} '{name}': it is not a subclass of advkit.{base.__name__}"
            )
        for entry in self.entries(kind):
            if entry.name != name:
                continue
            if entry.component is None:
                raise PluginError(
                    f"cannot register {described} as {kind} '{name}': distribution {entry.distribution} "
                    f"{entry.version} already provides that name ({entry.target}); choose another name"
                )
            if entry.target != described:
                raise PluginError(
                    f"cannot register {described} as {kind} '{name}': {entry.target} is registered "
                    "under that name in this process; choose another name, or remove() that one first"
                )
        self._registered[(kind, name)] = PluginEntry(kind, name, RUNTIME_DISTRIBUTION, "", None, cls)
        return Registration(self, kind, name, cls)

    def _unregister(self, kind: str, name: str, cls: type) -> None:
        entry = self._registered.get((kind, name))
        if entry is not None and entry.component is cls:  # not a later registration that replaced it
            del self._registered[(kind, name)]

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
            raise PluginError(f"unknown {kind} '{name}'{hint} (available: {', '.join(known) or 'none'}{extra})")
        if len(matches) > 1:
            claimants = " and ".join(f"{m.distribution} {m.version} ({m.target})" for m in matches)
            raise PluginError(f"{kind} '{name}' is registered by two distributions: {claimants}; uninstall one")
        return matches[0]

    def _torchattacks_entry(self, name: str) -> PluginEntry:
        import torchattacks
        from torchattacks.attack import Attack as TorchAttack

        class_name = name[len(TORCHATTACKS_PREFIX) :]
        attack_names = sorted(
            attr
            for attr in dir(torchattacks)
            if isinstance(getattr(torchattacks, attr), type)
            and issubclass(getattr(torchattacks, attr), TorchAttack)
            and attr not in ("Attack", "MultiAttack")
        )
        if class_name not in attack_names:
            close = difflib.get_close_matches(class_name, attack_names, n=1)
            hint = f"; did you mean 'torchattacks:{close[0]}'?" if close else ""
            raise PluginError(f"torchattacks has no attack '{class_name}'{hint}")
        return PluginEntry("attack", name, "torchattacks", metadata.version("torchattacks"), None)

    def load(self, kind: str, name: str) -> type[Any]:
        """Import the selected component's class, checking it implements the interface."""
        entry = self.find(kind, name)
        if entry.component is not None:  # checked when it was registered
            entry.component.name = name
            return entry.component
        if entry.entry_point is None:
            import torchattacks

            return getattr(torchattacks, name[len(TORCHATTACKS_PREFIX) :])
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
        component: type[Any] = loaded
        component.name = name
        return component


@dataclass(frozen=True)
class Registration:
    """A class registered at run time; ``remove()``, or leaving a ``with`` block, unregisters it."""

    registry: Registry
    kind: str
    name: str
    component: type

    def remove(self) -> None:
        self.registry._unregister(self.kind, self.name, self.component)

    def __enter__(self) -> Registration:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.remove()


def _qualified(cls: object) -> str:
    """``module:QualifiedName`` of a class (entry-point notation), the ``repr`` of anything else."""
    return f"{cls.__module__}:{cls.__qualname__}" if isinstance(cls, type) else repr(cls)


def _interface(kind: str) -> type:
    """The base class a component of ``kind`` must subclass (imported here: listing needs no torch)."""
    from .attacks import Attack
    from .components import LabelRectifier, Objective

    return {"rectifier": LabelRectifier, "attack": Attack, "objective": Objective}[kind]


def _is_advkit_component(cls: type) -> bool:
    from .components import Configurable

    return issubclass(cls, Configurable)


def component_options(cls: type[Any]) -> tuple[Option, ...]:
    """Declared options of an advkit component, or options read off a torchattacks constructor."""
    if _is_advkit_component(cls):
        return tuple(cls.options)
    options = []
    for param in list(inspect.signature(cls).parameters.values())[1:]:  # after the model
        default = param.default
        if isinstance(default, (bool, int, float, str)):
            options.append(Option(param.name, type(default), default, f"torchattacks {cls.__name__} argument"))
    return tuple(options)


def build_attack(cls: type[Any], model: Any, values: Mapping[str, Any]) -> Any:
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


def register_component(kind: str, name: str, cls: type) -> Registration:
    """Register ``cls`` (defined in your script or notebook) as ``name`` for this process: ``Trainer``,
    ``TrainConfig`` names, ``evaluate_checkpoint`` (``plugin:NAME``) and ``load_component`` then find it.

    ``kind`` is ``rectifier``, ``attack`` or ``objective``. See ``Registry.register`` for the rules; use the
    returned handle as a context manager to scope the registration to a block.
    """
    return default_registry().register(kind, name, cls)


def load_component(kind: str, name: str) -> type:
    """The class behind a component name (installed, registered at run time, or ``torchattacks:<Name>``),
    for use outside training: e.g. ``load_component("attack", "pgd")(model, eps=8/255)``."""
    return default_registry().load(kind, name)
