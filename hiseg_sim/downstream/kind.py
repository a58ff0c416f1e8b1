"""The ``downstream`` study kind: simulated labels → a segmentation network trained on them → its
test Dice (the crowd-sourcing study's question). Its run trains networks after the episodes
(:func:`hiseg_sim.downstream.study.run_downstream`); its report is rebuilt from the files it kept."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from hiseg_sim.analysis.section import Section
from hiseg_sim.downstream.study import DEFAULTS, print_summary, run_downstream
from hiseg_sim.studies.base import StudyKind

__all__ = ["KIND", "DownstreamKind"]


def _sections(data, settings: dict, out: Path):
    """``kind = "downstream"`` (:mod:`hiseg_sim.downstream.study`): rebuild ``downstream.md`` and its
    figures from the run's saved results, and show its (a)–(e) table here too."""
    from hiseg_sim.downstream.report import rebuild_report

    md = rebuild_report(data.dir)
    summary = json.loads((Path(data.dir) / "downstream.json").read_text())
    tab = pd.DataFrame(summary["table"])
    sec = Section("Downstream training on simulated labels")
    sec.paragraphs.append(f"The full report of this study is `{md.name}` (rebuilt now); the test Dice per arm:")
    cols = [c for c in ("title", "dice", "lo", "hi", "diff_vs_gt", "diff_lo", "diff_hi", "p_boot") if c in tab]
    sec.tables.append(("Holdout test Dice per training-label arm", tab[cols]))
    for name in ("downstream_dice", "specialist_curve", "downstream_labels"):
        p = Path(data.dir) / f"{name}.png"
        if p.is_file():
            sec.figures.append((name.replace("_", " "), p))
    return [sec], {"downstream": {r["arm"]: r["dice"] for r in summary["table"]}}


class DownstreamKind(StudyKind):
    name = "downstream"
    analysis_keys = {"seeds": "training seeds per arm", "train_steps": "optimiser steps per network",
                     "train": "training settings of the network (table)", "crowd_k": "crowd workers fused per nodule",
                     "test_cohort": "cohort the networks are tested on (default holdout)",
                     "test_neighbours": "slices above and below the key slice in the test set",
                     "weight_floor": "lowest loss weight of an uncertain voxel",
                     "train_workers": "processes training networks",
                     "arms": "label arm → annotator arm (table; defaults: {})".format(
                         ", ".join(f"{k} = {v}" for k, v in DEFAULTS["arms"].items()))}

    def sections(self, data, settings: dict, out: Path) -> tuple[list, dict]:
        return _sections(data, settings, out)

    def run(self, spec, out_dir=None, *, report: bool = True, **run_kwargs: Any) -> tuple[Any, Any]:
        return run_downstream(spec, out_dir, report=report, **run_kwargs), None

    def print_summary(self, result: tuple[Any, Any], echo: Callable[[str], None]) -> None:
        print_summary(result[0], echo)


#: The entry point ``downstream`` of the group ``hiseg_sim.study_kinds``.
KIND = DownstreamKind()
