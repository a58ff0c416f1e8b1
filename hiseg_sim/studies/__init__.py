"""Kinds of study, each one module that owns its ``[analysis]`` settings, its run and its report.

A spec's ``[study] kind`` names an entry of the entry-point group ``hiseg_sim.study_kinds``:
hiseg-sim's own are :mod:`~hiseg_sim.studies.groups`, :mod:`~hiseg_sim.studies.crowd`,
:mod:`~hiseg_sim.studies.training`, :mod:`~hiseg_sim.studies.protocols` and
:mod:`hiseg_sim.downstream.kind`; a package adds its own the same way. Each entry is a
:class:`~hiseg_sim.studies.base.StudyKind`.
"""

from hiseg_sim.studies.base import StudyKind, run_and_report

__all__ = ["StudyKind", "run_and_report"]
