"""Annotators by name: one registry for the group profiles, the robots, saved policies and plugins.

>>> from hiseg_sim.annotators.registry import available_annotators, build_annotator
>>> "expert_radiologist" in available_annotators() and "robot_ritm" in available_annotators()
True
>>> build_annotator("robot_ritm", target_iou=0.85).target_iou
0.85

Every name comes from an entry point of the group ``hiseg_sim.annotators`` (see
:mod:`hiseg_sim.registry`): hiseg-sim lists its own in ``pyproject.toml`` — the profiles of
``agents/profiles/*.toml`` (:data:`PROFILES`), the robots (:data:`ROBOTS`), the saved policies of
``agents/policies/`` and the specialist — and another package adds its own the same way. An entry is
a factory ``f(**overrides) -> Annotator``.

``build_annotator(name, **overrides)``: for a profile, ``overrides`` are parameters as
``section__key=value`` (or a dict ``{"section.key": value}`` passed as ``params=``) and ``label=``
(the name written in traces); for a robot, the keyword arguments of its agent class
(:mod:`hiseg_sim.annotators.robots.agents`). A path to a profile ``.toml`` file works as a name
too: a profile is data, read and validated, never executed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from hiseg_sim.annotators.base import Annotator
from hiseg_sim.annotators.behaviour.person import BehaviourAnnotator
from hiseg_sim.annotators.behaviour.profiles import (
    Profile,
    ProfileError,
    apply_overrides,
    load_profile_file,
    profile_names,
    profiles_dir,
)
from hiseg_sim.annotators.robots import agents as _robots
from hiseg_sim.registry import Registry, factory_provider

__all__ = [
    "ANNOTATORS",
    "PROFILES",
    "ROBOTS",
    "ROBOT_NAMES",
    "available_annotators",
    "build_annotator",
    "load_profile",
    "register_annotator",
]

#: Every annotator by name (entry-point group ``hiseg_sim.annotators``).
ANNOTATORS: Registry[Callable[..., Annotator]] = Registry(
    "annotators", "annotator", first=("profiles", "robots", "policies")
)

#: The robot agents' names.
ROBOT_NAMES = tuple(_robots.ROBOTS)


def _is_path(name: str) -> bool:
    return str(name).endswith(".toml") or "/" in str(name)


def load_profile(name: str | Path) -> Profile:
    """The :class:`~hiseg_sim.annotators.behaviour.profiles.Profile` of ``name`` (or of a ``.toml`` path).

    Raises:
        ProfileError: no such profile (the message lists the known ones), or a malformed file
            (the message names the file and the key).
    """
    if _is_path(str(name)):
        return load_profile_file(name)
    path = profiles_dir() / f"{name}.toml"
    if not path.is_file():
        raise ProfileError(
            f"no annotator profile {name!r} in {profiles_dir()}; profiles: {profile_names()}; "
            f"robots: {list(ROBOT_NAMES)}"
        )
    return load_profile_file(path)


def build_profile_annotator(name: str | Path, **overrides: Any) -> BehaviourAnnotator:
    """A simulated person of the profile ``name`` (a name in ``agents/profiles`` or a ``.toml`` path)."""
    label = overrides.pop("label", None)
    params = dict(overrides.pop("params", {}) or {})
    params.update(overrides)
    profile = apply_overrides(load_profile(name), params)
    return BehaviourAnnotator(profile, name=label or (profile.name if not Path(str(name)).suffix else None))


#: The group profiles of ``agents/profiles/*.toml``, one entry each.
PROFILES = factory_provider(profile_names, build_profile_annotator)
#: The literature's robots (:data:`hiseg_sim.annotators.robots.agents.ROBOTS`), one entry each.
ROBOTS = factory_provider(lambda: list(ROBOT_NAMES), _robots.build_robot)


def available_annotators() -> list[str]:
    """Every registered name: profiles, robots, saved policies, the specialist, plugins."""
    return ANNOTATORS.names()


def register_annotator(name: str, factory: Callable[..., Annotator]) -> None:
    """Add ``factory`` under ``name`` in this process (a package uses an entry point instead)."""
    ANNOTATORS.register(name, factory)


def build_annotator(name: str | Path, **overrides: Any) -> Annotator:
    """An :class:`~hiseg_sim.annotators.base.Annotator` by registered name (or profile ``.toml`` path).

    Raises:
        hiseg_sim.registry.UnknownNameError: no such name (the message lists the names there are).
    """
    if _is_path(str(name)):
        return build_profile_annotator(name, **overrides)
    agent = ANNOTATORS.get(str(name))(**overrides)
    if not isinstance(agent, Annotator):
        raise TypeError(
            f"the annotator entry {name!r} built a {type(agent).__name__}, not an hiseg_sim.annotators.base.Annotator"
        )
    return agent
