"""Cases by name: the cohorts of the phantom manifest, and case sources that plugins register.

A study's ``[cases]`` names either a cohort of ``data_manifests/phantom-lidc.json`` (``cohort =
"default"``) or a registered case source (``source = "downstream_training"``): a function
``f(**kwargs) -> list[Case]`` listed under the entry-point group ``hiseg_sim.cohorts`` (hiseg-sim's
own in ``pyproject.toml``, anyone else's in their package). :func:`load_cases` is the one place that
turns such a name into cases.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hiseg_sim.data.cohort import load_cohort, read_manifest
from hiseg_sim.registry import Registry, UnknownNameError

__all__ = ["CASE_SOURCES", "cohort_names", "is_manifest_cohort", "load_cases"]

#: Case sources by name (entry-point group ``hiseg_sim.cohorts``).
CASE_SOURCES: Registry[Callable[..., list]] = Registry("cohorts", "case source")


def is_manifest_cohort(name: str) -> bool:
    """Whether ``name`` is a cohort of the shipped phantom manifest."""
    return name in read_manifest()["cohorts"]


def cohort_names() -> list[str]:
    """The manifest's cohorts, then the registered case sources."""
    return list(read_manifest()["cohorts"]) + [n for n in CASE_SOURCES.names()]


def load_cases(name: str, limit: int | None = None, **kwargs: Any) -> list:
    """The :class:`~hiseg_sim.data.case.Case` objects of a manifest cohort or a registered source.

    Raises:
        hiseg_sim.registry.UnknownNameError: neither (the message lists both kinds of name).
    """
    if is_manifest_cohort(name):
        if kwargs:
            raise ValueError(f"cohort {name!r} of the manifest takes no arguments; got {sorted(kwargs)}")
        return load_cohort(name, limit=limit)
    if name not in CASE_SOURCES:
        raise UnknownNameError(f"unknown cohort {name!r}; cohorts and case sources: {', '.join(cohort_names())}")
    cases = list(CASE_SOURCES.get(name)(**kwargs))
    return cases[:limit] if limit else cases
