"""Annotators by name: the group profiles in ``agents/profiles/*.toml`` and the click robots.

>>> from hiseg_sim.annotators.registry import available_annotators, build_annotator
>>> "expert_radiologist" in available_annotators() and "robot_ritm" in available_annotators()
True
>>> build_annotator("robot_ritm", target_iou=0.85).target_iou
0.85

``build_annotator(name, **overrides)``: for a profile, ``overrides`` are parameters as
``section__key=value`` (or a dict ``{"section.key": value}`` passed as ``params=``) and ``label=``
(the name written in traces); for a robot, the keyword arguments of its agent class
(:mod:`hiseg_sim.annotators.robot_agents`). A path to a ``.toml`` file works as a name too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hiseg_sim.annotators.profiles import (
    Profile,
    ProfileError,
    apply_overrides,
    load_profile_file,
    profile_names,
    profiles_dir,
)
from hiseg_sim.annotators.robot_agents import ROBOTS, build_robot

__all__ = ["ROBOT_NAMES", "available_annotators", "build_annotator", "load_profile"]

#: The robot agents' names.
ROBOT_NAMES = tuple(ROBOTS)
#: Automatic annotators that read no ground truth: a specialist net prompting the segmenter.
AUTOMATIC_NAMES = ("specialist_sam",)


def available_annotators() -> list[str]:
    """Profile names (``agents/profiles/*.toml``), the robot names, then saved policies (``agents/policies/<name>/``)."""
    from hiseg_sim.policies.store import policy_names

    return profile_names() + list(ROBOT_NAMES) + policy_names() + list(AUTOMATIC_NAMES)


def load_profile(name: str) -> Profile:
    """The :class:`~hiseg_sim.annotators.profiles.Profile` of ``name`` (or of a ``.toml`` path).

    Raises:
        ProfileError: no such profile (the message lists the known ones), or a malformed file
            (the message names the file and the key).
    """
    if str(name).endswith(".toml") or "/" in str(name):
        return load_profile_file(name)
    path = profiles_dir() / f"{name}.toml"
    if not path.is_file():
        raise ProfileError(f"no annotator profile {name!r} in {profiles_dir()}; profiles: {profile_names()}; "
                           f"robots: {list(ROBOT_NAMES)}")
    return load_profile_file(path)


def build_annotator(name: str, **overrides: Any):
    """An :class:`~hiseg_sim.annotators.protocol.Annotator` by name (profile or robot)."""
    if name in ROBOTS:
        return build_robot(name, **overrides)
    if name in AUTOMATIC_NAMES:  # the SemiSAM+-style specialist (hiseg_sim.downstream.specialist)
        from hiseg_sim.downstream.specialist import build_specialist

        return build_specialist(**overrides)
    from hiseg_sim.policies.store import is_policy_dir, policies_dir

    if is_policy_dir(policies_dir() / str(name)) or is_policy_dir(name):  # a saved policy (hiseg_sim.policies)
        from hiseg_sim.policies.store import PolicyAnnotator

        return PolicyAnnotator(name, **overrides)
    from hiseg_sim.annotators.behaviour import BehaviourAnnotator

    label = overrides.pop("label", None)
    params = dict(overrides.pop("params", {}) or {})
    params.update(overrides)
    profile = apply_overrides(load_profile(name), params)
    return BehaviourAnnotator(profile, name=label or (profile.name if not Path(str(name)).suffix else None))
