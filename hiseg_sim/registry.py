"""Registries by name, filled from entry points: one lookup path for built-ins and plugins alike.

Every kind of thing a study names (annotators, segmenters, cohorts, episode functions, study kinds)
is looked up in a :class:`Registry`. A registry reads the entry-point group
``hiseg_sim.<kind>`` of every installed distribution, hiseg-sim's own included: the package lists
its built-ins in ``pyproject.toml`` exactly as a third-party plugin would::

    [project.entry-points."hiseg_sim.annotators"]
    my_annotator = "my_package.module:build_my_annotator"

An entry point's object is either the entry itself (for annotators, a factory
``f(**overrides) -> Annotator``), or a :class:`Provider` that names many entries at once (the
profiles in ``agents/profiles/``, the saved policies in ``agents/policies/``); the entry point's
own name is then only a label. Entry points are loaded when first needed, so listing names is
cheap and importing hiseg-sim never imports a plugin.

Nothing is ever imported from a dotted path a user wrote: a name either is in the registry or is
an error that lists the names there are.

>>> from hiseg_sim.registry import Registry
>>> r = Registry("example_kind", "widget")
>>> r.register("spoon", lambda: "a spoon")
>>> r.get("spoon")()
'a spoon'
>>> r.get("spon")
Traceback (most recent call last):
...
hiseg_sim.registry.UnknownNameError: unknown widget 'spon'; did you mean 'spoon'? Widgets: spoon
"""

from __future__ import annotations

import difflib
import importlib.metadata
import threading
from collections.abc import Callable, Iterable
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

__all__ = ["Provider", "Registry", "RegistryError", "UnknownNameError", "factory_provider", "refresh_all"]

T = TypeVar("T")


class RegistryError(ValueError):
    """A registry cannot answer: an unknown name, two entries claiming one name, a broken plugin."""


class UnknownNameError(RegistryError, KeyError):
    """No entry of that name (the message lists the names there are)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


@runtime_checkable
class Provider(Protocol):
    """An entry point object that names many entries (e.g. every profile file in a folder)."""

    def names(self) -> list[str]: ...

    def get(self, name: str) -> Any: ...


_ALL: list[Registry] = []


class Registry(Generic[T]):
    """Names → entries of one kind, from code (:meth:`register`) and from entry points.

    Args:
        kind: the entry-point group is ``hiseg_sim.<kind>``.
        what: how an error calls one entry (``"annotator"``, ``"segmenter"``, ...).
        first: entry-point names listed first, in this order (installers write entry points
            sorted by name, which is rarely the order a user wants to read them in).
    """

    def __init__(self, kind: str, what: str, first: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self.group = f"hiseg_sim.{kind}"
        self.what = what
        self.first = tuple(first)
        self._code: dict[str, T] = {}
        self._eps: dict[str, importlib.metadata.EntryPoint] | None = None
        self._loaded: dict[str, Any] = {}
        self._lock = threading.RLock()
        _ALL.append(self)

    # ---- filling ---------------------------------------------------------------------------
    def register(self, name: str, entry: T) -> None:
        """Add ``entry`` under ``name`` from code (a test, a notebook); entry points need no call."""
        if not isinstance(name, str) or not name:
            raise RegistryError(f"a {self.what} name must be a non-empty string; got {name!r}")
        with self._lock:
            if name in self._code:
                raise RegistryError(f"{self.what} {name!r} is already registered")
            self._code[name] = entry

    def unregister(self, name: str) -> None:
        """Remove a name added with :meth:`register` (tests)."""
        with self._lock:
            self._code.pop(name, None)

    def refresh(self) -> None:
        """Forget what was read from entry points (after installing a plugin in a running process)."""
        with self._lock:
            self._eps = None
            self._loaded.clear()

    def _entry_points(self) -> dict[str, importlib.metadata.EntryPoint]:
        with self._lock:
            if self._eps is None:
                eps: dict[str, importlib.metadata.EntryPoint] = {}
                for ep in importlib.metadata.entry_points(group=self.group):
                    if ep.name in eps and eps[ep.name].value != ep.value:
                        raise RegistryError(
                            f"two plugins register the {self.what} {ep.name!r}: "
                            f"{eps[ep.name].value} and {ep.value}; uninstall one"
                        )
                    eps[ep.name] = ep
                rank = {name: i for i, name in enumerate(self.first)}
                self._eps = dict(sorted(eps.items(), key=lambda kv: rank.get(kv[0], len(rank))))
            return self._eps

    def _load(self, label: str) -> Any:
        with self._lock:
            if label not in self._loaded:
                ep = self._entry_points()[label]
                try:
                    self._loaded[label] = ep.load()
                except Exception as exc:  # a broken plugin names itself
                    raise RegistryError(
                        f"the {self.what} plugin {label!r} ({ep.value}) failed to load: {type(exc).__name__}: {exc}"
                    ) from exc
            return self._loaded[label]

    def _providers(self) -> Iterable[tuple[str, Provider]]:
        for label in self._entry_points():
            if self._is_provider(label):
                yield label, self._load(label)

    # ---- lookup ----------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Every name: those from code, then the entry points' in their order (a provider's in place)."""
        out: list[str] = list(self._code)
        for label in self._entry_points():
            new = self._load(label).names() if self._is_provider(label) else [label]
            out += [n for n in new if n not in out]
        return out

    def _is_provider(self, label: str) -> bool:
        obj = self._load(label)
        return isinstance(obj, Provider) and not callable(obj)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self.names()

    def get(self, name: str) -> T:
        """The entry of ``name``; :class:`UnknownNameError` (one line, with the names there are) if none."""
        if not isinstance(name, str):
            raise UnknownNameError(f"a {self.what} is named by a string; got {name!r}")
        if name in self._code:
            return self._code[name]
        eps = self._entry_points()
        if name in eps and not self._is_provider(name):
            return self._load(name)
        for _, prov in self._providers():
            if name in prov.names():
                return prov.get(name)
        raise UnknownNameError(self.unknown_message(name))

    def unknown_message(self, name: str) -> str:
        names = self.names()
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else "."
        return f"unknown {self.what} {name!r}{hint} {self.what.capitalize()}s: {', '.join(names) or '(none)'}"

    def check(self, name: str) -> str:
        """``name`` if registered, else :class:`UnknownNameError` (for validating specs early)."""
        if name not in self:
            raise UnknownNameError(self.unknown_message(name))
        return name

    def __repr__(self) -> str:
        return f"Registry({self.group!r})"


def refresh_all() -> None:
    """:meth:`Registry.refresh` every registry (after installing a plugin in a running process)."""
    for r in _ALL:
        r.refresh()


def factory_provider(names: Callable[[], list[str]], build: Callable[..., Any]) -> Provider:
    """A :class:`Provider` whose entry for ``name`` is ``functools.partial(build, name)``."""
    import functools

    class _P:
        def names(self) -> list[str]:
            return list(names())

        def get(self, name: str) -> Any:
            return functools.partial(build, name)

    return _P()
