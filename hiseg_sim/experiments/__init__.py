"""Studies: cases x annotators x segmenters x seeds → episodes → Parquet shards, on serial, process or Ray executors.

>>> from hiseg_sim.experiments import load_spec, run_study, load_run     # doctest: +SKIP
>>> data = run_study("hiseg_groups", executor="process")                 # doctest: +SKIP

Modules: :mod:`~hiseg_sim.experiments.spec` (TOML study files, validated),
:mod:`~hiseg_sim.experiments.units` (work units, episode seeds), :mod:`~hiseg_sim.experiments.cases`
(case sources), :mod:`~hiseg_sim.experiments.episode` (episode function, final masks, rows),
:mod:`~hiseg_sim.experiments.worker` (per-process context), :mod:`~hiseg_sim.experiments.executors`,
:mod:`~hiseg_sim.experiments.storage` (run directory, shards, resume), :mod:`~hiseg_sim.experiments.runner`.
"""

from __future__ import annotations

from hiseg_sim.experiments.runner import RunPlan, plan_study, run_study
from hiseg_sim.experiments.spec import SpecError, StudySpec, load_spec, spec_from_dict
from hiseg_sim.experiments.storage import CorruptShardWarning, RunData, RunMismatchError, load_run

__all__ = [
    "CorruptShardWarning",
    "RunData",
    "RunMismatchError",
    "RunPlan",
    "SpecError",
    "StudySpec",
    "load_run",
    "load_spec",
    "plan_study",
    "run_study",
    "spec_from_dict",
]
