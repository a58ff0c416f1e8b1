"""Analysis of study runs: metrics and curves, bootstrap intervals, crowd fusion, learning, figures, reports.

>>> from hiseg_sim.experiments import load_run
>>> from hiseg_sim.analysis import group_summary, build_report      # doctest: +SKIP
>>> data = load_run("runs/hiseg_groups")                            # doctest: +SKIP
>>> group_summary(data.episodes)                                    # doctest: +SKIP

Modules: :mod:`~hiseg_sim.analysis.stats` (cluster and paired bootstrap),
:mod:`~hiseg_sim.analysis.metrics` (per-group quality, NoC, Dice after k prompts, Dice–time
curves, time to threshold, AUC, by size band and texture), :mod:`~hiseg_sim.analysis.crowd`
(majority vote, STAPLE, workers needed), :mod:`~hiseg_sim.analysis.learning` (learning curves,
practice cases to reach a level), :mod:`~hiseg_sim.analysis.plots`, :mod:`~hiseg_sim.analysis.sections`
(what each kind of study reports), :mod:`~hiseg_sim.analysis.report` (Markdown and HTML).
"""

from __future__ import annotations

from hiseg_sim.analysis.crowd import crowd_curve, crowd_draws, fuse_majority, fuse_staple, saturation_k, workers_needed
from hiseg_sim.analysis.learning import cases_to_reach, learning_curve
from hiseg_sim.analysis.metrics import (
    dice_after_k,
    dice_time_curves,
    group_summary,
    noc_summary,
    noc_table,
    reach_curve,
    strata_table,
    time_summary,
    time_to_threshold,
)
from hiseg_sim.analysis.report import build_report
from hiseg_sim.analysis.stats import bootstrap_ci, paired_bootstrap

__all__ = [
    "bootstrap_ci",
    "build_report",
    "cases_to_reach",
    "crowd_curve",
    "crowd_draws",
    "dice_after_k",
    "dice_time_curves",
    "fuse_majority",
    "fuse_staple",
    "group_summary",
    "learning_curve",
    "noc_summary",
    "noc_table",
    "paired_bootstrap",
    "reach_curve",
    "saturation_k",
    "strata_table",
    "time_summary",
    "time_to_threshold",
    "workers_needed",
]
