"""The ``downstream`` study kind: simulated labels → a segmentation network trained on them → its
test Dice (the crowd-sourcing study's question). Its run trains networks after the episodes
(:func:`hiseg_sim.downstream.study.run_downstream`); its report is rebuilt from the files it kept."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from hiseg_sim.analysis.section import Section, fmt_ci, significance
from hiseg_sim.downstream.study import DEFAULTS, print_summary, run_downstream
from hiseg_sim.studies.base import StudyKind, announce_run, resume_hint

__all__ = ["KIND", "DownstreamKind"]


def _sections(data, settings: dict, out: Path):
    """``kind = "downstream"`` (:mod:`hiseg_sim.downstream.study`): rebuild ``downstream.md`` and its
    figures from the run's saved results, and show its (a)–(e) table here too."""
    from hiseg_sim.downstream.report import rebuild_report

    md = rebuild_report(data.dir)
    summary = json.loads((Path(data.dir) / "downstream.json").read_text())
    tab = pd.DataFrame(summary["table"])
    sec = Section("Downstream training on simulated labels", definitions=DEFINITIONS)
    sec.paragraphs.append(f"The full report of this study is `{md.name}` (rebuilt now); the test Dice per arm:")
    cols = [
        c
        for c in ("title", "dice", "lo", "hi", "nsd", "abs_volume_error", "diff_vs_gt", "diff_lo", "diff_hi", "p_boot")
        if c in tab
    ]
    sec.tables.append(("Holdout test Dice per training-label arm", tab[cols]))
    for name in ("downstream_dice", "specialist_curve", "downstream_labels"):
        p = Path(data.dir) / f"{name}.png"
        if p.is_file():
            sec.figures.append((name.replace("_", " "), p))
    lead = Section("Key findings", lead=True)
    for r in summary["table"]:
        if r["arm"] == "gt":
            lead.bullets.append(f"A net trained on ground truth: test Dice **{fmt_ci(r['dice'], r['lo'], r['hi'])}**.")
            continue
        sig = significance(r.get("diff_lo"), r.get("diff_hi"))
        lead.bullets.append(
            f"{r['title']}: {fmt_ci(r['dice'], r['lo'], r['hi'])}, against ground truth "
            f"{fmt_ci(r.get('diff_vs_gt'), r.get('diff_lo'), r.get('diff_hi'), signed=True)} "
            f"({'significant' if sig == 'yes' else 'not significant' if sig == 'no' else 'no interval'})."
        )
    lead.notes.append(
        "Test Dice on the holdout cohort, 95 % bootstrap intervals over test cases; differences paired "
        "by test case; significant: the interval excludes 0."
    )
    headline = {
        "downstream": {r["arm"]: r["dice"] for r in summary["table"]},
        "findings": [b.replace("**", "") for b in lead.bullets],
    }
    return [lead, sec], headline


#: What the downstream table's columns mean.
DEFINITIONS = {
    "title": "the label set the net was trained on",
    "dice": "mean test Dice on the holdout cohort's ground truth (per case: over its slices and the seeds; 3-D: of "
    "the stacked volume, over the seeds)",
    "lo": "lower end of the 95 % bootstrap interval of the test Dice (over test cases)",
    "hi": "upper end of that interval",
    "nsd": "mean test NSD at 1 mm (3-D: the net's stacked slice predictions against the whole case)",
    "abs_volume_error": "mean absolute relative volume error of the net's 3-D prediction, abs(V_pred - V_gt) / V_gt",
    "diff_vs_gt": "paired difference in test Dice, this label set minus ground truth",
    "diff_lo": "lower end of the 95 % interval of that difference",
    "diff_hi": "upper end of that interval",
    "p_boot": "two-sided bootstrap p-value of the difference",
}


class DownstreamKind(StudyKind):
    name = "downstream"
    analysis_keys = {
        "seeds": "training seeds per arm",
        "train_steps": "optimiser steps per network",
        "train": "training settings of the network (table)",
        "crowd_k": "crowd workers fused per nodule",
        "test_cohort": "cohort the networks are tested on (default holdout)",
        "test_neighbours": "slices above and below the key slice in the test set",
        "weight_floor": "lowest loss weight of an uncertain voxel",
        "train_workers": "processes training networks",
        "arms": "label arm → annotator arm (table; defaults: {})".format(
            ", ".join(f"{k} = {v}" for k, v in DEFAULTS["arms"].items())
        ),
    }

    def sections(self, data, settings: dict, out: Path) -> tuple[list, dict]:
        return _sections(data, settings, out)

    def run(self, spec, out_dir=None, *, report: bool = True, **run_kwargs: Any) -> tuple[Any, Any]:
        from hiseg_sim.experiments.runner import default_run_dir

        run_dir = Path(out_dir) if out_dir is not None else default_run_dir(spec)
        announce_run(run_dir, spec.config_hash(), bool(run_kwargs.get("fresh")))
        with resume_hint(run_dir):
            return run_downstream(spec, out_dir, report=report, **run_kwargs), None

    def print_summary(self, result: tuple[Any, Any], echo: Callable[[str], None]) -> None:
        summary = result[0]
        if not isinstance(summary, dict):  # `hiseg-sim report` passes the run: its saved summary
            summary = json.loads((Path(summary.dir) / "downstream.json").read_text())
        print_summary(summary, echo)


#: The entry point ``downstream`` of the group ``hiseg_sim.study_kinds``.
KIND = DownstreamKind()
