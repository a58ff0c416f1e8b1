"""Annotator profiles: the parameters of one group of people, as data, each value with its source.

A profile is a TOML file ``agents/profiles/<name>.toml``::

    name = "expert_radiologist"
    description = "Board-certified chest radiologist who knows the tool."

    [perception]
    base = {value = "expert_fit", source = "calibration: agents/calibration/expert_perception.json"}
    edge_sd_scale = {value = 1.0, source = "calibration: the expert fit itself"}
    ...

    [strategy]
    prior_box = {value = 0.7, source = "assumption: experts know LiteMedSAM wants a box"}
    ...

Every parameter is a table ``{value = ..., source = "..."}``. The source says where the value came
from and must begin with one of :data:`SOURCE_KINDS`:

- ``"literature: "`` a published figure: name the paper *and* the number
  (e.g. ``"literature: KLM, Card, Moran & Newell 1980: M = 1.35 s"``); a digit is required;
- ``"calibration: "`` a fit (e.g. ``agents/calibration/expert_perception.json``);
- ``"derived: "`` worked out from figures (say from which);
- ``"assumption: "`` a guess, named as one, with its reason.

Sections and their parameters are the fields of :class:`PerceptionSpec`, and of
:class:`~hiseg_sim.annotators.behaviour.strategy.StrategyParams`,
:class:`~hiseg_sim.annotators.behaviour.learning.LearningParams`,
:class:`~hiseg_sim.annotators.behaviour.execution.ExecutionParams`,
:class:`~hiseg_sim.annotators.behaviour.judgement.JudgementParams`,
:class:`~hiseg_sim.annotators.behaviour.execution.TimeParams` and
:class:`~hiseg_sim.annotators.behaviour.volume.VolumeParams` (how the person works through a
volume in 3-D: the extent they judge, the slices they correct, the look they give each slice). Every field must be given (a profile states
all its values and their sources); an unknown or missing key, a value of the wrong type, a source
without a known kind or a value its section rejects raises :class:`ProfileError` naming the file
and the key.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import tomllib

from hiseg_sim.annotators.behaviour.execution import ExecutionParams, TimeParams
from hiseg_sim.annotators.behaviour.judgement import JudgementParams
from hiseg_sim.annotators.behaviour.learning import LearningParams
from hiseg_sim.annotators.behaviour.strategy import StrategyParams
from hiseg_sim.annotators.behaviour.volume import VolumeParams

__all__ = [
    "SOURCE_KINDS",
    "SECTIONS",
    "PerceptionSpec",
    "Profile",
    "ProfileError",
    "load_profile_file",
    "profiles_dir",
    "profile_names",
    "apply_overrides",
]

#: Allowed beginnings of a ``source`` string.
SOURCE_KINDS = ("literature:", "calibration:", "derived:", "assumption:", "override:")


class ProfileError(ValueError):
    """A malformed profile; the message names the file and the key."""


@dataclass(frozen=True)
class PerceptionSpec:
    """How a group's perception departs from the calibrated expert's.

    Attributes:
        base: ``"expert_fit"`` (the LIDC fit, :func:`hiseg_sim.annotators.behaviour.perception.expert_params`)
            or ``"defaults"`` (:class:`~hiseg_sim.annotators.behaviour.perception.PerceptionParams` defaults).
        edge_sd_scale: multiplies the base's boundary SDs (``bias_sd_mm``, ``shift_sd_mm``,
            ``z_sd_mm``): how much more a group's edge wanders than a radiologist's.
        bias_mm: added to the base's mean edge shift (+ outward).
        p_wrong_spot, p_include_vessel, p_miss_ggo_rim, p_pleura_error: semantic-error
            probabilities per case (replace the base's).
    """

    base: str = "expert_fit"
    edge_sd_scale: float = 1.0
    bias_mm: float = 0.0
    p_wrong_spot: float = 0.0
    p_include_vessel: float = 0.0
    p_miss_ggo_rim: float = 0.0
    p_pleura_error: float = 0.0

    def __post_init__(self) -> None:
        if self.base not in ("expert_fit", "defaults"):
            raise ValueError(f"PerceptionSpec.base must be 'expert_fit' or 'defaults'; got {self.base!r}")
        if not (math.isfinite(self.edge_sd_scale) and self.edge_sd_scale >= 0):
            raise ValueError(f"PerceptionSpec.edge_sd_scale must be >= 0; got {self.edge_sd_scale}")
        if not math.isfinite(self.bias_mm):
            raise ValueError(f"PerceptionSpec.bias_mm must be finite; got {self.bias_mm}")
        for name in ("p_wrong_spot", "p_include_vessel", "p_miss_ggo_rim", "p_pleura_error"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise ValueError(f"PerceptionSpec.{name} is a probability in [0, 1]; got {getattr(self, name)}")

    def params(self):
        """The :class:`~hiseg_sim.annotators.behaviour.perception.PerceptionParams` of this group."""
        return _perception_params(self)


@lru_cache(maxsize=4)
def _base_params(base: str):
    """The base the groups' perception departs from (the expert fit, read once per process)."""
    from hiseg_sim.annotators.behaviour import perception as P

    if base == "expert_fit":
        try:
            return P.expert_params()
        except FileNotFoundError:
            warnings.warn(
                "agents/calibration/expert_perception.json is missing: using the PerceptionParams "
                "defaults as the expert's perception until `hiseg-sim calibrate` has run",
                stacklevel=4,
            )
    return P.PerceptionParams()


@lru_cache(maxsize=256)
def _perception_params(spec: PerceptionSpec):
    base = _base_params(spec.base)
    k = spec.edge_sd_scale
    return base.replace(
        bias_sd_mm=base.bias_sd_mm * k,
        shift_sd_mm=base.shift_sd_mm * k,
        z_sd_mm=base.z_sd_mm * k,
        bias_mm=base.bias_mm + spec.bias_mm,
        p_wrong_spot=spec.p_wrong_spot,
        p_include_vessel=spec.p_include_vessel,
        p_miss_ggo_rim=spec.p_miss_ggo_rim,
        p_pleura_error=spec.p_pleura_error,
    )


#: Section name -> parameter class.
SECTIONS: dict[str, type] = {
    "perception": PerceptionSpec,
    "strategy": StrategyParams,
    "learning": LearningParams,
    "execution": ExecutionParams,
    "judgement": JudgementParams,
    "time": TimeParams,
    "volume": VolumeParams,
}


@dataclass(frozen=True)
class Profile:
    """One annotator group's parameters (see the module docstring for the file format).

    ``sources`` maps ``"section.key"`` to the source string of each value; ``path`` is the file.
    """

    name: str
    description: str
    perception: PerceptionSpec
    strategy: StrategyParams
    learning: LearningParams
    execution: ExecutionParams
    judgement: JudgementParams
    time: TimeParams
    volume: VolumeParams
    sources: dict = field(default_factory=dict, compare=False)
    path: Path | None = field(default=None, compare=False)

    def value(self, dotted: str) -> Any:
        """A parameter by ``"section.key"``."""
        section, key = _split(dotted)
        return getattr(getattr(self, section), key)

    def table(self) -> list[dict]:
        """One row per parameter: section, key, value, source."""
        return [
            {
                "section": s,
                "key": f.name,
                "value": getattr(getattr(self, s), f.name),
                "source": self.sources.get(f"{s}.{f.name}", ""),
            }
            for s, cls in SECTIONS.items()
            for f in fields(cls)
        ]


def _split(dotted: str) -> tuple[str, str]:
    if "." not in dotted:
        raise KeyError(f"parameter names are 'section.key' (sections: {sorted(SECTIONS)}); got {dotted!r}")
    section, key = dotted.split(".", 1)
    if section not in SECTIONS:
        raise KeyError(f"unknown section {section!r} in {dotted!r}; sections: {sorted(SECTIONS)}")
    names = [f.name for f in fields(SECTIONS[section])]
    if key not in names:
        raise KeyError(f"unknown parameter {dotted!r}; [{section}] has {names}")
    return section, key


def _check_source(src: Any, where: str) -> str:
    if not isinstance(src, str) or not src.strip():
        raise ProfileError(f"{where}: 'source' must be a non-empty string beginning with one of {SOURCE_KINDS}")
    s = src.strip()
    if not s.lower().startswith(SOURCE_KINDS):
        raise ProfileError(f"{where}: source {s!r} must begin with one of {SOURCE_KINDS}")
    if s.lower().startswith("literature:") and not any(c.isdigit() for c in s):
        raise ProfileError(f"{where}: a literature source must cite the figure (a number): {s!r}")
    if len(s.split(":", 1)[1].strip()) < 3:
        raise ProfileError(f"{where}: source {s!r} says nothing after its kind")
    return s


def _coerce(value: Any, typ: Any, where: str) -> Any:
    name = typ if isinstance(typ, str) else getattr(typ, "__name__", str(typ))
    if name == "str":
        if not isinstance(value, str):
            raise ProfileError(f"{where}: expected a string; got {value!r}")
        return value
    if name == "int":
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise ProfileError(f"{where}: expected a whole number; got {value!r}")
        return int(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ProfileError(f"{where}: expected a number; got {value!r}")
    return float(value)


def _parse(data: Mapping[str, Any], path: str) -> Profile:
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise ProfileError(f"{path}: top-level key 'name' (a string) is missing")
    desc = data.get("description", "")
    if not isinstance(desc, str):
        raise ProfileError(f"{path}: 'description' must be a string")
    unknown = sorted(set(data) - set(SECTIONS) - {"name", "description"})
    if unknown:
        raise ProfileError(f"{path}: unknown top-level key(s) {unknown}; sections are {sorted(SECTIONS)}")
    sources: dict[str, str] = {}
    built: dict[str, Any] = {}
    for section, cls in SECTIONS.items():
        table = data.get(section)
        if not isinstance(table, Mapping):
            raise ProfileError(f"{path}: section [{section}] is missing")
        flds = {f.name: f for f in fields(cls)}
        extra = sorted(set(table) - set(flds))
        if extra:
            raise ProfileError(
                f"{path}: unknown key(s) {[f'{section}.{k}' for k in extra]}; [{section}] takes {sorted(flds)}"
            )
        kwargs = {}
        for key, f in flds.items():
            where = f"{path}: {section}.{key}"
            if key not in table:
                raise ProfileError(f"{where} is missing (every parameter needs a value and a source)")
            entry = table[key]
            if not isinstance(entry, Mapping) or set(entry) - {"value", "source", "note"} or "value" not in entry:
                raise ProfileError(f'{where} must be a table {{value = ..., source = "..."}}; got {entry!r}')
            sources[f"{section}.{key}"] = _check_source(entry.get("source"), where)
            kwargs[key] = _coerce(entry["value"], f.type, where)
        try:
            built[section] = cls(**kwargs)
        except (ValueError, TypeError) as exc:
            raise ProfileError(f"{path}: [{section}] {exc}") from exc
    return Profile(name=name, description=desc, sources=sources, path=Path(path), **built)


def load_profile_file(path: str | Path) -> Profile:
    """Load and validate one profile file."""
    p = Path(path)
    if not p.is_file():
        raise ProfileError(f"{p}: no such profile file")
    try:
        data = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"{p}: not valid TOML: {exc}") from exc
    return _parse(data, str(p))


def profiles_dir() -> Path:
    """``agents/profiles`` of the source tree, or the copy bundled in the wheel."""
    from hiseg_sim.resources import shipped_path

    return shipped_path("agents", "profiles")


def profile_names(directory: str | Path | None = None) -> list[str]:
    d = Path(directory) if directory is not None else profiles_dir()
    return sorted(p.stem for p in d.glob("*.toml")) if d.is_dir() else []


def apply_overrides(profile: Profile, overrides: Mapping[str, Any]) -> Profile:
    """A copy with parameters replaced: keys ``"section.key"`` (or ``"section__key"``); sources
    become ``"override: ..."``. Invalid names or values raise :class:`ProfileError`."""
    if not overrides:
        return profile
    by_section: dict[str, dict[str, Any]] = {}
    sources = dict(profile.sources)
    for raw, value in overrides.items():
        dotted = raw.replace("__", ".", 1) if "." not in raw else raw
        try:
            section, key = _split(dotted)
        except KeyError as exc:
            raise ProfileError(f"override {raw!r} for profile {profile.name!r}: {exc.args[0]}") from None
        by_section.setdefault(section, {})[key] = value
        sources[f"{section}.{key}"] = f"override: set to {value!r} in code"
    changes = {}
    for section, kv in by_section.items():
        try:
            changes[section] = replace(getattr(profile, section), **kv)
        except (ValueError, TypeError) as exc:
            raise ProfileError(f"override of [{section}] for profile {profile.name!r}: {exc}") from exc
    return replace(profile, sources=sources, **changes)
